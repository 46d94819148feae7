//! TAESD on the tiny fixture model (tiny-sd15 with tests/fixtures/tiny-taesd): `decoder: taesd`
//! paints the final image with the TAESD, previews are TAESD decodes when the family has one
//! and the latent approximation when it has none, and `decoder: taesd` without one is refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};

use super::loading::model::{LoadOptions, ModelSource, StableDiffusion};
use super::noise::{NoiseSource, SeededNoise};
use super::pipeline::{CancelToken, Progress};
use super::preview::{preview_latents, PREVIEW_LATENT_SIDE};
use super::taesd::{load_original, TaesdPaths, TaesdSource};
use super::{Decoder, Defaults, Engine, EngineConfig, EngineError, GenerationRequest, ModelSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn with_taesd() -> TaesdPaths {
    TaesdPaths {
        sd: Some(TaesdSource::Path(fixtures().join("tiny-taesd/model"))),
        sdxl: None,
    }
}

fn engine(taesd: TaesdPaths, decoder: Decoder) -> Engine {
    let engine = Engine::spawn(EngineConfig {
        taesd,
        decoder,
        ..EngineConfig::cpu(ModelSpec {
            name: "tiny".into(),
            source: ModelSource::Folder(fixtures().join("tiny-sd15/model")),
            defaults: Defaults {
                steps: 3,
                width: 64,
                height: 96,
                ..Defaults::default()
            },
            schedule: Default::default(),
            vae: None,
        })
    })
    .unwrap();
    engine.wait_ready().unwrap();
    engine
}

fn request(decoder: Option<&str>) -> GenerationRequest {
    GenerationRequest {
        prompt: "a gnome bard".into(),
        seed: Some(5),
        preview_every: Some(1),
        decoder: decoder.map(str::to_string),
        ..Default::default()
    }
}

/// The final image and every preview of one run.
fn run(
    engine: &Engine,
    req: GenerationRequest,
) -> Result<(image::RgbImage, Vec<image::RgbImage>), EngineError> {
    let valid = req.validate(&engine.defaults(None).unwrap())?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let out = engine.generate(
        valid,
        move |p: Progress| s.lock().unwrap().extend(p.preview),
        CancelToken::new(),
    )?;
    let previews = seen.lock().unwrap().clone();
    Ok((out.images[0].pixels.clone(), previews))
}

fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn decoder_taesd_decodes_the_final_latents_with_the_taesd_itself() {
    let mut opts = LoadOptions::cpu();
    opts.taesd = with_taesd();
    let model = StableDiffusion::load(
        "tiny",
        &ModelSource::Folder(fixtures().join("tiny-sd15/model")),
        &opts,
    )
    .unwrap();
    let req = request(Some("taesd"))
        .validate(&Defaults {
            steps: 3,
            width: 64,
            height: 96,
            ..Defaults::default()
        })
        .unwrap();
    let mut job = req.job.clone();
    job.decoder = req.decoder().unwrap();
    let mut noise: Vec<Box<dyn NoiseSource>> = vec![Box::new(SeededNoise::new(5))];
    let out = model
        .run(&job, &mut noise, &mut |_| {}, &CancelToken::new())
        .unwrap();
    // The other layout, loaded on its own: decode(latents) straight, no 1/0.18215.
    let dir = fixtures().join("tiny-taesd/model");
    let own = load_original(
        &dir.join("taesd_decoder.safetensors"),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let want = own.decode(&out.latents).unwrap();
    let diff = (out.images.clone() - &want)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-4, "TAESD final decode differs by {diff}");
    let vae = model.decode(&out.latents).unwrap();
    let apart = (vae - &want).unwrap().abs().unwrap().mean_all().unwrap();
    assert!(
        apart.to_scalar::<f32>().unwrap() > 1e-3,
        "the VAE decoded it"
    );
}

#[test]
fn previews_are_taesd_decodes_when_the_family_has_one() {
    let taesd = engine(with_taesd(), Decoder::Vae);
    let (vae_image, previews) = run(&taesd, request(None)).unwrap();
    assert_eq!(previews.len(), 3);
    // 8x12 latent cells are under the preview limit: decoded whole, full pixel size.
    assert!(previews.iter().all(|p| p.dimensions() == (64, 96)));
    // With decoder taesd, the last preview (the final latents) is the final image.
    let (taesd_image, previews2) = run(&taesd, request(Some("taesd"))).unwrap();
    assert_eq!(max_diff(&taesd_image, &previews2[2]), 0);
    assert_eq!(max_diff(&previews[2], &previews2[2]), 0);
    assert!(
        max_diff(&vae_image, &taesd_image) > 0,
        "the VAE image is not TAESD's"
    );
    // The server's default decoder applies when a request names none.
    let default_taesd = engine(with_taesd(), Decoder::Taesd);
    let (image, _) = run(&default_taesd, request(None)).unwrap();
    assert_eq!(max_diff(&image, &taesd_image), 0);
    let (image, _) = run(&default_taesd, request(Some("vae"))).unwrap();
    assert_eq!(max_diff(&image, &vae_image), 0);
}

#[test]
fn without_a_taesd_previews_fall_back_and_decoder_taesd_is_refused() {
    let plain = engine(TaesdPaths::default(), Decoder::Vae);
    let (_, previews) = run(&plain, request(None)).unwrap();
    // The cheap approximation: one pixel per latent cell.
    assert!(previews.iter().all(|p| p.dimensions() == (8, 12)));
    match run(&plain, request(Some("taesd"))) {
        Err(EngineError::InvalidInput { field, message }) => {
            assert_eq!(field, "decoder");
            assert!(message.contains("limner pull taesd"), "{message}");
        }
        other => panic!("expected a decoder error, got {:?}", other.map(|_| ())),
    }
    match request(Some("tiny")).validate(&Defaults::default()) {
        Err(EngineError::InvalidInput { field, .. }) => assert_eq!(field, "decoder"),
        other => panic!("expected a decoder error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn previews_shrink_large_latents_to_a_small_image() {
    let dev = Device::Cpu;
    for ((h, w), want) in [
        ((64, 64), (32, 32)),
        ((96, 64), (32, 22)),
        ((128, 128), (32, 32)),
        ((12, 8), (12, 8)),
    ] {
        let z = candle_core::Tensor::randn(0f32, 1.0, (2, 4, h, w), &dev).unwrap();
        let small = preview_latents(&z).unwrap();
        assert_eq!(small.dims(), &[1, 4, want.0, want.1], "{h}x{w}");
        assert!(want.0.max(want.1) <= PREVIEW_LATENT_SIDE);
    }
    // An average of each 2x2 cell when the factor divides the sides.
    let z = candle_core::Tensor::arange(0f32, 16.0, &dev)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap()
        .repeat((1, 1, 16, 16))
        .unwrap();
    let small = preview_latents(&z).unwrap();
    assert_eq!(small.dims(), &[1, 1, 32, 32]);
    let first = small.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    assert_eq!(first, (0.0 + 1.0 + 4.0 + 5.0) / 4.0);
}
