//! Loading what a model's files say: the VAE override (`LoadOptions::vae`) replaces a folder's
//! VAE and a single file's baked one, a checkpoint without a VAE asks for it by name, and a
//! single file's v-prediction markers set its schedule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::model::{LoadOptions, ModelSource, StableDiffusion};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The tiny SDXL VAE with 0.5 added to its output bias: decodes move by exactly 0.5.
fn shifted_vae(dir: &Path) -> PathBuf {
    let file = fixture("tiny-sdxl/model/vae/diffusion_pytorch_model.safetensors");
    let mut weights = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    let bias = weights.get_mut("decoder.conv_out.bias").unwrap();
    *bias = (&*bias + 0.5).unwrap();
    let out = dir.join("shifted-vae.safetensors");
    candle_core::safetensors::save(&weights, &out).unwrap();
    out
}

fn decode(model: &StableDiffusion) -> Tensor {
    let z = Tensor::ones((1, 4, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    model.decode(&z).unwrap()
}

#[test]
fn a_vae_file_replaces_the_folders_vae() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = ModelSource::Folder(fixture("tiny-sdxl/model"));
    let own = StableDiffusion::load("own", &folder, &LoadOptions::cpu()).unwrap();
    let opts = LoadOptions {
        vae: Some(shifted_vae(tmp.path())),
        ..LoadOptions::cpu()
    };
    let swapped = StableDiffusion::load("swapped", &folder, &opts).unwrap();
    let diff = (decode(&swapped) - decode(&own)).unwrap();
    let (lo, hi) = (
        diff.flatten_all()
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        diff.flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
    );
    assert!(
        (lo - 0.5).abs() < 1e-5 && (hi - 0.5).abs() < 1e-5,
        "{lo}..{hi}"
    );
}

#[test]
fn a_checkpoint_without_a_vae_needs_one_and_takes_the_override() {
    let tmp = tempfile::tempdir().unwrap();
    let full = fixture("tiny-sdxl/single-file/tiny-sdxl.safetensors");
    let weights = candle_core::safetensors::load(&full, &Device::Cpu).unwrap();
    let (vae, rest): (HashMap<String, Tensor>, HashMap<String, Tensor>) = weights
        .into_iter()
        .partition(|(k, _)| k.starts_with("first_stage_model."));
    assert!(!vae.is_empty());
    let bare = tmp.path().join("no-vae.safetensors");
    candle_core::safetensors::save(&rest, &bare).unwrap();
    let source = ModelSource::SingleFile {
        file: bare,
        config: Some(fixture("tiny-sdxl/model")),
    };
    let err = StableDiffusion::load("bare", &source, &LoadOptions::cpu())
        .err()
        .expect("no VAE to load")
        .to_string();
    assert!(err.contains("no VAE") && err.contains("--vae"), "{err}");

    // The checkpoint's own VAE, as a standalone LDM-layout file, makes it whole again.
    let vae_file = tmp.path().join("vae.safetensors");
    candle_core::safetensors::save(&vae, &vae_file).unwrap();
    let opts = LoadOptions {
        vae: Some(vae_file),
        ..LoadOptions::cpu()
    };
    let model = StableDiffusion::load("bare", &source, &opts).unwrap();
    let whole = StableDiffusion::load(
        "whole",
        &ModelSource::Folder(fixture("tiny-sdxl/model")),
        &LoadOptions::cpu(),
    )
    .unwrap();
    assert!(crate::engine::kernels::max_abs_diff(&decode(&model), &decode(&whole)) < 1e-5);
}

#[test]
fn v_prediction_markers_set_the_schedule_of_a_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let full = fixture("tiny-sdxl/single-file/tiny-sdxl.safetensors");
    let config = Some(fixture("tiny-sdxl/model"));
    let load = |file: PathBuf| {
        let source = ModelSource::SingleFile {
            file,
            config: config.clone(),
        };
        StableDiffusion::load("m", &source, &LoadOptions::cpu())
            .unwrap()
            .scheduler
    };
    let plain = load(full.clone());
    assert_eq!(plain.prediction_type, "epsilon");
    assert!(!plain.rescale_betas_zero_snr);

    let mut weights = candle_core::safetensors::load(&full, &Device::Cpu).unwrap();
    let marker = Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu).unwrap();
    weights.insert("v_pred".into(), marker.clone());
    let vpred = tmp.path().join("vpred.safetensors");
    candle_core::safetensors::save(&weights, &vpred).unwrap();
    let s = load(vpred);
    assert_eq!(s.prediction_type, "v_prediction");
    assert!(!s.rescale_betas_zero_snr, "v_pred alone keeps the betas");

    weights.insert("ztsnr".into(), marker);
    let ztsnr = tmp.path().join("ztsnr.safetensors");
    candle_core::safetensors::save(&weights, &ztsnr).unwrap();
    let s = load(ztsnr);
    assert_eq!(s.prediction_type, "v_prediction");
    assert!(s.rescale_betas_zero_snr);
    assert_eq!(s.timestep_spacing.as_deref(), Some("trailing"));
}
