//! AUTOMATIC1111's samplers and schedule types through the real router: `/sdapi/v1/samplers`
//! and `/sdapi/v1/schedulers` in A1111's shape, an unknown scheduler refused (never run as
//! Automatic), and every sampler added for A1111 compatibility painting end to end on the real
//! tiny model (tests/fixtures/tiny-sd15) through `/sdapi/v1/txt2img` with `sampler_name` and
//! `scheduler`.

#[path = "compat_clients/support.rs"]
mod support;
#[path = "common/tiny_engine.rs"]
mod tiny_engine;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use limner::api::{app, AppState, Inner};
use limner::auth::UrlSigner;
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::{decode_image, read_parameters};
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};
use serde_json::{json, Value};
use support::{build, post_to, unb64, Setup};
use tiny_engine::tiny_engine;

/// A router on the real engine with the tiny model; the temp dir holds the media store.
fn real_app() -> (Router, tempfile::TempDir) {
    let engine = tiny_engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let backend: Arc<dyn ImageBackend> = Arc::new(engine);
    let store: Arc<dyn CharacterStore> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let portraits = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(dir.path().join("media"))),
        backend.clone(),
        PortraitTemplates::load_dir(Path::new("prompts")).expect("prompts"),
        StyleModels::new(),
    );
    let state = AppState::new(Inner {
        store,
        portraits,
        backend,
        jobs: JobQueue::new(QueueConfig::default()).expect("queue"),
        tokens: None,
        signer: UrlSigner::new(vec![1; 32], 3600),
        request_timeout: Duration::from_secs(300),
    });
    (app(state), dir)
}

