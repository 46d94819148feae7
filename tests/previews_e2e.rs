//! Live previews end to end: the real `limner serve` binary with the real engine on the tiny
//! fixture model. A portrait job's SSE stream carries `preview` events (at the `--preview-every`
//! cadence, decodable images of the size they state) before `done`, and `/sdapi/v1/progress`
//! returns a `current_image` while an A1111 txt2img runs. The jobs are made long with many
//! cheap steps so a preview can be seen; the waits are hang guards, nothing here is timed.

#[path = "common/server.rs"]
mod server;

use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use server::{create_character, slow_body, Server, PATIENCE};

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

#[test]
fn a_portrait_jobs_event_stream_carries_previews_before_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &["--preview-every", "3"]);
    let c = server.client();
    let id = create_character(&c, "Watched");
    let mut body = slow_body();
    body["steps"] = json!(30);
    let job = c
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            &body,
        )
        .expect(202)
        .str("job_id");
    let events: Vec<_> = c.events(&format!("/api/jobs/{job}/events")).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let previews: Vec<_> = events.iter().filter(|e| e.name == "preview").collect();
    assert!(
        !previews.is_empty(),
        "no preview events: {names:?}\n{}",
        server.log()
    );
    for p in &previews {
        let d = &p.data;
        assert_eq!(d["type"], "preview");
        assert_eq!(d["total"], 30);
        let step = d["step"].as_u64().unwrap();
        assert!(
            step % 3 == 0 && step <= 30,
            "the --preview-every 3 cadence: {step}"
        );
        let url = d["image"].as_str().expect("image");
        let (head, b64) = url.split_once(',').expect("a data: URL");
        let bytes = unb64(b64);
        if head == "data:image/png;base64" {
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        } else {
            assert_eq!(head, "data:image/jpeg;base64");
        }
        let img = limner::engine::decode_image(&bytes).expect("the preview decodes");
        let (w, h) = img.dimensions();
        assert_eq!(
            (d["width"].as_u64(), d["height"].as_u64()),
            (Some(w.into()), Some(h.into()))
        );
        // A 128x128 portrait: a square preview, at most 256 px.
        assert!(w == h && w <= 256 && w > 0, "{w}x{h}");
    }
    let steps: Vec<u64> = previews
        .iter()
        .map(|p| p.data["step"].as_u64().unwrap())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
}

#[test]
fn sdapi_progress_returns_a_current_image_during_a_txt2img_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();
    let runner = server.client();
    // Four batches of 150 cheap steps: long enough to look at while it paints.
    let job = thread::spawn(move || {
        runner.post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a lighthouse", "steps": 150, "width": 128, "height": 128,
                    "n_iter": 4, "seed": 3}),
        )
    });
    let deadline = Instant::now() + PATIENCE;
    let mut seen = None;
    let mut sampled_steps = false;
    while seen.is_none() && !job.is_finished() && Instant::now() < deadline {
        let p = c.get("/sdapi/v1/progress").expect(200).json;
        sampled_steps |= p["state"]["sampling_step"].as_u64() > Some(0);
        if let Some(img) = p["current_image"].as_str().filter(|s| !s.is_empty()) {
            seen = Some(img.to_string());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let img = seen.unwrap_or_else(|| {
        panic!(
            "no current_image while the job ran (steps seen: {sampled_steps})\n{}",
            server.log()
        )
    });
    // A1111's shape: bare base64 of a PNG.
    let png = unb64(&img);
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (w, h) = limner::engine::decode_image(&png).unwrap().dimensions();
    assert!(w == h && w > 0, "{w}x{h}");
    // No need to wait for all four batches.
    c.post("/sdapi/v1/interrupt", &json!({})).expect(200);
    let reply = job.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text);
}
