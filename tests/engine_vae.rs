//! VAE choice on the real engine and the tiny fixture model: a request may name a VAE file of
//! `MODELS_DIR/vae/` (A1111's `sd_vae`), "None" (the checkpoint's own) or nothing (the model's
//! configured one); an unknown name is a `vae` input error and the engine keeps serving.

use std::path::{Path, PathBuf};

use limner::engine::{
    scan_vae_dir, CancelToken, Defaults, Engine, EngineConfig, EngineError, GenerationRequest,
    ModelSource, ModelSpec, VAE_DIR,
};

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model")
}

/// The tiny model served with a `MODELS_DIR/vae/` holding a copy of its own VAE weights, and
/// that copy configured as the model's VAE too (as `weights.toml` `vae` would).
fn engine(models_dir: &Path) -> Engine {
    let vae_dir = models_dir.join(VAE_DIR);
    std::fs::create_dir_all(&vae_dir).unwrap();
    let own = fixture_model().join("vae/diffusion_pytorch_model.safetensors");
    std::fs::copy(&own, vae_dir.join("tiny-vae.safetensors")).unwrap();
    let vaes = scan_vae_dir(&vae_dir);
    assert_eq!(vaes.len(), 1);
    let engine = Engine::spawn(EngineConfig {
        vaes,
        // Two loaded copies: switching the VAE must not evict the model's own load.
        max_loaded: 2,
        ..EngineConfig::cpu(ModelSpec {
            name: "tiny".into(),
            source: ModelSource::Folder(fixture_model()),
            defaults: Defaults {
                steps: 3,
                width: 64,
                height: 64,
                ..Defaults::default()
            },
            schedule: Default::default(),
            vae: Some(vae_dir.join("tiny-vae.safetensors")),
        })
    })
    .unwrap();
    engine.wait_ready().unwrap();
    engine
}

fn paint(e: &Engine, vae: Option<&str>) -> Result<Vec<u8>, EngineError> {
    let req = GenerationRequest {
        prompt: "a gnome".into(),
        seed: Some(5),
        vae: vae.map(str::to_string),
        ..Default::default()
    };
    let valid = req.validate(&e.defaults(None)?)?;
    let out = e.generate(valid, |_| {}, CancelToken::new())?;
    Ok(out.images[0].bytes.clone())
}

#[test]
fn every_vae_choice_paints_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    assert_eq!(e.vae_names(), ["tiny-vae.safetensors"]);
    let automatic = paint(&e, None).unwrap();
    // The listed file holds the model's own VAE weights, so every choice paints the same image.
    for choice in ["Automatic", "None", "tiny-vae.safetensors", "TINY-VAE"] {
        assert_eq!(paint(&e, Some(choice)).unwrap(), automatic, "{choice}");
    }
    match paint(&e, Some("nope.safetensors")) {
        Err(EngineError::InvalidInput { field, message }) => {
            assert_eq!(field, "vae");
            assert!(message.contains("tiny-vae.safetensors"), "{message}");
        }
        other => panic!("expected a vae input error, got {other:?}"),
    }
    // The engine thread lives on.
    assert_eq!(paint(&e, None).unwrap(), automatic);
}
