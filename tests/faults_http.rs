//! Faults through the real `limner serve` binary: credentials never reach the log (even at
//! RUST_LOG=trace), malformed paths answer in the JSON error shape, and a full disk answers 507
//! `insufficient_storage`, reports itself in `/health` and can still be recovered by deleting
//! (the free-space reserve makes this testable anywhere; a real ENOSPC runs on a small tmpfs
//! where this machine lets the test mount one).

#[path = "common/server.rs"]
mod server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use server::{create_character, create_token, limner_command, Client, Server, PATIENCE};

/// `limner serve` with stdout and stderr in files (the whole log, not a tail), and extra
/// environment variables.
struct LoggedServer {
    child: Option<Child>,
    base: String,
    out: PathBuf,
    err: PathBuf,
}

impl LoggedServer {
    fn start(data_dir: &Path, logs: &Path, args: &[&str], env: &[(&str, &str)]) -> LoggedServer {
        let out = logs.join("stdout.log");
        let err = logs.join("stderr.log");
        let mut cmd = limner_command();
        cmd.arg("serve")
            .args(["--model", "tiny-fixture", "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap());
        let child = cmd.spawn().expect("start limner serve");
        let mut s = LoggedServer {
            child: Some(child),
            base: String::new(),
            out,
            err,
        };
        let deadline = Instant::now() + PATIENCE;
        while s.base.is_empty() {
            let text = fs::read_to_string(&s.out).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("limner listening on ")) {
                s.base = line.trim_start_matches("limner listening on ").to_string();
            } else if Instant::now() > deadline {
                panic!("no 'listening' line; stderr:\n{}", s.stderr());
            } else {
                thread::sleep(Duration::from_millis(50));
            }
        }
        let c = Client::new(&s.base);
        while c
            .try_request("GET", "/health", None)
            .map(|r| r.json["engine"]["state"] != "ready")
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "engine never ready");
            thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// SIGTERM and wait, so every line the server logged is in the files.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + PATIENCE;
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A request with arbitrary headers; any status is a reply.
fn raw(base: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = ureq::request(method, &format!("{base}{path}"));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    match req.call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn credentials_never_reach_the_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let player = create_token(dir.path(), "alice");
    let mut s = LoggedServer::start(dir.path(), logs.path(), &[], &[("RUST_LOG", "trace")]);
    // The first start prints the admin token and its sign-in link on stdout, on purpose, once.
    let admin = s
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("admin token (shown once, keep it): "))
        .map(|t| t.trim().to_string())
        .expect("admin token line");

    // The documented sign-in link, with the real admin token.
    assert_eq!(raw(&s.base, "GET", &format!("/?token={admin}"), &[]).0, 200);
    // A valid bearer token, plus credentials in the query under several names.
    let (status, _) = raw(
        &s.base,
        "GET",
        "/api/characters?limit=5&token=SECRET-QUERY-1&access_token=SECRET-QUERY-2",
        &[("Authorization", &format!("Bearer {player}"))],
    );
    assert_eq!(status, 200);
    // A refused bearer token and a cookie.
    let (status, _) = raw(
        &s.base,
        "GET",
        "/api/campaigns",
        &[
            ("Authorization", "Bearer SECRET2-HEADER"),
            ("Cookie", "session=SECRET3-COOKIE"),
        ],
    );
    assert_eq!(status, 401);
    let (status, _) = raw(
        &s.base,
        "GET",
        "/api/media/images/portraits/x/y.png?expires=1&sig=SECRET4-SIG",
        &[],
    );
    assert!(status >= 400);
    s.stop();

    let stderr = s.stderr();
    let stdout = s.stdout();
    // The requests were logged (their paths), so the check below is not vacuous.
    for path in ["/api/characters", "/api/campaigns", "/api/media/images/"] {
        assert!(stderr.contains(path), "{path} not logged:\n{stderr}");
    }
    assert!(stderr.contains("token=[redacted]"), "{stderr}");
    for secret in [
        player.as_str(),
        "SECRET-QUERY-1",
        "SECRET-QUERY-2",
        "SECRET2-HEADER",
        "SECRET3-COOKIE",
        "SECRET4-SIG",
    ] {
        assert!(!stderr.contains(secret), "{secret} in the log:\n{stderr}");
        assert!(!stdout.contains(secret), "{secret} on stdout:\n{stdout}");
    }
    assert!(
        !stderr.contains(&admin),
        "admin token in the log:\n{stderr}"
    );
    // stdout: only the two lines printed on purpose at the first start.
    assert_eq!(stdout.matches(admin.as_str()).count(), 2, "{stdout}");
}

/// `{error, error_type, field}` with the given status, type and field.
fn assert_json_error(
    (status, body): (u16, String),
    want: u16,
    error_type: &str,
    field: Option<&str>,
    what: &str,
) {
    assert_eq!(status, want, "{what}: {body}");
    let v: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
    assert_eq!(v["error_type"], error_type, "{what}: {body}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
    assert_eq!(v["field"].as_str(), field, "{what}: {body}");
}

#[test]
fn malformed_paths_answer_400_in_the_json_error_shape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_no_auth(dir.path(), &[]);
    let c = server.client();
    let id = create_character(&c, "Path Tester");
    let b = &server.base;
    // The media key: a NUL byte and an overlong-UTF-8 dot are both the caller's error.
    for key in [
        "portraits/x/a%00b.png",
        &format!("portraits/{id}/%00"),
        "%c0%ae%c0%ae/%c0%ae%c0%ae/secret.txt",
        "portraits/x/%ff.png",
    ] {
        let path = format!("/api/media/images/{key}");
        assert_json_error(
            raw(b, "GET", &path, &[]),
            400,
            "bad_request",
            Some("key"),
            &path,
        );
    }
    // A key that is well-formed but unsafe is refused the same way.
    let path = "/api/media/images/portraits/..%2f..%2fsecret.txt";
    let (status, body) = raw(b, "GET", path, &[]);
    assert!(status == 400 || status == 404, "{path}: {status} {body}");
    assert!(
        serde_json::from_str::<Value>(&body).is_ok(),
        "{path}: {body}"
    );

    // Every other route with a path parameter, with bad encoding in each segment; the field
    // names the route's parameter.
    for (method, path, field) in [
        ("GET", "/api/characters/%c0%ae".to_string(), "id"),
        ("PATCH", "/api/characters/%c0%ae".to_string(), "id"),
        ("DELETE", "/api/characters/%c0%ae".to_string(), "id"),
        ("GET", "/api/characters/%00".to_string(), "id"),
        ("GET", "/api/characters/%c0%ae/portrait".to_string(), "id"),
        ("GET", "/api/characters/%c0%ae/portraits".to_string(), "id"),
        (
            "POST",
            format!("/api/characters/{id}/portraits/%c0%ae/current"),
            "portrait_id",
        ),
        (
            "POST",
            format!("/api/characters/{id}/portraits/%01/current"),
            "portrait_id",
        ),
        (
            "POST",
            "/api/characters/%c0%ae/portrait/generate".to_string(),
            "id",
        ),
        (
            "POST",
            "/api/characters/%c0%ae/regenerate-image".to_string(),
            "id",
        ),
        ("GET", "/api/campaigns/%c0%ae".to_string(), "id"),
        ("DELETE", "/api/campaigns/%c0%ae".to_string(), "id"),
        ("GET", "/api/campaigns/%c0%ae/characters".to_string(), "id"),
        (
            "GET",
            "/api/campaigns/c/characters/%c0%ae".to_string(),
            "character_id",
        ),
        (
            "DELETE",
            "/api/campaigns/c/characters/%00".to_string(),
            "character_id",
        ),
        ("GET", "/api/jobs/%c0%ae".to_string(), "id"),
        ("GET", "/api/jobs/%00/events".to_string(), "id"),
        ("POST", "/api/pregenerated/%c0%ae/create".to_string(), "id"),
        ("GET", "/static/%c0%ae%c0%ae/x.js".to_string(), "path"),
    ] {
        let reply = raw(b, method, &path, &[("Content-Type", "application/json")]);
        assert_json_error(
            reply,
            400,
            "bad_request",
            Some(field),
            &format!("{method} {path}"),
        );
    }
    // A method a path does not have: JSON too.
    assert_json_error(
        raw(b, "PUT", "/api/characters", &[]),
        405,
        "method_not_allowed",
        None,
        "PUT /api/characters",
    );
    // The character is untouched by all of this.
    c.get(&format!("/api/characters/{id}")).expect(200);
}

/// Reply body as JSON, with the status checked.
fn expect_507(r: server::Reply, what: &str) -> Value {
    assert_eq!(r.status, 507, "{what}: {}", r.text);
    assert_eq!(
        r.json["error_type"], "insufficient_storage",
        "{what}: {}",
        r.text
    );
    let msg = r.json["error"].as_str().unwrap_or_default();
    assert!(msg.contains("disk is full"), "{what}: {}", r.text);
    r.json
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn under_the_free_space_floor_writes_answer_507_and_deletes_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let (keep, gone, campaign) = {
        let s = Server::start_no_auth(dir.path(), &[]);
        let c = s.client();
        let keep = create_character(&c, "Keeper");
        let gone = create_character(&c, "Goner");
        c.post(
            &format!("/api/characters/{gone}/portrait/generate"),
            &json!({"steps": 2}),
        )
        .expect(200);
        let campaign = c
            .post("/api/campaigns", &json!({"name": "Doomed"}))
            .expect(201)
            .str("id");
        let health = c.get("/health").expect(200);
        assert_eq!(health.json["status"], "ok", "{}", health.text);
        assert_eq!(health.json["disk"]["state"], "ok", "{}", health.text);
        assert!(health.json["disk"]["free_bytes"].as_u64().unwrap() > 0);
        s.stop();
        (keep, gone, campaign)
    };
    let portrait_files = files_under(&dir.path().join("media/portraits").join(&gone));
    assert_eq!(
        portrait_files.len(),
        2,
        "image + thumbnail: {portrait_files:?}"
    );

    // A floor above any real free space.
    let s = Server::start_no_auth(dir.path(), &["--min-free-space", "1000T"]);
    let c = s.client();
    let refused = [
        (
            "POST",
            "/api/characters".to_string(),
            json!({"name": "New", "race": "Elf"}),
        ),
        (
            "PATCH",
            format!("/api/characters/{keep}"),
            json!({"attire": "rags"}),
        ),
        (
            "POST",
            "/api/campaigns".to_string(),
            json!({"name": "Another"}),
        ),
        (
            "POST",
            format!("/api/campaigns/{campaign}/characters"),
            json!({"character_id": keep}),
        ),
        (
            "POST",
            format!("/api/characters/{keep}/portrait/generate"),
            json!({}),
        ),
        (
            "POST",
            format!("/api/characters/{gone}/regenerate-image"),
            json!({"newPrompt": "x"}),
        ),
    ];
    for (method, path, body) in &refused {
        let v = expect_507(
            c.request(method, path, Some(body)),
            &format!("{method} {path}"),
        );
        assert!(
            v["error"].as_str().unwrap().contains("min_free_space"),
            "{v}"
        );
    }
    // OpenAI's url format stores files: refused in OpenAI's own error shape.
    let r = c.post(
        "/v1/images/generations",
        &json!({"prompt": "a bard", "response_format": "url", "size": "64x64"}),
    );
    assert_eq!(r.status, 507, "{}", r.text);
    assert_eq!(
        r.json["error"]["code"], "insufficient_storage",
        "{}",
        r.text
    );
    assert_eq!(r.json["error"]["type"], "server_error", "{}", r.text);
    // Nothing was written: the character is unchanged, no campaign, no extra character.
    let k = c.get(&format!("/api/characters/{keep}")).expect(200);
    assert_eq!(k.json["attire"], "plate armor");
    assert_eq!(
        c.get("/api/characters")
            .expect(200)
            .json
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        c.get("/api/campaigns")
            .expect(200)
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // /health: still 200 (reads and deletes work), but degraded, with the free space.
    let h = c.get("/health").expect(200);
    assert_eq!(h.json["status"], "degraded", "{}", h.text);
    assert_eq!(h.json["disk"]["state"], "low", "{}", h.text);
    assert_eq!(h.json["disk"]["writes_accepted"], false, "{}", h.text);
    assert!(
        h.json["disk"]["free_bytes"].as_u64().is_some(),
        "{}",
        h.text
    );
    assert_eq!(
        h.json["disk"]["min_free_bytes"],
        1000u64 << 40,
        "{}",
        h.text
    );
    for field in ["version", "engine", "queue", "database", "auth"] {
        assert!(!h.json[field].is_null(), "{field} missing: {}", h.text);
    }

    // Deletes free space: the character, its portrait files and the campaign go.
    c.delete(&format!("/api/characters/{gone}")).expect(204);
    c.get(&format!("/api/characters/{gone}")).expect(404);
    for f in &portrait_files {
        assert!(!f.exists(), "{} was not deleted", f.display());
    }
    c.delete(&format!("/api/campaigns/{campaign}")).expect(204);
    assert_eq!(
        c.get("/api/campaigns")
            .expect(200)
            .json
            .as_array()
            .unwrap()
            .len(),
        0
    );
    s.stop();

    // Without the floor, writes work again.
    let s = Server::start_no_auth(dir.path(), &[]);
    let c = s.client();
    create_character(&c, "Back");
    assert_eq!(c.get("/health").expect(200).json["status"], "ok");
}

/// A small tmpfs, mounted for the test's life and unmounted after; None where this machine
/// does not let the test mount one (not root, no CAP_SYS_ADMIN, a container).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "limner-test"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Fills the file system holding `dir` with one file until the next write fails.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler.bin");
    let mut f = fs::File::create(&path).unwrap();
    let block = vec![7u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    // Byte by byte into the last partial block.
    while f.write_all(&[7u8; 512]).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_real_full_disk_answers_507_and_is_recovered_by_deleting() {
    let Some(fs_) = Tmpfs::mount("24m") else {
        eprintln!(
            "NOTICE: cannot mount a tmpfs here (needs root); the real-ENOSPC test did not run. \
             The 507 mapping of real ENOSPC / SQLITE_FULL errors is also unit-tested \
             (image_store, characters::error, api::error)."
        );
        return;
    };
    let data = fs_.path().join("data");
    let s = Server::start_no_auth(&data, &["--min-free-space", "0"]);
    let c = s.client();
    let victim = create_character(&c, "Victim");
    let generate = format!("/api/characters/{victim}/portrait/generate");
    c.post(&generate, &json!({"steps": 2})).expect(200);
    let reserve = data.join(".limner-reserve");
    assert!(reserve.is_file(), "the reserve file exists");

    let filler = fill(fs_.path());
    // A new portrait needs new files: ENOSPC from the image store.
    let before = files_under(&data.join("media"));
    expect_507(
        c.post(&generate, &json!({"steps": 2, "regenerate": true})),
        "generate on a full disk",
    );
    // Nothing half-written: no new file (nor temp file), the old portrait is still current.
    assert_eq!(files_under(&data.join("media")), before);
    assert!(!reserve.exists(), "the reserve was released for deletes");
    let h = c.get("/health").expect(200);
    assert_eq!(h.json["status"], "degraded", "{}", h.text);
    assert_eq!(h.json["disk"]["state"], "full", "{}", h.text);
    assert!(h.json["disk"]["last_full_at"].is_string(), "{}", h.text);
    // Writes are refused while the disk is full, reads work.
    expect_507(
        c.post("/api/characters", &json!({"name": "More", "race": "Dwarf"})),
        "create on a full disk",
    );
    assert_eq!(
        c.get("/api/characters")
            .expect(200)
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The way out: delete. The database delete commits (the reserve made room), then the files go.
    c.delete(&format!("/api/characters/{victim}")).expect(204);
    c.get(&format!("/api/characters/{victim}")).expect(404);
    assert!(files_under(&data.join("media/portraits")).is_empty());

    // Space comes back (the operator removes the filler): writes work again, the reserve too.
    fs::remove_file(&filler).unwrap();
    let h = c.get("/health").expect(200);
    assert_eq!(h.json["status"], "ok", "{}", h.text);
    assert_eq!(h.json["disk"]["state"], "ok", "{}", h.text);
    assert!(reserve.is_file(), "the reserve is re-created");
    create_character(&c, "After");

    // A full database: fill again and create until SQLite itself reports SQLITE_FULL (the
    // middleware has not seen a full disk yet, so the request reaches the store).
    let filler = fill(fs_.path());
    let mut saw_507 = false;
    for i in 0..400 {
        let mut body = server::seed_character(None);
        body["name"] = json!(format!("Filler {i}"));
        body["description"] = json!("x".repeat(1500));
        let r = c.post("/api/characters", &body);
        if r.status == 507 {
            expect_507(r, "create until the database is full");
            saw_507 = true;
            break;
        }
        assert_eq!(r.status, 201, "{}", r.text);
    }
    assert!(saw_507, "the database never reported a full disk");
    let listed = c.get("/api/characters").expect(200).json;
    assert!(listed.as_array().is_some_and(|l| !l.is_empty()));
    fs::remove_file(&filler).unwrap();
    s.stop();
}
