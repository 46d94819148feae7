//! Tests of `limner pull`, all offline: local sources, a closed port, file checks, and a
//! fake hub on loopback that speaks just enough of the hub protocol for hf-hub.

use super::*;
use sha2::{Digest, Sha256};

fn repo_registry() -> Registry {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Registry::load(&root.join("weights.toml")).unwrap()
}

fn offline() -> (tempfile::TempDir, HubOptions) {
    let dir = tempfile::tempdir().unwrap();
    let opts = HubOptions {
        // Port 1 on loopback: refused at once, no network involved.
        endpoint: Some("http://127.0.0.1:1".into()),
        cache_dir: Some(dir.path().join("hf-cache")),
        token: None,
        progress: false,
        hash_cache: None,
    };
    (dir, opts)
}

#[test]
fn path_sourced_fixture_has_nothing_to_pull() {
    let (dir, opts) = offline();
    let models = dir.path().join("models");
    match pull(&repo_registry(), "tiny-fixture", &models, &opts).unwrap() {
        PullOutcome::NothingToPull(msg) => {
            assert!(
                msg.contains("nothing to pull") && msg.contains("tiny-sd15"),
                "{msg}"
            )
        }
        PullOutcome::Pulled(_) => panic!("a local source must not be pulled"),
    }
    assert!(!models.exists(), "nothing is created for a local source");
}

#[test]
fn unknown_name_lists_the_known_ones() {
    let (dir, opts) = offline();
    let err = match pull(&repo_registry(), "dreamshaper-9", dir.path(), &opts) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("unknown model pulled"),
    };
    assert!(
        err.contains("dreamshaper-9") && err.contains("dreamshaper-8") && err.contains("sd-turbo"),
        "{err}"
    );
}

#[test]
fn unreachable_hub_says_so_and_leaves_nothing() {
    let (dir, opts) = offline();
    let models = dir.path().join("models");
    let err = match pull(&repo_registry(), "sd-turbo", &models, &opts) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("pull succeeded without a hub"),
    };
    assert!(err.contains("could not reach the Hugging Face hub to download stabilityai/sd-turbo/model_index.json"), "{err}");
    assert!(
        err.contains(&format!(
            "copy the files into {}/ by hand",
            models.join("sd-turbo").display()
        )),
        "{err}"
    );
    assert!(
        !models.join("sd-turbo").exists(),
        "a failed pull leaves no folder"
    );
}

#[test]
fn installs_and_verifies_a_real_safetensors_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/fixtures/tiny-sd15/model/unet/diffusion_pytorch_model.safetensors");
    let dir = tempfile::tempdir().unwrap();
    // Imitate the hub cache: a snapshot symlink to a blob.
    let snap = dir.path().join("models--a--b/snapshots/0123abcd/unet");
    std::fs::create_dir_all(&snap).unwrap();
    let link = snap.join("diffusion_pytorch_model.safetensors");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    assert_eq!(
        snapshot_commit(&link, "unet/diffusion_pytorch_model.safetensors").as_deref(),
        Some("0123abcd")
    );

    let dest = dir.path().join("out");
    let rec = install_file(
        &link,
        &dest,
        "unet/diffusion_pytorch_model.safetensors",
        None,
    )
    .unwrap();
    let installed = dest.join("unet/diffusion_pytorch_model.safetensors");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert_eq!(rec.size, std::fs::metadata(&src).unwrap().len());
    assert_eq!(rec.sha256.len(), 64);
    // The recorded hash is what a second, independent check accepts and a wrong one refuses.
    assert!(verify_file(
        &installed,
        "unet/x.safetensors",
        Some(&rec.sha256.to_uppercase())
    )
    .is_ok());
    let err = verify_file(&installed, "unet/x.safetensors", Some(&"0".repeat(64))).unwrap_err();
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn sha256_matches_a_known_vector() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("abc.txt");
    std::fs::write(&p, b"abc").unwrap();
    // FIPS 180-2 test vector for "abc".
    assert_eq!(
        sha256_file(&p).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn refuses_truncated_empty_and_broken_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let good = std::fs::read(
        root.join("tests/fixtures/tiny-sd15/model/vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "w.safetensors",
            good[..good.len() - 10].to_vec(),
            "truncated",
        ),
        ("w.safetensors", good[..4].to_vec(), "8-byte"),
        (
            "w.safetensors",
            b"\xff\xff\xff\xff\xff\xff\xff\x7fxx".to_vec(),
            "header length",
        ),
        ("empty.json", Vec::new(), "is empty"),
        ("c.json", b"{not json".to_vec(), "not valid JSON"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let err = format!("{:#}", verify_file(&p, name, None).unwrap_err());
        assert!(err.contains(want), "{name}: want {want:?} in {err}");
    }
    // And a failed install leaves neither the target nor a partial file behind.
    let p = dir.path().join("bad.safetensors");
    std::fs::write(&p, &good[..good.len() - 1]).unwrap();
    let dest = dir.path().join("dest");
    assert!(install_file(&p, &dest, "vae/bad.safetensors", None).is_err());
    let left: Vec<_> = std::fs::read_dir(dest.join("vae")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A loopback HTTP server answering `GET /<repo>/resolve/<rev>/<file>` with the headers hf-hub
/// reads (x-repo-commit, etag, content-range) and honouring `Range: bytes=N-M`.
fn fake_hub(files: Vec<(String, Vec<u8>)>) -> String {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = v.trim().split_once('-').unwrap();
                    range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().ok()));
                }
            }
            let path = request_line.split(' ').nth(1).unwrap_or("");
            let found = files
                .iter()
                .find(|(name, _)| path.ends_with(&format!("/resolve/main/{name}")));
            let response = match found {
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
                Some((_, bytes)) => {
                    let (start, end) = match range {
                        Some((a, Some(b))) => (a, b.min(bytes.len() - 1)),
                        Some((a, None)) => (a, bytes.len() - 1),
                        None => (0, bytes.len() - 1),
                    };
                    let body = &bytes[start..=end];
                    let etag: String = Sha256::digest(bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {}\r\netag: \"{etag}\"\r\n\
                         content-range: bytes {start}-{end}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        "c0ffee".repeat(6) + "abcd",
                        bytes.len(),
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{addr}")
}

fn fixture_hub_files() -> Vec<(String, Vec<u8>)> {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(model.join(f)).unwrap()))
    .collect()
}

