//! Criterion benchmarks: each fused CPU kernel beside the plain candle ops it replaces, at SD 1.5
//! shapes (attention, GroupNorm+SiLU, GEGLU, Winograd and direct convolution), then the engine on
//! the tiny fixture model: tokenize + encode, one UNet step with CFG, VAE decode, and a whole
//! 8-step txt2img. For full-size figures use `limner bench --model random:sd15`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use limner::engine::kernels::{self, attention, group_norm, Conv2dParams};
use limner::engine::loading::model::{LoadOptions, ModelSource, StableDiffusion};
use limner::engine::pipeline::CancelToken;
use limner::engine::request::{Defaults, GenerationRequest};
use limner::engine::worker::generate_on;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap()
}

/// SD 1.5's second-level shapes (32x32 latent cells at 512 px, 640 channels, batch 2): big
/// enough to show the kernels' speed, small enough to bench quickly.
fn kernel_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10);
    let (q, k, v) = (
        randn(&[2, 1024, 640]),
        randn(&[2, 1024, 640]),
        randn(&[2, 1024, 640]),
    );
    let scale = 1.0 / 80f64.sqrt();
    g.bench_function("attention self 1024 tokens, 8x80 (fused)", |b| {
        b.iter(|| kernels::attention(&q, &k, &v, 8, scale).unwrap())
    });
    g.bench_function("attention self 1024 tokens, 8x80 (candle ops)", |b| {
        b.iter(|| attention::reference(&q, &k, &v, 8, scale).unwrap())
    });
    let ctx = randn(&[2, 77, 640]);
    g.bench_function("attention cross 1024x77 (fused)", |b| {
        b.iter(|| kernels::attention(&q, &ctx, &ctx, 8, scale).unwrap())
    });
    let x = randn(&[2, 640, 32, 32]);
    let (gamma, beta) = (randn(&[640]), randn(&[640]));
    let norm = group_norm::Norm {
        groups: 32,
        eps: 1e-5,
        silu: true,
    };
    g.bench_function("group_norm+silu 2x640x32x32 (fused)", |b| {
        b.iter(|| kernels::group_norm(&x, 32, &gamma, &beta, 1e-5, true).unwrap())
    });
    g.bench_function("group_norm+silu 2x640x32x32 (candle ops)", |b| {
        b.iter(|| group_norm::reference(&x, &gamma, &beta, norm).unwrap())
    });
    let h = randn(&[2, 1024, 5120]);
    g.bench_function("geglu 2x1024x5120 (fused)", |b| {
        b.iter(|| kernels::geglu(&h).unwrap())
    });
    g.bench_function("geglu 2x1024x5120 (candle ops)", |b| {
        b.iter(|| kernels::geglu::reference(&h).unwrap())
    });
    let tokens = randn(&[8192, 320]);
    let lw = randn(&[2560, 320]);
    let lwt = lw.t().unwrap().contiguous().unwrap();
    let lb = randn(&[2560]);
    g.bench_function(
        "linear 8192x320 -> 2560 (gemm, weight stored transposed)",
        |b| b.iter(|| kernels::linear_t(&tokens, &lwt, &lb).unwrap()),
    );
    g.bench_function("linear 8192x320 -> 2560 (candle matmul)", |b| {
        b.iter(|| {
            tokens
                .matmul(&lw.t().unwrap())
                .unwrap()
                .broadcast_add(&lb)
                .unwrap()
        })
    });
    let w = (randn(&[640, 640, 3, 3]) * 0.02).unwrap();
    let bias = randn(&[640]);
    let p = Conv2dParams {
        stride: 1,
        padding: 1,
    };
    g.bench_function("conv3x3 640->640 32x32 (winograd)", |b| {
        b.iter(|| kernels::conv2d(&x, &w, &bias, p).unwrap())
    });
    g.bench_function("conv3x3 640->640 32x32 (im2col)", |b| {
        b.iter(|| kernels::conv2d_direct(&x, &w, &bias, p).unwrap())
    });
    g.bench_function("conv3x3 640->640 32x32 (candle)", |b| {
        b.iter(|| kernels::conv::reference(&x, &w, &bias, p).unwrap())
    });
    g.finish();
}

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
    targets = kernel_benches, benches
}
criterion_main!(engine);
