//! Loading models: the architecture from the model's own config files (see `engine::architecture`),
//! weights from diffusers
//! folders or single-file checkpoints (converted to diffusers names), onto one device.

pub mod checkpoint;
pub mod model;
pub mod model_hash;
#[cfg(test)]
mod vae_override_tests;
mod weights;