/// Paints one 64x64 image with `sampler` / `scheduler`; returns the PNG bytes.
async fn paint(app: &Router, sampler: &str, scheduler: &str, steps: u32, seed: i64) -> Vec<u8> {
    let r = post_to(
        app.clone(),
        "/sdapi/v1/txt2img",
        json!({"prompt": "a dwarf cleric", "negative_prompt": "blurry",
               "sampler_name": sampler, "scheduler": scheduler, "steps": steps,
               "cfg_scale": 5, "seed": seed, "width": 64, "height": 64}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{sampler}: {}",
        String::from_utf8_lossy(&r.bytes)
    );
    let body = r.json();
    unb64(body["images"][0].as_str().expect("one image"))
}

/// The image decodes, has the asked size and is not flat: NaN latents decode to a single
/// colour, so spread in the pixels means finite latents all the way through.
fn assert_real_image(png: &[u8], what: &str) {
    let img = decode_image(png).expect("PNG decodes");
    assert_eq!(img.dimensions(), (64, 64), "{what}");
    let px: Vec<f64> = img.pixels().flat_map(|p| p.0).map(f64::from).collect();
    let mean = px.iter().sum::<f64>() / px.len() as f64;
    let var = px.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / px.len() as f64;
    assert!(
        var > 1.0,
        "{what}: flat image (variance {var}), NaN latents?"
    );
}

async fn paints_with(sampler: &str, scheduler: &str, steps: u32) {
    let (app, _dir) = real_app();
    let png = paint(&app, sampler, scheduler, steps, 7).await;
    assert_real_image(&png, sampler);
    let text = read_parameters(&png).expect("parameters chunk");
    assert!(text.contains(&format!("Sampler: {sampler}")), "{text}");
    assert!(text.contains(&format!("Steps: {steps}")), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dpmpp_sde_paints_on_the_tiny_model() {
    paints_with("DPM++ SDE", "Karras", 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dpmpp_2m_sde_paints_on_the_tiny_model() {
    paints_with("DPM++ 2M SDE", "Exponential", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dpmpp_2m_sde_heun_paints_on_the_tiny_model() {
    paints_with("DPM++ 2M SDE Heun", "", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dpmpp_3m_sde_paints_on_the_tiny_model() {
    paints_with("DPM++ 3M SDE", "automatic", 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dpm2_paints_on_the_tiny_model() {
    paints_with("DPM2", "Karras", 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dpm2_a_paints_on_the_tiny_model() {
    paints_with("DPM2 a", "Karras", 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_paints_on_the_tiny_model_with_its_back_steps() {
    // From 20 steps Restart goes back up once (9 Heun steps re-noised from sigma ~2).
    paints_with("Restart", "", 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_schedule_type_paints_and_is_recorded() {
    let (app, _dir) = real_app();
    for (sampler, scheduler, label) in [
        ("Euler", "normal", "Normal"),
        ("Euler a", "uniform", "Uniform"),
        ("Heun", "sgm_uniform", "SGM Uniform"),
        ("LMS", "simple", "Simple"),
        ("DPM++ 2M", "align_your_steps", "Align Your Steps"),
        ("UniPC", "beta", "Beta"),
        ("DPM++ 2M", "kl_optimal", "KL Optimal"),
        ("Euler", "polyexponential", "Polyexponential"),
        ("DPM++ 2M", "ddim", "DDIM"),
        ("Euler", "exponential", "Exponential"),
        ("DPM2", "karras", "Karras"),
    ] {
        let png = paint(&app, sampler, scheduler, 4, 3).await;
        assert_real_image(&png, &format!("{sampler} {scheduler}"));
        let text = read_parameters(&png).expect("parameters chunk");
        // The schedule that ran is named (never silently Automatic).
        assert!(
            text.contains(&format!("Sampler: {sampler} {label}")),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stochastic_samplers_are_deterministic_per_seed() {
    let (app, _dir) = real_app();
    for sampler in ["DPM++ SDE", "DPM++ 3M SDE", "DPM2 a"] {
        let a = paint(&app, sampler, "", 4, 11).await;
        let b = paint(&app, sampler, "", 4, 11).await;
        let c = paint(&app, sampler, "", 4, 12).await;
        let pixels = |p: &[u8]| decode_image(p).unwrap().into_raw();
        assert_eq!(pixels(&a), pixels(&b), "{sampler}: same seed, same image");
        assert_ne!(pixels(&a), pixels(&c), "{sampler}: other seed, other image");
    }
}

#[tokio::test]
async fn unknown_scheduler_is_a_422_naming_scheduler_and_the_accepted_values() {
    let t = build(Setup::default());
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "steps": 1, "width": 64, "height": 64,
                   "sampler_name": "Euler", "scheduler": "Karras Exponential"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.bytes));
    let text = String::from_utf8_lossy(&r.bytes).to_string();
    assert!(text.contains("scheduler"), "{text}");
    for accepted in [
        "normal",
        "Normal",
        "sgm_uniform",
        "Align Your Steps",
        "Beta",
    ] {
        assert!(text.contains(accepted), "{accepted} missing from {text}");
    }
    // A known one runs, under its own name.
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "steps": 1, "width": 64, "height": 64,
                   "sampler_name": "Euler", "scheduler": "normal"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sampler_name"], "Euler Normal", "{info}");
}

#[tokio::test]
async fn saved_a1111_sampler_names_are_accepted() {
    let t = build(Setup::default());
    for name in [
        "DPM++ SDE",
        "DPM++ SDE Karras",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Karras",
        "DPM++ 3M SDE",
        "DPM++ 3M SDE Exponential",
        "DPM2",
        "DPM2 a",
        "DPM2 a Karras",
        "Restart",
        "k_euler_a",
        "k_dpmpp_2m_sde",
        "DPM++ 2M Karras",
        "sample_euler_ancestral",
    ] {
        let r = t
            .post(
                "/sdapi/v1/txt2img",
                json!({"prompt": "x", "steps": 1, "width": 64, "height": 64, "sampler_name": name}),
            )
            .await;
        assert_eq!(
            r.status,
            200,
            "{name}: {}",
            String::from_utf8_lossy(&r.bytes)
        );
    }
}

#[tokio::test]
async fn list_endpoints_list_every_sampler_and_schedule_in_a1111_shape() {
    let t = build(Setup::default());
    let samplers = t.get("/sdapi/v1/samplers").await.json();
    let samplers = samplers.as_array().unwrap();
    let names: Vec<&str> = samplers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "DPM++ 2M",
        "DPM++ SDE",
        "DPM++ 2M SDE",
        "DPM++ 2M SDE Heun",
        "DPM++ 3M SDE",
        "Euler a",
        "Euler",
        "LMS",
        "Heun",
        "DPM2",
        "DPM2 a",
        "Restart",
        "DDIM",
        "UniPC",
        "LCM",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for s in samplers {
        assert!(s["aliases"].is_array() && s["options"].is_object(), "{s}");
        // A1111's SamplerItem has string option values.
        assert!(
            s["options"]
                .as_object()
                .unwrap()
                .values()
                .all(Value::is_string),
            "{s}"
        );
    }
    let sde = samplers.iter().find(|s| s["name"] == "DPM++ SDE").unwrap();
    assert_eq!(sde["aliases"][0], "k_dpmpp_sde");
    assert_eq!(sde["options"]["scheduler"], "karras");
    assert_eq!(sde["options"]["brownian_noise"], "True");

    let schedulers = t.get("/sdapi/v1/schedulers").await.json();
    let got: Vec<(String, String)> = schedulers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            for key in ["aliases", "default_rho", "need_inner_model"] {
                assert!(s.get(key).is_some(), "{key} missing from {s}");
            }
            (
                s["name"].as_str().unwrap().into(),
                s["label"].as_str().unwrap().into(),
            )
        })
        .collect();
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "automatic",
            "uniform",
            "karras",
            "exponential",
            "polyexponential",
            "sgm_uniform",
            "kl_optimal",
            "align_your_steps",
            "simple",
            "normal",
            "ddim",
            "beta"
        ]
    );
    let by_name = |n: &str| {
        schedulers
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("karras")["default_rho"], 7.0);
    assert_eq!(by_name("polyexponential")["default_rho"], 1.0);
    assert_eq!(by_name("normal")["default_rho"], -1.0);
    assert_eq!(by_name("normal")["need_inner_model"], true);
    assert_eq!(by_name("sgm_uniform")["aliases"], json!(["SGMUniform"]));
    assert_eq!(by_name("sgm_uniform")["label"], "SGM Uniform");
}

/// A few-step txt2img with CFG off, as SD-Turbo and LCM-LoRA are run.
async fn paint_without_cfg(
    app: &Router,
    sampler: &str,
    steps: u32,
    cfg: f64,
    seed: i64,
) -> Vec<u8> {
    let r = post_to(
        app.clone(),
        "/sdapi/v1/txt2img",
        json!({"prompt": "a dwarf cleric", "negative_prompt": "blurry",
               "sampler_name": sampler, "steps": steps, "cfg_scale": cfg, "seed": seed,
               "width": 64, "height": 64}),
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{sampler}: {}",
        String::from_utf8_lossy(&r.bytes)
    );
    unb64(r.json()["images"][0].as_str().expect("one image"))
}

#[tokio::test(flavor = "multi_thread")]
async fn lcm_and_one_step_turbo_settings_paint_and_are_recorded() {
    let (app, _dir) = real_app();
    for (sampler, steps, cfg, alias) in [("LCM", 4, 1.0, "k_lcm"), ("Euler a", 1, 0.0, "k_euler_a")]
    {
        let png = paint_without_cfg(&app, sampler, steps, cfg, 21).await;
        assert_real_image(&png, sampler);
        let text = read_parameters(&png).expect("parameters chunk");
        for want in [
            format!("Steps: {steps}, "),
            format!("Sampler: {sampler}, "),
            format!("CFG scale: {cfg}, "),
        ] {
            assert!(text.contains(&want), "{want:?} missing from {text}");
        }
        // The alias runs the same sampler; LCM re-noises from the seed's noise each step.
        let again = paint_without_cfg(&app, alias, steps, cfg, 21).await;
        let other = paint_without_cfg(&app, sampler, steps, cfg, 22).await;
        let pixels = |p: &[u8]| decode_image(p).unwrap().into_raw();
        assert_eq!(
            pixels(&png),
            pixels(&again),
            "{sampler}: same seed, same image"
        );
        assert_ne!(
            pixels(&png),
            pixels(&other),
            "{sampler}: other seed, other image"
        );
    }
}
