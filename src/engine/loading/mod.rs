//! Loading models: the architecture from the model's own config files, weights from diffusers
//! folders or single-file checkpoints (converted to diffusers names), onto one device.

pub mod checkpoint;
pub mod config;
pub mod model;
