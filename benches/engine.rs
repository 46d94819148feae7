//! Criterion benchmarks through the engine's public surface: each fused CPU kernel beside the
//! plain candle ops it replaces at SD 1.5 shapes (`limner::engine::kernel_cases`), then whole
//! txt2img runs on the tiny fixture model, in-process and through the engine thread. For
//! full-size figures and the time of each stage use `limner bench --model random:sd15`.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use limner::engine::{
    kernel_cases, CancelToken, Defaults, Engine, EngineConfig, GenerationRequest, LocalModel,
    ModelSource, ModelSpec,
};

fn kernel_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10);
    for case in kernel_cases().expect("kernel inputs") {
        g.bench_function(case.name, |b| b.iter(|| case.run().unwrap()));
    }
    g.finish();
}

fn tiny_config() -> EngineConfig {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    EngineConfig::cpu(ModelSpec {
        name: "tiny".into(),
        source: ModelSource::Folder(dir),
        defaults: Defaults {
            width: 64,
            height: 96,
            steps: 8,
            ..Defaults::default()
        },
        schedule: Default::default(),
        vae: None,
    })
}

fn benches(c: &mut Criterion) {
    let config = tiny_config();
    let defaults = config.models[0].defaults.clone();
    let prompt =
        "portrait of Garrick, a (determined:1.2) human fighter, steel breastplate, detailed face";
    let request = GenerationRequest {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        seed: Some(1),
        ..Default::default()
    }
    .validate(&defaults)
    .unwrap();

    let mut local = LocalModel::load(&config).expect("fixture model");
    c.bench_function("txt2img 64x96, 8 steps Euler a", |b| {
        b.iter(|| {
            local
                .generate(&request, &mut |_| {}, &CancelToken::new())
                .unwrap()
        })
    });
    c.bench_function("text encode + 1 guided UNet call 64x96", |b| {
        b.iter(|| {
            local
                .time_unet(prompt, "blurry", 64, 96, 7.0, 1, &mut |_, _| {})
                .unwrap()
        })
    });

    let engine = Engine::spawn(config).expect("engine starts");
    engine.wait_ready().expect("fixture model");
    c.bench_function("txt2img 64x96, 8 steps Euler a (engine thread)", |b| {
        b.iter(|| {
            engine
                .generate(request.clone(), |_| {}, CancelToken::new())
                .unwrap()
        })
    });
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(10);
    targets = kernel_benches, benches
}
criterion_main!(engine);
