//! The samplers' update rules against diffusers' reference latents: every txt2img and img2img
//! case of the tiny-sd15 fixture is replayed with our UNet on the fixture
//! weights, the reference text embeddings, VAE posterior and noise tensors, so only the sampler
//! differs from the reference run. (The full pipeline, tokenizer and VAE included, is checked by
//! `tests/parity.rs`.)

use std::collections::HashMap;

use crate::engine::cancel::CancelToken;
use crate::engine::models::unet::{UNet, UNetInputs};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sd15");

fn tiny_unet() -> UNet {
    let path = format!("{FIXTURE}/model/unet/diffusion_pytorch_model.safetensors");
    // SAFETY: the fixture file is not modified while the test runs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
        .expect("fixture unet weights");
    let config = crate::engine::architecture::UNetConfig::load(std::path::Path::new(&format!(
        "{FIXTURE}/model/unet/config.json"
    )))
    .expect("fixture unet config");
    UNet::new(vb, &config).expect("tiny unet")
}

/// One UNet call, never cancelled.
fn run_unet(unet: &UNet, sample: &Tensor, timestep: f64, context: &Tensor) -> Tensor {
    let inputs = UNetInputs {
        sample,
        timestep,
        context,
        added: None,
    };
    unet.forward(&inputs, &CancelToken::new())
        .expect("unet forward")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("same shapes")
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensor")
}

struct Fixture {
    doc: Value,
    tensors: HashMap<String, Tensor>,
    unet: UNet,
}

impl Fixture {
    fn load() -> Self {
        let text = std::fs::read_to_string(format!("{FIXTURE}/cases.json")).expect("cases.json");
        let doc = serde_json::from_str(&python_json_to_strict(&text)).expect("valid JSON");
        let tensors = candle_core::safetensors::load(
            format!("{FIXTURE}/reference.safetensors"),
            &Device::Cpu,
        )
        .expect("reference tensors");
        Self {
            doc,
            tensors,
            unet: tiny_unet(),
        }
    }

    fn tensor(&self, key: &Value) -> &Tensor {
        let name = key.as_str().expect("tensor name");
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing tensor {name}"))
    }

    /// Runs one txt2img/img2img case's sampling loop; returns the final latents.
    fn run(&self, case: &Value) -> Tensor {
        let kind = case["kind"].as_str().unwrap();
        let spec = parse_sampler(case["sampler"].as_str().unwrap(), None).unwrap();
        let config: SchedulerConfig =
            serde_json::from_value(case["scheduler_config"].clone()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let cfg_scale = case["cfg_scale"].as_f64().unwrap();
        let mut sampler = build_sampler(&spec, &config, steps).unwrap();
        let context = Tensor::cat(
            &[
                self.tensor(&"text.neg".into()),
                self.tensor(&"text.cond".into()),
            ],
            0,
        )
        .unwrap();
        let (start, mut latents) = if kind == "img2img" {
            let scaling = self.doc["vae_scaling_factor"].as_f64().unwrap();
            let mean = self.tensor(&"vae.enc_mean".into());
            let std = self.tensor(&"vae.enc_std".into());
            let init = (mean + (std * self.tensor(&case["vae_sample_noise"])).unwrap())
                .unwrap()
                .affine(scaling, 0.0)
                .unwrap();
            let t_start = img2img_start(steps, case["strength"].as_f64().unwrap()).unwrap();
            let start = sampler.start_index(t_start);
            let noisy = sampler
                .add_noise(&init, self.tensor(&case["noise"]), start)
                .unwrap();
            (start, noisy)
        } else {
            let noise = self.tensor(&case["initial_noise"]);
            (0, noise.affine(sampler.init_noise_sigma(), 0.0).unwrap())
        };
        let step_noise = case["ancestral_step_noise"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let n = sampler.timesteps().len();
        for (k, i) in (start..n).enumerate() {
            let x = sampler.scale_model_input(&latents, i).unwrap();
            let x2 = Tensor::cat(&[&x, &x], 0).unwrap();
            let out = run_unet(&self.unet, &x2, sampler.timesteps()[i], &context);
            let (u, c) = (out.narrow(0, 0, 1).unwrap(), out.narrow(0, 1, 1).unwrap());
            let eps = (&u + ((c - &u).unwrap().affine(cfg_scale, 0.0)).unwrap()).unwrap();
            let noise = sampler
                .needs_step_noise()
                .then(|| self.tensor(&step_noise[k]).clone());
            latents = sampler.step(&eps, i, &latents, noise.as_ref()).unwrap();
        }
        latents
    }
}

#[test]
fn our_unet_matches_the_reference_unet() {
    // Guards the harness: if the UNet itself differed, the sampler comparison would mean nothing.
    let fx = Fixture::load();
    for case in fx.doc["cases"].as_array().unwrap() {
        if case["kind"] != "unet" {
            continue;
        }
        let out = run_unet(
            &fx.unet,
            fx.tensor(&case["sample"]),
            case["timestep"].as_f64().unwrap(),
            fx.tensor(&case["context"]),
        );
        let want = fx.tensor(&case["expected"]);
        let d = max_abs_diff(&out, want) / max_abs(want);
        eprintln!("unet t={}: relative max abs diff {d}", case["timestep"]);
        assert!(
            d < 1e-3,
            "unet t={}: relative max abs diff {d}",
            case["timestep"]
        );
    }
}

#[test]
fn sampling_loops_reproduce_diffusers_latents() {
    let fx = Fixture::load();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in fx.doc["cases"].as_array().unwrap() {
        let kind = case["kind"].as_str().unwrap_or_default();
        if kind != "txt2img" && kind != "img2img" {
            continue;
        }
        let got = fx.run(case);
        let want = fx.tensor(&case["expected_latents"]);
        let d = max_abs_diff(&got, want) / max_abs(want);
        eprintln!("{}: relative max abs diff {d}", case["id"]);
        failures.extend((d >= 1e-3).then(|| format!("{}: {d}", case["id"])));
        checked += 1;
    }
    assert!(checked >= 7);
    assert!(failures.is_empty(), "{failures:?}");
}
