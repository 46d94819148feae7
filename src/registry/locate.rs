//! What a model's filesystem path holds: a diffusers folder, or one safetensors checkpoint
//! (pickles refused).

use std::path::{Path, PathBuf};

use super::parse::{is_pickle, is_safetensors};
use super::{ModelLocation, RegistryError, Result};

/// What a filesystem path holds: a diffusers folder, or a single safetensors checkpoint.
pub(super) fn locate_path(path: &Path) -> Result<ModelLocation> {
    let bad = |message: &str| RegistryError::BadPath {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    if path.is_dir() {
        if path.join("model_index.json").is_file()
            || path.join("unet").join("config.json").is_file()
        {
            return Ok(ModelLocation::Diffusers(path.to_path_buf()));
        }
        let checkpoints: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| RegistryError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_safetensors(p))
            .collect();
        return match checkpoints.as_slice() {
            [one] => Ok(ModelLocation::SingleFile { file: one.clone(), config: None }),
            _ => Err(bad("neither a diffusers folder (no model_index.json) nor a folder with exactly one .safetensors checkpoint")),
        };
    }
    if path.is_file() {
        if is_pickle(path) {
            return Err(bad("pickled checkpoints (.ckpt/.pt/.bin) can run code when loaded and are refused; convert it to .safetensors"));
        }
        if is_safetensors(path) {
            return Ok(ModelLocation::SingleFile {
                file: path.to_path_buf(),
                config: None,
            });
        }
        return Err(bad("not a .safetensors checkpoint"));
    }
    Err(bad("does not exist"))
}
