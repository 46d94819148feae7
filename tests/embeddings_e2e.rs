//! Textual-inversion embeddings end to end on the tiny model: a file in `MODELS_DIR/embeddings/`
//! is used by its name in an A1111 txt2img prompt or negative prompt through the real `limner
//! serve`, changes the image and is recorded as A1111's `TI hashes`; through the engine facade a
//! required name that is missing or of the wrong width is a 422-class `embeddings` error, and
//! `Engine::embeddings` lists what the folder holds.

#[path = "common/server.rs"]
mod server;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use limner::engine::{
    CancelToken, Defaults, Engine, EngineConfig, EngineError, GenerationRequest, ModelSource,
    ModelSpec,
};
use serde_json::{json, Value};
use server::{repo_root, Client, Server};

fn fixture_embedding(name: &str) -> PathBuf {
    repo_root()
        .join("tests/fixtures/tiny-embeddings/embeddings")
        .join(format!("{name}.safetensors"))
}

/// A models folder whose `embeddings/` holds the tiny SD 1.x embeddings and the SDXL one.
fn models_dir(root: &Path) -> PathBuf {
    let emb = root.join("models/embeddings");
    std::fs::create_dir_all(emb.join("sub")).unwrap();
    for name in ["elfmark", "xlmark"] {
        std::fs::copy(
            fixture_embedding(name),
            emb.join(format!("{name}.safetensors")),
        )
        .unwrap();
    }
    std::fs::copy(
        fixture_embedding("gloomcloak"),
        emb.join("sub/gloomcloak.safetensors"),
    )
    .unwrap();
    root.join("models")
}

fn short_hash(path: &Path) -> String {
    limner::engine::sha256_file(path).unwrap()[..12].to_string()
}

/// The first image's bytes and infotext of an A1111 txt2img.
fn txt2img(c: &Client, prompt: &str, negative: &str) -> (Vec<u8>, String) {
    let r = c
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "negative_prompt": negative, "seed": 11, "steps": 3,
                    "width": 64, "height": 64, "cfg_scale": 7}),
        )
        .expect(200);
    let png = base64::engine::general_purpose::STANDARD
        .decode(r.json["images"][0].as_str().unwrap())
        .unwrap();
    let info: Value = serde_json::from_str(r.json["info"].as_str().unwrap()).unwrap();
    (png, info["infotexts"][0].as_str().unwrap().to_string())
}

#[test]
fn an_embedding_in_an_a1111_prompt_changes_the_image_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_dir(dir.path());
    let data = dir.path().join("data");
    let server = Server::start_no_auth(&data, &["--models-dir", models.to_str().unwrap()]);
    let c = server.client();
    let emb = models.join("embeddings");
    let elf = short_hash(&emb.join("elfmark.safetensors"));
    let gloom = short_hash(&emb.join("sub/gloomcloak.safetensors"));

    let (with, info) = txt2img(&c, "a portrait of elfmark, castle", "");
    assert!(
        info.contains(&format!("TI hashes: \"elfmark: {elf}\"")),
        "{info}"
    );
    // A negative-prompt embedding (from a subfolder) is recorded after the prompt's.
    let (with_negative, info_negative) = txt2img(&c, "a portrait of elfmark, castle", "gloomcloak");
    assert!(
        info_negative.contains(&format!(
            "TI hashes: \"elfmark: {elf}, gloomcloak: {gloom}\""
        )),
        "{info_negative}"
    );
    assert_ne!(with, with_negative);

    // The same prompt once the file is gone: the name is just a word, painted differently.
    std::fs::rename(
        emb.join("elfmark.safetensors"),
        dir.path().join("elfmark.safetensors"),
    )
    .unwrap();
    let (without, info_without) = txt2img(&c, "a portrait of elfmark, castle", "");
    assert!(!info_without.contains("TI hashes"), "{info_without}");
    assert_ne!(with, without, "the embedding changes the image");
    // Put back, it is used again and paints the first image again.
    std::fs::rename(
        dir.path().join("elfmark.safetensors"),
        emb.join("elfmark.safetensors"),
    )
    .unwrap();
    assert_eq!(txt2img(&c, "a portrait of elfmark, castle", "").0, with);
    // The SDXL pair does not fit this SD 1.x model: its name stays a word.
    let (_, info_xl) = txt2img(&c, "a portrait of xlmark", "");
    assert!(!info_xl.contains("TI hashes"), "{info_xl}");
}

fn engine(models: &Path) -> Engine {
    let mut config = EngineConfig::cpu(ModelSpec {
        name: "tiny".into(),
        source: ModelSource::Folder(repo_root().join("tests/fixtures/tiny-sd15/model")),
        defaults: Defaults {
            steps: 2,
            width: 64,
            height: 64,
            ..Defaults::default()
        },
        schedule: Default::default(),
        vae: None,
    });
    config.embeddings_dir = Some(models.join("embeddings"));
    let engine = Engine::spawn(config).unwrap();
    engine.wait_ready().unwrap();
    engine
}

#[test]
fn required_embeddings_must_exist_and_fit_and_the_folder_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let models = models_dir(dir.path());
    let engine = engine(&models);
    let run = |names: &[&str]| {
        let request = GenerationRequest {
            prompt: "a knight".into(),
            seed: Some(1),
            embeddings: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .validate(&engine.defaults(None).unwrap())
        .unwrap();
        engine.generate(request, |_| {}, CancelToken::new())
    };
    let result = run(&["elfmark", "gloomcloak"]).unwrap();
    // Required but unused in the prompt: nothing to record.
    assert!(!result.images[0].infotext.contains("TI hashes"));
    for (names, named) in [
        (&["nobody"][..], "nobody"),
        (&["elfmark", "xlmark"][..], "xlmark"),
    ] {
        match run(names) {
            Err(e @ EngineError::InvalidInput { .. }) => {
                assert!(e.is_client_error());
                let EngineError::InvalidInput { field, message } = &e else {
                    unreachable!()
                };
                assert_eq!(*field, "embeddings");
                assert!(message.contains(named), "{message}");
                if named == "nobody" {
                    assert!(message.contains("elfmark"), "lists known ones: {message}");
                }
            }
            other => panic!("{names:?}: expected an embeddings error, got {other:?}"),
        }
    }

    let listed = engine.embeddings();
    let rows: Vec<(&str, usize, Vec<usize>, bool)> = listed
        .iter()
        .map(|e| (e.name.as_str(), e.vectors, e.shape.clone(), e.fits))
        .collect();
    assert_eq!(
        rows,
        [
            ("elfmark", 1, vec![1, 32], true),
            ("gloomcloak", 3, vec![3, 32], true),
            ("xlmark", 2, vec![2, 18], false),
        ]
    );
}
