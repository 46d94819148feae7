//! AUTOMATIC1111 `/sdapi/v1/*` through the real router on the fake backend: the reply and its
//! `info` JSON key by key against A1111's `Processed.js()`, the PNG `parameters` chunk against
//! A1111's infotext, A1111's API defaults, unsupported fields, errors in A1111's shape, the
//! queue (429, progress, interrupt, disconnect) and the list endpoints.

#[path = "compat_clients/support.rs"]
mod support;

use std::time::Duration;

use limner::engine::Defaults;
use limner::engine::{decode_image, read_parameters};
use limner::jobs::{JobState, QueueConfig};
use limner::portraits::FakeBackend;
use serde_json::{json, Value};
use support::{b64, basic, build, png, unb64, Setup, TestApp};

fn info(reply: &Value) -> Value {
    serde_json::from_str(reply["info"].as_str().expect("info is a JSON string"))
        .expect("info parses as JSON")
}

fn fake() -> TestApp {
    build(Setup {
        backend: FakeBackend::new().with_model("other", Defaults::default()),
        ..Setup::default()
    })
}

#[tokio::test]
async fn txt2img_reply_info_and_png_chunk_follow_a1111() {
    let t = fake();
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({
                "prompt": "a dwarf cleric", "negative_prompt": "blurry",
                "steps": 25, "cfg_scale": 8, "sampler_name": "Euler a", "seed": 1234,
                "width": 512, "height": 768, "batch_size": 2
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let body = r.json();
    let images = body["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let i = info(&body);
    let mut texts = Vec::new();
    for (k, img) in images.iter().enumerate() {
        // Bare base64 (no data: prefix) of a PNG.
        let bytes = unb64(img.as_str().unwrap());
        assert!(bytes.starts_with(b"\x89PNG"));
        assert_eq!(decode_image(&bytes).unwrap().dimensions(), (512, 768));
        let text = read_parameters(&bytes).expect("parameters chunk");
        let seed = 1234 + k;
        assert!(
            text.starts_with("a dwarf cleric\nNegative prompt: blurry\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "Steps: 25, Sampler: Euler a, CFG scale: 8, Seed: {seed}, Size: 512x768, "
            )),
            "{text}"
        );
        assert!(text.contains("Model: fake-model"), "{text}");
        texts.push(text);
    }
    assert_eq!(i["prompt"], "a dwarf cleric");
    assert_eq!(
        i["all_prompts"],
        json!(["a dwarf cleric", "a dwarf cleric"])
    );
    assert_eq!(i["negative_prompt"], "blurry");
    assert_eq!(i["all_negative_prompts"], json!(["blurry", "blurry"]));
    assert_eq!(i["seed"], 1234);
    assert_eq!(i["all_seeds"], json!([1234, 1235]));
    assert_eq!(i["subseed"], -1);
    assert_eq!(i["subseed_strength"], 0.0);
    assert_eq!(
        (i["width"].as_u64(), i["height"].as_u64()),
        (Some(512), Some(768))
    );
    assert_eq!(i["sampler_name"], "Euler a");
    assert_eq!(i["cfg_scale"], 8.0);
    assert_eq!(i["steps"], 25);
    assert_eq!(i["batch_size"], 2);
    assert_eq!(i["restore_faces"], false);
    assert_eq!(i["sd_model_name"], "fake-model");
    assert_eq!(i["index_of_first_image"], 0);
    assert_eq!(i["clip_skip"], 1);
    assert_eq!(i["is_using_inpainting_conditioning"], false);
    assert_eq!(i["styles"], json!([]));
    assert_eq!(i["infotexts"], json!(texts));
    let ts = i["job_timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 14 && ts.chars().all(|c| c.is_ascii_digit()),
        "{ts}"
    );
    for key in [
        "sd_model_hash",
        "sd_vae_name",
        "sd_vae_hash",
        "face_restoration_model",
        "seed_resize_from_w",
        "seed_resize_from_h",
        "denoising_strength",
        "extra_generation_params",
        "version",
        "all_subseeds",
    ] {
        assert!(i.get(key).is_some(), "info lacks {key}");
    }
    assert_eq!(i["limner_unsupported"], json!([]));
    // `parameters` echoes the request with A1111's defaults filled in.
    let p = &body["parameters"];
    assert_eq!(p["prompt"], "a dwarf cleric");
    assert_eq!(p["steps"], 25);
    assert_eq!(p["n_iter"], 1);
    assert_eq!(p["sampler_name"], "Euler a");
    assert_eq!(p["enable_hr"], false);
    // And the engine got exactly that.
    let last = t.backend.last_request().unwrap();
    assert_eq!(last.steps(), 25);
    assert_eq!(last.cfg_scale(), 8.0);
    assert_eq!(last.seeds(), vec![1234, 1235]);
}

#[tokio::test]
async fn an_empty_request_takes_a1111_api_defaults() {
    let t = fake();
    let r = t.post("/sdapi/v1/txt2img", json!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let i = info(&r.json());
    let last = t.backend.last_request().unwrap();
    // A1111's API model: steps 50, CFG 7, 512x512, sampler_index "Euler", random seed.
    assert_eq!(last.steps(), 50);
    assert_eq!(last.cfg_scale(), 7.0);
    assert_eq!((last.width(), last.height()), (512, 512));
    assert_eq!(last.sampler_name(), "Euler");
    assert_eq!(i["sampler_name"], "Euler");
    assert_eq!(i["steps"], 50);
    assert_eq!(i["cfg_scale"], 7.0);
    assert_eq!(i["prompt"], "");
    assert!(
        i["seed"].as_i64().unwrap() >= 0,
        "a random seed is resolved"
    );
    assert_eq!(i["all_seeds"][0], i["seed"]);
}

#[tokio::test]
async fn n_iter_runs_batches_with_consecutive_seeds() {
    let t = fake();
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"seed": 10, "steps": 4, "width": 64, "height": 64,
                   "batch_size": 2, "n_iter": 3}),
        )
        .await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["images"].as_array().unwrap().len(), 6);
    let i = info(&body);
    assert_eq!(i["all_seeds"], json!([10, 11, 12, 13, 14, 15]));
    assert_eq!(t.backend.calls(), 3);
    for (k, text) in i["infotexts"].as_array().unwrap().iter().enumerate() {
        assert!(
            text.as_str()
                .unwrap()
                .contains(&format!("Seed: {}", 10 + k)),
            "{text}"
        );
    }
    // send_images: false answers without images but with the info.
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"steps": 2, "width": 64, "height": 64, "send_images": false}),
        )
        .await;
    assert_eq!(r.json()["images"], json!([]));
    assert_eq!(info(&r.json())["infotexts"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn enable_hr_runs_the_latent_second_pass() {
    let t = fake();
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "seed": 3, "steps": 6, "width": 64, "height": 96,
                   "enable_hr": true, "hr_scale": 2, "hr_upscaler": "Latent",
                   "denoising_strength": 0.5, "hr_second_pass_steps": 4}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let body = r.json();
    let bytes = unb64(body["images"][0].as_str().unwrap());
    assert_eq!(decode_image(&bytes).unwrap().dimensions(), (128, 192));
    let text = read_parameters(&bytes).unwrap();
    // A1111 names the first pass in Size and adds the hires keys.
    for part in [
        "Size: 64x96",
        "Denoising strength: 0.5",
        "Hires upscale: 2",
        "Hires steps: 4",
        "Hires upscaler: Latent",
    ] {
        assert!(text.contains(part), "{part} missing: {text}");
    }
    let i = info(&body);
    assert_eq!(
        (i["width"].as_u64(), i["height"].as_u64()),
        (Some(64), Some(96))
    );
    assert_eq!(i["denoising_strength"], 0.5);
    assert_eq!(i["extra_generation_params"]["Hires upscale"], 2.0);
    assert_eq!(i["extra_generation_params"]["Hires upscaler"], "Latent");
    let hr = t.backend.last_request().unwrap().hires().unwrap().clone();
    assert_eq!((hr.scale, hr.steps, hr.denoising_strength), (2.0, 4, 0.5));
}

#[tokio::test]
async fn img2img_takes_base64_or_data_urls_and_refuses_remote_urls() {
    let t = fake();
    let init = png(80, 80);
    for image in [b64(&init), format!("data:image/png;base64,{}", b64(&init))] {
        let r = t
            .post(
                "/sdapi/v1/img2img",
                json!({"init_images": [image], "denoising_strength": 0.5, "steps": 10,
                       "width": 64, "height": 64, "seed": 5, "prompt": "a rogue"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
        let body = r.json();
        let bytes = unb64(body["images"][0].as_str().unwrap());
        assert_eq!(decode_image(&bytes).unwrap().dimensions(), (64, 64));
        let text = read_parameters(&bytes).unwrap();
        assert!(text.contains("Denoising strength: 0.5"), "{text}");
        assert!(text.contains("Steps: 10"), "{text}");
        assert_eq!(info(&body)["denoising_strength"], 0.5);
        // A1111 leaves the init images out of the echo unless include_init_images is set.
        assert_eq!(body["parameters"]["init_images"], Value::Null);
        let last = t.backend.last_request().unwrap();
        assert_eq!(last.init_image().unwrap().dimensions(), (64, 64));
        assert_eq!(last.denoising_strength().unwrap(), 0.5);
    }
    let calls = t.backend.calls();
    let r = t
        .post(
            "/sdapi/v1/img2img",
            json!({"init_images": ["https://example.com/cat.png"]}),
        )
        .await;
    assert_eq!(r.status, 422);
    let e = r.json();
    assert_eq!(e["detail"][0]["loc"], json!(["body", "init_images", 0]));
    assert!(
        e["detail"][0]["msg"].as_str().unwrap().contains("remote"),
        "{e}"
    );
    assert!(e["errors"].as_str().unwrap().contains("remote"), "{e}");
    let r = t.post("/sdapi/v1/img2img", json!({"prompt": "x"})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["detail"][0]["loc"], json!(["body", "init_images"]));
    assert_eq!(
        t.backend.calls(),
        calls,
        "nothing was queued for refused requests"
    );
}

#[tokio::test]
async fn unsupported_fields_are_accepted_and_named_in_info() {
    let t = fake();
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"steps": 2, "width": 64, "height": 64, "restore_faces": true,
                   "controlnet_units": [{"model": "x"}], "subseed_strength": 0.3,
                   "alwayson_scripts": {"ADetailer": {"args": [true]}},
                   "enable_hr": true, "hr_upscaler": "R-ESRGAN 4x+", "hr_scale": 1.5,
                   "denoising_strength": 0.6, "hr_sampler_name": "DDIM"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let i = info(&r.json());
    let notes = i["limner_unsupported"].to_string();
    for field in [
        "restore_faces",
        "controlnet_units",
        "subseed_strength",
        "ADetailer",
        "hr_upscaler",
        "hr_sampler_name",
    ] {
        assert!(notes.contains(field), "{field} not named in {notes}");
    }
}

#[tokio::test]
async fn bad_input_is_a_422_in_a1111_shape() {
    let t = fake();
    for (body, loc) in [
        (json!({"steps": 0}), json!(["body", "steps"])),
        (json!({"width": 513}), json!(["body", "width"])),
        (json!({"steps": "many"}), json!(["body", "steps"])),
        (json!({"cfg_scale": 99}), json!(["body", "cfg_scale"])),
        (json!({"n_iter": 0}), json!(["body", "n_iter"])),
        // A1111's request field names, never the engine's ("sampler").
        (
            json!({"sampler_name": "Bogus"}),
            json!(["body", "sampler_name"]),
        ),
        (
            json!({"override_settings": {"sd_model_checkpoint": "nope"}}),
            json!(["body", "override_settings", "sd_model_checkpoint"]),
        ),
    ] {
        let r = t.post("/sdapi/v1/txt2img", body.clone()).await;
        assert_eq!(r.status, 422, "{body}");
        let e = r.json();
        assert_eq!(e["detail"][0]["loc"], loc, "{body}: {e}");
        assert!(e["detail"][0]["msg"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(e["errors"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(e["body"], "");
    }
    // Malformed JSON: 400, A1111's exception-handler keys.
    let r = t
        .send(
            axum::http::Request::builder()
                .method("POST")
                .uri("/sdapi/v1/txt2img")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    for key in ["error", "detail", "body", "errors"] {
        assert!(e.get(key).is_some(), "{key} missing in {e}");
    }
    assert_eq!(t.backend.calls(), 0);
}

fn slow(max_queued: usize) -> TestApp {
    build(Setup {
        backend: FakeBackend::new().with_step_delay(Duration::from_millis(20)),
        queue: QueueConfig {
            max_queued,
            concurrency: 1,
            ..QueueConfig::default()
        },
        auth: false,
    })
}

fn long_job() -> Value {
    json!({"steps": 150, "width": 64, "height": 64, "n_iter": 2, "seed": 1})
}

#[tokio::test]
async fn progress_interrupt_and_a_full_queue() {
    let t = slow(0);
    let idle = t.get("/sdapi/v1/progress").await.json();
    assert_eq!(idle["progress"], 0.0);
    assert_eq!(idle["state"]["job_count"], 0);
    let app = t.app.clone();
    let first =
        tokio::spawn(async move { support::post_to(app, "/sdapi/v1/txt2img", long_job()).await });
    let p = t.wait_running().await;
    assert_eq!(p["state"]["job"], "txt2img");
    assert_eq!(p["state"]["job_count"], 2);
    assert_eq!(p["state"]["sampling_steps"], 150);
    let progress = p["progress"].as_f64().unwrap();
    assert!(progress > 0.0 && progress <= 1.0, "{p}");
    assert!(p["eta_relative"].as_f64().is_some());
    assert!(p["current_task"].as_str().is_some());
    // No room: the queue holds no waiting jobs.
    let r = t.post("/sdapi/v1/txt2img", long_job()).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(r.json()["error"], "queue_full");
    // Interrupt: the running request answers 200 with what it finished (nothing yet).
    let r = t.post("/sdapi/v1/interrupt", json!({})).await;
    assert_eq!(r.status, 200);
    let r = first.await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.bytes));
    let body = r.json();
    let i = info(&body);
    assert_eq!(i["limner_interrupted"], true);
    assert!(body["images"].as_array().unwrap().len() < 2);
    assert_eq!(i["all_seeds"], json!([1, 2]));
    let idle = t.get("/sdapi/v1/progress").await.json();
    assert_eq!(idle["state"]["job_count"], 0);
}

#[tokio::test]
async fn progress_shows_the_latent_preview_as_current_image() {
    let t = slow(0);
    let app = t.app.clone();
    let run = tokio::spawn(async move {
        support::post_to(
            app,
            "/sdapi/v1/txt2img",
            json!({"steps": 150, "width": 128, "height": 64, "seed": 1}),
        )
        .await
    });
    t.wait_running().await;
    // The engine sends a preview every few steps; poll until one arrived.
    let mut preview = None;
    for _ in 0..400 {
        let p = t.get("/sdapi/v1/progress").await.json();
        if let Some(img) = p["current_image"].as_str() {
            preview = Some(img.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let png = unb64(&preview.expect("a running job shows a preview"));
    // One pixel per latent cell: an eighth of the output's size.
    assert_eq!(decode_image(&png).unwrap().dimensions(), (16, 8));
    let skipped = t
        .get("/sdapi/v1/progress?skip_current_image=true")
        .await
        .json();
    assert!(skipped["current_image"].is_null(), "{skipped}");
    assert!(skipped["state"]["sampling_step"].as_u64().unwrap() > 0);
    let bad = t.get("/sdapi/v1/progress?skip_current_image=maybe").await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.bytes));
    t.post("/sdapi/v1/interrupt", json!({})).await;
    assert_eq!(run.await.unwrap().status, 200);
}

#[tokio::test]
async fn skip_drops_the_current_batch_and_goes_on() {
    let t = slow(0);
    let app = t.app.clone();
    let job = json!({"steps": 30, "width": 64, "height": 64, "n_iter": 2, "seed": 1});
    let request =
        tokio::spawn(async move { support::post_to(app, "/sdapi/v1/txt2img", job).await });
    t.wait_running().await;
    assert_eq!(t.post("/sdapi/v1/skip", json!({})).await.status, 200);
    let r = request.await.unwrap();
    assert_eq!(r.status, 200);
    let body = r.json();
    let i = info(&body);
    assert_eq!(body["images"].as_array().unwrap().len(), 1);
    assert_eq!(i["limner_skipped_batches"], 1);
    assert_eq!(i["limner_interrupted"], false);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_job() {
    let t = slow(4);
    let app = t.app.clone();
    let request =
        tokio::spawn(async move { support::post_to(app, "/sdapi/v1/txt2img", long_job()).await });
    let p = t.wait_running().await;
    let id = p["current_task"].as_str().unwrap().to_string();
    request.abort();
    let _ = request.await;
    let mut state = None;
    for _ in 0..2000 {
        state = t.state.jobs.status(&id).map(|s| s.state);
        if state.is_some_and(|s| s.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(state, Some(JobState::Cancelled));
    assert_eq!(t.backend.completed(), 0);
}

#[tokio::test]
async fn options_set_the_default_checkpoint() {
    let t = fake();
    let o = t.get("/sdapi/v1/options").await.json();
    assert_eq!(o["sd_model_checkpoint"], "fake-model");
    // A1111 clients send titles or file names.
    let r = t
        .post(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "other.safetensors [0123456789]", "sd_vae": "Automatic"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        t.get("/sdapi/v1/options").await.json()["sd_model_checkpoint"],
        "other"
    );
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"steps": 1, "width": 64, "height": 64}),
        )
        .await;
    assert_eq!(info(&r.json())["sd_model_name"], "other");
    assert_eq!(t.backend.last_request().unwrap().model(), Some("other"));
    // override_settings wins for one request.
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"steps": 1, "width": 64, "height": 64,
                   "override_settings": {"sd_model_checkpoint": "fake-model"}}),
        )
        .await;
    assert_eq!(info(&r.json())["sd_model_name"], "fake-model");
    let r = t
        .post("/sdapi/v1/options", json!({"sd_model_checkpoint": "sdxl"}))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json()["detail"][0]["loc"],
        json!(["body", "sd_model_checkpoint"])
    );
}

#[tokio::test]
async fn list_endpoints_have_a1111_shapes() {
    let t = fake();
    let samplers = t.get("/sdapi/v1/samplers").await.json();
    let euler_a = samplers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Euler a")
        .expect("Euler a listed");
    assert!(euler_a["aliases"]
        .as_array()
        .unwrap()
        .contains(&json!("k_euler_a")));
    assert!(euler_a["options"].is_object());
    let schedulers = t.get("/sdapi/v1/schedulers").await.json();
    let karras = schedulers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "karras")
        .expect("karras listed");
    assert_eq!(karras["label"], "Karras");
    for key in ["aliases", "default_rho", "need_inner_model"] {
        assert!(karras.get(key).is_some(), "{key}");
    }
    let models = t.get("/sdapi/v1/sd-models").await.json();
    let titles: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["fake-model", "other"]);
    for key in ["model_name", "hash", "sha256", "filename", "config"] {
        assert!(models[0].get(key).is_some(), "{key}");
    }
    let up = t.get("/sdapi/v1/upscalers").await.json();
    assert_eq!(up[0]["name"], "None");
    let latent = t.get("/sdapi/v1/latent-upscale-modes").await.json();
    assert_eq!(latent, json!([{"name": "Latent"}]));
    assert_eq!(
        t.get("/sdapi/v1/scripts").await.json(),
        json!({"txt2img": [], "img2img": []})
    );
}

#[tokio::test]
async fn png_info_reads_our_images_and_a1111_text() {
    let t = fake();
    let r = t
        .post(
            "/sdapi/v1/txt2img",
            json!({"prompt": "an elf", "steps": 25, "cfg_scale": 8, "sampler_name": "Euler a",
                   "seed": 77, "width": 64, "height": 96}),
        )
        .await;
    let body = r.json();
    let image = body["images"][0].as_str().unwrap().to_string();
    let text = info(&body)["infotexts"][0].as_str().unwrap().to_string();
    let p = t
        .post(
            "/sdapi/v1/png-info",
            json!({"image": format!("data:image/png;base64,{image}")}),
        )
        .await
        .json();
    assert_eq!(p["info"], text);
    assert_eq!(p["items"]["parameters"], text);
    let parsed = &p["parameters"];
    assert_eq!(parsed["Prompt"], "an elf");
    assert_eq!(parsed["Steps"], "25");
    assert_eq!(parsed["Sampler"], "Euler a");
    assert_eq!(parsed["CFG scale"], "8");
    assert_eq!(parsed["Seed"], "77");
    assert_eq!(
        (parsed["Size-1"].as_str(), parsed["Size-2"].as_str()),
        (Some("64"), Some("96"))
    );
    // A PNG written by A1111 itself (tEXt chunk), with keys we do not model.
    let a1111 = "a castle\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 7, Size: 512x512, Model hash: 879db523c3, Model: dreamshaper_8, Version: v1.10.1";
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 2, 2);
        enc.set_color(png::ColorType::Rgb);
        enc.add_text_chunk("parameters".into(), a1111.into())
            .unwrap();
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0u8; 12]).unwrap();
    }
    let p = t
        .post("/sdapi/v1/png-info", json!({"image": b64(&bytes)}))
        .await
        .json();
    assert_eq!(p["info"], a1111);
    let parsed = &p["parameters"];
    assert_eq!(parsed["Prompt"], "a castle");
    assert_eq!(parsed["Sampler"], "DPM++ 2M");
    assert_eq!(parsed["Schedule type"], "Karras");
    assert_eq!(parsed["CFG scale"], "6.5");
    assert_eq!(parsed["Model hash"], "879db523c3");
    assert_eq!(parsed["Version"], "v1.10.1");
    // An image without parameters.
    let p = t
        .post("/sdapi/v1/png-info", json!({"image": b64(&png(8, 8))}))
        .await
        .json();
    assert_eq!(p, json!({"info": "", "items": {}, "parameters": {}}));
    let r = t
        .post("/sdapi/v1/png-info", json!({"image": "http://x/y.png"}))
        .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn auth_accepts_bearer_and_a1111_basic() {
    let t = build(Setup {
        auth: true,
        ..Setup::default()
    });
    let token = t.player_token.clone().unwrap();
    let r = t.get("/sdapi/v1/samplers").await;
    assert_eq!(r.status, 401);
    let e = r.json();
    assert!(
        e["detail"].as_str().is_some() && e["errors"].as_str().is_some(),
        "{e}"
    );
    let r = t
        .get_as("/sdapi/v1/samplers", Some(&format!("Bearer {token}")))
        .await;
    assert_eq!(r.status, 200);
    let r = t
        .get_as("/sdapi/v1/samplers", Some(&basic("anyone", &token)))
        .await;
    assert_eq!(r.status, 200);
    let r = t
        .get_as("/sdapi/v1/samplers", Some(&basic("anyone", "wrong")))
        .await;
    assert_eq!(r.status, 401);
    // One player's checkpoint choice is theirs alone.
    let t2 = build(Setup {
        backend: FakeBackend::new().with_model("other", Defaults::default()),
        auth: true,
        ..Setup::default()
    });
    let player2 = format!("Bearer {}", t2.player_token.clone().unwrap());
    let admin2 = format!("Bearer {}", t2.admin_token.clone().unwrap());
    let r = t2
        .post_as(
            "/sdapi/v1/options",
            json!({"sd_model_checkpoint": "other"}),
            Some(&player2),
        )
        .await;
    assert_eq!(r.status, 200);
    let mine = t2.get_as("/sdapi/v1/options", Some(&player2)).await.json();
    let theirs = t2.get_as("/sdapi/v1/options", Some(&admin2)).await.json();
    assert_eq!(mine["sd_model_checkpoint"], "other");
    assert_eq!(theirs["sd_model_checkpoint"], "fake-model");
}