fn fake_registry(sha_of_index: &str) -> Registry {
    Registry::from_str(&format!(
        r#"[models.tiny-hub]
           architecture = "sd1"
           source = {{ hub = "fake/tiny", revision = "main", files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"] }}
           sha256 = {{ "model_index.json" = "{sha_of_index}" }}"#
    ))
    .unwrap()
}

#[test]
fn pulls_from_a_hub_into_the_model_folder() {
    let files = fixture_hub_files();
    let index_sha: String = Sha256::digest(&files[0].1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let registry = fake_registry(&index_sha);
    let (dir, mut opts) = offline();
    opts.endpoint = Some(fake_hub(files.clone()));
    let data = dir.path().join("data");
    opts.hash_cache = Some(data.clone());
    let models = dir.path().join("models");
    let PullOutcome::Pulled(record) = pull(&registry, "tiny-hub", &models, &opts).unwrap() else {
        panic!("hub model not pulled")
    };
    let dest = models.join("tiny-hub");
    // The weights' hashes are in the data directory's cache, for the server's model list.
    let unet_sha: String = Sha256::digest(&files[2].1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cached =
        HashCache::open(&data).cached(&dest.join("unet/diffusion_pytorch_model.safetensors"));
    assert_eq!(cached.map(|h| h.sha256), Some(unet_sha));
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(dest.join(name)).unwrap(), bytes, "{name}");
    }
    let expected_commit = "c0ffee".repeat(6) + "abcd";
    assert_eq!(record.commit.as_deref(), Some(expected_commit.as_str()));
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(PULLED_MARKER)).unwrap()).unwrap();
    assert_eq!(marker["commit"], expected_commit.as_str());
    assert_eq!(marker["revision"], "main");
    assert_eq!(marker["files"].as_array().map(Vec::len), Some(3));
    assert_eq!(marker["files"][0]["sha256"], index_sha.as_str());
    assert_eq!(marker["files"][2]["size"], files[2].1.len() as u64);
    // The pulled folder is what resolve() hands the engine.
    let resolved = registry.resolve("tiny-hub", &models).unwrap();
    assert_eq!(
        resolved.location,
        limner::registry::ModelLocation::Diffusers(dest.clone())
    );

    // A second pull is served from the hub cache, with the hub gone.
    opts.endpoint = Some("http://127.0.0.1:1".into());
    assert!(matches!(
        pull(&registry, "tiny-hub", &models, &opts),
        Ok(PullOutcome::Pulled(_))
    ));
}

#[test]
fn a_wrong_pinned_hash_fails_the_pull_without_a_marker() {
    let registry = fake_registry(&"0".repeat(64));
    let (dir, mut opts) = offline();
    opts.endpoint = Some(fake_hub(fixture_hub_files()));
    let models = dir.path().join("models");
    let err = match pull(&registry, "tiny-hub", &models, &opts) {
        Err(e) => format!("{e:#}"),
        Ok(_) => panic!("hash mismatch accepted"),
    };
    assert!(
        err.contains("model_index.json") && err.contains("sha256"),
        "{err}"
    );
    assert!(!models.join("tiny-hub").join(PULLED_MARKER).exists());
    assert!(!models.join("tiny-hub/model_index.json").exists());
}

