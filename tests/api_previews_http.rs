//! Live previews on their way to clients, through the real router with the fake backend (which
//! paints a latent-sized preview every n steps, like the engine): `preview` events in a job's
//! SSE stream before `done`, the latest preview in `GET /api/jobs/{id}` while running, a late
//! subscriber's catch-up, `--preview-every 0`; and the queue's preview slot, which a reader that
//! does not keep up cannot make grow or hold the job back.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use futures::StreamExt;
use limner::engine::decode_image;
use limner::jobs::{JobEvent, JobFailure, JobPreview, JobQueue, JobSpec, QueueConfig};
use serde_json::{json, Value};

#[path = "common/app.rs"]
mod common;
#[path = "common/api_harness.rs"]
mod harness;

use harness::{harness, Harness, Opts};

/// The (name, data) events of a whole SSE body.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    text.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

/// Checks a preview's shape and that its image is what it says; returns the decoded size.
fn check_preview(p: &Value) -> (u32, u32) {
    let url = p["image"].as_str().expect("image is a string");
    let (head, b64) = url.split_once(',').expect("a data: URL");
    assert!(
        head == "data:image/png;base64" || head == "data:image/jpeg;base64",
        "{head}"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    if head.contains("png") {
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    }
    let size = decode_image(&bytes).expect("decodes").dimensions();
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(size.0 as u64), Some(size.1 as u64)),
        "the preview's width/height are its image's"
    );
    let (step, total) = (p["step"].as_u64().unwrap(), p["total"].as_u64().unwrap());
    assert!(step >= 1 && step <= total, "{p}");
    size
}

async fn submit(h: &Harness, body: Value) -> String {
    let id = h.character(None).await;
    let r = h
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            body,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["job_id"].as_str().unwrap().to_string()
}

/// Polls the job's status until `pred` holds (or the job ends: then the last status).
async fn poll_until(h: &Harness, job: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..3000 {
        let s = h.get(&format!("/api/jobs/{job}")).await.json();
        if pred(&s) || s["state"] != "queued" && s["state"] != "running" {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the job neither matched nor ended");
}

#[tokio::test]
async fn the_event_stream_carries_previews_before_done() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(10),
        ..Opts::default()
    });
    let job = submit(
        &h,
        json!({"regenerate": true, "steps": 12, "width": 256, "height": 384, "hires": false}),
    )
    .await;
    let sse = h.get(&format!("/api/jobs/{job}/events")).await;
    assert_eq!(sse.status, StatusCode::OK);
    let events = sse_events(&sse.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let done = names
        .iter()
        .position(|n| *n == "done")
        .expect("a done event");
    assert_eq!(done, names.len() - 1, "{names:?}");
    let previews: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "preview")
        .map(|(_, v)| v)
        .collect();
    assert!(!previews.is_empty(), "no preview events: {names:?}");
    assert!(names[..done].contains(&"preview"));
    for p in &previews {
        assert_eq!(p["type"], "preview");
        // The fake backend's preview is latent-sized, an eighth of 256x384.
        assert_eq!(check_preview(p), (32, 48));
        // The server's default cadence: every 2 steps.
        assert_eq!(p["step"].as_u64().unwrap() % 2, 0, "{p}");
        assert_eq!(p["total"], 12);
    }
    let steps: Vec<u64> = previews
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    // Finished: the result replaces the preview, which was never recorded.
    let status = h.get(&format!("/api/jobs/{job}")).await.json();
    assert_eq!(status["state"], "done");
    assert!(status.get("preview").is_none(), "{status}");
}

#[tokio::test]
async fn a_running_job_shows_its_latest_preview_and_a_late_subscriber_gets_it_once() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(20),
        ..Opts::default()
    });
    let job = submit(
        &h,
        json!({"regenerate": true, "steps": 40, "width": 64, "height": 96, "hires": false}),
    )
    .await;
    let running = poll_until(&h, &job, |s| s["preview"]["step"].as_u64() >= Some(4)).await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(check_preview(&running["preview"]), (8, 12));
    let seen = running["preview"]["step"].as_u64().unwrap();
    // Subscribing now: the catch-up includes the latest preview, once, then newer ones.
    let sse = h.get(&format!("/api/jobs/{job}/events")).await;
    let events = sse_events(&sse.body);
    let steps: Vec<u64> = events
        .iter()
        .filter(|(n, _)| n == "preview")
        .map(|(_, v)| v["step"].as_u64().unwrap())
        .collect();
    assert!(!steps.is_empty(), "{events:?}");
    assert!(steps[0] >= seen, "{steps:?} after seeing step {seen}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(events.last().unwrap().0, "done");
}

#[tokio::test]
async fn preview_every_zero_sends_no_previews() {
    let h = harness(Opts {
        step_delay: Duration::from_millis(5),
        preview_every: 0,
        ..Opts::default()
    });
    let job = submit(&h, json!({"regenerate": true, "steps": 6})).await;
    let events = sse_events(&h.get(&format!("/api/jobs/{job}/events")).await.body);
    assert!(events.iter().any(|(n, _)| n == "progress"), "{events:?}");
    assert!(!events.iter().any(|(n, _)| n == "preview"), "{events:?}");
    assert_eq!(
        h.backend.last_request().unwrap().preview_every(),
        None,
        "the engine was not asked for previews"
    );
}

fn preview(step: usize) -> JobPreview {
    JobPreview {
        step,
        total: 500,
        width: 1,
        height: 1,
        image: format!("data:image/png;base64,step{step}"),
    }
}

/// A subscriber that reads nothing while the job publishes hundreds of previews: the job
/// finishes without waiting for it, and the reader then gets only the newest preview, before
/// `done`, next to every progress event (progress is history; previews are not).
#[tokio::test]
async fn a_reader_that_falls_behind_gets_only_the_newest_preview() {
    let q = JobQueue::new(QueueConfig::default()).unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let handle = q
        .submit(JobSpec::new("test", "previews"), move |ctx| {
            // Wait until the lagging subscriber is in place.
            go_rx.recv().map_err(|_| JobFailure::internal("no go"))?;
            for step in 1..=500 {
                ctx.progress(step, 500);
                ctx.preview(preview(step));
            }
            Ok::<_, JobFailure>(json!("done"))
        })
        .unwrap();
    let id = handle.id().clone();
    let lagging = q.subscribe(id.as_str()).unwrap();
    go_tx.send(()).unwrap();
    // The job ends although `lagging` has not been read at all.
    tokio::time::timeout(
        Duration::from_secs(60),
        handle.wait(Duration::from_secs(60)),
    )
    .await
    .expect("the job does not wait for a reader")
    .unwrap();
    let events: Vec<JobEvent> = lagging.collect().await;
    let previews: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Preview(p) => Some(p.step),
            _ => None,
        })
        .collect();
    assert_eq!(previews, vec![500], "only the newest preview is kept");
    let progress = events
        .iter()
        .filter(|e| matches!(e, JobEvent::Progress { .. }))
        .count();
    assert_eq!(progress, 500);
    let at = |pred: fn(&JobEvent) -> bool| events.iter().position(pred).unwrap();
    assert!(at(|e| matches!(e, JobEvent::Preview(_))) < at(JobEvent::is_terminal));
    assert!(events.last().unwrap().is_terminal());
    // Finished: no preview is kept for it.
    assert!(q.preview(id.as_str()).is_none());
}
