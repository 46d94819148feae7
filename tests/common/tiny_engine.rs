//! The real engine on the tiny test model (tests/fixtures/tiny-sd15), loaded and ready, for tests
//! that paint end to end: named `tiny`, CPU, f32, 64x64 in 4 steps unless a request says otherwise.

use std::path::Path;

use limner::engine::{Defaults, Engine, EngineConfig, ModelSource, ModelSpec};

pub fn tiny_engine() -> Engine {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    let engine = Engine::spawn(EngineConfig::cpu(ModelSpec {
        name: "tiny".into(),
        source: ModelSource::Folder(model),
        defaults: Defaults {
            steps: 4,
            width: 64,
            height: 64,
            ..Defaults::default()
        },
        schedule: Default::default(),
        vae: None,
    }))
    .expect("the tiny engine starts");
    engine.wait_ready().expect("the tiny model loads");
    engine
}
