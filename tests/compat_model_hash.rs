//! A1111 model hashes through the real `limner serve` on the tiny fixture model: `sd-models`
//! titles carry `[hash]`, `hash` / `sha256` are the SHA-256 of the weight file (computed here
//! independently), options and `override_settings` accept the hash or the title, the hash cache
//! in the data directory is read again by the next start, and a changed file is hashed again.
//! Waits are bounded hang guards; nothing here asserts how long anything takes.

#[path = "common/server.rs"]
mod server;
#[path = "common/fs.rs"]
mod test_fs;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use server::{repo_root, Client, Server, PATIENCE};
use sha2::{Digest, Sha256};
use test_fs::copy_dir;

const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const CACHE_FILE: &str = "model-hashes.json";

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Flips one mantissa bit of the last weights (the file stays a valid safetensors of the same
/// size) and gives it a new modification time.
fn change_weights(file: &Path, mtime: SystemTime) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() - 4;
    bytes[at] ^= 1;
    std::fs::write(file, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(file).unwrap();
    f.set_modified(mtime).unwrap();
}

/// A second model: a copy of the fixture with different weights, so its hash differs.
fn second_model(dir: &Path) -> PathBuf {
    let copy = dir.join("tiny-copy");
    copy_dir(&repo_root().join("tests/fixtures/tiny-sd15/model"), &copy);
    change_weights(
        &copy.join(UNET),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    copy
}

/// `sd-models` once every listed model has a hash (they are hashed in the background), checking
/// on the way that a model without one yet has a bare-name title.
fn models_when_hashed(c: &Client) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let models = c.get("/sdapi/v1/sd-models").expect(200).json;
        let models = models.as_array().unwrap().clone();
        for m in &models {
            if m["hash"].is_null() {
                assert_eq!(m["title"], m["model_name"], "{m}");
                assert!(m["sha256"].is_null(), "{m}");
            }
        }
        if models.iter().all(|m| m["hash"].is_string()) {
            return models;
        }
        assert!(Instant::now() < deadline, "models never hashed: {models:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn entry<'a>(models: &'a [Value], name: &str) -> &'a Value {
    models
        .iter()
        .find(|m| m["model_name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {models:?}"))
}

fn assert_hashed_as(m: &Value, sha256: &str) {
    let short = &sha256[..10];
    assert_eq!(m["hash"], short, "{m}");
    assert_eq!(m["sha256"], sha256, "{m}");
    let name = m["model_name"].as_str().unwrap();
    assert_eq!(m["title"], format!("{name} [{short}]"), "{m}");
}

#[test]
fn titles_carry_the_file_hash_and_models_are_chosen_by_hash_or_title() {
    let dir = tempfile::tempdir().unwrap();
    let copy = second_model(dir.path());
    let data = dir.path().join("data");
    let server = Server::start_no_auth(&data, &["--models", copy.to_str().unwrap()]);
    let c = server.client();
    let models = models_when_hashed(&c);
    let fixture_sha = sha256_hex(
        &repo_root()
            .join("tests/fixtures/tiny-sd15/model")
            .join(UNET),
    );
    let copy_sha = sha256_hex(&copy.join(UNET));
    assert_ne!(fixture_sha, copy_sha);
    assert_hashed_as(entry(&models, "tiny-fixture"), &fixture_sha);
    assert_hashed_as(entry(&models, "tiny-copy"), &copy_sha);
    let fixture_title = entry(&models, "tiny-fixture")["title"].clone();
    let copy_title = entry(&models, "tiny-copy")["title"].clone();

    // The option is the title, and takes a short hash, a full sha256 or a title.
    let options = c.get("/sdapi/v1/options").expect(200).json;
    assert_eq!(options["sd_model_checkpoint"], fixture_title);
    assert_eq!(options["sd_checkpoint_hash"], fixture_sha.as_str());
    for (wanted, title) in [
        (json!(&copy_sha[..10]), &copy_title),
        (fixture_title.clone(), &fixture_title),
        (json!(copy_sha), &copy_title),
    ] {
        c.post(
            "/sdapi/v1/options",
            &json!({ "sd_model_checkpoint": wanted }),
        )
        .expect(200);
        let options = c.get("/sdapi/v1/options").expect(200).json;
        assert_eq!(&options["sd_model_checkpoint"], title, "after {wanted}");
    }
    let unknown = c.post(
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": "0123456789"}),
    );
    assert_eq!(unknown.status, 422, "{}", unknown.text);

    // A generation on the model chosen by title reports the same hash as the list.
    let r = c
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": "a knight", "steps": 1, "width": 64, "height": 64,
                    "override_settings": {"sd_model_checkpoint": fixture_title}}),
        )
        .expect(200);
    let info: Value = serde_json::from_str(r.json["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "tiny-fixture");
    assert_eq!(info["sd_model_hash"], &fixture_sha[..10]);
    let text = info["infotexts"][0].as_str().unwrap();
    assert!(
        text.contains(&format!("Model hash: {}", &fixture_sha[..10])),
        "{text}"
    );
    server.stop();
}

#[test]
fn a_restart_reads_the_hash_cache_and_a_changed_file_is_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let copy = second_model(dir.path());
    let weights = copy.join(UNET);
    let data = dir.path().join("data");
    let args = ["--models", copy.to_str().unwrap()];

    let server = Server::start_no_auth(&data, &args);
    models_when_hashed(&server.client());
    server.stop();

    // The cache holds the copy's hash under its canonical path. Plant another value for the
    // same file version: a start that reads the cache reports it, one that re-hashed would not.
    let cache_path = data.join(CACHE_FILE);
    let mut cache: Value = serde_json::from_slice(&std::fs::read(&cache_path).unwrap()).unwrap();
    let key = std::fs::canonicalize(&weights).unwrap();
    let key = key.to_str().unwrap();
    assert_eq!(
        cache["files"][key]["sha256"],
        sha256_hex(&weights),
        "{cache}"
    );
    let planted = "abcdef0123".repeat(6) + "abcd";
    cache["files"][key]["sha256"] = json!(planted);
    std::fs::write(&cache_path, serde_json::to_vec(&cache).unwrap()).unwrap();

    let server = Server::start_no_auth(&data, &args);
    let models = models_when_hashed(&server.client());
    assert_hashed_as(entry(&models, "tiny-copy"), &planted);
    server.stop();

    // New contents and mtime: the stale entry is not used; the file is hashed again.
    change_weights(
        &weights,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_500),
    );
    let fresh = sha256_hex(&weights);
    let server = Server::start_no_auth(&data, &args);
    let models = models_when_hashed(&server.client());
    assert_hashed_as(entry(&models, "tiny-copy"), &fresh);
    server.stop();
    let cache: Value = serde_json::from_slice(&std::fs::read(&cache_path).unwrap()).unwrap();
    assert_eq!(cache["files"][key]["sha256"], fresh.as_str());
}
