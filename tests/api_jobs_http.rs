//! Portraits and jobs through the real router with the fast fake backend: generate,
//! regenerate, history and media; async jobs over SSE, cancel, the queue's backpressure, the
//! estimate and the synchronous timeout; the same NotFound before and inside a job.

use std::time::Duration;

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};

#[path = "common/app.rs"]
mod common;
#[path = "common/api_harness.rs"]
mod harness;

use common::send;
use harness::{assert_error, harness, Harness, Opts};

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
