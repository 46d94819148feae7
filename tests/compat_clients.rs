//! Real clients from PyPI against the real `limner serve` binary with the tiny fixture model:
//! `webuiapi` (AUTOMATIC1111's API) and `openai` (OpenAI's SDK), each script in
//! `tests/compat_clients/`. CI installs them (`tests/compat_clients/requirements.txt`); when
//! python3 or a package is missing these tests FAIL with the install command, never skip.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const INSTALL: &str = "python3 -m pip install -r tests/compat_clients/requirements.txt";
/// The README's test command installs the clients (and everything else the tests need).
const SCRIPT: &str = "./test.sh, which installs everything the tests need";

/// Kills the server when the test ends, however it ends.
struct Server {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn require_python_packages() {
    let out = Command::new("python3")
        .args(["-c", "import webuiapi, openai, PIL, requests"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is required for the compat client tests ({e}); install python3 and run: {INSTALL} (or {SCRIPT})"));
    assert!(
        out.status.success(),
        "the compat client tests need webuiapi and openai from PyPI: run `{INSTALL}` (or {SCRIPT})\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `limner serve --model tiny-fixture --no-auth --port 0`, waiting for its "listening" line and
/// for the engine to be ready.
fn start_server() -> Server {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_limner"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "serve",
            "--model",
            "tiny-fixture",
            "--no-auth",
            "--port",
            "0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start limner serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut base = None;
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        if let Some(addr) = line.strip_prefix("limner listening on ") {
            base = Some(addr.trim().to_string());
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let server = Server {
        child,
        base: base.expect("limner serve exited before listening"),
        _data: data,
    };
    let health = format!("{}/health", server.base);
    for _ in 0..600 {
        if let Ok(resp) = ureq::get(&health).call() {
            let v: serde_json::Value = resp.into_json().expect("health JSON");
            match v["engine"]["state"].as_str() {
                Some("ready") => return server,
                Some("failed") => panic!("the engine failed to load: {v}"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the engine did not become ready");
}

fn run_script(script: &str) {
    require_python_packages();
    let server = start_server();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat_clients")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .arg(&server.base)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[test]
fn webuiapi_client_works_unchanged() {
    run_script("a1111_client.py");
}

#[test]
fn openai_sdk_works_unchanged() {
    run_script("openai_client.py");
}
