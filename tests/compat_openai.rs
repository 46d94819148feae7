//! OpenAI `POST /v1/images/generations` through the real router on the fake backend: both
//! response formats (the `url` one fetched back through the signed media route), model mapping,
//! sizes, errors in OpenAI's shape, auth and the queue.

#[path = "compat_clients/support.rs"]
mod support;

use std::time::Duration;

use limner::engine::Defaults;
use limner::engine::{decode_image, read_parameters};
use limner::jobs::QueueConfig;
use limner::portraits::FakeBackend;
use serde_json::json;
use support::{build, unb64, Setup, TestApp};

fn fake() -> TestApp {
    let small = Defaults {
        steps: 4,
        width: 64,
        height: 96,
        ..Defaults::default()
    };
    build(Setup {
        backend: FakeBackend::new()
            .with_defaults(small.clone())
            .with_model("other", small),
        ..Setup::default()
    })
}

const URL: &str = "/v1/images/generations";

#[tokio::test]
async fn b64_json_images_at_the_requested_size() {
    let t = fake();
    let r = t
        .post(
            URL,
            json!({"prompt": "a gnome bard", "n": 2, "size": "64x128",
                   "response_format": "b64_json", "quality": "hd", "style": "vivid",
                   "user": "u1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let body = r.json();
    assert!(body["created"].as_i64().unwrap() > 1_600_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut seeds = Vec::new();
    for d in data {
        assert_eq!(d["revised_prompt"], "a gnome bard");
        assert!(d.get("url").is_none());
        let bytes = unb64(d["b64_json"].as_str().unwrap());
        assert_eq!(decode_image(&bytes).unwrap().dimensions(), (64, 128));
        let text = read_parameters(&bytes).unwrap();
        assert!(text.starts_with("a gnome bard\n"), "{text}");
        seeds.push(text);
    }
    assert_ne!(seeds[0], seeds[1], "each image has its own seed");
    let last = t.backend.last_request().unwrap();
    assert_eq!(last.batch_size(), 2);
    // Steps and CFG come from the model's defaults.
    assert_eq!(last.steps(), 4);
}

#[tokio::test]
async fn url_images_are_stored_and_served_only_when_signed() {
    let t = fake();
    let r = t
        .post(
            URL,
            json!({"prompt": "a paladin", "response_format": "url"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let url = r.json()["data"][0]["url"].as_str().unwrap().to_string();
    // Absolute, from the request's Host header, and signed.
    let path = url
        .strip_prefix("http://limner.test")
        .unwrap_or_else(|| panic!("not absolute: {url}"));
    assert!(path.starts_with("/api/media/images/generations/"), "{path}");
    assert!(path.contains("sig="), "{path}");
    let img = t.get(path).await;
    assert_eq!(img.status, 200);
    assert_eq!(img.headers["content-type"], "image/png");
    assert_eq!(decode_image(&img.bytes).unwrap().dimensions(), (64, 96));
    let unsigned = path.split('?').next().unwrap();
    assert_eq!(t.get(unsigned).await.status, 404);
    // Without a response_format, DALL-E's default (url) applies.
    let r = t.post(URL, json!({"prompt": "a paladin"})).await;
    assert!(r.json()["data"][0]["url"].as_str().is_some());
}

#[tokio::test]
async fn models_map_to_served_models() {
    let t = fake();
    for (model, want) in [
        ("other", "other"),
        ("fake-model", "fake-model"),
        ("dall-e-3", "fake-model"),
        ("gpt-image-1", "fake-model"),
    ] {
        let r = t
            .post(
                URL,
                json!({"prompt": "x", "model": model, "response_format": "b64_json"}),
            )
            .await;
        assert_eq!(r.status, 200, "{model}");
        assert_eq!(
            t.backend.last_request().unwrap().model(),
            Some(want),
            "{model}"
        );
    }
    let r = t
        .post(URL, json!({"prompt": "x", "model": "sdxl-turbo"}))
        .await;
    assert_eq!(r.status, 404);
    let e = r.json();
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["param"], "model");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("sdxl-turbo"));
    let models = t.get("/v1/models").await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][1]["id"], "other");
}

#[tokio::test]
async fn bad_parameters_are_400_in_openai_shape() {
    let t = fake();
    for (body, param) in [
        (json!({"size": "64x64"}), "prompt"),
        (json!({"prompt": "x", "size": "100x100"}), "size"),
        (json!({"prompt": "x", "size": "big"}), "size"),
        (json!({"prompt": "x", "size": "4096x4096"}), "size"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (json!({"prompt": "x", "n": 9}), "n"),
        (json!({"prompt": "x", "n": "two"}), "n"),
        (
            json!({"prompt": "x", "response_format": "jpeg"}),
            "response_format",
        ),
        (
            json!({"prompt": "x", "output_format": "gif"}),
            "output_format",
        ),
        (json!({"prompt": "x", "stream": true}), "stream"),
    ] {
        let r = t.post(URL, body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
        assert!(e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(e["error"].get("code").is_some());
    }
    assert_eq!(t.backend.calls(), 0);
}

#[tokio::test]
async fn bearer_auth_and_the_queue_limit() {
    let t = build(Setup {
        backend: FakeBackend::new()
            .with_defaults(Defaults {
                steps: 150,
                width: 64,
                height: 64,
                ..Defaults::default()
            })
            .with_step_delay(Duration::from_millis(20)),
        queue: QueueConfig {
            max_queued: 0,
            concurrency: 1,
            ..QueueConfig::default()
        },
        auth: true,
    });
    let r = t.post(URL, json!({"prompt": "x"})).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let bearer = format!("Bearer {}", t.player_token.clone().unwrap());
    let app = t.app.clone();
    let b = bearer.clone();
    let first = tokio::spawn(async move {
        support::send_to(
            app,
            axum::http::Request::builder()
                .method("POST")
                .uri(URL)
                .header("content-type", "application/json")
                .header("authorization", b)
                .body(axum::body::Body::from(
                    json!({"prompt": "x", "response_format": "b64_json"}).to_string(),
                ))
                .unwrap(),
        )
        .await
    });
    // Wait until it runs (progress sees the caller's own compat jobs).
    let mut running = false;
    for _ in 0..2000 {
        let p = t.get_as("/sdapi/v1/progress", Some(&bearer)).await.json();
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(p["state"]["job"], "openai");
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(running);
    let r = t.post_as(URL, json!({"prompt": "y"}), Some(&bearer)).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    // Admins see every compat job in progress.
    let admin_free = t
        .get_as(
            "/sdapi/v1/progress",
            Some(&format!("Bearer {}", t.admin_token.clone().unwrap())),
        )
        .await
        .json();
    assert!(
        admin_free["state"]["job_count"].as_u64().unwrap() > 0,
        "admins see all jobs"
    );
    let r = t
        .post_as("/sdapi/v1/interrupt", json!({}), Some(&bearer))
        .await;
    assert_eq!(r.status, 200);
    let r = first.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    assert_eq!(r.json()["data"], json!([]), "interrupted before any image");
}
