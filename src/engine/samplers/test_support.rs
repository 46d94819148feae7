//! What the samplers' unit tests share: SD 1.x's scheduler config, scalar tensors, setups,
//! reference numbers.

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::config::SchedulerConfig;
use super::names::SchedulerKind;
use super::stepper::Setup;

/// SD 1.x's `scheduler_config.json` (scaled-linear betas, steps offset 1).
pub(crate) fn sd() -> SchedulerConfig {
    SchedulerConfig {
        beta_start: 0.00085,
        beta_end: 0.012,
        beta_schedule: "scaled_linear".into(),
        steps_offset: 1,
        ..Default::default()
    }
}

/// A one-element f32 tensor.
pub(crate) fn scalar(v: f64) -> Tensor {
    Tensor::new(&[v as f32], &Device::Cpu).unwrap()
}

/// The first element of an f32 tensor.
pub(crate) fn value(t: &Tensor) -> f64 {
    t.to_vec1::<f32>().unwrap()[0] as f64
}

/// `steps` steps of `config` on the sampler's automatic schedule.
pub(crate) fn setup(config: &SchedulerConfig, steps: usize) -> Setup<'_> {
    Setup {
        config,
        steps,
        scheduler: SchedulerKind::Automatic,
    }
}

/// A JSON array of numbers (reference data).
pub(crate) fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}
