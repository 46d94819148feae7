//! End to end: the real `limner serve` binary on a free port with the real engine on the tiny
//! fixture model. The portrait-creator spec's curl scenario (and the regeneration guide's regenerate-image) surviving a restart,
//! the queue under 50 concurrent requests, cancellation (DELETE, a dropped connection, the
//! synchronous timeout), auth between two players and their DM, and the OpenAPI document.
//! Waits are bounded hang guards; nothing here asserts how long anything takes.

#[path = "common/server.rs"]
mod server;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use server::{
    create_character, create_token, fetch_png, history, limner_command, png_size, seed_character,
    slow_body, time_of, without_query, Reply, Server, PATIENCE,
};

#[test]
fn portrait_creator_curl_scenario_and_regeneration_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();

    // The portrait-creator spec's "campaign_1" is a placeholder: campaigns get their ids when created.
    let campaign_id = c
        .post("/api/campaigns", &json!({"name": "campaign_1"}))
        .expect(201)
        .str("id");
    let created = c
        .post("/api/characters", &seed_character(Some(&campaign_id)))
        .expect(201);
    let id = created.str("id");
    assert_eq!(created.json["character_id"], json!(id));
    assert_eq!(created.json["campaign_id"], json!(campaign_id));
    assert_eq!(created.json["facial_expression"], "Confident");
    assert_eq!(created.json["attire"], "plate armor");
    let before = c.get(&format!("/api/characters/{id}/portrait")).expect(200);
    assert_eq!(before.json["has_portrait"], false);

    // Generate (the portrait-creator spec's body).
    let generate = format!("/api/characters/{id}/portrait/generate");
    let gen = c
        .post(&generate, &json!({"character_id": id, "regenerate": false}))
        .expect(200);
    assert_eq!(gen.json["success"], true);
    assert_eq!(gen.json["character_id"], json!(id));
    assert_eq!(gen.json["generated"], true);
    let prompt = gen.str("prompt_used");
    for part in ["Test Character", "Human", "Fighter", "plate armor"] {
        assert!(prompt.contains(part), "{part:?} missing from {prompt:?}");
    }
    let first_url = gen.str("portrait_url");
    let first_id = gen.str("portrait_id");
    let (first_bytes, params) = fetch_png(&c, &first_url);
    assert_eq!(png_size(&first_bytes), (64, 96));
    let seed = gen.json["seed"].as_u64().expect("seed");
    assert!(params.contains(&format!("Seed: {seed}")), "{params}");

    let current = c.get(&format!("/api/characters/{id}/portrait")).expect(200);
    assert_eq!(current.json["has_portrait"], true);
    assert_eq!(current.json["portrait_path"], gen.json["portrait_path"]);

    // The portrait-creator spec's PATCH of visual metadata.
    let patched = c
        .patch(
            &format!("/api/characters/{id}"),
            &json!({"facial_expression": "Stern", "attire": "Updated armor description"}),
        )
        .expect(200);
    assert_eq!(patched.json["facial_expression"], "Stern");
    assert_eq!(patched.json["attire"], "Updated armor description");
    assert_eq!(patched.json["race"], "Human", "PATCH must be partial");

    // The regeneration guide's regenerate-image.
    let new_prompt = "same character but smiling, standing in a castle";
    let regen = c
        .post(
            &format!("/api/characters/{id}/regenerate-image"),
            &json!({"newPrompt": new_prompt, "denoisingStrength": 0.3}),
        )
        .expect(200);
    let r = &regen.json;
    assert_eq!(r["success"], true);
    assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(r["character"]["id"], json!(id));
    assert_eq!(r["character"]["name"], "Test Character");
    let avatar = r["character"]["avatar"]
        .as_str()
        .expect("avatar")
        .to_string();
    let previous = r["character"]["previousImage"]
        .as_str()
        .expect("previousImage")
        .to_string();
    assert_eq!(without_query(&previous), without_query(&first_url));
    assert_ne!(without_query(&avatar), without_query(&first_url));
    let g = &r["generationData"];
    assert_eq!(g["originalImageUrl"].as_str(), Some(previous.as_str()));
    assert_eq!(g["newPrompt"], new_prompt);
    assert_eq!(g["denoisingStrength"], 0.3);
    assert_eq!(g["method"], "img2img_consistency");
    assert!(g["artStyle"].as_str().is_some());
    assert!(g["generationTime"].as_str().is_some());
    let regen_id = g["portraitId"].as_str().expect("portraitId").to_string();
    let (second_bytes, params) = fetch_png(&c, &avatar);
    assert_eq!(png_size(&second_bytes), (64, 96));
    assert!(params.contains("Denoising strength: 0.3"), "{params}");
    assert_ne!(first_bytes, second_bytes);

    // History keeps both, newest first; the variation is current.
    let h = history(&c, &id);
    let ids: Vec<&str> = h.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, [regen_id.as_str(), first_id.as_str()]);
    let current = c.get(&format!("/api/characters/{id}/portrait")).expect(200);
    assert_eq!(current.json["portrait_id"], json!(regen_id));

    // regenerate: false returns the current portrait without painting.
    let again = c
        .post(&generate, &json!({"character_id": id, "regenerate": false}))
        .expect(200);
    assert_eq!(again.json["generated"], false);
    assert_eq!(again.json["portrait_id"], json!(regen_id));
    assert_eq!(history(&c, &id).len(), 2);
    let q = c.get("/health").expect(200).json["queue"].clone();
    assert_eq!(q["done"], 2, "exactly two generations ran: {q}");

    // SIGTERM: a clean exit.
    let status = server.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    // A new server on the same data directory has everything.
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();
    let ch = c.get(&format!("/api/characters/{id}")).expect(200);
    assert_eq!(ch.json["facial_expression"], "Stern");
    assert_eq!(ch.json["attire"], "Updated armor description");
    let h = history(&c, &id);
    let ids: Vec<&str> = h.iter().filter_map(|p| p["id"].as_str()).collect();
    assert_eq!(ids, [regen_id.as_str(), first_id.as_str()]);
    let fresh: Vec<String> = h
        .iter()
        .map(|p| {
            p["portrait_url"]
                .as_str()
                .expect("portrait_url")
                .to_string()
        })
        .collect();
    assert_eq!(fetch_png(&c, &fresh[0]).0, second_bytes);
    assert_eq!(fetch_png(&c, &fresh[1]).0, first_bytes);
    // The signing secret persists too, so URLs handed out before the restart still load.
    assert_eq!(fetch_png(&c, &first_url).0, first_bytes);
    let current = c.get(&format!("/api/characters/{id}/portrait")).expect(200);
    assert_eq!(current.json["portrait_id"], json!(regen_id));
    let roster = c
        .get(&format!("/api/campaigns/{campaign_id}/characters"))
        .expect(200);
    assert!(
        roster.json.as_array().is_some_and(|r| r
            .iter()
            .any(|e| e["id"] == json!(id) && e["portrait_url"].is_string())),
        "roster after restart: {}",
        roster.text
    );
}

