//! Merging checked weight by weight: an SDXL kohya LoRA in the SGM layout against the tiny SDXL
//! fixture (UNet linear, GEGLU and 3x3 LoCon conv, both text encoders), the base coming back bit
//! for bit, and the errors of LoRAs that do not fit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::Digest;

use super::*;
use crate::engine::loading::model::{LoadOptions, ModelSource, StableDiffusion};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn load(rel: &str) -> StableDiffusion {
    StableDiffusion::load("t", &ModelSource::Folder(fixture(rel)), &LoadOptions::cpu()).unwrap()
}

fn weights(model: &mut StableDiffusion) -> HashMap<(Part, String), Tensor> {
    let mut out = HashMap::new();
    visit_parts(model, &mut |part, name, _, t| {
        out.insert((part, name.to_string()), t.clone());
        Ok(None)
    })
    .unwrap();
    out
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu).unwrap()
}

/// One kohya module: (name, down, up, alpha).
type Module = (&'static str, Tensor, Tensor, Option<f32>);

fn write_kohya(path: &Path, modules: &[Module]) {
    let mut map = HashMap::new();
    for (name, down, up, alpha) in modules {
        map.insert(format!("{name}.lora_down.weight"), down.clone());
        map.insert(format!("{name}.lora_up.weight"), up.clone());
        if let Some(a) = alpha {
            map.insert(
                format!("{name}.alpha"),
                Tensor::new(*a, &Device::Cpu).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&map, path).unwrap();
}

fn lora(path: &Path, weight: f64) -> ResolvedLora {
    ResolvedLora {
        name: "test".into(),
        path: path.to_path_buf(),
        weight,
        field: "loras",
    }
}

#[test]
fn sdxl_kohya_sgm_names_merge_into_the_unet_and_both_text_encoders() {
    let mut model = load("tiny-sdxl/model");
    let base = weights(&mut model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sdxl.safetensors");
    let r = 2;
    let modules: Vec<Module> = vec![
        (
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
            randn(&[r, 16]),
            randn(&[16, r]),
            Some(1.0),
        ),
        (
            "lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj",
            randn(&[r, 24]),
            randn(&[192, r]),
            None,
        ),
        (
            "lora_unet_output_blocks_2_2_conv",
            randn(&[r, 24, 3, 3]),
            randn(&[24, r, 1, 1]),
            Some(0.5),
        ),
        (
            "lora_te1_text_model_encoder_layers_1_self_attn_q_proj",
            randn(&[r, 8]),
            randn(&[8, r]),
            Some(4.0),
        ),
        (
            "lora_te2_text_model_encoder_layers_2_mlp_fc1",
            randn(&[r, 10]),
            randn(&[40, r]),
            None,
        ),
    ];
    write_kohya(&path, &modules);
    let weight = 0.7;
    model.apply_loras(&[lora(&path, weight)]).unwrap();
    let merged = weights(&mut model);

    let targets = [
        (
            Part::Unet,
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        (
            Part::Unet,
            "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj",
        ),
        (Part::Unet, "up_blocks.0.upsamplers.0.conv"),
        (Part::TextEncoder, "encoder.layers.1.self_attn.q_proj"),
        (Part::TextEncoder2, "encoder.layers.2.mlp.fc1"),
    ];
    for ((_, down, up, alpha), (part, name)) in modules.iter().zip(targets) {
        let key = (part, name.to_string());
        let w = &base[&key];
        let scale = alpha.map_or(1.0, |a| a as f64 / r as f64) * weight;
        // up @ down in PyTorch's (out, in...) layout, then laid out as the weight is stored.
        let out = up.dim(0).unwrap();
        let d = up
            .reshape((out, r))
            .unwrap()
            .matmul(&down.reshape((r, ())).unwrap())
            .unwrap();
        let d = if part == Part::Unet && w.rank() == 4 {
            d.reshape(w.dims()).unwrap()
        } else if part == Part::Unet {
            d.t().unwrap() // our UNet linears keep (in, out)
        } else {
            d
        };
        let want = values(&(w + (d * scale).unwrap()).unwrap());
        let got = values(&merged[&key]);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: max diff {worst}");
        assert_ne!(values(w), got, "{name} unchanged");
    }
    let untouched = (
        Part::Unet,
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k".to_string(),
    );
    assert_eq!(values(&base[&untouched]), values(&merged[&untouched]));

    model.apply_loras(&[]).unwrap();
    let restored = weights(&mut model);
    for (key, t) in &base {
        assert_eq!(
            values(t),
            values(&restored[key]),
            "{key:?} not restored exactly"
        );
    }
}

#[test]
fn loras_that_do_not_fit_are_refused_and_the_model_is_left_as_it_was() {
    let mut model = load("tiny-sd15/model");
    let base = weights(&mut model);
    let dir = tempfile::tempdir().unwrap();

    let wrong_shape = dir.path().join("wrong.safetensors");
    write_kohya(
        &wrong_shape,
        &[(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
            randn(&[2, 7]),
            randn(&[7, 2]),
            None,
        )],
    );
    let message = match model.apply_loras(&[lora(&wrong_shape, 1.0)]) {
        Err(EngineError::InvalidInput { field, message }) => {
            assert_eq!(field, "loras");
            message
        }
        other => panic!("expected a loras error, got {other:?}"),
    };
    assert!(message.contains("test"), "{message}");
    assert!(message.contains("attn1_to_q"), "{message}");

    let other_family = dir.path().join("other.safetensors");
    write_kohya(
        &other_family,
        &[(
            "lora_unet_input_blocks_99_1_transformer_blocks_0_attn1_to_q",
            randn(&[2, 8]),
            randn(&[8, 2]),
            None,
        )],
    );
    match model.apply_loras(&[lora(&other_family, 1.0)]) {
        Err(EngineError::InvalidInput { message, .. }) => {
            assert!(message.contains("matches no layer"), "{message}");
            assert!(message.contains("other.safetensors"), "{message}");
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    let after = weights(&mut model);
    for (key, t) in &base {
        assert_eq!(values(t), values(&after[key]), "{key:?} changed");
    }
}

#[test]
fn the_lora_hash_is_a1111s_addnet_hash() {
    let mut model = load("tiny-sd15/model");
    let path = fixture("tiny-lora/kohya_locon.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let body: String = sha2::Sha256::digest(&bytes[8 + header..])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut l = lora(&path, 1.0);
    l.name = "my:lora,x".into();
    assert_eq!(
        model.lora_hashes(&[l]).unwrap(),
        format!("mylorax: {}", &body[..12]),
    );
}

/// The LoRA-switch figure for the README (not a timed assertion): a full-size SD 1.5-shaped
/// random model and a rank-32 kohya LoRA (f16, like downloads) on every attention, feed-forward
/// and projection layer of the UNet and every text-encoder linear. Run with
/// `cargo test --lib lora::tests::switch_figures -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: loads a full-size random model"]
fn switch_figures() {
    use std::time::Instant;
    let mut model = StableDiffusion::load(
        "sd15",
        &ModelSource::Random("sd15".into()),
        &LoadOptions::cpu(),
    )
    .unwrap();
    let names = model.lora_names().unwrap();
    let r = 32;
    let mut map = HashMap::new();
    for ((part, name), target) in &names.targets {
        let wanted = name.contains("attn") || name.contains(".ff.") || name.contains("proj_");
        if *part == Part::TextEncoder2 || !(wanted || *part == Part::TextEncoder) {
            continue;
        }
        let (out, _) = target.out_and_fan_in();
        let mut down_dims = vec![r];
        down_dims.extend(match target.layout {
            WeightLayout::LinearT => vec![target.dims[0]],
            WeightLayout::Linear => vec![target.dims[1]],
            WeightLayout::Conv => target.dims[1..].to_vec(),
        });
        let mut up_dims = vec![out, r];
        if target.layout == WeightLayout::Conv {
            up_dims.extend([1, 1]);
        }
        let prefix = match part {
            Part::Unet => "lora_unet_",
            _ => "lora_te_text_model_",
        };
        let key = format!("{prefix}{}", name.replace('.', "_"));
        let f16 = |d: &[usize]| (randn(d) * 0.01).unwrap().to_dtype(candle_core::DType::F16);
        map.insert(format!("{key}.lora_down.weight"), f16(&down_dims).unwrap());
        map.insert(format!("{key}.lora_up.weight"), f16(&up_dims).unwrap());
        map.insert(
            format!("{key}.alpha"),
            Tensor::new(16f32, &Device::Cpu).unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rank32.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    let mut time = |what: &str, set: &[ResolvedLora]| {
        let t = Instant::now();
        model.apply_loras(set).unwrap();
        eprintln!("{what}: {:.3} s", t.elapsed().as_secs_f64());
    };
    eprintln!(
        "LoRA: {} modules, {:.1} MB",
        map.len() / 3,
        size as f64 / 1e6
    );
    time("first use (read + merge)", &[lora(&path, 0.8)]);
    time("back to the base model", &[]);
    time("same set again (cached)", &[lora(&path, 0.8)]);
    time("switch to a new set (merge)", &[lora(&path, 0.5)]);
    time("back to the base model", &[]);
    eprintln!(
        "merged copies held: {:.1} MB",
        model.lora.extra_bytes() as f64 / 1e6
    );
}
