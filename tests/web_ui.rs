//! The web UI in a real browser: starts the real `limner serve` on the tiny fixture model (one
//! server with `--no-auth`, one with authentication) and runs `tests/browser/ui.mjs`, which drives
//! Debian's headless chromium through playwright-core: creator, generation with live progress,
//! variation, history, character sheet, DM roster, sign-in and the error paths.
//!
//! Needs `/usr/bin/chromium` (or `CHROMIUM_PATH`), `node`, and `npm ci` run in `tests/browser`.
//! Missing any of them is a failure, not a skip. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/web_ui-screenshots` (or `LIMNER_SCREENSHOT_DIR`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `limner serve`; killed when dropped.
struct Server {
    child: Child,
    base: String,
    /// The `?token=` link printed on the first start of a server with authentication.
    sign_in: Option<String>,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the server and waits for the lines it prints once bound.
fn start_server(no_auth: bool) -> Server {
    let data = tempfile::tempdir().expect("temp data dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_limner"));
    // weights.toml and prompts/ are found relative to the repository root.
    cmd.current_dir(repo())
        .args([
            "serve",
            "--model",
            "tiny-fixture",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if no_auth {
        cmd.arg("--no-auth");
    }
    let mut child = cmd.spawn().expect("start `limner serve`");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Keeps draining stdout for the server's whole life so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut base = None;
    let mut sign_in = None;
    while base.is_none() || (!no_auth && sign_in.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("`limner serve` printed no address within 120 s (or exited)");
            }
        };
        println!("[serve] {line}");
        if let Some(rest) = line.strip_prefix("limner listening on ") {
            base = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("sign in: ") {
            sign_in = Some(rest.trim().to_string());
        }
    }
    Server {
        child,
        base: base.unwrap_or_default(),
        sign_in,
        _data: data,
    }
}

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Debian's chromium is missing ({}): install it with `apt-get install -y chromium` \
         (or run ./test.sh, which installs everything the tests need), or set CHROMIUM_PATH",
        path.display()
    );
    path
}

fn check_node_setup() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "`node` is not installed or does not run; the browser test needs Node.js 20+"
    );
    let pw = repo().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        pw.exists(),
        "playwright-core is not installed: run `npm ci --prefix tests/browser` (or ./test.sh, which installs everything the tests need)"
    );
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("LIMNER_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_ui-screenshots"))
}

#[test]
fn web_ui_in_headless_chromium() {
    let chromium = chromium();
    check_node_setup();
    let shots = screenshot_dir();
    // Old screenshots must not pass for new ones.
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let open = start_server(true);
    let secured = start_server(false);
    let sign_in = secured
        .sign_in
        .clone()
        .expect("a server with authentication prints its sign-in link");

    let out = Command::new("node")
        .current_dir(repo())
        .arg("tests/browser/ui.mjs")
        .arg(&open.base)
        .arg(&shots)
        .arg(&sign_in)
        .env("CHROMIUM_PATH", &chromium)
        .output()
        .expect("run node");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser test failed ({}); see its output above",
        out.status
    );
    for name in ["creator.png", "creator-phone.png", "roster.png"] {
        let bytes = std::fs::read(shots.join(name))
            .unwrap_or_else(|e| panic!("screenshot {name} missing: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "{name} is not a real PNG"
        );
    }
    println!("screenshots in {}", shots.display());
}
