//! `limner generate` and `limner bench` as a user runs them: the real binary on the tiny fixture.

use std::path::Path;
use std::process::Command;

use limner::engine::read_png_parameters;
use limner::engine::InfoText;

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sd15/model")
        .display()
        .to_string()
}

#[test]
fn generate_writes_a_png_that_a1111_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("knight.png");
    let status = Command::new(env!("CARGO_BIN_EXE_limner"))
        .args(["generate", "--model", &fixture(), "--device", "cpu"])
        .args([
            "--prompt",
            "a knight, (steel armor:1.2)",
            "--negative",
            "blurry",
        ])
        .args(["--sampler", "DPM++ 2M Karras", "--steps", "6", "--cfg", "7"])
        .args(["--seed", "42", "--width", "64", "--height", "96", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (64, 96));
    let text = read_png_parameters(&bytes).expect("parameters chunk");
    assert!(
        text.contains("Steps: 6, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 64x96"),
        "{text}"
    );
    let info = InfoText::parse(&text);
    assert_eq!(info.prompt, "a knight, (steel armor:1.2)");
    assert_eq!(info.negative_prompt, "blurry");
    assert_eq!(info.model.as_deref(), Some("model"));
}

#[test]
fn generate_rejects_bad_sizes_and_samplers_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_limner"))
            .args([
                "generate",
                "--model",
                &fixture(),
                "--device",
                "cpu",
                "--prompt",
                "x",
            ])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run(&["--width", "65"]);
    assert!(e.contains("width") && e.contains("multiple of 8"), "{e}");
    let e = run(&["--sampler", "Warp Drive"]);
    assert!(e.contains("Warp Drive") && e.contains("Euler a"), "{e}");
    let e = run(&["--steps", "151"]);
    assert!(e.contains("steps") && e.contains("150"), "{e}");
    let e = run(&["--init-image", "/nonexistent.png"]);
    assert!(e.contains("nonexistent.png"), "{e}");
    assert!(!out.exists(), "nothing written on failure");
}

#[test]
fn bench_prints_one_json_object() {
    let o = Command::new(env!("CARGO_BIN_EXE_limner"))
        .args(["bench", "--model", &fixture(), "--device", "cpu"])
        .args(["--width", "64", "--height", "64", "--steps", "2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for key in [
        "device",
        "dtype",
        "width",
        "height",
        "steps",
        "sampler",
        "it_per_s",
        "unet_ms_per_step",
        "vae_decode_ms",
        "end_to_end_s",
        "load_s",
        "peak_rss_mb",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["steps"], 2);
    assert_eq!(v["device"], "cpu");
    assert!(v["unet_ms_per_step"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_takes_a_vae_by_path_and_refuses_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.png");
    let own_vae = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-sd15/model/vae/diffusion_pytorch_model.safetensors");
    let run = |vae: &str| {
        Command::new(env!("CARGO_BIN_EXE_limner"))
            .args(["generate", "--model", &fixture(), "--device", "cpu"])
            .args(["--prompt", "a bard", "--steps", "2", "--seed", "1"])
            .args(["--width", "64", "--height", "64", "--vae", vae])
            .args(["--models-dir"])
            .arg(dir.path())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let ok = run(&own_vae.display().to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.is_file());
    let missing = run("no-such-vae");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no-such-vae") && err.contains("vae"), "{err}");
}
