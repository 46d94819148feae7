//! Criterion benchmarks of the engine on the tiny fixture model: tokenize + encode, one UNet
//! step with CFG, VAE decode, and a whole 8-step txt2img. For full-size figures use
//! `limner bench --model random:sd15` (or a real model); these track regressions in our code.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use limner::engine::model::{LoadOptions, ModelSource, StableDiffusion};
use limner::engine::pipeline::CancelToken;
use limner::engine::request::{Defaults, GenerationRequest};
use limner::engine::worker::generate_on;

fn model() -> StableDiffusion {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    StableDiffusion::load("tiny", &ModelSource::Folder(dir), &LoadOptions::cpu())
        .expect("fixture model")
}

fn benches(c: &mut Criterion) {
    let m = model();
    let prompt =
        "portrait of Garrick, a (determined:1.2) human fighter, steel breastplate, detailed face";

    c.bench_function("tokenize+encode (cond+uncond)", |b| {
        b.iter(|| m.encode_pair("blurry, lowres", prompt, 0, false).unwrap())
    });

    let (u, cnd) = m.encode_pair("blurry", prompt, 0, false).unwrap();
    let context = Tensor::cat(&[u, cnd], 0).unwrap();
    let latents = Tensor::randn(0f32, 1f32, (2, 4, 12, 8), &Device::Cpu).unwrap();
    c.bench_function("unet step 64x96 (batch 2 = CFG)", |b| {
        b.iter(|| m.unet_forward(&latents, 500.0, &context).unwrap())
    });

    let one = latents
        .narrow(0, 0, 1)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    c.bench_function("vae decode 64x96", |b| b.iter(|| m.decode(&one).unwrap()));

    let defaults = Defaults {
        width: 64,
        height: 96,
        steps: 8,
        ..Defaults::default()
    };
    let request = GenerationRequest {
        prompt: prompt.into(),
        seed: Some(1),
        ..Default::default()
    }
    .validate(&defaults)
    .unwrap();
    c.bench_function("txt2img 64x96, 8 steps Euler a", |b| {
        b.iter(|| generate_on(&m, &request, &mut |_| {}, &CancelToken::new()).unwrap())
    });
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(10);
    targets = benches
}
criterion_main!(engine);
