//! Running one validated request on a loaded model: its LoRAs merged in, its embeddings
//! resolved, its noise seeded, and its images encoded with their infotext. Shared by the engine
//! thread and [`super::LocalModel`].

use super::embeddings::EmbeddingLibrary;
use super::error::{EngineError, Result};
use super::loading::model::StableDiffusion;
use super::noise::{NoiseSource, SeededNoise};
use super::pipeline::{CancelToken, Progress};
use super::pixels::{from_rgb_image, to_rgb_images};
use super::request::{GeneratedImage, GenerationResult, ValidRequest};

/// [`generate_on`] with `loras` merged into the model first (none = the base model, restored
/// exactly if an earlier request merged some); their hashes go into the infotext.
pub(crate) fn generate_with_loras(
    model: &mut StableDiffusion,
    embeddings: &EmbeddingLibrary,
    request: &ValidRequest,
    loras: &[crate::engine::lora::ResolvedLora],
    progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<GenerationResult> {
    model.apply_loras(loras)?;
    match model.lora_hashes(loras) {
        Some(hashes) => {
            let mut request = request.clone();
            request.infotext_extra.push(("Lora hashes".into(), hashes));
            generate_on(model, embeddings, &request, progress, cancel)
        }
        None => generate_on(model, embeddings, request, progress, cancel),
    }
}

/// Runs a validated request on a loaded model and encodes the images. Used by the engine
/// thread, [`super::LocalModel`] and the tests.
pub(crate) fn generate_on(
    model: &StableDiffusion,
    embeddings: &EmbeddingLibrary,
    request: &ValidRequest,
    progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<GenerationResult> {
    if request.seeds.is_empty() {
        return Err(EngineError::invalid(
            "batch_size",
            "a request needs at least one seed",
        ));
    }
    let mut job = request.job.clone();
    job.embeddings = embeddings.for_model(&model.text_widths(), request.embeddings())?;
    job.decoder = request.decoder().unwrap_or_default();
    if let Some(img) = &request.init_image {
        job.init_image = Some(from_rgb_image(img)?);
    }
    let mut noise: Vec<Box<dyn NoiseSource>> = request
        .seeds
        .iter()
        .map(|&s| Box::new(SeededNoise::new(s)) as Box<dyn NoiseSource>)
        .collect();
    let out = model.run(&job, &mut noise, progress, cancel)?;
    let pixels = to_rgb_images(&out.images)?;
    let images = pixels
        .into_iter()
        .zip(&request.seeds)
        .map(|(img, &seed)| {
            GeneratedImage::encode_with_embeddings(
                img,
                request,
                seed,
                &model.name,
                model.hash.as_deref(),
                &out.embeddings_used,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GenerationResult {
        images,
        model: model.name.clone(),
        sampler: job.sampler.display_name(),
        timings: out.timings,
    })
}
