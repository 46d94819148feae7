//! The HTTP API through the real router (`tower::ServiceExt::oneshot`) with a fast fake image
//! backend: every endpoint, status code and the error shape; auth rules; jobs, SSE and the
//! queue's backpressure. The real engine end to end is in `serve_e2e.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use limner::api::{app, AppState, Inner};
use limner::auth::{Role, TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::Defaults;
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    FakeBackend, ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};
use serde_json::{json, Value};
use tower::ServiceExt;

#[path = "common/app.rs"]
mod common;
use common::{send, Reply};

struct Harness {
    router: Router,
    backend: Arc<FakeBackend>,
    tokens: Option<TokenStore>,
    _dir: tempfile::TempDir,
}

struct Opts {
    auth: bool,
    step_delay: Duration,
    queue: usize,
    timeout: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            auth: false,
            step_delay: Duration::ZERO,
            queue: 8,
            timeout: Duration::from_secs(30),
        }
    }
}

fn small() -> Defaults {
    Defaults {
        sampler: "Euler a".into(),
        steps: 4,
        cfg_scale: 7.0,
        width: 64,
        height: 96,
    }
}

fn harness(o: Opts) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CharacterStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let backend = Arc::new(
        FakeBackend::new()
            .with_defaults(small())
            .with_step_delay(o.step_delay),
    );
    let dyn_backend: Arc<dyn ImageBackend> = backend.clone();
    let templates = PortraitTemplates::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts"
    )))
    .unwrap();
    let portraits = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(dir.path().join("media"))),
        dyn_backend.clone(),
        templates,
        StyleModels::new(),
    );
    let tokens = o.auth.then(|| TokenStore::open_in_memory().unwrap());
    let state = AppState::new(Inner {
        store,
        portraits,
        backend: dyn_backend,
        jobs: JobQueue::new(QueueConfig {
            max_queued: o.queue,
            concurrency: 1,
            ..Default::default()
        })
        .unwrap(),
        tokens: tokens.clone(),
        signer: UrlSigner::new(vec![3; 32], 3600),
        request_timeout: o.timeout,
    });
    Harness {
        router: app(state),
        backend,
        tokens,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        send(&self.router, method, uri, body, token).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, None).await
    }
    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(body), None).await
    }

    async fn character(&self, token: Option<&str>) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/characters",
                Some(json!({"name": "Garrick", "race": "human", "gender": "MALE", "character_class": "fighter",
                            "age_category": "adult", "facial_expression": "Confident", "attire": "plate armor"})),
                token,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["id"].as_str().unwrap().to_string()
    }
}

fn assert_error(r: &Reply, status: StatusCode, error_type: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error_type"], error_type, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    if let Some(f) = field {
        assert_eq!(v["field"], f, "{v}");
    }
}

