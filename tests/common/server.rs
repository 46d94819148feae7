//! Starts the real `limner serve` binary for end-to-end tests: on a free port, on a temporary data
//! directory, with the tiny fixture model; plus a small blocking HTTP client (ureq) and a
//! Server-Sent Events reader. The child is killed when the handle drops, so a failing test never
//! leaves a server behind.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Hang guard for anything the server should do "soon"; never a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The repository root: `weights.toml` and `prompts/` are found relative to it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `limner` with a clean environment for our settings (no stray LIMNER_* from the shell).
pub fn limner_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_limner"));
    cmd.current_dir(repo_root());
    for (key, _) in std::env::vars() {
        if key.starts_with("LIMNER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A running `limner serve`.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub data_dir: PathBuf,
    /// The admin token printed on the first start with auth on an empty database.
    pub admin_token: Option<String>,
    stdout: Receiver<String>,
    /// The last lines of the server's log, printed when a test fails.
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

const LOG_TAIL_LINES: usize = 200;

impl Server {
    /// `limner serve --model tiny-fixture --port 0 --data-dir DIR` plus `args`; waits for the
    /// "listening" line (and the admin token line when auth is on and the database was empty)
    /// and for the engine to be ready.
    pub fn start(data_dir: &Path, args: &[&str]) -> Server {
        Self::start_model(data_dir, "tiny-fixture", args)
    }

    /// [`Self::start`] with another weights.toml model (e.g. "tiny-sdxl").
    pub fn start_model(data_dir: &Path, model: &str, args: &[&str]) -> Server {
        let mut server = Self::spawn(data_dir, model, args);
        let first = server
            .next_line(PATIENCE)
            .unwrap_or_else(|| server.fail("the server printed no 'listening' line"));
        let Some(addr) = first.strip_prefix("limner listening on ") else {
            server.fail(&format!("unexpected first line: {first:?}"));
        };
        server.base = addr.trim().to_string();
        if !args.contains(&"--no-auth") {
            // Printed right after the listening line, only when the database had no token (a
            // restart with auth on waits this long for nothing).
            if let Some(line) = server.next_line(Duration::from_secs(5)) {
                if let Some(t) = line.strip_prefix("admin token (shown once, keep it): ") {
                    server.admin_token = Some(t.trim().to_string());
                }
            }
        }
        server.wait_ready();
        server
    }

    /// [`Self::start`] with `--no-auth` (loopback only).
    pub fn start_no_auth(data_dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["--no-auth"];
        all.extend_from_slice(args);
        Self::start(data_dir, &all)
    }

    fn spawn(data_dir: &Path, model: &str, args: &[&str]) -> Server {
        let mut cmd = limner_command();
        cmd.arg("serve")
            .args(["--model", model, "--port", "0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start limner serve");
        let log_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = channel();
        let out = child.stdout.take().expect("piped stdout");
        let tail = log_tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                push_tail(&tail, format!("[stdout] {line}"));
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the child never blocks.
                    continue;
                }
            }
        });
        let err = child.stderr.take().expect("piped stderr");
        let tail = log_tail.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                push_tail(&tail, line);
            }
        });
        Server {
            child: Some(child),
            base: String::new(),
            data_dir: data_dir.to_path_buf(),
            admin_token: None,
            stdout: rx,
            log_tail,
        }
    }

    fn next_line(&self, wait: Duration) -> Option<String> {
        match self.stdout.recv_timeout(wait) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!("{why}\n--- server log ---\n{}", self.log());
    }

    /// Polls `/health` until the engine reports `ready` (it loads in the background).
    fn wait_ready(&mut self) {
        let client = Client::new(&self.base);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = client.try_request("GET", "/health", None) {
                match r.json["engine"]["state"].as_str() {
                    Some("ready") => return,
                    Some("failed") => self.fail(&format!("engine failed: {}", r.json)),
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                self.fail("the engine did not become ready");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client without credentials.
    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// A client sending `Authorization: Bearer TOKEN`.
    pub fn client_with(&self, token: &str) -> Client {
        Client::new(&self.base).with_token(token)
    }

    /// Everything the server logged so far (the last lines).
    pub fn log(&self) -> String {
        let tail = self.log_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits (up to [`PATIENCE`]) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server still running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit after SIGTERM\n--- server log ---\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: no graceful shutdown, no chance to write anything more.
    pub fn kill_hard(mut self) {
        let mut child = self.child.take().expect("server still running");
        let status = Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .expect("run kill -KILL");
        assert!(status.success(), "kill -KILL failed");
        let _ = child.wait();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- server log ({}) ---\n{}", self.base, self.log());
        }
    }
}

fn push_tail(tail: &Mutex<VecDeque<String>>, line: String) {
    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
    if t.len() == LOG_TAIL_LINES {
        t.pop_front();
    }
    t.push_back(line);
}

/// A reply: status, the interesting headers and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
}

impl Reply {
    fn read(resp: ureq::Response) -> Reply {
        let status = resp.status();
        let retry_after = resp.header("retry-after").map(str::to_string);
        let content_type = resp.header("content-type").map(str::to_string);
        let text = resp.into_string().unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            retry_after,
            content_type,
            text,
        }
    }

    /// The body's string field `key`, or a panic naming it and the whole reply.
    pub fn str(&self, key: &str) -> String {
        self.json[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {} {}", self.status, self.text))
            .to_string()
    }

    /// Panics with the reply unless the status is `want`.
    pub fn expect(self, want: u16) -> Reply {
        assert_eq!(self.status, want, "unexpected reply: {}", self.text);
        self
    }
}

/// A blocking HTTP client for one server, optionally with a bearer token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client {
            base: base.to_string(),
            token: None,
            // Generous: a hang guard, not a timing assertion.
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_string());
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn build(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &self.url(path));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// Any status is a reply; only a transport failure is an error (its message).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        let req = self.build(method, path);
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => Ok(Reply::read(resp)),
            Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Reply {
        self.request("PATCH", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }

    /// GET returning the raw bytes (media), with the status and content type.
    pub fn get_bytes(&self, path: &str) -> (u16, Option<String>, Vec<u8>) {
        let resp = match self.build("GET", path).call() {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => panic!("GET {path}: {t}"),
        };
        let status = resp.status();
        let ct = resp.header("content-type").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_reader()
            .read_to_end(&mut bytes)
            .unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"));
        (status, ct, bytes)
    }

    /// Opens a Server-Sent Events stream.
    pub fn events(&self, path: &str) -> Events {
        let resp = match self.build("GET", path).call() {
            Ok(r) => r,
            Err(e) => panic!("GET {path}: {e}"),
        };
        assert!(
            resp.content_type().starts_with("text/event-stream"),
            "GET {path} is not an event stream: {}",
            resp.content_type()
        );
        Events {
            lines: BufReader::new(resp.into_reader()),
        }
    }

    /// Polls `/health` until `pred` holds on its `queue` object; returns that object.
    pub fn wait_queue(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let h = self.get("/health");
            if pred(&h.json["queue"]) {
                return h.json["queue"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; last /health: {}",
                h.text
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

/// One Server-Sent Event: its `event:` name and its `data:` parsed as JSON.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: String,
    pub data: Value,
}

/// Reads events off an SSE body, line by line.
pub struct Events {
    lines: BufReader<Box<dyn Read + Send + Sync + 'static>>,
}

impl Iterator for Events {
    type Item = SseEvent;

    /// The next event, or `None` when the stream ends.
    fn next(&mut self) -> Option<SseEvent> {
        let mut name = String::new();
        let mut data = String::new();
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if name.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment's terminator
                }
                return Some(SseEvent {
                    name: if name.is_empty() {
                        "message".into()
                    } else {
                        name
                    },
                    data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
                });
            }
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // Comments (":") and unknown fields are ignored, as the SSE spec says.
        }
    }
}

