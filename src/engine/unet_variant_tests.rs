//! Our UNet against diffusers on UNet shapes the parity fixture does not have: SD 2.x-style
//! linear projections with per-block head counts and two transformer blocks per attention, a
//! UNet whose every block has attention (sin/cos order and frequency shift flipped), both at an
//! odd latent size (9x7), so the up path must resize to its skips. Each folder of
//! `tests/fixtures/unet-variants` (made by its `make.py`) holds a diffusers UNet (f16 weights),
//! one input and diffusers' output; the tolerance is the contract's 1e-3 relative.

use std::path::Path;

use crate::engine::architecture::UNetConfig;
use crate::engine::cancel::CancelToken;
use crate::engine::models::unet::{UNet, UNetInputs};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

fn max_abs(t: &Tensor) -> f32 {
    let values: Vec<f32> = t.flatten_all().and_then(|d| d.to_vec1()).expect("tensor");
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[test]
fn our_unet_matches_diffusers_on_other_shapes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet-variants");
    let mut checked = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("fixture folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let config = UNetConfig::load(&dir.join("config.json")).expect("config");
        let weights = dir.join("diffusion_pytorch_model.safetensors");
        // SAFETY: the fixture file is not modified while the test runs.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
                .expect("weights");
        let unet = UNet::new(vb, &config).expect("our UNet builds from diffusers' config");
        let refs = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference");
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let get = |k: &str| refs[k].to_dtype(DType::F32).unwrap();
        let (sample, context, want) = (get("sample"), get("context"), get("expected"));
        let inputs = UNetInputs {
            sample: &sample,
            timestep: case["timestep"].as_f64().unwrap(),
            context: &context,
            added: None,
        };
        let got = unet.forward(&inputs, &CancelToken::new()).expect("forward");
        assert_eq!(got.dims(), want.dims(), "{}", dir.display());
        let rel = max_abs(&(&got - &want).unwrap()) / max_abs(&want);
        eprintln!("{}: relative max abs error {rel:.2e}", dir.display());
        assert!(
            rel < 1e-3,
            "{}: relative max abs error {rel}",
            dir.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected at least two variants, found {checked}"
    );
}
