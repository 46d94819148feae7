//! End to end with the tiny SDXL model: the real `limner serve` binary with the real engine on
//! `tests/fixtures/tiny-sdxl`, beside the tiny SD 1.5 model. A portrait generate, the
//! regeneration guide's regenerate-image (img2img), and A1111's txt2img with the hires fix, with
//! `override_settings.sd_model_checkpoint` switching between the SD 1.5 and the SDXL model.
//! Waits are bounded hang guards; nothing here asserts how long anything takes.

#[path = "common/server.rs"]
mod server;

use base64::Engine as _;
use serde_json::json;

use server::{fetch_png, png_size, seed_character, Server};

fn start(dir: &std::path::Path) -> Server {
    Server::start_model(
        dir,
        "tiny-sdxl",
        &["--no-auth", "--models", "tiny-fixture,tiny-sdxl"],
    )
}

#[test]
fn sdxl_portraits_regenerate_and_a1111_hires_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let c = server.client();

    let id = c
        .post("/api/characters", &seed_character(None))
        .expect(201)
        .str("id");
    let gen = c
        .post(
            &format!("/api/characters/{id}/portrait/generate"),
            &json!({"regenerate": true, "seed": 11}),
        )
        .expect(200);
    let url = gen.str("portrait_url");
    let (first, params) = fetch_png(&c, &url);
    assert_eq!(png_size(&first), (64, 96));
    assert!(params.contains("Model: tiny-sdxl"), "{params}");
    assert!(params.contains("Seed: 11"), "{params}");

    // img2img on the SDXL model: the regeneration guide's regenerate-image.
    let regen = c
        .post(
            &format!("/api/characters/{id}/regenerate-image"),
            &json!({"newPrompt": "same character, smiling", "denoisingStrength": 0.4}),
        )
        .expect(200);
    let avatar = regen.json["character"]["avatar"]
        .as_str()
        .expect("avatar")
        .to_string();
    let (second, params) = fetch_png(&c, &avatar);
    assert_eq!(png_size(&second), (64, 96));
    assert!(params.contains("Denoising strength: 0.4"), "{params}");
    assert!(params.contains("Model: tiny-sdxl"), "{params}");
    assert_ne!(first, second);

    // A1111's txt2img with the hires fix, on each model by name.
    let mut images = vec![];
    for model in ["tiny-sdxl", "tiny-fixture", "tiny-sdxl"] {
        let r = c
            .post(
                "/sdapi/v1/txt2img",
                &json!({"prompt": "a dwarf cleric", "seed": 5, "steps": 4, "width": 64,
                        "height": 64, "cfg_scale": 6, "enable_hr": true, "hr_scale": 2,
                        "hr_upscaler": "Latent", "denoising_strength": 0.5,
                        "hr_second_pass_steps": 2,
                        "override_settings": {"sd_model_checkpoint": model}}),
            )
            .expect(200);
        let b64 = r.json["images"][0].as_str().expect("an image");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(png_size(&bytes), (128, 128), "{model}");
        let text = limner::engine::read_png_parameters(&bytes).expect("infotext");
        for part in ["Size: 64x64", "Hires upscale: 2", "Hires steps: 2"] {
            assert!(text.contains(part), "{model}: {part} missing from {text}");
        }
        assert!(text.contains(&format!("Model: {model}")), "{text}");
        images.push(bytes);
    }
    // The same request on the same model paints the same image; the other model another one.
    assert_eq!(
        images[0], images[2],
        "SDXL after SD 1.5 must repaint exactly"
    );
    assert_ne!(
        images[0], images[1],
        "the SD 1.5 model paints another image"
    );
}

#[test]
fn sdxl_models_are_listed_with_their_family() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let c = server.client();
    let models = c.get("/sdapi/v1/sd-models").expect(200);
    let names: Vec<&str> = models
        .json
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["model_name"].as_str())
        .collect();
    assert!(names.contains(&"tiny-sdxl"), "{names:?}");
    assert!(names.contains(&"tiny-fixture"), "{names:?}");
    let health = c.get("/health").expect(200);
    assert_eq!(health.json["status"], "ok", "{}", health.json);
}
