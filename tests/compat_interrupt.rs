//! A1111's interrupt against the real `limner serve` and the real engine on the tiny model:
//! `/sdapi/v1/interrupt` during the first image makes that txt2img answer 200 with the image
//! decoded from its current latents (A1111 returns what it has), while our own cancel
//! (`DELETE /api/jobs/{id}`) still gives no result. Waits are hang guards, never timings.

#[path = "common/server.rs"]
mod server;

use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use server::{png_size, Client, Server, PATIENCE};

/// Many cheap steps: the interrupt lands long before the end.
fn long_txt2img() -> Value {
    json!({"prompt": "a dwarf", "steps": 150, "width": 128, "height": 128, "seed": 3,
           "sampler_name": "Euler"})
}

/// Polls `/sdapi/v1/progress` until the running job has done a few steps.
fn wait_sampling(c: &Client) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let p = c.get("/sdapi/v1/progress").expect(200).json;
        if p["state"]["sampling_step"].as_u64().unwrap_or(0) >= 2 {
            return p;
        }
        assert!(Instant::now() < deadline, "the job never started: {p}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn interrupt_during_the_first_image_returns_that_image() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let base = server.base.clone();
    let request =
        thread::spawn(move || Client::new(&base).post("/sdapi/v1/txt2img", &long_txt2img()));
    let c = server.client();
    let p = wait_sampling(&c);
    assert_eq!(p["state"]["sampling_steps"], 150, "{p}");
    c.post("/sdapi/v1/interrupt", &json!({})).expect(200);

    let reply = request.join().unwrap().expect(200);
    let images = reply.json["images"].as_array().expect("images");
    assert_eq!(
        images.len(),
        1,
        "the interrupted image comes back: {}",
        reply.text
    );
    let png = base64::engine::general_purpose::STANDARD
        .decode(images[0].as_str().unwrap())
        .unwrap();
    assert_eq!(png_size(&png), (128, 128));
    let info: Value = serde_json::from_str(reply.json["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["limner_interrupted"], true, "{info}");
    assert_eq!(info["all_seeds"], json!([3]));

    // The engine is free again and paints a full request normally.
    let ok = c
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a dwarf", "steps": 2, "width": 64, "height": 64, "seed": 3}),
        )
        .expect(200);
    assert_eq!(ok.json["images"].as_array().unwrap().len(), 1);
}

#[test]
fn cancel_is_not_interrupt_and_keeps_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let base = server.base.clone();
    let request =
        thread::spawn(move || Client::new(&base).post("/sdapi/v1/txt2img", &long_txt2img()));
    let c = server.client();
    let p = wait_sampling(&c);
    let job = p["current_task"]
        .as_str()
        .expect("current_task")
        .to_string();
    let r = c.delete(&format!("/api/jobs/{job}"));
    assert!(r.status < 300, "cancel: {} {}", r.status, r.text);
    let reply = request.join().unwrap();
    assert_ne!(
        reply.status, 200,
        "a cancelled job has no image: {}",
        reply.text
    );
    assert!(reply.json.get("images").is_none(), "{}", reply.text);
}
