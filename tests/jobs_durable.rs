//! End to end: job records outlive the process. The real `limner serve` binary on the tiny
//! model, one slot, a finished job, a running one and two queued ones; then `kill -9` (no
//! graceful shutdown) and a restart on the same data directory: every job id still answers,
//! the finished one with its result (its portrait URL works, its event stream replays `done`),
//! the others failed with "server restarted". Waits are hang guards, never timing assertions.

#[path = "common/server.rs"]
mod server;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use server::{create_character, fetch_png, slow_body, Client, Server, PATIENCE};

fn job_status(c: &Client, job: &str) -> Value {
    c.get(&format!("/api/jobs/{job}")).expect(200).json
}

fn wait_state(c: &Client, job: &str, want: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = job_status(c, job);
        if s["state"] == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} never reached {want}: {s}"
        );
        thread::sleep(Duration::from_millis(25));
    }
}

fn submit_async(c: &Client, character: &str, body: &Value) -> String {
    c.post(
        &format!("/api/characters/{character}/portrait/generate?async=true"),
        body,
    )
    .expect(202)
    .str("job_id")
}

#[test]
fn after_kill_9_and_a_restart_every_job_answers_with_its_true_state() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--concurrency", "1", "--queue-depth", "8"];
    let server = Server::start_no_auth(dir.path(), &args);
    let c = server.client();
    let characters: Vec<String> = (0..4)
        .map(|i| create_character(&c, &format!("Durable {i}")))
        .collect();

    let finished = submit_async(
        &c,
        &characters[0],
        &json!({"regenerate": true, "width": 64, "height": 64, "steps": 2}),
    );
    let done = wait_state(&c, &finished, "done");
    let portrait_id = done["result"]["portrait_id"].as_str().unwrap().to_string();
    let running = submit_async(&c, &characters[1], &slow_body());
    wait_state(&c, &running, "running");
    let queued: Vec<String> = characters[2..]
        .iter()
        .map(|ch| submit_async(&c, ch, &slow_body()))
        .collect();
    for q in &queued {
        assert_eq!(job_status(&c, q)["state"], "queued");
    }

    server.kill_hard();
    let server = Server::start_no_auth(dir.path(), &args);
    let c = server.client();

    let done = job_status(&c, &finished);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["portrait_id"], json!(portrait_id), "{done}");
    assert_eq!(
        done["result"]["character_id"],
        json!(characters[0]),
        "{done}"
    );
    let url = done["result"]["portrait_url"]
        .as_str()
        .expect("a portrait URL");
    let (png, _) = fetch_png(&c, url);
    assert!(!png.is_empty());
    let replay: Vec<_> = c.events(&format!("/api/jobs/{finished}/events")).collect();
    assert_eq!(replay.len(), 1, "{replay:?}");
    assert_eq!(replay[0].name, "done");
    assert_eq!(replay[0].data["result"]["portrait_id"], json!(portrait_id));

    for job in std::iter::once(&running).chain(&queued) {
        let s = job_status(&c, job);
        assert_eq!(s["state"], "failed", "{job}: {s}");
        assert_eq!(s["error"]["kind"], "restarted", "{s}");
        assert!(
            s["error"]["message"]
                .as_str()
                .unwrap()
                .contains("server restarted"),
            "{s}"
        );
        let events: Vec<_> = c.events(&format!("/api/jobs/{job}/events")).collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].name, "failed");
        assert_eq!(events[0].data["error"]["kind"], "restarted");
    }
    // The queue works after the restart and numbers jobs after the recorded ones.
    let after = submit_async(
        &c,
        &characters[2],
        &json!({"regenerate": true, "width": 64, "height": 64, "steps": 2}),
    );
    let s = wait_state(&c, &after, "done");
    let last_before = queued
        .iter()
        .map(|q| job_status(&c, q)["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(s["seq"].as_u64().unwrap() > last_before, "{s}");
}

#[test]
fn a_second_server_that_cannot_bind_leaves_the_running_jobs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &["--concurrency", "1"]);
    let c = server.client();
    let character = create_character(&c, "Busy");
    let running = submit_async(&c, &character, &slow_body());
    wait_state(&c, &running, "running");
    // Same data directory, same port: refused at the bind, before it opens the job queue.
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_limner"))
        .args([
            "serve",
            "--no-auth",
            "--model",
            "tiny-fixture",
            "--port",
            &port,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind"), "{stderr}");
    let s = job_status(&c, &running);
    assert_eq!(s["state"], "running", "{s}");
    // The record too (the first server answers from memory while the job runs).
    let db = rusqlite::Connection::open(dir.path().join(limner::characters::DB_FILE_NAME)).unwrap();
    let (state, error): (String, Option<String>) = db
        .query_row(
            "SELECT state, error FROM jobs WHERE id = ?1",
            [&running],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "running", "{error:?}");
    assert_eq!(error, None);
}
