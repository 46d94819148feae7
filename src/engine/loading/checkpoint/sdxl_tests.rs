//! Checks against the tiny-sdxl fixture: its SGM single file, converted here, must equal the
//! diffusers folder diffusers wrote for the same weights; the refiner is refused; the v-prediction
//! markers are read; standalone VAE files in every layout give the folder's VAE; and the SDXL base
//! presets hold the values of stabilityai/stable-diffusion-xl-base-1.0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::tests::{assert_same, assert_unet_and_vae_match, layout_from_config, refusal, values};
use super::*;
use crate::engine::architecture::{ClipConfig, UNetConfig, VaeConfig};
use crate::engine::samplers::SchedulerConfig;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sdxl")
        .join(rel)
}

/// The fixture's checkpoint, found by its folder rather than its name.
fn single_file() -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture("single-file"))
        .expect("single-file/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    files.into_iter().next().expect("a .safetensors checkpoint")
}

fn layout() -> UNetLayout {
    layout_from_config(&fixture("model/unet/config.json"))
}

fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

/// A diffusers text-encoder file under our naming convention: `text_model.` stripped for the
/// `CLIPTextModel` (`with_prefix` false), added for the `CLIPTextModelWithProjection` (true), so
/// the comparison holds whichever way transformers saved the folder.
fn text_encoder_file(rel: &str, with_prefix: bool) -> HashMap<String, Tensor> {
    load(rel)
        .into_iter()
        .map(|(k, t)| {
            let bare = k.strip_prefix("text_model.").unwrap_or(&k).to_string();
            let name = if with_prefix && !bare.starts_with("text_projection") {
                format!("text_model.{bare}")
            } else {
                bare
            };
            (name, t)
        })
        .collect()
}

fn num_hidden_layers(rel: &str) -> Option<usize> {
    let text = std::fs::read_to_string(fixture(rel)).expect("config");
    let config: serde_json::Value = serde_json::from_str(&text).expect("json");
    config["num_hidden_layers"].as_u64().map(|n| n as usize)
}

#[test]
fn sdxl_single_file_equals_the_diffusers_folder() {
    let converted = load_single_file(&single_file(), &layout()).expect("fixture converts");
    assert_eq!(converted.architecture, Architecture::Sdxl);
    assert!(
        converted.unknown_keys.is_empty(),
        "{:?}",
        converted.unknown_keys
    );
    assert_eq!(converted.prediction, PredictionMarkers::default());
    assert_unet_and_vae_match(&fixture("model"), &converted);
    assert_same(
        "text_encoder",
        &text_encoder_file("model/text_encoder/model.safetensors", false),
        &converted.text_encoder,
    );
    assert_same(
        "text_encoder_2",
        &text_encoder_file("model/text_encoder_2/model.safetensors", true),
        converted.text_encoder_2.as_ref().expect("a second encoder"),
    );
    // Every layer of both encoders is kept (SDXL reads the penultimate and the last).
    assert_eq!(
        converted.text_encoder_layers,
        num_hidden_layers("model/text_encoder/config.json")
    );
    assert_eq!(
        converted.text_encoder_2_layers,
        num_hidden_layers("model/text_encoder_2/config.json")
    );
}

#[test]
fn sdxl_layout_is_inferred_from_the_checkpoint_keys() {
    let tensors = load_tensors(&single_file()).expect("loads");
    let inferred = infer_unet_layout(tensors.iter().map(|(k, t)| (k.as_str(), t.dims())));
    let expected = layout();
    assert!(!expected.down_has_attention[0], "SDXL's first block");
    assert_eq!(inferred, Some(expected));
}

/// The fixture's checkpoint with its text encoders replaced by the refiner's: OpenCLIP ViT-bigG
/// alone, as embedder 0.
#[test]
fn the_sdxl_refiner_is_refused() {
    let tensors: HashMap<String, Tensor> = load_tensors(&single_file())
        .expect("loads")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("conditioner."))
        .chain(
            load_tensors(&single_file())
                .expect("loads")
                .into_iter()
                .filter_map(|(k, t)| {
                    let rest = k.strip_prefix("conditioner.embedders.1.model.")?;
                    Some((format!("conditioner.embedders.0.model.{rest}"), t))
                }),
        )
        .collect();
    let message = |e: EngineError| e.to_string();
    let err = message(detect_architecture(tensors.keys().map(String::as_str)).unwrap_err());
    assert!(
        err.contains("SDXL refiner checkpoint") && err.contains("limner runs base models"),
        "{err}"
    );
    let err = message(convert(tensors, &layout()).err().expect("must fail"));
    assert!(err.contains("SDXL refiner checkpoint"), "{err}");
}

