//! diffusers' `ResnetBlock2D`, shared by the UNet (with a timestep embedding) and the VAE
//! (without one): GroupNorm+SiLU, conv, (+ time projection), GroupNorm+SiLU, conv, + shortcut.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Conv2d, GroupNorm, Linear};
use super::weights::{visit_child, VisitWeights, WeightFn};

#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// What shapes one block.
#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub cin: usize,
    pub cout: usize,
    /// Width of the timestep embedding, None for the VAE.
    pub temb: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, c: ResnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), c.groups, c.cin, c.eps)?,
            conv1: Conv2d::same3(vb.pp("conv1"), c.cin, c.cout)?,
            time_emb_proj: match c.temb {
                Some(t) => Some(Linear::new(vb.pp("time_emb_proj"), t, c.cout, true)?),
                None => None,
            },
            norm2: GroupNorm::new(vb.pp("norm2"), c.groups, c.cout, c.eps)?,
            conv2: Conv2d::same3(vb.pp("conv2"), c.cout, c.cout)?,
            conv_shortcut: if c.cin != c.cout {
                Some(Conv2d::pointwise(vb.pp("conv_shortcut"), c.cin, c.cout)?)
            } else {
                None
            },
            output_scale_factor: c.output_scale_factor,
        })
    }

    /// `temb_silu` is `silu(temb)`, computed once per UNet call rather than once per block.
    pub fn forward(&self, x: &Tensor, temb_silu: Option<&Tensor>) -> Result<Tensor> {
        let _span = tracing::trace_span!("resnet").entered();
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_silu) {
            h = h.broadcast_add(&proj.forward(t)?.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let y = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(y)
        } else {
            y / self.output_scale_factor
        }
    }
}

impl VisitWeights for ResnetBlock2D {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_child(&mut self.conv1, prefix, "conv1", f)?;
        visit_child(&mut self.time_emb_proj, prefix, "time_emb_proj", f)?;
        visit_child(&mut self.conv2, prefix, "conv2", f)?;
        visit_child(&mut self.conv_shortcut, prefix, "conv_shortcut", f)
    }
}
