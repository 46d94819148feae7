//! LoRA end to end: the real `limner serve` on the tiny SD 1.5 model with the fixture's kohya
//! LoRA in `MODELS_DIR/loras/`, driven through A1111's txt2img. A `<lora:...>` tag changes the
//! image and is recorded (tag in the prompt, `Lora hashes`), an unknown LoRA is a 422 naming it,
//! and the base model comes back byte for byte afterwards. Waits are bounded hang guards.

#[path = "common/server.rs"]
mod server;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;

use server::{repo_root, Client, Server};

fn txt2img(c: &Client, prompt: &str) -> (Vec<u8>, Value) {
    let r = c
        .post(
            "/sdapi/v1/txt2img",
            &json!({"prompt": prompt, "negative_prompt": "blurry", "seed": 3, "steps": 3,
                    "width": 64, "height": 64, "cfg_scale": 6}),
        )
        .expect(200);
    let b64 = r.json["images"][0].as_str().expect("an image");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    (bytes, r.json)
}

/// A1111's LoRA short hash: SHA-256 of the safetensors file after its header, 12 hex digits.
fn addnet_hash(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let hex: String = sha2::Sha256::digest(&bytes[8 + n..])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex[..12].to_string()
}

#[test]
fn a1111_txt2img_applies_a_prompt_lora_records_it_and_restores_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let loras = models.join("loras");
    std::fs::create_dir_all(&loras).unwrap();
    let fixture = repo_root().join("tests/fixtures/tiny-lora/kohya_locon.safetensors");
    std::fs::copy(&fixture, loras.join("kohya_locon.safetensors")).unwrap();
    let data = dir.path().join("data");
    let models_arg = models.to_str().unwrap().to_string();
    let server = Server::start(&data, &["--no-auth", "--models-dir", &models_arg]);
    let c = server.client();

    let (base, _) = txt2img(&c, "an elf ranger");
    let (with_lora, reply) = txt2img(&c, "an elf ranger <lora:kohya_locon:0.8>");
    assert_ne!(base, with_lora, "the LoRA changed nothing");

    let params = limner::engine::read_png_parameters(&with_lora).expect("infotext");
    let hash = addnet_hash(&fixture);
    assert!(
        params.starts_with("an elf ranger <lora:kohya_locon:0.8>"),
        "{params}"
    );
    let record = format!("Lora hashes: \"kohya_locon: {hash}\"");
    assert!(params.contains(&record), "{params}");
    let info = reply["info"].as_str().expect("info is a JSON string");
    assert!(info.contains("Lora hashes"), "{info}");
    assert!(info.contains(&hash), "{info}");

    let r = c.post(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "an elf <lora:nope:1>", "steps": 2, "width": 64, "height": 64}),
    );
    assert_eq!(r.status, 422, "{}", r.json);
    let text = r.json.to_string();
    assert!(text.contains("nope"), "{text}");
    assert!(
        text.contains("kohya_locon"),
        "the known LoRAs are listed: {text}"
    );

    let (again, _) = txt2img(&c, "an elf ranger");
    assert_eq!(base, again, "the base model did not come back exactly");
    let (lora_again, _) = txt2img(&c, "an elf ranger <lora:kohya_locon:0.8>");
    assert_eq!(with_lora, lora_again, "the cached LoRA set paints the same");
}
