//! diffusers' `Transformer2DModel` with its `BasicTransformerBlock`s: the spatial transformer
//! that carries the UNet's self- and cross-attention. `depth` blocks per transformer is SDXL's
//! `transformer_layers_per_block`; `linear_projection` is SD 2.x's and SDXL's `proj_in`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::engine::kernels;
use crate::engine::models::attention::Attention;
use crate::engine::models::layers::{Conv2d, GroupNorm, Linear};
use crate::engine::models::weights::{visit_child, VisitWeights, WeightFn};

#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub channels: usize,
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj: Linear::new(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            out: Linear::new(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(x)?;
        let h = {
            let _span = tracing::trace_span!("geglu").entered();
            kernels::geglu(&h)?
        };
        self.out.forward(&h)
    }
}

#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: candle_nn::LayerNorm,
    attn1: Attention,
    norm2: candle_nn::LayerNorm,
    attn2: Attention,
    norm3: candle_nn::LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        let head_dim = dim / heads;
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        Ok(Self {
            norm1: ln("norm1")?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim, false)?,
            norm2: ln("norm2")?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim, false)?,
            norm3: ln("norm3")?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

#[derive(Debug, Clone)]
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub fn new(vb: VarBuilder, c: TransformerConfig) -> Result<Self> {
        let dim = c.channels;
        let proj = |name: &str| -> Result<Projection> {
            Ok(if c.linear_projection {
                Projection::Linear(Linear::new(vb.pp(name), dim, dim, true)?)
            } else {
                Projection::Conv(Conv2d::pointwise(vb.pp(name), dim, dim)?)
            })
        };
        let blocks = (0..c.depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp(format!("transformer_blocks.{i}")),
                    dim,
                    c.heads,
                    c.context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(vb.pp("norm"), c.groups, dim, 1e-6)?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("transformer").entered();
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(normed)?.contiguous()?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let to_map = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous();
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(tokens)?)?,
            Projection::Linear(lin) => to_map(lin.forward(&tokens)?)?,
        };
        out + x
    }
}

impl VisitWeights for FeedForward {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        // GEGLU's two halves are one Linear of 2 * inner here, as in diffusers, so a LoRA's
        // delta covers both halves unsliced.
        visit_child(&mut self.proj, prefix, "net.0.proj", f)?;
        visit_child(&mut self.out, prefix, "net.2", f)
    }
}

impl VisitWeights for BasicTransformerBlock {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_child(&mut self.attn1, prefix, "attn1", f)?;
        visit_child(&mut self.attn2, prefix, "attn2", f)?;
        visit_child(&mut self.ff, prefix, "ff", f)
    }
}

impl VisitWeights for Projection {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        match self {
            Projection::Conv(conv) => conv.visit_weights(prefix, f),
            Projection::Linear(lin) => lin.visit_weights(prefix, f),
        }
    }
}

impl VisitWeights for Transformer2D {
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> Result<()> {
        visit_child(&mut self.proj_in, prefix, "proj_in", f)?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            visit_child(block, prefix, &format!("transformer_blocks.{i}"), f)?;
        }
        visit_child(&mut self.proj_out, prefix, "proj_out", f)
    }
}