#[test]
fn fifty_concurrent_requests_get_an_image_or_429_first_come_first_served() {
    const REQUESTS: usize = 50;
    const DEPTH: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(
        dir.path(),
        &["--queue-depth", &DEPTH.to_string(), "--concurrency", "1"],
    );
    let c = server.client();
    let ids: Vec<String> = (0..REQUESTS)
        .map(|i| create_character(&c, &format!("Load {i}")))
        .collect();

    // A long job holds the only slot while the burst arrives, so how many get in does not
    // depend on how fast the machine paints.
    let blocker = create_character(&c, "Blocker");
    let job = c
        .post(
            &format!("/api/characters/{blocker}/portrait/generate?async=true"),
            &slow_body(),
        )
        .expect(202)
        .str("job_id");
    c.wait_queue("the blocker to run", |q| q["running"] == 1);

    let barrier = Arc::new(Barrier::new(REQUESTS));
    let threads: Vec<_> = ids
        .iter()
        .cloned()
        .map(|id| {
            let c = c.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let r = c.post(
                    &format!("/api/characters/{id}/portrait/generate"),
                    &json!({"character_id": id, "regenerate": true}),
                );
                (id, r)
            })
        })
        .collect();
    // Every request is either waiting in the queue or refused before the slot frees up.
    let q = c.wait_queue("all requests to be queued or refused", |q| {
        q["queued"].as_u64().unwrap_or(0) + q["rejected"].as_u64().unwrap_or(0) == REQUESTS as u64
    });
    assert_eq!(q["queued"], DEPTH, "{q}");
    let cancelled = c.delete(&format!("/api/jobs/{job}")).expect(200);
    assert_eq!(cancelled.json["id"], json!(job));

    let replies: Vec<(String, Reply)> = threads
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect();
    let mut ok = vec![];
    let mut refused = 0;
    for (id, r) in &replies {
        match r.status {
            200 => {
                assert_eq!(r.json["success"], true, "{}", r.text);
                assert!(r.str("portrait_url").starts_with("/api/media/images/"));
                ok.push((id.clone(), r.str("job_id")));
            }
            429 => {
                assert_eq!(r.json["error_type"], "queue_full", "{}", r.text);
                assert!(r.json["error"].as_str().is_some());
                let after = r.retry_after.as_deref().expect("Retry-After on a 429");
                assert!(after.parse::<u64>().is_ok_and(|s| s >= 1), "{after}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(ok.len(), DEPTH);
    assert_eq!(refused, REQUESTS - DEPTH);

    let health = c.get("/health").expect(200);
    assert_eq!(health.json["status"], "ok");
    let q = &health.json["queue"];
    assert_eq!(q["done"], DEPTH, "{q}");
    assert_eq!(q["cancelled"], 1, "{q}");
    assert_eq!(q["rejected"], REQUESTS - DEPTH, "{q}");
    assert_eq!(
        (q["running"].as_u64(), q["queued"].as_u64()),
        (Some(0), Some(0))
    );

    // No job lost or run twice: one portrait per 200, none for the refused or the blocker.
    let mut portraits: HashMap<&str, usize> = HashMap::new();
    for id in ids.iter().chain([&blocker]) {
        portraits.insert(id, history(&c, id).len());
    }
    assert_eq!(portraits.values().sum::<usize>(), ok.len());
    for (id, _) in &ok {
        assert_eq!(portraits[id.as_str()], 1, "character {id}");
    }

    // First come, first served, one at a time: in admission order each job starts after the
    // previous one finished.
    let mut jobs: Vec<Value> = ok
        .iter()
        .map(|(_, job)| c.get(&format!("/api/jobs/{job}")).expect(200).json)
        .collect();
    jobs.sort_by_key(|j| j["seq"].as_u64().expect("seq"));
    for pair in jobs.windows(2) {
        assert_eq!(pair[0]["state"], "done");
        assert!(
            time_of(&pair[0], "started_at") < time_of(&pair[1], "started_at"),
            "seq {} started after seq {}",
            pair[0]["seq"],
            pair[1]["seq"]
        );
        assert!(time_of(&pair[0], "finished_at") <= time_of(&pair[1], "started_at"));
    }
}

#[test]
fn delete_cancels_a_running_job_within_a_step_and_frees_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();
    let id = create_character(&c, "Slow");
    let job = c
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            &slow_body(),
        )
        .expect(202)
        .str("job_id");
    let mut events = c.events(&format!("/api/jobs/{job}/events"));
    let first = events
        .by_ref()
        .find(|e| e.name == "progress" || e.data["type"] == "done")
        .expect("a progress event");
    assert_eq!(first.name, "progress", "{:?}", first.data);
    let total = first.data["total"].as_u64().expect("total");
    assert_eq!(total, 150);

    let cancelled = c.delete(&format!("/api/jobs/{job}")).expect(200);
    // The step the job had reached when the cancel landed.
    let at_cancel = cancelled.json["step"].as_u64().expect("step");
    let rest: Vec<_> = events.collect();
    let last = rest.last().expect("a terminal event");
    assert_eq!(last.name, "cancelled", "{rest:?}");
    assert_eq!(last.data["error"]["kind"], "cancelled");
    let later_steps = rest
        .iter()
        .filter(|e| e.name == "progress" && e.data["step"].as_u64() > Some(at_cancel))
        .count();
    assert!(
        later_steps <= 1,
        "{later_steps} steps ran after the cancel (at step {at_cancel})"
    );
    let status = c.get(&format!("/api/jobs/{job}")).expect(200);
    assert_eq!(status.json["state"], "cancelled");
    assert!(status.json["step"].as_u64() < Some(total));
    assert_eq!(c.delete(&format!("/api/jobs/{job}")).status, 409);
    assert!(
        history(&c, &id).is_empty(),
        "a cancelled job saved a portrait"
    );

    // The slot is free: the next job starts at once instead of queueing.
    let next = c
        .post(
            &format!("/api/characters/{id}/portrait/generate?async=true"),
            &json!({"regenerate": true}),
        )
        .expect(202)
        .str("job_id");
    let s = c.get(&format!("/api/jobs/{next}")).expect(200);
    assert_ne!(s.json["state"], "queued", "{}", s.text);
    let done = c
        .events(&format!("/api/jobs/{next}/events"))
        .last()
        .expect("events");
    assert_eq!(done.name, "done", "{:?}", done.data);
    assert_eq!(history(&c, &id).len(), 1);
}

#[test]
fn a_dropped_synchronous_connection_cancels_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();
    let id = create_character(&c, "Walks away");
    let before = c.wait_queue("an idle queue", |q| q["running"] == 0);

    let addr = server.base.trim_start_matches("http://").to_string();
    let mut socket = TcpStream::connect(&addr).expect("connect");
    let body = slow_body().to_string();
    write!(
        socket,
        "POST /api/characters/{id}/portrait/generate HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    socket.flush().expect("flush");
    c.wait_queue("the job to run", |q| q["running"] == 1);
    drop(socket);

    let after = c.wait_queue("the job to be cancelled", |q| {
        q["running"] == 0 && q["cancelled"] != before["cancelled"]
    });
    assert_eq!(
        after["cancelled"].as_u64(),
        before["cancelled"].as_u64().map(|n| n + 1)
    );
    assert_eq!(after["done"], before["done"]);
    assert!(
        history(&c, &id).is_empty(),
        "the abandoned job saved a portrait"
    );
    // And the slot serves the next caller.
    c.post(
        &format!("/api/characters/{id}/portrait/generate"),
        &json!({"regenerate": true}),
    )
    .expect(200);
}

#[test]
fn a_synchronous_request_past_the_timeout_gets_504_and_its_job_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &["--request-timeout", "1"]);
    let c = server.client();
    let id = create_character(&c, "Impatient");
    let r = c.post(
        &format!("/api/characters/{id}/portrait/generate"),
        &slow_body(),
    );
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json["error_type"], "timeout");
    assert!(r.str("error").contains("cancelled"), "{}", r.text);
    let q = c.wait_queue("the timed-out job to stop", |q| q["running"] == 0);
    assert_eq!(q["cancelled"], 1, "{q}");
    assert_eq!(q["done"], 0, "{q}");
    assert!(history(&c, &id).is_empty());
    let p = c.get(&format!("/api/characters/{id}/portrait")).expect(200);
    assert_eq!(p.json["has_portrait"], false);
}

