//! The first run outside a checkout, as `cargo install` leaves it: the real binary started from
//! an empty directory with `HOME` and `XDG_DATA_HOME` pointing at empty temporary folders, no
//! flags. It must serve (built-in prompt templates and weights.toml, per-user data dir), say
//! how to get a model, and still keep characters. And the first portrait of a model served by
//! path on a CPU gets defaults that finish there, not the regeneration guide's GPU settings.

#[path = "common/server.rs"]
mod server;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::thread;

use serde_json::json;

use server::{repo_root, seed_character, Client, PATIENCE};

/// `limner ARGS` in `cwd` with only the environment a fresh user has.
fn limner_in(cwd: &Path, home: &Path, xdg: Option<&Path>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_limner"));
    cmd.current_dir(cwd).env_clear().env("HOME", home);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    if let Some(x) = xdg {
        cmd.env("XDG_DATA_HOME", x);
    }
    cmd
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve --no-auth --port 0 EXTRA` and returns it with its base URL.
fn serve(mut cmd: Command, extra: &[&str]) -> (Running, String) {
    let mut child = cmd
        .args(["serve", "--no-auth", "--port", "0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start limner serve");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("[stderr] {line}"));
        }
    });
    let mut log = Vec::new();
    let running = Running(child);
    loop {
        let line = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no 'listening' line; output:\n{}", log.join("\n")));
        if let Some(addr) = line.strip_prefix("limner listening on ") {
            return (running, addr.trim().to_string());
        }
        log.push(line);
    }
}

#[test]
fn serve_from_an_empty_directory_uses_built_in_files_and_per_user_data() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let (_server, base) = serve(limner_in(cwd.path(), home.path(), Some(xdg.path())), &[]);
    let c = Client::new(&base);

    // Healthy, and says what is missing instead of failing.
    let health = c.get("/health").expect(200);
    assert_eq!(health.json["status"], "ok", "{}", health.text);
    assert_eq!(
        health.json["engine"]["state"], "no_model",
        "{}",
        health.text
    );
    let reason = health.json["engine"]["reason"].as_str().unwrap();
    assert!(reason.contains("limner pull"), "{reason}");

    // Characters work; the data dir is $XDG_DATA_HOME/limner, the working directory untouched.
    let id = c
        .post("/api/characters", &seed_character(None))
        .expect(201)
        .str("id");
    let data = xdg.path().join("limner");
    assert!(data.join("limner.db").is_file(), "no database in {data:?}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);

    // The built-in templates: an unknown style is refused naming the shipped ones ...
    let path = format!("/api/characters/{id}/portrait/generate");
    let bad = c
        .post(
            &path,
            &json!({"regenerate": true, "art_style": "vaporwave"}),
        )
        .expect(422);
    assert_eq!(bad.json["field"], "art_style", "{}", bad.text);
    for style in ["default", "fantasy", "realistic", "anime", "cartoon"] {
        assert!(bad.text.contains(style), "{style}: {}", bad.text);
    }
    // ... bad sizes are still named ...
    let bad = c
        .post(&path, &json!({"regenerate": true, "width": 13}))
        .expect(422);
    assert_eq!(bad.json["field"], "width", "{}", bad.text);
    // ... and a valid request says how to get a model.
    let none = c
        .post(&path, &json!({"regenerate": true, "art_style": "fantasy"}))
        .expect(503);
    assert!(none.text.contains("limner pull"), "{}", none.text);
}

#[test]
fn without_xdg_data_home_the_data_dir_is_under_home() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let (_server, base) = serve(limner_in(cwd.path(), home.path(), None), &[]);
    Client::new(&base)
        .post("/api/characters", &seed_character(None))
        .expect(201);
    let data = home.path().join(".local/share/limner");
    assert!(data.join("limner.db").is_file(), "no database in {data:?}");
}

#[test]
fn files_in_the_data_dir_override_the_built_in_ones() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    let data = xdg.path().join("limner");
    std::fs::create_dir_all(data.join("prompts")).unwrap();
    std::fs::write(
        data.join("prompts/default.toml"),
        "template = \"{subject}\"\nnegative_prompt = \"blurry\"\n",
    )
    .unwrap();
    std::fs::write(
        data.join("prompts/noir.toml"),
        "template = \"noir {subject}\"\n",
    )
    .unwrap();
    let (_server, base) = serve(limner_in(cwd.path(), home.path(), Some(xdg.path())), &[]);
    let c = Client::new(&base);
    let id = c
        .post("/api/characters", &seed_character(None))
        .expect(201)
        .str("id");
    let path = format!("/api/characters/{id}/portrait/generate");
    let bad = c
        .post(&path, &json!({"regenerate": true, "art_style": "fantasy"}))
        .expect(422);
    assert!(bad.text.contains("noir"), "{}", bad.text);
    c.post(&path, &json!({"regenerate": true, "art_style": "noir"}))
        .expect(503);
}

#[test]
fn pull_lists_the_built_in_registry() {
    let cwd = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let xdg = tempfile::tempdir().unwrap();
    for args in [&["pull", "--help"][..], &["pull", "--list"][..]] {
        let out = limner_in(cwd.path(), home.path(), Some(xdg.path()))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {text}");
        for name in [
            "dreamshaper-8",
            "realistic-vision-5",
            "sd-turbo",
            "sdxl-base",
            "lcm-lora-sdv1-5",
            "lcm-lora-sdxl",
        ] {
            assert!(text.contains(name), "{args:?} lacks {name}: {text}");
        }
    }
    // The models dir of a user without a checkout is under the data dir.
    let help = limner_in(cwd.path(), home.path(), Some(xdg.path()))
        .args(["pull", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    let models = xdg.path().join("limner").join("models");
    assert!(text.contains(&models.display().to_string()), "{text}");
}

#[test]
fn a_model_served_by_path_gets_cpu_defaults_and_explicit_values_win() {
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let model = repo_root().join("tests/fixtures/tiny-sd15/model");
    let data_arg = data.path().display().to_string();
    let model_arg = model.display().to_string();
    let (_server, base) = serve(
        limner_in(&repo_root(), home.path(), None),
        &[
            "--data-dir",
            &data_arg,
            "--model",
            &model_arg,
            "--device",
            "cpu",
        ],
    );
    let c = Client::new(&base);
    let models = c.get("/api/models").expect(200);
    let d = &models.json["models"][0]["defaults"];
    let (w, h, steps) = (
        d["width"].as_u64().unwrap(),
        d["height"].as_u64().unwrap(),
        d["steps"].as_u64().unwrap(),
    );
    // Not the regeneration guide's 512x768 x2, 25 steps: at most 512x512's pixels, 20 steps.
    assert!(w * h <= 512 * 512 && steps <= 20, "{}", models.text);
    assert!(h > w, "portrait aspect kept: {}", models.text);
    let e = c.post("/api/portraits/estimate", &json!({})).expect(200);
    assert_eq!(e.json["hires"], false, "{}", e.text);
    assert_eq!(e.json["device"], "cpu", "{}", e.text);
    assert_eq!(e.json["width"].as_u64(), Some(w), "{}", e.text);
    // Explicit values always win.
    let e = c
        .post(
            "/api/portraits/estimate",
            &json!({"width": 512, "height": 768, "steps": 25, "hires": true}),
        )
        .expect(200);
    assert_eq!(e.json["hires"], true, "{}", e.text);
    assert_eq!(e.json["height"], 768, "{}", e.text);
    assert_eq!(e.json["steps"], 25, "{}", e.text);
}
