//! The diffusion engine: loads Stable Diffusion models with candle and paints txt2img, img2img
//! and hires-fix images. Nothing here knows about HTTP or characters; callers talk to the engine
//! thread through [`worker::EngineHandle`] with typed requests.

pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod device;
pub mod error;
pub mod infotext;
pub mod model;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod request;
pub mod samplers;
pub mod text;
mod tiled;
pub mod vae;
pub mod worker;

pub use error::EngineError;
