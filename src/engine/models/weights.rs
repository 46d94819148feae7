//! A visitor over the named weight matrices of the UNet and the text encoders, by diffusers'
//! module names (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`), so LoRA merging
//! can swap one layer's weight for a merged copy and later put the very same original tensor
//! back (an `Arc` clone: the base model returns bit for bit, nothing is ever subtracted).
//!
//! Only layers a LoRA can target are visited: linear projections and convolutions. Norms,
//! embeddings and biases are not.

use candle_core::{Result, Tensor};

/// How a visited weight is stored, which is how a LoRA delta must be laid out to add to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// A linear weight kept transposed, `(in, out)` ([`super::layers::Linear`]).
    LinearT,
    /// A linear weight as stored by PyTorch, `(out, in)` (candle's `Linear`, the CLIP encoder).
    Linear,
    /// A convolution kernel `(out, in, kh, kw)`, contiguous.
    Conv,
}

/// Called once per weight with its full module name, layout and current tensor; a returned
/// tensor replaces it (same shape, dtype and device).
pub type WeightFn<'a> = dyn FnMut(&str, WeightLayout, &Tensor) -> Result<Option<Tensor>> + 'a;

/// A model part whose LoRA-targetable weights can be visited.
pub trait VisitWeights {
    /// Visits every weight under `prefix` (a module path ending in `.`, or empty).
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()>;
}

impl<T: VisitWeights> VisitWeights for Option<T> {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        match self {
            Some(inner) => inner.visit_weights(prefix, f),
            None => Ok(()),
        }
    }
}

/// Visits `child` under `prefix` + `name` + `.`.
pub fn visit_child(
    child: &mut dyn VisitWeights,
    prefix: &str,
    name: &str,
    f: &mut WeightFn,
) -> Result<()> {
    child.visit_weights(&format!("{prefix}{name}."), f)
}

/// Visits one tensor named `prefix` without its trailing `.`, replacing it if asked.
pub fn visit_tensor(
    tensor: &mut Tensor,
    prefix: &str,
    layout: WeightLayout,
    f: &mut WeightFn,
) -> Result<()> {
    let name = prefix.strip_suffix('.').unwrap_or(prefix);
    if let Some(new) = f(name, layout, tensor)? {
        if new.dims() != tensor.dims() {
            candle_core::bail!(
                "{name}: replacement weight {:?} for {:?}",
                new.dims(),
                tensor.dims()
            );
        }
        *tensor = new;
    }
    Ok(())
}

impl VisitWeights for candle_nn::Linear {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        let mut weight = self.weight().clone();
        let before = weight.id();
        visit_tensor(&mut weight, prefix, WeightLayout::Linear, f)?;
        if weight.id() != before {
            *self = candle_nn::Linear::new(weight, self.bias().cloned());
        }
        Ok(())
    }
}