#[test]
fn sdxl_without_its_clip_l_or_projection_is_refused() {
    let all = load_tensors(&single_file()).expect("loads");
    let without = |prefix: &str| -> HashMap<String, Tensor> {
        all.iter()
            .filter(|(k, _)| !k.starts_with(prefix))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    };
    let err = convert(without("conditioner.embedders.0."), &layout())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("conditioner.embedders.0.transformer.") && err.contains("sdxl"),
        "{err}"
    );
    let err = convert(
        without("conditioner.embedders.1.model.text_projection"),
        &layout(),
    )
    .err()
    .expect("must fail")
    .to_string();
    assert!(err.contains("text_projection"), "{err}");

    // Keys that belong to no known SDXL encoder layout.
    let mut odd = without("conditioner.");
    odd.insert(
        "conditioner.embedders.3.something".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).expect("zeros"),
    );
    let err = detect_architecture(odd.keys().map(String::as_str))
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither SDXL base"), "{err}");
}

/// Writes a safetensors file by hand, so dtypes candle cannot hold (`BOOL`) and 0-d or empty
/// tensors appear exactly as other writers leave them.
fn write_raw(path: &Path, entries: &[(&str, &str, &[usize], &[u8])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(bytes);
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(data);
    std::fs::write(path, file).expect("write");
}

#[test]
fn empty_zero_dimensional_and_bool_marker_tensors_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("markers.safetensors");
    let scale = 2.5f32.to_le_bytes();
    let pair = [1u8, 0, 0, 0, 2, 0, 0, 0];
    write_raw(
        &path,
        &[
            ("v_pred", "BOOL", &[], &[1]),
            ("ztsnr", "F32", &[0], &[]),
            ("logit_scale", "F32", &[], &scale),
            ("empty_bool", "BOOL", &[0, 3], &[]),
            ("ids", "I32", &[2], &pair),
        ],
    );
    let tensors = load_tensors(&path).expect("loads");
    assert_eq!(
        PredictionMarkers::from_keys(tensors.keys().map(String::as_str)),
        PredictionMarkers {
            v_pred: true,
            ztsnr: true
        }
    );
    let scale = &tensors["logit_scale"];
    assert_eq!(scale.dims(), &[] as &[usize]);
    assert_eq!(scale.to_scalar::<f32>().expect("scalar"), 2.5);
    assert_eq!(tensors["empty_bool"].dims(), &[0, 3]);
    assert_eq!(tensors["ztsnr"].elem_count(), 0);
    assert_eq!(
        tensors["ids"].to_vec1::<i32>().expect("i32 values"),
        vec![1, 2]
    );
}

#[test]
fn v_prediction_markers_are_reported_not_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = load_tensors(&single_file()).expect("loads");
    let empty = Tensor::zeros(0, DType::F32, &Device::Cpu).expect("empty");
    tensors.insert("v_pred".into(), empty.clone());
    // SGM's training schedule buffer (SDXL-Turbo has it): no weight, not unknown either.
    tensors.insert(
        "denoiser.sigmas".into(),
        Tensor::ones(1000, DType::F32, &Device::Cpu).expect("ones"),
    );
    let path = dir.path().join("vpred.safetensors");
    candle_core::safetensors::save(&tensors, &path).expect("save");
    let converted = load_single_file(&path, &layout()).expect("converts");
    assert_eq!(
        converted.prediction,
        PredictionMarkers {
            v_pred: true,
            ztsnr: false
        }
    );
    assert!(
        converted.unknown_keys.is_empty(),
        "{:?}",
        converted.unknown_keys
    );

    tensors.insert("ztsnr".into(), empty);
    let converted = convert(tensors, &layout()).expect("converts");
    assert!(converted.prediction.v_pred && converted.prediction.ztsnr);
    assert!(converted.unknown_keys.is_empty());
}

#[test]
fn edm_checkpoints_are_refused() {
    let mut tensors = load_tensors(&single_file()).expect("loads");
    tensors.insert(
        "edm_vpred.sigma_max".into(),
        Tensor::new(&[120f32], &Device::Cpu).expect("tensor"),
    );
    let err = convert(tensors, &layout())
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("EDM") && err.contains("edm_vpred.sigma_max"),
        "{err}"
    );
}

/// The checkpoint's VAE as an LDM-named map, with or without `first_stage_model.`.
fn ldm_vae(prefixed: bool) -> HashMap<String, Tensor> {
    load_tensors(&single_file())
        .expect("loads")
        .into_iter()
        .filter_map(|(k, t)| {
            let rest = k.strip_prefix("first_stage_model.")?;
            let name = if prefixed {
                k.clone()
            } else {
                rest.to_string()
            };
            Some((name, t))
        })
        .collect()
}

