//! The diffusion engine: loads Stable Diffusion models with candle and paints txt2img, img2img
//! and hires-fix images. Nothing here knows about HTTP or characters.
//!
//! The whole public surface is re-exported here; every submodule is private to the crate, and no
//! candle type appears in it. A [`GenerationRequest`] (init image as decoded pixels) is validated
//! into a [`ValidRequest`], runs on the engine thread behind an [`Engine`] (or, for one-shot
//! CLI runs, on a [`LocalModel`]), reports [`Progress`] (with optional latent previews) and
//! comes back as a [`GenerationResult`] of [`GeneratedImage`]s.

pub(crate) mod architecture;
pub(crate) mod cancel;
pub(crate) mod conditioning;
pub(crate) mod device;
pub(crate) mod embeddings;
pub(crate) mod error;
mod generate;
pub(crate) mod guidance;
pub(crate) mod infotext;
pub(crate) mod kernel_cases;
pub(crate) mod kernels;
pub(crate) mod loading;
mod local;
pub(crate) mod lora;
pub(crate) mod memory;
pub(crate) mod models;
pub(crate) mod network_info;
pub(crate) mod networks;
pub(crate) mod noise;
pub(crate) mod output;
#[doc(hidden)]
pub mod parity;
pub(crate) mod pipeline;
pub(crate) mod pixels;
mod preview;
pub(crate) mod request;
pub(crate) mod samplers;
pub(crate) mod taesd;
pub(crate) mod text;
mod tiled;
pub(crate) mod vae;
mod valid;
pub(crate) mod worker;

#[cfg(test)]
mod conditioning_tests;
#[cfg(test)]
mod embedding_cond_tests;
#[cfg(test)]
mod facade_tests;
#[cfg(test)]
mod taesd_tests;
#[cfg(test)]
mod tokenizer_reference_tests;
#[cfg(test)]
mod unet_variant_tests;

pub use cancel::CancelToken;
pub use embeddings::EmbeddingInfo;
pub use error::EngineError;
pub use infotext::InfoText;
pub use kernel_cases::{kernel_cases, KernelCase};
pub use loading::model::ModelSource;
pub use loading::model_hash::{sha256_file, HashCache, ModelHash};
pub use local::{LocalModel, UnetTimings};
pub use lora::LoraUse;
pub use memory::{parse_size, resolve_limit as memory_limit};
pub use network_info::safetensors_metadata;
pub use networks::{
    find_network, scan_network_dir, LoraRef, NetworkFile, EMBEDDING_DIR, LORA_DIR, MAX_LORAS,
    MAX_LORA_WEIGHT,
};
pub use output::{
    decode_image, encode_image, read_parameters, read_png_parameters, thumbnail, ImageFormat,
};
pub use pipeline::{HiresPass, Progress, Timings};
pub use request::{Defaults, GeneratedImage, GenerationRequest, GenerationResult, HiresRequest};
pub use samplers::ScheduleOverride;
pub use taesd::{Decoder, TaesdPaths, TaesdSource, TAESDXL_DIR, TAESD_DIR};
pub use vae::{find_vae, locate_vae, match_vae_name, scan_vae_dir, VaeChoice, VaeFile, VAE_DIR};
pub use valid::{PassPlan, ValidRequest};
pub use worker::{Engine, EngineConfig, EngineState, ModelSpec};
