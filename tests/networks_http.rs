//! LoRAs and embeddings through the real router: the portrait API's `loras`/`embeddings`
//! (validated, passed to the engine with `<lora:>` tags untouched), characters that pin them
//! (create, PATCH, GET; every generation and regeneration carries them merged with the
//! request's), unknown names as 422 sync and async, and the listings (`/api/loras`,
//! `/api/embeddings`, A1111's `/sdapi/v1/loras` and `embeddings`) over real files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use limner::engine::{Defaults, Engine, EngineConfig, LoraRef, ModelSource, ModelSpec};
use limner::portraits::{FakeBackend, ImageBackend};
use serde_json::{json, Value};

#[path = "common/app.rs"]
mod common;
#[path = "common/api_harness.rs"]
mod harness;

use common::Reply;
use harness::{assert_error, harness_over, harness_with, Harness, Opts};

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn fake() -> FakeBackend {
    FakeBackend::new()
        .with_lora("elf-ranger")
        .with_lora("Hero")
        .with_embedding("bad-hands")
        .with_embedding("easy-negative")
}

fn lora(name: &str, weight: f64) -> LoraRef {
    LoraRef {
        name: name.into(),
        weight,
    }
}

/// The LoRAs (as name and weight) and embeddings of the last request the fake backend painted.
fn last_networks(h: &Harness) -> (Vec<LoraRef>, Vec<String>) {
    let r = h.backend.last_request().expect("a request was painted");
    let loras = r.loras().iter().map(|l| lora(&l.name, l.weight)).collect();
    (loras, r.embeddings().to_vec())
}

async fn generate(h: &Harness, id: &str, body: Value) -> Reply {
    let mut body = body;
    body["regenerate"] = json!(true);
    h.post(&format!("/api/characters/{id}/portrait/generate"), body)
        .await
}

async fn patch(h: &Harness, id: &str, body: Value) -> Reply {
    h.call(
        Method::PATCH,
        &format!("/api/characters/{id}"),
        Some(body),
        None,
    )
    .await
}

async fn wait_done(h: &Harness, job: &str) -> Value {
    for _ in 0..600 {
        let s = h.get(&format!("/api/jobs/{job}")).await.json();
        if s["state"] == "done" || s["state"] == "failed" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} never finished");
}

