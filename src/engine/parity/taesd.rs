//! TAESD parity: a fixture whose `model/` is a diffusers `AutoencoderTiny` (its `config.json`
//! says so) or holds madebyollin's `*_decoder.safetensors` runs its `vae_decode` and
//! `vae_encode` cases on the TAESD alone, loaded from each layout the folder has, within the
//! component tolerance.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::{component, Fixture};
use crate::engine::models::taesd::Taesd;
use crate::engine::taesd::{load_diffusers, load_original};

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A TAESD fixture: no pipeline (`model_index.json`), and an `AutoencoderTiny` config or
/// original decoder files.
pub(super) fn is_taesd(dir: &Path) -> bool {
    let model = dir.join("model");
    if model.join("model_index.json").is_file() {
        return false;
    }
    let tiny_config = std::fs::read_to_string(model.join("config.json"))
        .is_ok_and(|text| text.contains("\"AutoencoderTiny\""));
    tiny_config || !files_ending(&model, "_decoder.safetensors").is_empty()
}

/// Every layout the fixture's `model/` holds, loaded.
fn sources(dir: &Path) -> Vec<(String, Taesd)> {
    let model = dir.join("model");
    let mut out = vec![];
    if model.join("config.json").is_file() {
        let t = load_diffusers(&model, DType::F32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("diffusers AutoencoderTiny: {e}"));
        out.push(("diffusers AutoencoderTiny".to_string(), t));
    }
    let encoders = files_ending(&model, "_encoder.safetensors");
    for decoder in files_ending(&model, "_decoder.safetensors") {
        let t = load_original(
            &decoder,
            encoders.first().map(PathBuf::as_path),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", decoder.display()));
        out.push((format!("original {}", decoder.display()), t));
    }
    assert!(!out.is_empty(), "{}: no TAESD weights", model.display());
    out
}

/// Every case against every layout; the failures, each named.
pub(super) fn run(fx: &Fixture) -> Vec<String> {
    let mut failures = vec![];
    for (source, taesd) in sources(&fx.dir) {
        for case in fx.cases() {
            let kind = case["kind"].as_str().unwrap_or_default();
            let id = case["id"].as_str().unwrap_or(kind);
            let label = format!("[{source}] {id}");
            let want = |key: &str| {
                fx.t(case[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{label}: {key}")))
            };
            let (got, key): (Tensor, &str) = match kind {
                "vae_decode" => (taesd.decode(&want("latents_scaled")).unwrap(), "expected"),
                "vae_encode" => match taesd.encode(&want("image")) {
                    Some(latents) => (latents.unwrap(), "expected_latents"),
                    None => {
                        failures.push(format!("{label}: no encoder weights"));
                        continue;
                    }
                },
                other => {
                    failures.push(format!("{label}: unknown TAESD case kind '{other}'"));
                    continue;
                }
            };
            component(&label, &got, &want(key), &mut failures);
        }
    }
    failures
}