#[test]
fn a_missing_hub_file_is_reported_as_not_found() {
    let mut files = fixture_hub_files();
    files.pop();
    let index_sha: String = Sha256::digest(&files[0].1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (dir, mut opts) = offline();
    opts.endpoint = Some(fake_hub(files));
    let err = match pull(&fake_registry(&index_sha), "tiny-hub", dir.path(), &opts) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("missing file accepted"),
    };
    assert!(
        err.contains("unet/diffusion_pytorch_model.safetensors was not found in fake/tiny at revision 'main'"),
        "{err}"
    );
}

#[test]
fn the_taesd_decoders_are_pulled_like_models_into_their_own_folder() {
    // The built-in entries name madebyollin's repos.
    let (dir, opts) = offline();
    for (name, repo) in [
        ("taesd", "madebyollin/taesd"),
        ("taesdxl", "madebyollin/taesdxl"),
    ] {
        let err = match pull(&repo_registry(), name, dir.path(), &opts) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("pulled {name} without a hub"),
        };
        assert!(err.contains(&format!("{repo}/config.json")), "{err}");
    }
    // From a hub: the files land in MODELS_DIR/taesd/, where the engine looks.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-taesd/model");
    let names = [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "taesd_decoder.safetensors",
        "taesd_encoder.safetensors",
    ];
    let files: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|f| (f.to_string(), std::fs::read(model.join(f)).unwrap()))
        .collect();
    let registry = Registry::from_str(&format!(
        "[decoders.taesd]\nsource = {{ hub = \"fake/taesd\", revision = \"main\", files = {names:?} }}"
    ))
    .unwrap();
    let (dir, mut opts) = offline();
    opts.endpoint = Some(fake_hub(files.clone()));
    let models = dir.path().join("models");
    assert!(matches!(
        pull(&registry, "taesd", &models, &opts),
        Ok(PullOutcome::Pulled(_))
    ));
    for (name, bytes) in &files {
        assert_eq!(
            &std::fs::read(models.join("taesd").join(name)).unwrap(),
            bytes
        );
    }
    assert_eq!(
        limner::engine::TaesdPaths::in_models_dir(&models).sd,
        Some(limner::engine::TaesdSource::Path(models.join("taesd")))
    );
    // A decoder is pulled, never served: it is no model of the registry.
    assert!(registry.names().next().is_none());
}

#[test]
fn pulls_a_lora_entry_into_the_loras_folder_under_its_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let weights = std::fs::read(
        root.join("tests/fixtures/tiny-sd15/model/unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let registry = Registry::from_str(
        r#"[loras.tiny-lcm]
           description = "a LoRA"
           architecture = "sd1"
           source = { hub = "fake/lora", revision = "main", files = ["pytorch_lora_weights.safetensors"] }"#,
    )
    .unwrap();
    let (dir, mut opts) = offline();
    opts.endpoint = Some(fake_hub(vec![(
        "pytorch_lora_weights.safetensors".into(),
        weights.clone(),
    )]));
    let models = dir.path().join("models");
    let PullOutcome::Pulled(record) = pull(&registry, "tiny-lcm", &models, &opts).unwrap() else {
        panic!("a hub LoRA must be pulled");
    };
    let target = models.join("loras").join("tiny-lcm.safetensors");
    assert_eq!(record.location, target);
    assert_eq!(std::fs::read(&target).unwrap(), weights);
    assert_eq!(record.files[0].size, weights.len() as u64);
    // Nothing else lands beside it (no model folder, no marker).
    let names: Vec<_> = std::fs::read_dir(models.join("loras"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["tiny-lcm.safetensors"]);
    assert!(!models.join("tiny-lcm").exists());
}

#[test]
fn the_repo_lcm_loras_go_to_models_loras() {
    let registry = repo_registry();
    for (name, repo) in [
        ("lcm-lora-sdv1-5", "latent-consistency/lcm-lora-sdv1-5"),
        ("lcm-lora-sdxl", "latent-consistency/lcm-lora-sdxl"),
    ] {
        let (dir, opts) = offline();
        let models = dir.path().join("models");
        let err = match pull(&registry, name, &models, &opts) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("pull succeeded without a hub"),
        };
        assert!(
            err.contains(&format!("{repo}/pytorch_lora_weights.safetensors")),
            "{err}"
        );
        assert!(
            err.contains(&models.join("loras").display().to_string()),
            "{err}"
        );
        assert!(
            !models.join("loras").exists(),
            "a failed pull leaves nothing"
        );
    }
}