#[test]
fn players_are_kept_apart_and_the_dm_manages_the_roster() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--host", "127.0.0.1"]);
    let admin = server
        .admin_token
        .clone()
        .expect("first start prints an admin token");
    let anon = server.client();
    for path in ["/api/characters", "/api/campaigns", "/api/models"] {
        let r = anon.get(path);
        assert_eq!(r.status, 401, "{path}: {}", r.text);
        assert_eq!(r.json["error_type"], "unauthorized");
        assert!(r.json["error"].is_string());
    }
    assert_eq!(
        server
            .client_with("not-a-token")
            .get("/api/characters")
            .status,
        401
    );

    // Tokens created while the server runs, on the same database.
    let a = server.client_with(&create_token(dir.path(), "alice"));
    let b = server.client_with(&create_token(dir.path(), "bob"));
    let id = create_character(&a, "Alice's hero");
    let gen = a
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            &json!({"regenerate": false}),
        )
        .expect(200);
    let signed = gen.str("portrait_url");
    let bare = without_query(&signed).to_string();

    // Bob cannot see or change Alice's character, nor its portrait.
    let char_path = format!("/api/characters/{id}");
    assert_eq!(b.get(&char_path).status, 404);
    let r = b.patch(&char_path, &json!({"attire": "stolen"}));
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json["error_type"], "not_found");
    assert_eq!(b.get(&format!("{char_path}/portrait")).status, 404);
    assert_eq!(b.get(&format!("{char_path}/portraits")).status, 404);
    let r = b.post(
        &format!("{char_path}/regenerate-image"),
        &json!({"newPrompt": "same character but mine"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let listed = b.get("/api/characters").expect(200);
    assert!(!listed.text.contains(&id));
    let (status, _, _) = b.get_bytes(&bare);
    assert!(
        status == 404 || status == 403,
        "bob got {status} for the media"
    );
    assert_eq!(anon.get_bytes(&bare).0, 401);
    let forged = format!("{bare}?expires=99999999999&sig={}", "0".repeat(64));
    assert_eq!(anon.get_bytes(&forged).0, 403);
    // Alice's signed URL works with no header at all (an <img src>), and matches the file.
    let (status, ct, via_signature) = anon.get_bytes(&signed);
    assert_eq!((status, ct.as_deref()), (200, Some("image/png")));
    let (status, _, via_token) = a.get_bytes(&bare);
    assert_eq!(status, 200);
    assert_eq!(via_signature, via_token);
    assert_eq!(a.get(&char_path).expect(200).json["owner_id"], "alice");

    // Bob runs a campaign; Alice's character joins it with the invite code Bob hands out
    // (joining without the DM's consent is refused).
    let camp = b
        .post("/api/campaigns", &json!({"name": "Bob's table"}))
        .expect(201);
    assert_eq!(camp.json["dm_id"], "bob");
    let cid = camp.str("id");
    a.post(
        &format!("/api/campaigns/{cid}/characters"),
        &json!({"character_id": id}),
    )
    .expect(404);
    let invite = b
        .post(&format!("/api/campaigns/{cid}/invites"), &json!({}))
        .expect(201);
    a.post(
        "/api/campaigns/join",
        &json!({"character_id": id, "code": invite.str("code")}),
    )
    .expect(201);
    let roster = b
        .get(&format!("/api/campaigns/{cid}/characters"))
        .expect(200);
    let entry = roster
        .json
        .as_array()
        .and_then(|r| r.iter().find(|e| e["id"] == json!(id)).cloned())
        .unwrap_or_else(|| panic!("the DM's roster lacks the character: {}", roster.text));
    assert!(entry["portrait_url"].is_string(), "{entry}");
    let state_path = format!("/api/campaigns/{cid}/characters/{id}");
    let r = b
        .patch(
            &state_path,
            &json!({"hit_points_current": 3, "status": "wounded"}),
        )
        .expect(200);
    assert_eq!(r.json["hit_points_current"], 3);
    assert_eq!(r.json["status"], "wounded");
    let r = a.patch(&state_path, &json!({"hit_points_current": 10}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json["error_type"], "forbidden");
    // The DM sees the character now but still may not edit its profile.
    assert_eq!(b.get(&char_path).status, 200);
    assert_eq!(
        b.patch(&char_path, &json!({"attire": "stolen"})).status,
        403
    );
    assert_eq!(a.get(&state_path).expect(200).json["hit_points_current"], 3);
    // The admin sees everything.
    server.client_with(&admin).get(&char_path).expect(200);
}

#[test]
fn a_signed_media_url_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--media-url-ttl", "1"]);
    let admin = server.client_with(server.admin_token.as_deref().expect("admin token"));
    let id = create_character(&admin, "Fleeting");
    let url = admin
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            &json!({"regenerate": false}),
        )
        .expect(200)
        .str("portrait_url");
    let expires: u64 = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("expires="))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no expires in {url}"));
    // Waits on the wall clock until the URL is past its expiry (a hang guard bounds it).
    let deadline = Instant::now() + PATIENCE;
    while chrono::Utc::now().timestamp() as u64 <= expires + 1 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(200));
    }
    let r = server.client().get(&url);
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json["error_type"], "forbidden");
    // The file is still there for someone allowed to see it.
    assert_eq!(admin.get_bytes(without_query(&url)).0, 200);
}