fn save_and_load_vae(
    dir: &Path,
    name: &str,
    tensors: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).expect("save");
    load_vae_file(&path)
}

#[test]
fn vae_files_in_every_layout_give_the_diffusers_vae() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = load("model/vae/diffusion_pytorch_model.safetensors");

    let mut ldm = ldm_vae(false);
    // Training leftovers that sit in some shared VAE files.
    ldm.insert(
        "loss.logvar".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).expect("zeros"),
    );
    let got = save_and_load_vae(dir.path(), "sdxl_vae.safetensors", &ldm).expect("LDM loads");
    assert_same("LDM VAE file", &expected, &got);

    let got = save_and_load_vae(dir.path(), "prefixed.safetensors", &ldm_vae(true))
        .expect("prefixed LDM loads");
    assert_same("first_stage_model VAE file", &expected, &got);

    // A whole checkpoint lends its baked-in VAE.
    let got = load_vae_file(&single_file()).expect("checkpoint VAE loads");
    assert_same("checkpoint as VAE file", &expected, &got);

    // diffusers' own file, and the same with the attention names of diffusers < 0.14.
    let got = load_vae_file(&fixture("model/vae/diffusion_pytorch_model.safetensors"))
        .expect("diffusers loads");
    assert_same("diffusers VAE file", &expected, &got);
    let legacy: HashMap<String, Tensor> = expected
        .iter()
        .map(|(k, t)| {
            let name = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (name, t.clone())
        })
        .collect();
    assert!(legacy.keys().any(|k| k.contains(".proj_attn.")));
    let got = save_and_load_vae(dir.path(), "legacy.safetensors", &legacy).expect("legacy loads");
    assert_same("legacy diffusers VAE file", &expected, &got);
}

#[test]
fn files_that_are_no_vae_are_refused_by_the_vae_loader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_vae_file(&fixture("model/text_encoder/model.safetensors"))
        .expect_err("must fail")
        .to_string();
    assert!(
        err.contains("no VAE weights found") && err.contains("model.safetensors"),
        "{err}"
    );

    let decoder_only: HashMap<String, Tensor> = ldm_vae(false)
        .into_iter()
        .filter(|(k, _)| k.starts_with("decoder."))
        .collect();
    let err = save_and_load_vae(dir.path(), "decoder.safetensors", &decoder_only)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("no encoder weights"), "{err}");

    let mut mixed = ldm_vae(false);
    mixed.extend(load("model/vae/diffusion_pytorch_model.safetensors"));
    let err = save_and_load_vae(dir.path(), "mixed.safetensors", &mixed)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("mixes LDM"), "{err}");

    let pickle = dir.path().join("kl-f8-anime2.vae.pt");
    std::fs::write(&pickle, b"PK\x03\x04 torch zip").expect("write");
    assert!(refusal_of_vae(&pickle).contains("arbitrary code"));
    let missing = dir.path().join("absent.safetensors");
    let msg = refusal_of_vae(&missing);
    assert!(
        msg.contains("VAE file") && msg.contains("not found"),
        "{msg}"
    );
    // The checkpoint loader still says what it is looking for.
    assert!(refusal(&missing).contains("single-file checkpoint"));
}

fn refusal_of_vae(path: &Path) -> String {
    match load_vae_file(path) {
        Ok(_) => panic!("{} must be refused", path.display()),
        Err(e) => e.to_string(),
    }
}

const UNET: &str = include_str!("../../presets/sdxl/unet.json");
const VAE: &str = include_str!("../../presets/sdxl/vae.json");
const TEXT_ENCODER: &str = include_str!("../../presets/sdxl/text_encoder.json");
const TEXT_ENCODER_2: &str = include_str!("../../presets/sdxl/text_encoder_2.json");
const SCHEDULER: &str = include_str!("../../presets/sdxl/scheduler.json");

