//! VAE overrides: which VAE file a model decodes with. A model's own choice comes from
//! `weights.toml` (`vae = ...`) or `limner serve --vae` ([`super::ModelSpec::vae`]); a request
//! may pick another one by name (A1111's `sd_vae`), from the VAE files the server found in
//! `MODELS_DIR/vae/` ([`super::EngineConfig::vaes`]). The loader gets the chosen file as
//! `LoadOptions::vae`, and the engine keeps one loaded model per (model, VAE) pair.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The folder under the models directory that holds VAE files (A1111's `models/VAE`).
pub const VAE_DIR: &str = "vae";

/// A VAE file a request may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaeFile {
    /// The file name, as A1111 lists it (`sdxl-vae-fp16-fix.safetensors`).
    pub name: String,
    pub path: PathBuf,
}

/// Which VAE a request decodes with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum VaeChoice {
    /// The model's configured VAE (`weights.toml` / `--vae`), else its own (A1111's
    /// "Automatic").
    #[default]
    Automatic,
    /// The checkpoint's own VAE even when another is configured (A1111's "None").
    Baked,
    /// A file of [`super::EngineConfig::vaes`], by name.
    Named(String),
}

impl VaeChoice {
    /// A1111's `sd_vae` value: "Automatic" (or empty), "None", or a VAE file name.
    pub fn parse(value: &str) -> VaeChoice {
        let v = value.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("automatic") {
            VaeChoice::Automatic
        } else if v.eq_ignore_ascii_case("none") {
            VaeChoice::Baked
        } else {
            VaeChoice::Named(v.to_string())
        }
    }

    /// The value as A1111 shows it in `sd_vae`.
    pub fn as_option(&self) -> &str {
        match self {
            VaeChoice::Automatic => "Automatic",
            VaeChoice::Baked => "None",
            VaeChoice::Named(n) => n,
        }
    }
}

fn is_safetensors(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// The `*.safetensors` files of `dir`, sorted by name; a missing folder has none. Pickled VAEs
/// (`.pt`, `.ckpt`) are not listed: they could run code when loaded.
pub fn scan_vae_dir(dir: &Path) -> Vec<VaeFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<VaeFile> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_safetensors(p))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            Some(VaeFile { name, path: p })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The VAE file name a client means by `wanted` among `names`: a file name, any case, with
/// or without `.safetensors` (A1111 clients send either), a path ending in one, or a
/// `name [hash]` title.
pub fn match_vae_name<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
    wanted: &str,
) -> Option<&'a str> {
    let mut w = wanted.trim();
    if let Some((head, tail)) = w.rsplit_once(" [") {
        if tail.ends_with(']') {
            w = head.trim();
        }
    }
    let w = w.rsplit(['/', '\\']).next().unwrap_or(w);
    let stem = |n: &str| {
        let lower = n.to_ascii_lowercase();
        lower
            .strip_suffix(".safetensors")
            .map(str::to_string)
            .unwrap_or(lower)
    };
    names
        .clone()
        .into_iter()
        .find(|n| *n == w)
        .or_else(|| names.into_iter().find(|n| stem(n) == stem(w)))
}

/// The file of `vaes` a client means by `wanted` ([`match_vae_name`]).
pub fn find_vae<'a>(vaes: &'a [VaeFile], wanted: &str) -> Option<&'a VaeFile> {
    let name = match_vae_name(vaes.iter().map(|v| v.name.as_str()), wanted)?;
    vaes.iter().find(|v| v.name == name)
}

/// A VAE named in `weights.toml` or `--vae`: a file of `vaes` by name, else a path (relative
/// paths against `base`). `None` when neither exists.
pub fn locate_vae(vaes: &[VaeFile], value: &str, base: &Path) -> Option<PathBuf> {
    if let Some(v) = find_vae(vaes, value) {
        return Some(v.path.clone());
    }
    let p = Path::new(value.trim());
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    (p.is_file() && is_safetensors(&p)).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_values_and_names() {
        assert_eq!(VaeChoice::parse("Automatic"), VaeChoice::Automatic);
        assert_eq!(VaeChoice::parse(" "), VaeChoice::Automatic);
        assert_eq!(VaeChoice::parse("None"), VaeChoice::Baked);
        assert_eq!(
            VaeChoice::parse("x.safetensors"),
            VaeChoice::Named("x.safetensors".into())
        );
        assert_eq!(VaeChoice::Baked.as_option(), "None");

        let dir = tempfile::tempdir().unwrap();
        for f in ["b-vae.safetensors", "a.safetensors", "old.pt", "notes.txt"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let vaes = scan_vae_dir(dir.path());
        let names: Vec<&str> = vaes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["a.safetensors", "b-vae.safetensors"]);
        for wanted in [
            "b-vae.safetensors",
            "B-VAE",
            "models/vae/b-vae.safetensors [abc]",
        ] {
            assert_eq!(
                find_vae(&vaes, wanted).map(|v| v.name.as_str()),
                Some("b-vae.safetensors"),
                "{wanted}"
            );
        }
        assert!(find_vae(&vaes, "old.pt").is_none());
        assert!(scan_vae_dir(&dir.path().join("missing")).is_empty());

        // weights.toml / --vae: a listed name, or a path against the weights folder.
        assert_eq!(
            locate_vae(&vaes, "a", Path::new("/nowhere")),
            Some(dir.path().join("a.safetensors"))
        );
        assert_eq!(
            locate_vae(&[], "a.safetensors", dir.path()),
            Some(dir.path().join("a.safetensors"))
        );
        assert_eq!(locate_vae(&[], "old.pt", dir.path()), None);
        assert_eq!(locate_vae(&vaes, "gone.safetensors", dir.path()), None);
    }
}
