//! Our own CLIP text encoder (transformers' `CLIPTextModel`), built from the model's
//! `config.json`. candle ships two CLIPs, but one has private config fields (presets only) and
//! the other only quick_gelu, so SD 2.x (gelu) and non-standard encoders need this one.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

use crate::engine::architecture::{ClipActivation, ClipConfig};
use crate::engine::error::Result;
use crate::engine::models::weights::{visit_child, VisitWeights, WeightFn};
use crate::engine::text::ClipTokenizer;

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
    /// `CLIPTextModelWithProjection`'s `text_projection` (no bias), SDXL's second encoder.
    projection: Option<Linear>,
    max_positions: usize,
    dtype: DType,
}

/// SDXL's second encoder and its tokenizer (which pads with `!`, id 0).
pub struct SecondEncoder {
    pub tokenizer: ClipTokenizer,
    pub encoder: ClipTextModel,
}

/// What SDXL takes from one encoder.
pub struct HiddenOutput {
    /// The output of layer `layers - 1 - skip`, before the final layer norm
    /// (`hidden_states[-(skip + 2)]` in transformers' numbering).
    pub hidden: Tensor,
    /// `text_projection(final_layer_norm(last layer)[eos])`, with a projection only.
    pub pooled: Option<Tensor>,
}

impl ClipTextModel {
    /// Builds the encoder; accepts weights with or without transformers' `text_model.` prefix.
    /// A `text_projection.weight` beside `text_model.*` is loaded as the pooled projection.
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let projection = if vb.contains_tensor("text_projection.weight") {
            // The stored shape, else the config's (random weights have no stored shapes).
            let out = match vb.get_unchecked("text_projection.weight") {
                Ok(t) => t.dim(0)?,
                Err(_) => cfg.projection_dim.unwrap_or(cfg.hidden_size),
            };
            Some(candle_nn::linear_no_bias(
                cfg.hidden_size,
                out,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
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
            projection,
            max_positions: cfg.max_position_embeddings,
            dtype: vb.dtype(),
        })
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The width of its token embeddings (what a textual-inversion vector must match).
    pub fn width(&self) -> usize {
        self.position_embedding.dims().get(1).copied().unwrap_or(0)
    }

    /// Encodes `[batch, seq]` ids. `skip` > 0 stops that many layers early (A1111's "Clip skip"
    /// minus one); the final layer norm is applied either way, as A1111 does. `vectors` replace
    /// the token embeddings from their offsets on (textual inversion; batch 1 only).
    pub fn forward(
        &self,
        ids: &Tensor,
        skip: usize,
        vectors: &[(usize, Tensor)],
    ) -> Result<Tensor> {
        let keep = self.layers.len().saturating_sub(skip).max(1);
        let (xs, _) = self.run_layers(ids, vectors, keep, None)?;
        Ok(self.final_layer_norm.forward(&xs)?)
    }

    /// SDXL's reading of an encoder: see [`HiddenOutput`]. The pooled output, when there is a
    /// projection, always comes from the last layer whatever `skip` is, as in diffusers.
    pub fn forward_hidden(
        &self,
        ids: &Tensor,
        skip: usize,
        vectors: &[(usize, Tensor)],
    ) -> Result<HiddenOutput> {
        let n = self.layers.len();
        // 0 is the embeddings themselves (transformers' hidden_states[0]).
        let at = n.saturating_sub(1 + skip);
        let Some(projection) = &self.projection else {
            let (hidden, _) = self.run_layers(ids, vectors, at, None)?;
            return Ok(HiddenOutput {
                hidden,
                pooled: None,
            });
        };
        let (last, hidden) = self.run_layers(ids, vectors, n, Some(at))?;
        let hidden = hidden.unwrap_or_else(|| last.clone());
        let normed = self.final_layer_norm.forward(&last)?;
        // transformers takes argmax(ids): the first end-of-text id, the largest in the vocabulary.
        let rows = ids
            .to_dtype(DType::U32)?
            .to_vec2::<u32>()?
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let max = row.iter().copied().max().unwrap_or(0);
                let eos = row.iter().position(|&id| id == max).unwrap_or(0);
                normed.get(b)?.get(eos)?.unsqueeze(0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = projection.forward(&Tensor::cat(&rows, 0)?)?;
        Ok(HiddenOutput {
            hidden,
            pooled: Some(pooled),
        })
    }

    /// Embeds `ids` and runs the first `layers` layers; also returns the output after layer
    /// `keep_at` when asked.
    fn run_layers(
        &self,
        ids: &Tensor,
        vectors: &[(usize, Tensor)],
        layers: usize,
        keep_at: Option<usize>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (_, seq) = ids.dims2()?;
        let device = ids.device();
        let positions = self.position_embedding.narrow(0, 0, seq)?;
        let tokens = splice(self.token_embedding.forward(ids)?, vectors)?;
        let mut xs = tokens.broadcast_add(&positions)?;
        let mask = causal_mask(seq, device, self.dtype)?;
        let mut kept = (keep_at == Some(0)).then(|| xs.clone());
        for (i, layer) in self.layers[..layers].iter().enumerate() {
            xs = layer.forward(&xs, &mask)?;
            if keep_at == Some(i + 1) {
                kept = Some(xs.clone());
            }
        }
        Ok((xs, kept))
    }

    /// The token embeddings of `ids` `[ids, width]`: what a textual-inversion vector replaces.
    #[cfg(test)]
    pub fn token_vectors(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.position_embedding.device())?;
        Ok(self.token_embedding.forward(&ids)?)
    }

    /// Whether this encoder has a pooled projection (SDXL's second encoder).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }
}

/// `xs` `[1, seq, width]` with each `(offset, [n, width])` written over positions
/// `offset..offset + n`; the offsets must be increasing and not overlap.
fn splice(xs: Tensor, vectors: &[(usize, Tensor)]) -> Result<Tensor> {
    if vectors.is_empty() {
        return Ok(xs);
    }
    let (batch, seq, _) = xs.dims3()?;
    let mut parts = Vec::with_capacity(2 * vectors.len() + 1);
    let mut pos = 0;
    for (offset, v) in vectors {
        let n = v.dim(0)?;
        if batch != 1 || *offset < pos || offset + n > seq {
            return Err(crate::engine::error::EngineError::Tensor(format!(
                "embedding vectors at {offset}..{} do not fit a [{batch}, {seq}] prompt",
                offset + n
            )));
        }
        if *offset > pos {
            parts.push(xs.narrow(1, pos, offset - pos)?);
        }
        parts.push(
            v.to_device(xs.device())?
                .to_dtype(xs.dtype())?
                .unsqueeze(0)?,
        );
        pos = offset + n;
    }
    if pos < seq {
        parts.push(xs.narrow(1, pos, seq - pos)?);
    }
    Ok(Tensor::cat(&parts, 1)?)
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

impl VisitWeights for ClipTextModel {
    /// transformers' names without the `text_model.` prefix (diffusers strips it too):
    /// `encoder.layers.N.self_attn.{q,k,v,out}_proj`, `encoder.layers.N.mlp.fc{1,2}`.
    fn visit_weights(&mut self, prefix: &str, f: &mut WeightFn) -> candle_core::Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let p = format!("{prefix}encoder.layers.{i}.");
            let a = &mut layer.attn;
            visit_child(&mut a.q, &p, "self_attn.q_proj", f)?;
            visit_child(&mut a.k, &p, "self_attn.k_proj", f)?;
            visit_child(&mut a.v, &p, "self_attn.v_proj", f)?;
            visit_child(&mut a.out, &p, "self_attn.out_proj", f)?;
            visit_child(&mut layer.fc1, &p, "mlp.fc1", f)?;
            visit_child(&mut layer.fc2, &p, "mlp.fc2", f)?;
        }
        Ok(())
    }
}
