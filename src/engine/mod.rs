//! The diffusion engine: loads Stable Diffusion models with candle and paints txt2img, img2img
//! and hires-fix images. Nothing here knows about HTTP or characters; callers talk to the engine
//! thread through [`worker::EngineHandle`] with typed requests.

pub mod cancel;
pub mod config;
pub mod device;
pub mod error;
pub mod infotext;
pub mod kernels;
pub mod loading;
pub mod memory;
pub mod models;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod request;
pub mod samplers;
pub mod text;
mod tiled;
pub mod worker;

pub use error::EngineError;