#[tokio::test]
async fn portrait_loras_and_embeddings_are_validated_and_reach_the_engine() {
    let h = harness_with(Opts::default(), fake());
    let id = h.character(None).await;

    // Weight defaults to 1.
    let r = generate(
        &h,
        &id,
        json!({"loras": [{"name": "elf-ranger", "weight": 0.8}, {"name": "Hero"}],
               "embeddings": ["bad-hands"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let (loras, embeddings) = last_networks(&h);
    assert_eq!(loras, [lora("elf-ranger", 0.8), lora("Hero", 1.0)]);
    assert_eq!(embeddings, ["bad-hands"]);
    // History records what painted it.
    assert_eq!(r.json()["parameters"]["loras"][0]["name"], "elf-ranger");
    // Prompt tags pass through untouched, for the engine to read.
    let r = generate(
        &h,
        &id,
        json!({"custom_prompt_additions": "<lora:Hero:0.5>, green cloak"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let prompt = h.backend.last_request().unwrap().prompt().to_string();
    assert!(prompt.contains("<lora:Hero:0.5>"), "{prompt}");

    let bad = [
        (
            json!({"loras": [{"name": "Hero"}, {"name": "elf-ranger", "weight": 11}]}),
            "loras[1].weight",
            "10",
        ),
        (
            json!({"loras": [{"name": "Hero", "weight": -10.5}]}),
            "loras[0].weight",
            "10",
        ),
        (json!({"loras": [{"name": "  "}]}), "loras[0].name", "200"),
        (
            json!({"loras": [{"name": "x".repeat(201)}]}),
            "loras[0].name",
            "200",
        ),
        (
            json!({"loras": [{"name": "../../etc/passwd"}]}),
            "loras[0].name",
            "path",
        ),
        (
            json!({"loras": [{"name": "Hero"}, {"name": "hero", "weight": 0.5}]}),
            "loras[1].name",
            "once",
        ),
        (
            json!({"loras": (0..17).map(|i| json!({"name": format!("l{i}")})).collect::<Vec<_>>()}),
            "loras",
            "16",
        ),
        (
            json!({"embeddings": ["ok", "bad\u{7}name"]}),
            "embeddings[1]",
            "control",
        ),
        (
            json!({"embeddings": (0..17).map(|i| format!("e{i}")).collect::<Vec<_>>()}),
            "embeddings",
            "16",
        ),
    ];
    let calls = h.backend.calls();
    for (body, field, limit) in bad {
        let r = generate(&h, &id, body.clone()).await;
        assert_error(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            Some(field),
        );
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(limit), "{body}: {msg}");
    }
    // A weight of the wrong type is refused by the JSON reader, still as 422.
    let r = generate(
        &h,
        &id,
        json!({"loras": [{"name": "Hero", "weight": "high"}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", text(&r));
    assert_eq!(h.backend.calls(), calls, "nothing invalid was queued");

    // The estimate reads the same body and refuses the same way.
    let r = h
        .post(
            "/api/portraits/estimate",
            json!({"loras": [{"name": "Hero", "weight": 99}]}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras[0].weight"),
    );

    // Unknown names pass validation and are refused by the engine, which names them.
    let r = generate(&h, &id, json!({"loras": [{"name": "no-such-lora"}]})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras"),
    );
    assert!(text(&r).contains("no-such-lora"), "{}", text(&r));
    let r = generate(&h, &id, json!({"embeddings": ["no-such-embedding"]})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("embeddings"),
    );
    assert!(text(&r).contains("no-such-embedding"), "{}", text(&r));
}

#[tokio::test]
async fn characters_pin_loras_and_every_generation_and_regeneration_uses_them() {
    let h = harness_with(Opts::default(), fake());
    let r = h
        .post(
            "/api/characters",
            json!({"name": "Lirael", "race": "wood elf",
                   "loras": [{"name": "elf-ranger", "weight": 0.7}, {"name": "Hero"}],
                   "embeddings": ["easy-negative"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    let created = r.json();
    assert_eq!(
        created["loras"],
        json!([{"name": "elf-ranger", "weight": 0.7}, {"name": "Hero", "weight": 1.0}])
    );
    assert_eq!(created["embeddings"], json!(["easy-negative"]));
    let id = created["id"].as_str().unwrap().to_string();
    let got = h.get(&format!("/api/characters/{id}")).await.json();
    assert_eq!(got["loras"], created["loras"]);
    assert_eq!(got["embeddings"], created["embeddings"]);

    // Generation: the pinned ones, the request's added; the request's weight wins for a name in
    // both (matched case-insensitively), keeping the pinned order.
    let r = generate(
        &h,
        &id,
        json!({"loras": [{"name": "hero", "weight": 0.3}, {"name": "extra-lora-not-pinned"}],
               "embeddings": ["bad-hands", "easy-negative"]}),
    )
    .await;
    // The extra one is unknown to the engine: refused naming it, nothing painted.
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras"),
    );
    let r = generate(
        &h,
        &id,
        json!({"loras": [{"name": "hero", "weight": 0.3}], "embeddings": ["bad-hands", "easy-negative"]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let (loras, embeddings) = last_networks(&h);
    assert_eq!(loras, [lora("elf-ranger", 0.7), lora("Hero", 0.3)]);
    assert_eq!(embeddings, ["easy-negative", "bad-hands"]);

    // Regeneration (img2img) with no networks of its own paints with the pinned ones.
    let r = h
        .post(
            &format!("/api/characters/{id}/regenerate-image"),
            json!({"newPrompt": "same character but in the rain", "denoisingStrength": 0.5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert!(h.backend.last_request().unwrap().is_img2img());
    assert_eq!(
        last_networks(&h),
        (
            vec![lora("elf-ranger", 0.7), lora("Hero", 1.0)],
            vec!["easy-negative".to_string()]
        )
    );

    // PATCH replaces the pins; other fields stay; bad entries are named.
    let r = patch(
        &h,
        &id,
        json!({"loras": [{"name": "Hero", "weight": -0.5}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    assert_eq!(r.json()["loras"], json!([{"name": "Hero", "weight": -0.5}]));
    assert_eq!(r.json()["embeddings"], json!(["easy-negative"]));
    assert_eq!(r.json()["race"], "Wood Elf");
    let r = patch(&h, &id, json!({"loras": [{"name": "Hero", "weight": 12}]})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras[0].weight"),
    );
    let r = patch(&h, &id, json!({"embeddings": [""]})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("embeddings[0]"),
    );
    let r = h
        .post(
            "/api/characters",
            json!({"name": "Bad", "loras": [{"name": "a", "weight": 10.01}]}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras[0].weight"),
    );

    // A pinned name that no file provides: the engine's 422 names it, sync and async.
    let r = patch(&h, &id, json!({"loras": [{"name": "ghost-lora"}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let r = generate(&h, &id, json!({})).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("loras"),
    );
    assert!(text(&r).contains("ghost-lora"), "{}", text(&r));
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            json!({"regenerate": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", text(&r));
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    let done = wait_done(&h, &job).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done.to_string().contains("ghost-lora"), "{done}");

    // null (or []) unpins; then an async job paints with the request's own only.
    let r = patch(&h, &id, json!({"loras": null, "embeddings": []})).await;
    assert_eq!(r.json()["loras"], json!([]));
    assert_eq!(r.json()["embeddings"], json!([]));
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            json!({"regenerate": true, "loras": [{"name": "elf-ranger", "weight": 0.25}]}),
        )
        .await;
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    assert_eq!(wait_done(&h, &job).await["state"], "done");
    assert_eq!(last_networks(&h), (vec![lora("elf-ranger", 0.25)], vec![]));
}

#[tokio::test]
async fn the_listings_name_what_the_fake_engine_accepts() {
    let h = harness_with(Opts::default(), fake());
    let r = h.get("/api/loras").await.json();
    assert_eq!(
        r["loras"],
        json!([{"name": "elf-ranger"}, {"name": "Hero"}])
    );
    let r = h.get("/api/embeddings").await.json();
    assert_eq!(r["embeddings"][0]["name"], "bad-hands");
    assert_eq!(r["embeddings"].as_array().unwrap().len(), 2);
    let r = h.get("/sdapi/v1/embeddings").await.json();
    assert_eq!(r["loaded"]["bad-hands"]["vectors"], 1);
    assert_eq!(r["loaded"]["bad-hands"]["shape"], 768);
    assert_eq!(r["skipped"], json!({}));
}

/// A safetensors file with `header` (tensors' data is zeros).
fn write_safetensors(path: &Path, header: Value, data_bytes: usize) {
    let h = header.to_string();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, data_bytes));
    std::fs::write(path, bytes).unwrap();
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-lora")
        .join(name)
}

/// The real engine's listings over a models folder: A1111's LoRA shape with the files'
/// metadata, embeddings with their shapes, and files added later listed after a refresh.
#[tokio::test]
async fn a1111_listings_read_the_models_folder() {
    let models = tempfile::tempdir().unwrap();
    let loras = models.path().join("loras");
    let embeddings = models.path().join("embeddings");
    std::fs::create_dir_all(loras.join("characters")).unwrap();
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::copy(
        fixture("kohya_locon.safetensors"),
        loras.join("characters/kohya_locon.safetensors"),
    )
    .unwrap();
    write_safetensors(
        &embeddings.join("bad-hands.safetensors"),
        json!({"emb_params": {"dtype": "F32", "shape": [2, 32], "data_offsets": [0, 256]}}),
        256,
    );
    let mut config = EngineConfig::cpu(ModelSpec {
        name: "tiny".into(),
        source: ModelSource::Folder(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model"),
        ),
        defaults: Defaults::default(),
        schedule: Default::default(),
        vae: None,
    });
    config.loras_dir = Some(loras.clone());
    config.embeddings_dir = Some(embeddings.clone());
    let engine = Engine::spawn(config).unwrap();
    // What fits is known once the model's text encoder has loaded (A1111 lists embeddings
    // against the loaded checkpoint too).
    engine.wait_ready().unwrap();
    let engine: Arc<dyn ImageBackend> = Arc::new(engine);
    let h = harness_over(Opts::default(), Arc::new(FakeBackend::new()), engine);

    let list = h.get("/sdapi/v1/loras").await;
    assert_eq!(list.status, StatusCode::OK, "{}", text(&list));
    let list = list.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let entry = &list[0];
    assert_eq!(entry["name"], "kohya_locon");
    assert_eq!(entry["alias"], "kohya_locon");
    assert!(
        entry["path"]
            .as_str()
            .unwrap()
            .ends_with("characters/kohya_locon.safetensors"),
        "{entry}"
    );
    // The header's __metadata__, JSON-looking values parsed as A1111 does.
    assert_eq!(entry["metadata"]["ss_network_dim"], "4");
    assert_eq!(entry["metadata"]["ss_network_module"], "lycoris.kohya");
    assert_eq!(entry["metadata"]["ss_network_args"]["algo"], "locon");

    // A file added later (with kohya's output name) is there after refresh-loras.
    std::fs::copy(
        fixture("peft_diffusers.safetensors"),
        loras.join("peft_diffusers.safetensors"),
    )
    .unwrap();
    let r = h.post("/sdapi/v1/refresh-loras", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let list = h.get("/sdapi/v1/loras").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kohya_locon", "peft_diffusers"]);
    assert_eq!(list[1]["metadata"], json!({"format": "pt"}));
    let ours = h.get("/api/loras").await.json();
    assert_eq!(ours["loras"][1]["name"], "peft_diffusers");

    let emb = h.get("/sdapi/v1/embeddings").await.json();
    assert_eq!(
        emb["loaded"]["bad-hands"],
        json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
               "shape": 32, "vectors": 2})
    );
    write_safetensors(
        &embeddings.join("xl-pair.safetensors"),
        json!({"clip_l": {"dtype": "F16", "shape": [1, 768], "data_offsets": [0, 1536]},
               "clip_g": {"dtype": "F16", "shape": [1, 1280], "data_offsets": [1536, 4096]}}),
        4096,
    );
    let r = h.post("/sdapi/v1/refresh-embeddings", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let ours = h.get("/api/embeddings").await.json();
    let xl = &ours["embeddings"][1];
    assert_eq!(
        (&xl["name"], &xl["vectors"]),
        (&json!("xl-pair"), &json!(1)),
        "{ours}"
    );
    assert_eq!(xl["shape"], json!([1, 2048]));
    // The tiny model's text encoder is 32 wide: the SD 1.x-shaped file fits it.
    assert_eq!(ours["embeddings"][0]["fits"], true);
}
