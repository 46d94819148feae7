//! Checks against the tiny-sd15 fixture: its single file, converted here, must equal the diffusers
//! folder that diffusers itself wrote for the same weights. SDXL's are in `sdxl_tests`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::*;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sd15")
        .join(rel)
}

/// The layout as the fixture's own `unet/config.json` states it.
fn fixture_layout() -> UNetLayout {
    layout_from_config(&fixture("model/unet/config.json"))
}

/// The layout a diffusers `unet/config.json` states.
pub(super) fn layout_from_config(path: &Path) -> UNetLayout {
    let text = std::fs::read_to_string(path).expect("config.json");
    let config: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    let numbers = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|n| n.as_u64().expect("number") as usize)
            .collect()
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    UNetLayout::from_block_types(
        numbers(&config["block_out_channels"]),
        config["layers_per_block"]
            .as_u64()
            .expect("layers_per_block") as usize,
        &strings(&config["down_block_types"]),
        &strings(&config["up_block_types"]),
    )
}

fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

pub(super) fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("readable tensor")
}

/// Every tensor of the diffusers file is in `converted` with the same shape and values, and
/// `converted` holds nothing more.
pub(super) fn assert_same(
    component: &str,
    expected: &HashMap<String, Tensor>,
    converted: &HashMap<String, Tensor>,
) {
    for (name, want) in expected {
        let got = converted
            .get(name)
            .unwrap_or_else(|| panic!("{component}: missing {name}"));
        assert_eq!(got.dims(), want.dims(), "{component}: shape of {name}");
        assert_eq!(got.dtype(), want.dtype(), "{component}: dtype of {name}");
        assert!(
            values(got) == values(want),
            "{component}: values of {name} differ"
        );
    }
    let mut extra: Vec<_> = converted
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    extra.sort();
    assert!(extra.is_empty(), "{component}: unexpected names {extra:?}");
}

/// The converted UNet and VAE equal the `unet/` and `vae/` weights of the diffusers folder `model`.
pub(super) fn assert_unet_and_vae_match(model: &Path, converted: &Converted) {
    for (component, got) in [("unet", &converted.unet), ("vae", &converted.vae)] {
        let file = model
            .join(component)
            .join("diffusion_pytorch_model.safetensors");
        let expected = candle_core::safetensors::load(file, &Device::Cpu).expect("fixture loads");
        assert_same(component, &expected, got);
    }
}

#[test]
fn fixture_single_file_equals_the_diffusers_folder() {
    let converted = load_single_file(
        &fixture("single-file/tiny-sd15.safetensors"),
        &fixture_layout(),
    )
    .expect("fixture converts");
    assert_eq!(converted.architecture, Architecture::Sd1);
    assert!(
        converted.unknown_keys.is_empty(),
        "{:?}",
        converted.unknown_keys
    );
    assert_unet_and_vae_match(&fixture("model"), &converted);
    assert_same(
        "text_encoder",
        &load("model/text_encoder/model.safetensors"),
        &converted.text_encoder,
    );
    assert!(converted.text_encoder_2.is_none());
    let config =
        std::fs::read_to_string(fixture("model/text_encoder/config.json")).expect("config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert_eq!(
        converted.text_encoder_layers,
        config["num_hidden_layers"].as_u64().map(|n| n as usize)
    );
}

#[test]
fn layout_inferred_from_the_fixture_keys_matches_its_config() {
    let tensors = load("single-file/tiny-sd15.safetensors");
    let inferred = infer_unet_layout(tensors.iter().map(|(k, t)| (k.as_str(), t.dims())));
    assert_eq!(inferred, Some(fixture_layout()));
    assert_eq!(infer_unet_layout(std::iter::empty()), None);
}

#[test]
fn a_config_for_another_model_is_refused() {
    let tensors = load("single-file/tiny-sd15.safetensors");
    let mut wrong = fixture_layout();
    wrong.layers_per_block = 1;
    let err = convert(tensors.clone(), &wrong).err().expect("must fail");
    assert!(err.to_string().contains("layers_per_block 1"), "{err}");

    let mut wrong = fixture_layout();
    wrong.down_has_attention[2] = true;
    let err = convert(tensors.clone(), &wrong).err().expect("must fail");
    assert!(err.to_string().contains("down block 2"), "{err}");

    let mut wrong = fixture_layout();
    wrong.block_out_channels[1] = 128;
    let err = convert(tensors, &wrong).err().expect("must fail");
    assert!(
        err.to_string().contains("block_out_channels[1] = 128"),
        "{err}"
    );
}

