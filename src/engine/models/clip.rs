//! Our own CLIP text encoder (transformers' `CLIPTextModel`), built from the model's
//! `config.json`. candle ships two CLIPs, but one has private config fields (presets only) and
//! the other only quick_gelu, so SD 2.x (gelu) and non-standard encoders need this one.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

use crate::engine::architecture::{ClipActivation, ClipConfig};
use crate::engine::error::Result;

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q: linear(h, h, vb.pp("q_proj"))?,
            k: linear(h, h, vb.pp("k_proj"))?,
            v: linear(h, h, vb.pp("v_proj"))?,
            out: linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            x.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q.forward(xs)? * scale)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        self.out.forward(&out)
    }
}

struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl Layer {
    fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            ln1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            attn: Attention::new(vb.pp("self_attn"), cfg)?,
            ln2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, cfg.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(cfg.intermediate_size, h, vb.pp("mlp.fc2"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.ln1.forward(xs)?, mask)?)?;
        let h = self.fc1.forward(&self.ln2.forward(&xs)?)?;
        let h = match self.act {
            ClipActivation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            ClipActivation::Gelu => h.gelu_erf()?,
        };
        xs + self.fc2.forward(&h)?
    }
}

/// The CLIP text transformer: token ids -> last hidden state after the final layer norm.
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    max_positions: usize,
    dtype: DType,
}

impl ClipTextModel {
    /// Builds the encoder; accepts weights with or without transformers' `text_model.` prefix.
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let token_embedding =
            embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = emb.get(
            (cfg.max_position_embeddings, cfg.hidden_size),
            "position_embedding.weight",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            max_positions: cfg.max_position_embeddings,
            dtype: vb.dtype(),
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Encodes `[batch, seq]` ids. `skip` > 0 stops that many layers early (A1111's "Clip skip"
    /// minus one); the final layer norm is applied either way, as A1111 does.
    pub fn forward(&self, ids: &Tensor, skip: usize) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        let device = ids.device();
        let positions = self.position_embedding.narrow(0, 0, seq)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&positions)?;
        let mask = causal_mask(seq, device, self.dtype)?;
        let keep = self.layers.len().saturating_sub(skip).max(1);
        for layer in &self.layers[..keep] {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(self.final_layer_norm.forward(&xs)?)
    }
}

fn causal_mask(seq: usize, device: &Device, dtype: DType) -> candle_core::Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}

/// A1111's emphasis: scale each token's embedding by its weight, then restore the chunk's mean
/// so emphasis changes direction, not overall magnitude.
pub fn apply_weights(z: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.clone());
    }
    let (_, seq, _) = z.dims3()?;
    let dtype = z.dtype();
    let z32 = z.to_dtype(DType::F32)?;
    let w = Tensor::from_slice(weights, (1, seq, 1), z.device())?;
    let original_mean = z32.mean_all()?;
    let weighted = z32.broadcast_mul(&w)?;
    let new_mean = weighted.mean_all()?;
    let ratio = original_mean.div(&new_mean)?;
    Ok(weighted.broadcast_mul(&ratio)?.to_dtype(dtype)?)
}

/// Concatenates per-chunk embeddings along the sequence, as A1111 feeds long prompts.
pub fn concat_chunks(chunks: &[Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(chunks, D::Minus2)?)
}