#[test]
fn a_public_bind_without_auth_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = limner_command()
        .args(["serve", "--host", "0.0.0.0", "--no-auth", "--port", "0"])
        .args(["--model", "tiny-fixture", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start limner serve");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("limner serve --host 0.0.0.0 --no-auth kept running");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(stderr.contains("--no-auth"), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it bound before refusing"
    );
}

#[test]
fn openapi_document_lists_the_seed_paths() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let r = server.client().get("/api/openapi.json").expect(200);
    assert!(r
        .content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("application/json")));
    assert!(r.json["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with('3')));
    let paths = r.json["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/characters", "post"),
        ("/api/characters/{id}", "patch"),
        ("/api/characters/{id}/portrait/generate", "post"),
        ("/api/characters/{id}/portrait", "get"),
        ("/api/characters/{id}/regenerate-image", "post"),
        ("/api/characters/{id}/portraits", "get"),
        ("/api/campaigns/{id}/characters", "get"),
        ("/api/campaigns/{id}/characters/{character_id}", "patch"),
        ("/api/jobs/{id}", "delete"),
        ("/api/jobs/{id}/events", "get"),
        ("/health", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn requests_over_the_memory_limit_are_refused_cleanly_in_every_api_shape() {
    // 600 MiB: the tiny model's 64x96 default fits easily; a 2048x2048 image does not.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &["--max-memory", "600M"]);
    let c = server.client();
    let id = c
        .post("/api/characters", &seed_character(None))
        .expect(201)
        .str("id");
    let generate = format!("/api/characters/{id}/portrait/generate");

    // Our API: 422 too_large, naming the size, the estimate and the limit.
    let refused = c
        .post(
            &generate,
            &json!({"character_id": id, "regenerate": true, "width": 2048, "height": 2048}),
        )
        .expect(422);
    assert_eq!(refused.json["error_type"], "too_large", "{}", refused.json);
    let message = refused.str("error");
    assert!(
        message.contains("2048x2048") && message.contains("GiB") && message.contains("limit"),
        "{message}"
    );

    // A hires pass counts at its final size: 512x512 x2 is a 1024x1024 second pass.
    let hires = c
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a knight", "width": 512, "height": 512, "steps": 2,
                    "enable_hr": true, "hr_scale": 2, "denoising_strength": 0.4}),
        )
        .expect(422);
    assert_eq!(hires.json["error"], "too_large", "{}", hires.json);
    assert!(hires.text.contains("1024x1024"), "{}", hires.text);

    // OpenAI's shape: a 400 invalid_request_error with code too_large.
    let openai = c
        .post(
            "/v1/images/generations",
            &json!({"prompt": "a knight", "size": "2048x2048"}),
        )
        .expect(400);
    assert_eq!(openai.json["error"]["code"], "too_large", "{}", openai.json);

    // The engine is untouched: the next, normal request is served.
    let ok = c
        .post(&generate, &json!({"character_id": id, "regenerate": true}))
        .expect(200);
    assert_eq!(ok.json["success"], true);
    let health = c.get("/health").expect(200);
    assert!(health.text.contains("ok"), "{}", health.text);
}