#[tokio::test]
async fn characters_crud_with_canonical_enums_and_field_named_errors() {
    let h = harness(Opts::default());
    let r = h
        .post("/api/characters", json!({"name": "Élan", "race": "dark_elf", "gender": "non binary",
            "character_class": "WARLOCK", "age_category": "middle aged", "build": "slender", "pose": "casting spell"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let c = r.json();
    assert_eq!(c["race"], "Dark Elf");
    assert_eq!(c["gender"], "Non-binary");
    assert_eq!(c["character_class"], "Warlock");
    assert_eq!(c["age_category"], "Middle-aged");
    assert_eq!(c["pose"], "Casting Spell");
    assert_eq!(c["facial_expression"], "Determined", "default applied");
    assert_eq!(c["level"], 1);
    assert_eq!(c["character_id"], c["id"]);
    let id = c["id"].as_str().unwrap();

    let list = h.get("/api/characters").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.json()["name"],
        "Élan"
    );

    let r = h
        .call(
            Method::PATCH,
            &format!("/api/characters/{id}"),
            Some(json!({"facial_expression": "stern", "attire": "robes"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["facial_expression"], "Stern");
    assert_eq!(r.json()["race"], "Dark Elf", "untouched fields stay");

    // Bad input: each a 4xx naming the field, and nothing changes.
    assert_error(
        &h.post("/api/characters", json!({"name": "x", "race": "Gnome"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("race"),
    );
    let r = h
        .post("/api/characters", json!({"name": "x", "race": "Gnome"}))
        .await;
    assert!(
        r.json()["error"].as_str().unwrap().contains("Rock Gnome"),
        "lists allowed values"
    );
    assert_error(
        &h.post(
            "/api/characters",
            json!({"name": "x", "base_level": "high"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("base_level"),
    );
    assert_error(
        &h.post("/api/characters", json!({"name": "y".repeat(5000)}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("name"),
    );
    assert_error(
        &h.post("/api/characters", json!({"name": ""})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("name"),
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/characters/{id}"),
            Some(json!({"pose": "flying"})),
            None,
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("pose"),
    );
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.json()["pose"],
        "Casting Spell"
    );
    let raw = Request::builder()
        .method(Method::POST)
        .uri("/api/characters")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    let resp = h.router.clone().oneshot(raw).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_error(
        &h.get("/api/characters/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.get("/api/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.get("/api/characters?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("limit"),
    );
    assert_error(
        &h.get("/api/characters?limit=abc").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("limit"),
    );
    assert_eq!(
        h.get("/api/characters")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "no half-written characters"
    );

    let r = h
        .call(Method::DELETE, &format!("/api/characters/{id}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413_in_our_shape() {
    let h = harness(Opts::default());
    let big = "x".repeat(limner::api::MAX_BODY_BYTES + 10);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/characters")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"name\":\"{big}\"}}")))
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error_type"], "payload_too_large");
}

#[tokio::test]
async fn generate_regenerate_history_and_media() {
    let h = harness(Opts::default());
    let id = h.character(None).await;
    let r = h.post(&format!("/api/characters/{id}/portrait/generate"), json!({"character_id": id, "regenerate": false, "custom_prompt_additions": "holding a lantern"})).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let g = r.json();
    assert_eq!(g["success"], true);
    assert_eq!(g["character_id"], id.as_str());
    for key in [
        "portrait_url",
        "portrait_path",
        "prompt_used",
        "portrait_id",
        "seed",
        "parameters",
    ] {
        assert!(!g[key].is_null(), "{key} missing in {g}");
    }
    assert!(g["prompt_used"]
        .as_str()
        .unwrap()
        .contains("holding a lantern"));
    assert!(g["prompt_used"].as_str().unwrap().contains("Garrick"));
    assert_eq!(h.backend.calls(), 1);

    // regenerate:false with a portrait returns it without generating.
    let again = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"regenerate": false}),
        )
        .await
        .json();
    assert_eq!(again["portrait_id"], g["portrait_id"]);
    assert_eq!(h.backend.calls(), 1);

    let p = h
        .get(&format!("/api/characters/{id}/portrait"))
        .await
        .json();
    assert_eq!(p["has_portrait"], true);
    assert_eq!(p["portrait_path"], g["portrait_path"]);

    // The signed URL serves the PNG; a tampered one is refused.
    let url = g["portrait_url"].as_str().unwrap();
    let img = h.get(url).await;
    assert_eq!(img.status, StatusCode::OK);
    assert_eq!(img.headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(&img.body[1..4], b"PNG");

    // The regeneration guide's regeneration.
    let r = h
        .post(
            &format!("/api/characters/{id}/regenerate-image"),
            json!({"newPrompt": "same character but in a red cloak", "denoisingStrength": 0.3}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["character"]["id"], id.as_str());
    assert_eq!(v["character"]["name"], "Garrick");
    assert!(v["character"]["previousImage"]
        .as_str()
        .unwrap()
        .contains(g["portrait_path"].as_str().unwrap()));
    assert_eq!(v["generationData"]["method"], "img2img_consistency");
    assert_eq!(v["generationData"]["denoisingStrength"], 0.3);
    assert_eq!(
        v["generationData"]["newPrompt"],
        "same character but in a red cloak"
    );
    let last = h.backend.last_request().unwrap();
    assert!(last.is_img2img(), "img2img from the current portrait");
    assert!((last.denoising_strength().unwrap() - 0.3).abs() < 1e-9);

    let hist = h
        .get(&format!("/api/characters/{id}/portraits"))
        .await
        .json();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 2, "the previous portrait is kept");
    assert_eq!(hist[0]["is_current"], true);
    let first = hist[1]["id"].as_str().unwrap();
    let r = h
        .post(
            &format!("/api/characters/{id}/portraits/{first}/current"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        h.get(&format!("/api/characters/{id}/portrait"))
            .await
            .json()["portrait_id"],
        first
    );

    // Out-of-range strength and a body/path mismatch are 422s naming the field.
    let r = h
        .post(
            &format!("/api/characters/{id}/regenerate-image"),
            json!({"newPrompt": "x", "denoisingStrength": 1.5}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("denoisingStrength"),
    );
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"character_id": "someone-else"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("character_id"),
    );
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"regenerate": true, "steps": 0}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("steps"),
    );
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"regenerate": true, "width": 100}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("width"),
    );
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"regenerate": true, "art_style": "cubism"}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("art_style"),
    );
    assert_eq!(
        h.backend.calls(),
        2,
        "refused requests never reach the engine"
    );

    // A character without a portrait cannot be regenerated from one.
    let other = h.character(None).await;
    let r = h
        .post(
            &format!("/api/characters/{other}/regenerate-image"),
            json!({"newPrompt": "x"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", None);
    assert_eq!(
        h.get(&format!("/api/characters/{other}/portrait"))
            .await
            .json()["has_portrait"],
        false
    );
}

async fn wait_for_state(h: &Harness, job: &str, want: &str) -> Value {
    for _ in 0..600 {
        let s = h.get(&format!("/api/jobs/{job}")).await.json();
        if s["state"] == want {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {job} never reached {want}");
}

/// The same NotFound answers the same status before a job and inside one: a character deleted
/// while its jobs wait in the queue (one slot, held by a slow job) is a 404 `not_found` for the
/// synchronous request and `not_found` with status 404 in the asynchronous job's record, as
/// asking for the deleted character outright is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_deleted_while_its_job_waits_is_404_sync_and_async() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(30),
        ..Default::default()
    });
    let blocker = h.character(None).await;
    let r = h
        .post(
            &format!("/api/characters/{blocker}/portrait/generate?async=true"),
            json!({"regenerate": true, "steps": 100}),
        )
        .await;
    let slow = r.json()["job_id"].as_str().unwrap().to_string();
    wait_for_state(&h, &slow, "running").await;

    let doomed = h.character(None).await;
    let generate = format!("/api/characters/{doomed}/portrait/generate");
    let r = h
        .post(&format!("{generate}?async=true"), json!({"steps": 2}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let queued = r.json()["job_id"].as_str().unwrap().to_string();
    let sync = {
        let (router, uri) = (h.router.clone(), generate.clone());
        tokio::spawn(async move {
            send(&router, Method::POST, &uri, Some(json!({"steps": 2})), None).await
        })
    };
    // Both wait behind the slow job before the character goes.
    for _ in 0..600 {
        if h.get("/health").await.json()["queue"]["queued"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.get("/health").await.json()["queue"]["queued"], 2);
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/characters/{doomed}"),
            None,
            None,
        )
        .await;
    assert!(r.status.is_success(), "{}", r.status);
    let r = h
        .call(Method::DELETE, &format!("/api/jobs/{slow}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let before_any_job = h.post(&generate, json!({"steps": 2})).await;
    assert_error(&before_any_job, StatusCode::NOT_FOUND, "not_found", None);
    let inside_a_job = sync.await.unwrap();
    assert_error(&inside_a_job, StatusCode::NOT_FOUND, "not_found", None);
    let record = wait_for_state(&h, &queued, "failed").await;
    assert_eq!(record["error"]["kind"], "not_found", "{record}");
    assert_eq!(record["error"]["status"], 404, "{record}");
}

#[tokio::test]
async fn async_jobs_report_progress_over_sse_and_can_be_cancelled() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(30),
        ..Default::default()
    });
    let id = h.character(None).await;
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            json!({"steps": 5, "hires": false}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let job = r.json()["job_id"].as_str().unwrap().to_string();

    // Server-Sent Events: read the whole stream (it ends after the terminal event).
    let sse = h.get(&format!("/api/jobs/{job}/events")).await;
    assert_eq!(sse.status, StatusCode::OK);
    assert!(sse.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = String::from_utf8(sse.body).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.last(), Some(&"done"), "{text}");
    let steps: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "progress")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert!(
        !steps.is_empty() && steps.windows(2).all(|w| w[0] < w[1]),
        "{steps:?}"
    );
    assert_eq!(*steps.last().unwrap(), 5);
    let done = h.get(&format!("/api/jobs/{job}")).await.json();
    assert_eq!(done["state"], "done");
    assert_eq!(done["step"], 5);
    assert_eq!(done["total"], 5);
    assert!(done["result"]["portrait_url"].is_string());

    // Cancel a running job; the next one runs.
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            json!({"regenerate": true, "steps": 100}),
        )
        .await;
    let slow = r.json()["job_id"].as_str().unwrap().to_string();
    wait_for_state(&h, &slow, "running").await;
    let r = h
        .call(Method::DELETE, &format!("/api/jobs/{slow}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = wait_for_state(&h, &slow, "cancelled").await;
    assert!(s["step"].as_u64().unwrap() < 100);
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"regenerate": true, "steps": 2}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "the slot was freed");
    assert_error(
        &h.call(Method::DELETE, &format!("/api/jobs/{slow}"), None, None)
            .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    assert_error(
        &h.get("/api/jobs/unknown").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(50),
        queue: 2,
        ..Default::default()
    });
    let id = h.character(None).await;
    let mut statuses = vec![];
    let mut last = None;
    for _ in 0..5 {
        let r = h
            .post(
                &format!("/api/characters/{id}/portrait/generate?async=true"),
                json!({"regenerate": true, "steps": 40}),
            )
            .await;
        statuses.push(r.status);
        last = Some(r);
    }
    // One runs, two wait, the rest are refused.
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        3,
        "{statuses:?}"
    );
    let r = last.unwrap();
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "queue_full", None);
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let health = h.get("/health").await.json();
    assert_eq!(health["queue"]["rejected"], 2);
}

#[tokio::test]
async fn the_estimate_is_unknown_until_a_job_ran_then_follows_the_work() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let e = h.post("/api/portraits/estimate", json!({})).await;
    assert_eq!(e.status, StatusCode::OK);
    let e = e.json();
    assert_eq!(e["seconds"], Value::Null, "{e}");
    assert_eq!(e["measured_jobs"], 0, "{e}");
    assert_eq!(e["sync_allowed"], true, "{e}");
    // The settings a generation would use: the model's defaults (small()), the style's template.
    assert_eq!(
        (e["width"].as_u64(), e["height"].as_u64()),
        (Some(64), Some(96)),
        "{e}"
    );
    assert_eq!(e["steps"], 4, "{e}");
    assert_eq!(e["model"], "fake-model", "{e}");
    // Bad options are refused as a generation would refuse them.
    let bad = h
        .post("/api/portraits/estimate", json!({"width": 13}))
        .await;
    assert_error(
        &bad,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("width"),
    );

    let id = h.character(None).await;
    h.post(
        &format!("/api/characters/{id}/portrait/generate"),
        json!({"regenerate": true}),
    )
    .await;
    let small = h
        .post("/api/portraits/estimate", json!({"hires": false}))
        .await
        .json();
    assert_eq!(small["measured_jobs"], 1, "{small}");
    let secs = small["seconds"].as_f64().expect("an estimate after a job");
    assert!(secs > 0.0, "{small}");
    assert!(
        small["text"].as_str().unwrap().starts_with("about "),
        "{small}"
    );
    let big = h
        .post(
            "/api/portraits/estimate",
            json!({"steps": 40, "width": 128, "height": 192, "hires": false}),
        )
        .await
        .json();
    let ratio =
        big["megapixel_steps"].as_f64().unwrap() / small["megapixel_steps"].as_f64().unwrap();
    assert!((ratio - 40.0).abs() < 1e-9, "{big} vs {small}");
    assert!(big["seconds"].as_f64().unwrap() > secs, "{big} vs {small}");
}

#[tokio::test]
async fn a_synchronous_request_estimated_far_past_the_timeout_is_refused_before_it_starts() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(40),
        timeout: Duration::from_secs(2),
        ..Default::default()
    });
    let id = h.character(None).await;
    let path = format!("/api/characters/{id}/portrait/generate");
    // One measured job (4 steps), well within the timeout.
    let r = h.post(&path, json!({"regenerate": true})).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let calls = h.backend.calls();
    // 150 steps at the measured speed is far over twice the 2 s timeout.
    let slow = json!({"regenerate": true, "steps": 150});
    let est = h.post("/api/portraits/estimate", slow.clone()).await.json();
    assert_eq!(est["sync_allowed"], false, "{est}");
    let r = h.post(&path, slow.clone()).await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_slow_for_sync",
        Some("async"),
    );
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("?async=true") && msg.contains("about "),
        "{msg}"
    );
    assert_eq!(
        h.backend.calls(),
        calls,
        "a refused request must not reach the engine"
    );
    // Asynchronously the same request is accepted (and can be cancelled).
    let r = h.post(&format!("{path}?async=true"), slow).await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    h.call(Method::DELETE, &format!("/api/jobs/{job}"), None, None)
        .await;
}

#[tokio::test]
async fn a_synchronous_generation_past_the_timeout_is_504_and_cancelled() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        ..Default::default()
    });
    let id = h.character(None).await;
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            json!({"steps": 150}),
        )
        .await;
    assert_error(&r, StatusCode::GATEWAY_TIMEOUT, "timeout", None);
    assert!(r.json()["error"].as_str().unwrap().contains("cancelled"));
    for _ in 0..200 {
        let q = &h.get("/health").await.json()["queue"];
        if q["running"] == 0 && q["cancelled"] == 1 {
            assert_eq!(
                h.get(&format!("/api/characters/{id}/portraits"))
                    .await
                    .json()
                    .as_array()
                    .unwrap()
                    .len(),
                0,
                "nothing half-written"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the timed-out job was not cancelled");
}

#[tokio::test]
async fn campaigns_rosters_and_campaign_state() {
    let h = harness(Opts::default());
    let c = h
        .post("/api/campaigns", json!({"name": "Curse of Strahd"}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED);
    let camp = c.json()["id"].as_str().unwrap().to_string();
    let a = h.character(None).await;
    let r = h
        .post(
            &format!("/api/campaigns/{camp}/characters"),
            json!({"character_id": a, "hit_points_max": 30, "hit_points_current": 30, "level": 5}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_error(
        &h.post(
            &format!("/api/campaigns/{camp}/characters"),
            json!({"character_id": a}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    let roster = h
        .get(&format!("/api/campaigns/{camp}/characters"))
        .await
        .json();
    assert_eq!(roster.as_array().unwrap().len(), 1);
    assert_eq!(roster[0]["level"], 5, "campaign override");
    assert_eq!(
        roster[0]["race"], "Human",
        "identity comes from the profile"
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 12, "status": "wounded"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["hit_points_current"], 12);
    let one = h
        .get(&format!("/api/characters/{a}?campaign_id={camp}"))
        .await
        .json();
    assert_eq!(one["status"], "wounded");
    assert_eq!(one["campaign_id"], camp.as_str());
    assert_eq!(
        h.get(&format!("/api/characters/{a}")).await.json()["level"],
        1,
        "base level outside the campaign"
    );
    // Created straight into a campaign.
    let r = h
        .post(
            "/api/characters",
            json!({"name": "Ireena", "campaign_id": camp}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        h.get(&format!("/api/campaigns/{camp}/characters"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_error(
        &h.post(
            "/api/characters",
            json!({"name": "Nobody", "campaign_id": "missing"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&format!("/api/campaigns/{camp}/characters"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn auth_players_dms_and_signed_media() {
    let h = harness(Opts {
        auth: true,
        ..Default::default()
    });
    let tokens = h.tokens.clone().unwrap();
    let (alice, _) = tokens.create("alice", Role::Player).unwrap();
    let (bob, _) = tokens.create("bob", Role::Player).unwrap();
    let (dm, _) = tokens.create("dungeon-master", Role::Player).unwrap();
    let (admin, _) = tokens.create("root", Role::Admin).unwrap();

    let r = h.get("/api/characters").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_error(
        &h.call(Method::GET, "/api/characters", None, Some("lmn_forged"))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );

    let a = h.character(Some(&alice)).await;
    let g = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({})),
            Some(&alice),
        )
        .await
        .json();
    let url = g["portrait_url"].as_str().unwrap().to_string();

    // Bob cannot see, change or fetch Alice's character, and cannot tell it exists.
    assert_error(
        &h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/characters/{a}"),
            Some(json!({"attire": "rags"})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({"regenerate": true})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(
        h.call(Method::GET, "/api/characters", None, Some(&bob))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let unsigned = url.split('?').next().unwrap();
    assert!(h.call(Method::GET, unsigned, None, Some(&bob)).await.status == StatusCode::NOT_FOUND);
    assert_eq!(
        h.call(Method::GET, unsigned, None, Some(&alice))
            .await
            .status,
        StatusCode::OK
    );
    // The signed URL works without any header (for <img src>); a tampered one does not.
    assert_eq!(h.get(&url).await.status, StatusCode::OK);
    assert_eq!(
        h.get(&url.replace("sig=", "sig=00")).await.status,
        StatusCode::FORBIDDEN
    );

    // The DM's campaign: Alice's character joins; the DM sees it and manages its state.
    let camp = h
        .call(
            Method::POST,
            "/api/campaigns",
            Some(json!({"name": "Tomb"})),
            Some(&dm),
        )
        .await
        .json();
    let camp = camp["id"].as_str().unwrap().to_string();
    assert!(!camp.is_empty());
    // The DM cannot pull in a character the DM cannot see (404: no leak).
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&dm),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Bob cannot put Alice's character into it either.
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Knowing the campaign's id is not enough: Alice needs the DM's invite code.
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&alice),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let invite = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{camp}/invites"),
            None,
            Some(&dm),
        )
        .await;
    assert_eq!(invite.status, StatusCode::CREATED);
    let r = h
        .call(
            Method::POST,
            "/api/campaigns/join",
            Some(json!({"character_id": a, "code": invite.json()["code"]})),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // The admin sees everything.
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&admin)
        )
        .await
        .status,
        StatusCode::OK
    );
    let roster = h
        .call(
            Method::GET,
            &format!("/api/campaigns/{camp}/characters"),
            None,
            Some(&dm),
        )
        .await
        .json();
    assert_eq!(roster[0]["id"], a.as_str());
    assert!(roster[0]["portrait_url"].is_string());
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&dm)
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 3})),
            Some(&dm),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The DM may not edit Alice's profile, and Alice may not edit campaign state.
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/characters/{a}"),
            Some(json!({"attire": "rags"})),
            Some(&dm),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 99})),
            Some(&alice),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    // Alice now plays in the campaign and sees it; Bob does not.
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/campaigns/{camp}"),
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_error(
        &h.call(
            Method::GET,
            &format!("/api/campaigns/{camp}"),
            None,
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Jobs belong to their submitter.
    let r = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate?async=true"),
            Some(json!({"regenerate": true})),
            Some(&alice),
        )
        .await;
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    assert_error(
        &h.call(Method::GET, &format!("/api/jobs/{job}"), None, Some(&bob))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(
        h.call(Method::GET, &format!("/api/jobs/{job}"), None, Some(&alice))
            .await
            .status,
        StatusCode::OK
    );
    // HTTP Basic with the token as password (A1111 --api-auth style) works too.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("alice:{alice}"),
    );
    let req = Request::builder()
        .uri("/api/characters")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[test]
fn signed_media_urls_expire() {
    let signer = UrlSigner::new(vec![9; 32], 60);
    let url = signer.sign("/api/media/images/portraits/x/y.png", 1_000);
    let q = url.split_once('?').unwrap().1;
    let expires: u64 = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = q.split('&').find_map(|kv| kv.strip_prefix("sig=")).unwrap();
    assert!(signer.verify("/api/media/images/portraits/x/y.png", expires, sig, 1_030));
    assert!(!signer.verify("/api/media/images/portraits/x/y.png", expires, sig, 1_061));
}

#[tokio::test]
async fn expired_signed_url_is_refused_by_the_server() {
    let h = harness(Opts {
        auth: true,
        ..Default::default()
    });
    let (alice, _) = h
        .tokens
        .clone()
        .unwrap()
        .create("alice", Role::Player)
        .unwrap();
    let a = h.character(Some(&alice)).await;
    let g = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({})),
            Some(&alice),
        )
        .await
        .json();
    let path = format!("/api/media/images/{}", g["portrait_path"].as_str().unwrap());
    // Same key as the server, signed long ago.
    let old = UrlSigner::new(vec![3; 32], 60).sign(&path, 1_000);
    assert_eq!(h.get(&old).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn health_models_openapi_and_pregenerated() {
    let h = harness(Opts::default());
    let health = h.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    let v = health.json();
    assert_eq!(v["engine"]["state"], "ready");
    assert_eq!(v["database"], "ok");
    let models = h.get("/api/models").await.json();
    assert_eq!(models["default"], "fake-model");
    assert!(models["styles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "fantasy"));
    let api = h.get("/api/openapi.json").await.json();
    assert_eq!(api["openapi"], "3.0.3");
    for path in [
        "/api/characters",
        "/api/characters/{id}/portrait/generate",
        "/api/characters/{id}/portrait",
        "/api/characters/{id}/regenerate-image",
        "/api/jobs/{id}/events",
    ] {
        assert!(api["paths"][path].is_object(), "{path}");
    }
    let pre = h.get("/api/pregenerated").await.json();
    let list = pre.as_array().unwrap();
    assert!(list.len() >= 12);
    let pid = list[0]["id"].as_str().unwrap();
    let r = h
        .post(&format!("/api/pregenerated/{pid}/create"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["name"], list[0]["name"]);
    assert_error(
        &h.post("/api/pregenerated/nope/create", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
}