#[test]
fn sdxl_base_presets_hold_the_published_configs() {
    let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).expect("json") };
    let unet = json(UNET);
    for (key, want) in [
        ("block_out_channels", serde_json::json!([320, 640, 1280])),
        ("attention_head_dim", serde_json::json!([5, 10, 20])),
        (
            "transformer_layers_per_block",
            serde_json::json!([1, 2, 10]),
        ),
        ("cross_attention_dim", serde_json::json!(2048)),
        ("addition_embed_type", serde_json::json!("text_time")),
        ("addition_time_embed_dim", serde_json::json!(256)),
        (
            "projection_class_embeddings_input_dim",
            serde_json::json!(2816),
        ),
        ("use_linear_projection", serde_json::json!(true)),
    ] {
        assert_eq!(unet[key], want, "unet {key}");
    }
    let vae = json(VAE);
    assert_eq!(vae["scaling_factor"], serde_json::json!(0.13025));
    assert_eq!(vae["force_upcast"], serde_json::json!(true));
    let te2 = json(TEXT_ENCODER_2);
    assert_eq!(te2["projection_dim"], serde_json::json!(1280));

    // The structs the model loader reads them with.
    let unet: UNetConfig = serde_json::from_str(UNET).expect("UNetConfig");
    let layout = UNetLayout::from_block_types(
        unet.block_out_channels.clone(),
        unet.layers_per_block,
        &unet.down_block_types,
        &unet.up_block_types,
    );
    assert_eq!(layout.down_has_attention, [false, true, true]);
    assert_eq!(layout.up_has_attention, [true, true, false]);
    assert_eq!(
        (0..3).map(|i| unet.heads(i)).collect::<Vec<_>>(),
        [5, 10, 20]
    );
    assert_eq!(
        (0..3)
            .map(|i| unet.transformer_depth(i))
            .collect::<Vec<_>>(),
        [1, 2, 10]
    );
    assert_eq!(unet.context_dim(), 2048);
    let vae: VaeConfig = serde_json::from_str(VAE).expect("VaeConfig");
    assert_eq!(
        (vae.block_out_channels.len(), vae.scaling_factor),
        (4, 0.13025)
    );
    let te: ClipConfig = serde_json::from_str(TEXT_ENCODER).expect("ClipConfig");
    assert_eq!((te.hidden_size, te.num_hidden_layers), (768, 12));
    assert_eq!(
        te.hidden_act,
        crate::engine::architecture::ClipActivation::QuickGelu
    );
    let te2: ClipConfig = serde_json::from_str(TEXT_ENCODER_2).expect("ClipConfig");
    assert_eq!(
        (
            te2.hidden_size,
            te2.num_hidden_layers,
            te2.num_attention_heads,
            te2.intermediate_size
        ),
        (1280, 32, 20, 5120)
    );
    assert_eq!(
        te2.hidden_act,
        crate::engine::architecture::ClipActivation::Gelu
    );
    // The concatenated context is what the UNet attends to.
    assert_eq!(te.hidden_size + te2.hidden_size, unet.context_dim());
    let scheduler: SchedulerConfig = serde_json::from_str(SCHEDULER).expect("SchedulerConfig");
    assert_eq!(
        (
            scheduler.beta_schedule.as_str(),
            scheduler.beta_start,
            scheduler.beta_end,
            scheduler.timestep_spacing.as_deref(),
            scheduler.steps_offset,
            scheduler.prediction_type.as_str()
        ),
        (
            "scaled_linear",
            0.00085,
            0.012,
            Some("leading"),
            1,
            "epsilon"
        )
    );
}

#[test]
fn sdxl_g_conversion_keeps_every_layer_and_transposes_the_projection() {
    // The fixture's OpenCLIP-G: each block's fused q/k/v rows in order, projection transposed.
    let all = load_tensors(&single_file()).expect("loads");
    let g = |name: &str| &all[&format!("conditioner.embedders.1.model.{name}")];
    let converted = convert(all.clone(), &layout()).expect("converts");
    let te2 = converted.text_encoder_2.expect("te2");
    let fused = g("transformer.resblocks.2.attn.in_proj_weight");
    let width = fused.dims()[1];
    let v = fused.narrow(0, 2 * width, width).expect("narrow");
    assert_eq!(
        values(&te2["text_model.encoder.layers.2.self_attn.v_proj.weight"]),
        values(&v)
    );
    let projection = g("text_projection");
    assert_eq!(
        te2["text_projection.weight"].dims(),
        [projection.dims()[1], projection.dims()[0]]
    );
    assert_eq!(
        values(&te2["text_projection.weight"]),
        values(&projection.t().expect("t").contiguous().expect("contiguous"))
    );
    assert!(!te2.keys().any(|k| k.contains("logit_scale")));
}

#[test]
fn sdxl_clip_l_converts_with_or_without_text_model() {
    let bare: HashMap<String, Tensor> = load_tensors(&single_file())
        .expect("loads")
        .into_iter()
        .map(|(k, t)| {
            (
                k.replacen(".transformer.text_model.", ".transformer.", 1),
                t,
            )
        })
        .collect();
    assert!(!bare
        .keys()
        .any(|k| k.contains("text_model.") && k.contains("embedders.0")));
    let converted = convert(bare, &layout()).expect("converts");
    assert!(
        converted.unknown_keys.is_empty(),
        "{:?}",
        converted.unknown_keys
    );
    assert_same(
        "text_encoder",
        &text_encoder_file("model/text_encoder/model.safetensors", false),
        &converted.text_encoder,
    );
}
