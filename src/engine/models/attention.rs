//! diffusers' `Attention` (to_q, to_k, to_v, to_out.0) on the memory-efficient kernel, for the
//! UNet's self- and cross-attention and the VAE's mid-block attention.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::layers::{GroupNorm, Linear};
use super::weights::{visit_child, VisitWeights, WeightFn};
use crate::engine::kernels;

#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `context_dim` is the key/value input width (the query's own for self-attention);
    /// `qkv_bias` is false in the UNet, true in the VAE.
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: Linear::new(vb.pp("to_q"), query_dim, inner, qkv_bias)?,
            to_k: Linear::new(vb.pp("to_k"), context_dim, inner, qkv_bias)?,
            to_v: Linear::new(vb.pp("to_v"), context_dim, inner, qkv_bias)?,
            to_out: Linear::new(vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    /// `x`: (B, N, query_dim); `context`: (B, M, context_dim), None for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let kv = context.unwrap_or(x);
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(kv)?;
        let v = self.to_v.forward(kv)?;
        let out = {
            let _span = tracing::trace_span!("attention").entered();
            kernels::attention(&q, &k, &v, self.heads, self.scale)?
        };
        self.to_out.forward(&out)
    }
}

impl VisitWeights for Attention {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_child(&mut self.to_q, prefix, "to_q", f)?;
        visit_child(&mut self.to_k, prefix, "to_k", f)?;
        visit_child(&mut self.to_v, prefix, "to_v", f)?;
        visit_child(&mut self.to_out, prefix, "to_out.0", f)
    }
}

/// The VAE's mid-block attention: GroupNorm, one head over all channels, residual.
#[derive(Debug, Clone)]
pub struct SpatialSelfAttention {
    norm: GroupNorm,
    attn: Attention,
}

impl SpatialSelfAttention {
    pub fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        // Older VAE weights name the projections query/key/value/proj_attn.
        let attn = if vb.contains_tensor("to_q.weight") {
            Attention::new(vb.clone(), channels, channels, 1, channels, true)?
        } else {
            let legacy = vb.clone().rename_f(|name: &str| {
                name.replace("to_q.", "query.")
                    .replace("to_k.", "key.")
                    .replace("to_v.", "value.")
                    .replace("to_out.0.", "proj_attn.")
            });
            Attention::new(legacy, channels, channels, 1, channels, true)?
        };
        Ok(Self {
            norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, eps)?,
            attn,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let y = self.attn.forward(&tokens, None)?;
        let y = y.transpose(1, 2)?.reshape((b, c, h, w))?;
        y + x
    }
}