// Scenario helpers shared by the end-to-end tests.

/// A body that makes the tiny model slow enough to cancel mid-way: many cheap steps, so a
/// cancellation that waits for "the end" would be obvious while one step stays short.
pub fn slow_body() -> Value {
    json!({"regenerate": true, "width": 128, "height": 128, "steps": 150, "seed": 7})
}

pub fn seed_character(campaign_id: Option<&str>) -> Value {
    let mut c = json!({
        "name": "Test Character",
        "race": "Human",
        "gender": "Male",
        "character_class": "Fighter",
        "age_category": "Adult",
        "facial_expression": "Confident",
        "attire": "plate armor",
    });
    if let Some(id) = campaign_id {
        c["campaign_id"] = json!(id);
    }
    c
}

pub fn create_character(c: &Client, name: &str) -> String {
    let mut body = seed_character(None);
    body["name"] = json!(name);
    c.post("/api/characters", &body).expect(201).str("id")
}

/// (width, height) from a PNG's header.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .expect("a decodable PNG");
    (reader.info().width, reader.info().height)
}

/// Loads a media URL from a reply and checks it is a PNG with its `parameters` text chunk.
pub fn fetch_png(c: &Client, url: &str) -> (Vec<u8>, String) {
    let (status, ct, bytes) = c.get_bytes(url);
    assert_eq!(status, 200, "GET {url}");
    assert_eq!(ct.as_deref(), Some("image/png"), "GET {url}");
    let params = limner::engine::read_png_parameters(&bytes)
        .unwrap_or_else(|| panic!("{url} has no parameters text chunk"));
    (bytes, params)
}

pub fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

pub fn history(c: &Client, id: &str) -> Vec<Value> {
    match c
        .get(&format!("/api/characters/{id}/portraits"))
        .expect(200)
        .json
    {
        Value::Array(list) => list,
        other => panic!("history is not a list: {other}"),
    }
}

pub fn time_of(v: &Value, key: &str) -> DateTime<Utc> {
    let s = v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{key} = {s}: {e}"))
        .with_timezone(&Utc)
}

pub fn create_token(dir: &Path, name: &str) -> String {
    let out = limner_command()
        .args([
            "token",
            "create",
            "--name",
            name,
            "--role",
            "player",
            "--data-dir",
        ])
        .arg(dir)
        .output()
        .expect("run limner token create");
    assert!(
        out.status.success(),
        "token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!token.is_empty() && !token.contains(char::is_whitespace));
    token
}
