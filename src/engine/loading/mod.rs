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

/// Freshly drawn weights for any name at the real shapes: benchmarks' `random:` models and
/// their TAESD.
pub(crate) fn random_builder(
    dtype: candle_core::DType,
    device: &candle_core::Device,
) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(weights::RandomWeights), dtype, device.clone())
}