#[test]
fn sd2_checkpoints_convert_with_the_penultimate_text_layer_and_linear_projections() {
    // The fixture's UNet and VAE with an OpenCLIP text encoder and 2-D (linear) projections,
    // as SD2 checkpoints have them.
    let dev = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = load("single-file/tiny-sd15.safetensors")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("cond_stage_model."))
        .map(|(k, t)| {
            let linear = k.ends_with("proj_in.weight") || k.ends_with("proj_out.weight");
            let t = if linear && k.starts_with("model.") {
                let (o, i) = (t.dims()[0], t.dims()[1]);
                t.reshape((o, i)).expect("reshape")
            } else {
                t
            };
            (k, t)
        })
        .collect();
    let width = 8;
    let fused = Tensor::randn(0f32, 1., (3 * width, width), &dev).expect("randn");
    for n in 0..3 {
        let p = format!("cond_stage_model.model.transformer.resblocks.{n}");
        tensors.insert(format!("{p}.attn.in_proj_weight"), fused.clone());
        tensors.insert(
            format!("{p}.ln_2.weight"),
            Tensor::ones(width, DType::F32, &dev).expect("ones"),
        );
    }
    tensors.insert(
        "cond_stage_model.model.positional_embedding".into(),
        Tensor::zeros((77, width), DType::F32, &dev).expect("zeros"),
    );
    let converted = convert(tensors, &fixture_layout()).expect("converts");
    assert_eq!(converted.architecture, Architecture::Sd2);
    assert!(
        converted.unknown_keys.is_empty(),
        "{:?}",
        converted.unknown_keys
    );
    assert_eq!(converted.text_encoder_layers, Some(2));
    let te = &converted.text_encoder;
    assert!(te.contains_key("encoder.layers.1.layer_norm2.weight"));
    assert!(!te.contains_key("encoder.layers.2.layer_norm2.weight"));
    assert!(te.contains_key("embeddings.position_embedding.weight"));
    let v = &te["encoder.layers.0.self_attn.v_proj.weight"];
    assert_eq!(
        values(v),
        values(&fused.narrow(0, 2 * width, width).expect("narrow"))
    );
    assert_eq!(
        converted.unet["mid_block.attentions.0.proj_in.weight"].dims(),
        &[64, 64]
    );
}

#[test]
fn detection_reads_the_text_encoder_keys() {
    let sd1 = [
        "model.diffusion_model.out.0.weight",
        "cond_stage_model.transformer.x",
    ];
    assert_eq!(detect_architecture(sd1).ok(), Some(Architecture::Sd1));
    let sd2 = ["cond_stage_model.model.ln_final.weight"];
    assert_eq!(detect_architecture(sd2).ok(), Some(Architecture::Sd2));
    let sdxl = [
        "conditioner.embedders.0.transformer.x",
        "conditioner.embedders.1.model.y",
    ];
    assert_eq!(detect_architecture(sdxl).ok(), Some(Architecture::Sdxl));
    assert_eq!(Architecture::Sdxl.to_string(), "sdxl");

    let err = detect_architecture(["model.diffusion_model.out.0.weight"]).unwrap_err();
    assert!(err.to_string().contains("model.diffusion_model"), "{err}");
    let err = detect_architecture(["down_blocks.0.resnets.0.conv1.weight"]).unwrap_err();
    assert!(err.to_string().contains("diffusers folder"), "{err}");
}

pub(super) fn refusal(path: &Path) -> String {
    match load_tensors(path) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e @ EngineError::Model(_)) => e.to_string(),
        Err(e) => panic!("expected a model error, got {e}"),
    }
}

#[test]
fn pickles_are_refused_by_extension_and_by_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04 torch zip archive").expect("write");
    let msg = refusal(&ckpt);
    assert!(
        msg.contains("pickled checkpoints") && msg.contains("arbitrary code"),
        "{msg}"
    );
    assert!(msg.contains("model.ckpt"), "{msg}");

    // A pickle renamed to .safetensors is still a pickle.
    let disguised = dir.path().join("model.safetensors");
    std::fs::write(&disguised, b"\x80\x02}q\x00(X\x05\x00\x00\x00state").expect("write");
    assert!(refusal(&disguised).contains("arbitrary code"));
}

#[test]
fn missing_truncated_and_foreign_files_are_model_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.safetensors");
    let msg = refusal(&missing);
    assert!(
        msg.contains("absent.safetensors") && msg.contains("not found"),
        "{msg}"
    );

    let whole = std::fs::read(fixture("single-file/tiny-sd15.safetensors")).expect("fixture");
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let msg = refusal(&truncated);
    assert!(msg.contains("truncated.safetensors"), "{msg}");

    let header_cut = dir.path().join("header_cut.safetensors");
    std::fs::write(&header_cut, &whole[..100]).expect("write");
    let msg = refusal(&header_cut);
    assert!(
        msg.contains("header_cut.safetensors") && msg.contains("truncated"),
        "{msg}"
    );

    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, b"these are not weights at all").expect("write");
    assert!(refusal(&text).contains("not a safetensors file"));

    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, b"{}").expect("write");
    assert!(refusal(&tiny).contains("2 bytes"));
}

#[test]
fn a_checkpoint_without_a_unet_is_refused() {
    let tensors: HashMap<String, Tensor> = load("single-file/tiny-sd15.safetensors")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("model.diffusion_model."))
        .collect();
    let err = convert(tensors, &fixture_layout())
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("no UNet weights"), "{err}");
}
