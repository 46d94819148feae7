//! Loading models: the architecture from the model's own config files (see `engine::architecture`),
//! weights from diffusers
//! folders or single-file checkpoints (converted to diffusers names), onto one device.

pub mod checkpoint;
#[cfg(test)]
mod load_tests;
pub mod model;
pub mod model_hash;
mod presets;
mod weights;
