//! Tests of the A1111 request models: defaults, notes for unsupported fields, hires mapping.

use super::*;
use serde_json::json;

fn txt(v: Value) -> Txt2ImgBody {
    let mut b: Txt2ImgBody = serde_json::from_value(v).unwrap();
    b.fill_defaults();
    b
}

#[test]
fn empty_body_takes_a1111_api_defaults() {
    let b = txt(json!({}));
    let (r, notes) = b.to_request().unwrap();
    assert_eq!(r.steps, Some(50));
    assert_eq!(r.cfg_scale, Some(7.0));
    assert_eq!((r.width, r.height), (Some(512), Some(512)));
    assert_eq!(r.sampler.as_deref(), Some("Euler"));
    assert_eq!(r.seed, Some(-1));
    assert_eq!(r.batch_size, Some(1));
    assert!(r.hires.is_none());
    assert!(notes.is_empty(), "{notes:?}");
    let echo = serde_json::to_value(&b).unwrap();
    assert_eq!(echo["sampler_index"], "Euler");
    assert_eq!(echo["denoising_strength"], 0.75);
    assert_eq!(echo["enable_hr"], false);
    assert_eq!(echo["send_images"], true);
}

#[test]
fn unknown_and_unsupported_fields_are_noted_not_refused() {
    let b = txt(json!({
        "restore_faces": true, "tiling": false, "styles": ["cinematic"],
        "controlnet_units": [], "scheduler": "Exponential", "eta": 0.5,
        "override_settings": {"sd_vae": "x.pt", "CLIP_stop_at_last_layers": 2, "sd_hypernetwork": "h"},
        "alwayson_scripts": {"ADetailer": {"args": [true]}}
    }));
    let (r, notes) = b.to_request().unwrap();
    let all = notes.join("\n");
    for field in [
        "restore_faces",
        "styles",
        "controlnet_units",
        "eta",
        "override_settings.sd_hypernetwork",
        "ADetailer",
    ] {
        assert!(all.contains(field), "{field} missing from {all}");
    }
    assert!(!all.contains("tiling"), "{all}");
    // sd_vae is applied (checked against the served VAEs by the caller), not noted.
    assert!(!all.contains("sd_vae"), "{all}");
    assert_eq!(b.common.vae_override().unwrap(), Some("x.pt"));
    // A1111's schedule types are all implemented, so the scheduler is passed on, not noted.
    assert!(!all.contains("scheduler"), "{all}");
    assert_eq!(r.scheduler.as_deref(), Some("Exponential"));
    assert_eq!(r.clip_skip, Some(2));
    assert!(serde_json::to_value(&b)
        .unwrap()
        .get("controlnet_units")
        .is_none());
}

#[test]
fn hires_fields_map_onto_the_latent_second_pass() {
    let b = txt(
        json!({"enable_hr": true, "hr_scale": 1.5, "denoising_strength": 0.4,
                       "hr_upscaler": "Latent (bicubic)", "hr_second_pass_steps": 7}),
    );
    let (r, notes) = b.to_request().unwrap();
    let h = r.hires.unwrap();
    assert_eq!(
        (h.scale, h.second_pass_steps, h.denoising_strength),
        (1.5, 7, 0.4)
    );
    assert!(
        notes.iter().any(|n| n.starts_with("hr_upscaler")),
        "{notes:?}"
    );
    // hr_resize_x alone keeps the aspect: 512x768 -> 768 wide = x1.5.
    let b = txt(json!({"enable_hr": true, "width": 512, "height": 768, "hr_resize_x": 768}));
    let (r, notes) = b.to_request().unwrap();
    assert_eq!(r.hires.unwrap().scale, 1.5);
    assert!(notes.is_empty(), "{notes:?}");
    // Legacy firstphase: first pass 256x384, final 512x768.
    let b = txt(json!({"enable_hr": true, "width": 512, "height": 768,
                       "firstphase_width": 256, "firstphase_height": 0}));
    let (r, _) = b.to_request().unwrap();
    assert_eq!((r.width, r.height), (Some(256), Some(384)));
    assert_eq!(r.hires.unwrap().scale, 2.0);
    // Without enable_hr, denoising_strength and hr fields change nothing.
    let b = txt(json!({"denoising_strength": 0.7, "hr_scale": 3}));
    assert!(b.to_request().unwrap().0.hires.is_none());
}

#[test]
fn out_of_range_counts_are_refused_naming_the_field() {
    for (body, field) in [
        (json!({"n_iter": 0}), "n_iter"),
        (json!({"n_iter": 99}), "n_iter"),
        (json!({"batch_size": 9}), "batch_size"),
        (
            json!({"override_settings": {"CLIP_stop_at_last_layers": "two"}}),
            "override_settings.CLIP_stop_at_last_layers",
        ),
    ] {
        let e = txt(body).to_request().unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field));
    }
    let mut b: Img2ImgBody = serde_json::from_value(json!({"resize_mode": 7})).unwrap();
    b.fill_defaults();
    assert_eq!(
        b.to_request().unwrap_err().field.as_deref(),
        Some("init_images")
    );
    b.init_images = Some(vec!["x".into()]);
    assert_eq!(
        b.to_request().unwrap_err().field.as_deref(),
        Some("resize_mode")
    );
}

#[test]
fn crop_and_resize_covers_then_cuts_the_middle() {
    // A 4x2 image, left half black, right half white, cropped to a square: the middle.
    let img = RgbImage::from_fn(40, 20, |x, _| image::Rgb([if x < 20 { 0 } else { 255 }; 3]));
    let out = crop_and_resize(&img, 16, 16);
    assert_eq!(out.dimensions(), (16, 16));
    assert!(out.get_pixel(0, 8).0[0] < 40);
    assert!(out.get_pixel(15, 8).0[0] > 215);
}
