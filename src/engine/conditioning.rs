//! Prompt text -> the UNet's conditioning, for both families: SD 1.x/2.x's one CLIP encoder and
//! SDXL's two (CLIP-L and OpenCLIP-G, penultimate layers concatenated, pooled output from the
//! second). A1111's emphasis and 75-token chunks work the same way for both; `plain` prompts are
//! tokenized as diffusers does, which is what the parity tests compare with.

use candle_core::{Tensor, D};

use super::error::Result;
use super::loading::model::StableDiffusion;
use super::models::clip::{self, ClipTextModel};
use super::models::unet::AddedConditioning;
use super::text::{pad_to_same_chunks, tokenize_weighted, ClipTokenizer, PromptChunks};

/// One prompt's conditioning.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[1, 77 x chunks, context width]`.
    pub context: Tensor,
    /// SDXL's pooled text embedding `[1, pooled width]`; None for SD 1.x/2.x.
    pub pooled: Option<Tensor>,
}

impl Conditioning {
    /// The same shape, all zeros: SDXL's empty negative prompt (diffusers'
    /// `force_zeros_for_empty_prompt`, A1111's `force_zero_negative_prompt`).
    fn zeros_like(&self) -> Result<Self> {
        Ok(Self {
            context: self.context.zeros_like()?,
            pooled: self.pooled.as_ref().map(|p| p.zeros_like()).transpose()?,
        })
    }
}

/// A batch's conditioning as the UNet takes it: rows `[negatives..., positives...]` under CFG,
/// else the positives.
pub struct BatchConditioning {
    pub context: Tensor,
    pub pooled: Option<Tensor>,
}

impl BatchConditioning {
    /// Repeats each side `batch` times, the negative half first when `guided`.
    pub fn new(
        uncond: &Conditioning,
        cond: &Conditioning,
        batch: usize,
        guided: bool,
    ) -> Result<Self> {
        let rows = |t: &Tensor| -> Result<Tensor> {
            let mut reps = vec![1; t.rank()];
            reps[0] = batch;
            Ok(t.repeat(reps.as_slice())?)
        };
        let both = |u: &Tensor, c: &Tensor| -> Result<Tensor> {
            if guided {
                Ok(Tensor::cat(&[rows(u)?, rows(c)?], 0)?)
            } else {
                rows(c)
            }
        };
        Ok(Self {
            context: both(&uncond.context, &cond.context)?,
            pooled: match (&uncond.pooled, &cond.pooled) {
                (Some(u), Some(c)) => Some(both(u, c)?),
                _ => None,
            },
        })
    }

    /// The UNet's added conditioning for an image of `width` x `height`: diffusers' defaults,
    /// original size = target size = the image, crop (0, 0).
    pub fn added(&self, width: usize, height: usize) -> Option<AddedConditioning> {
        self.pooled.as_ref().map(|pooled| AddedConditioning {
            text_embeds: pooled.clone(),
            time_ids: [
                height as f64,
                width as f64,
                0.0,
                0.0,
                height as f64,
                width as f64,
            ],
        })
    }
}

impl StableDiffusion {
    /// Encodes one prompt. With `plain`, as diffusers does: raw text, one 77-token window.
    pub fn encode_prompt(
        &self,
        prompt: &str,
        clip_skip: usize,
        plain: bool,
    ) -> Result<Conditioning> {
        if plain {
            return self.encode_plain(prompt, clip_skip);
        }
        let chunks = tokenize_weighted(&self.tokenizer, prompt);
        let second = self
            .text_encoder_2
            .as_ref()
            .map(|s| tokenize_weighted(&s.tokenizer, prompt));
        self.encode_chunks(&chunks, second.as_ref(), clip_skip)
    }

    /// Encodes a (negative, positive) pair to the same length, as classifier-free guidance needs.
    /// An SDXL model with `force_zeros_for_empty_prompt` gets zeros for an empty negative.
    pub fn encode_pair(
        &self,
        negative: &str,
        prompt: &str,
        clip_skip: usize,
        plain: bool,
    ) -> Result<(Conditioning, Conditioning)> {
        let zero_negative = self.force_zeros_for_empty_prompt && negative.is_empty();
        if plain || zero_negative {
            let cond = self.encode_prompt(prompt, clip_skip, plain)?;
            let uncond = if zero_negative {
                cond.zeros_like()?
            } else {
                self.encode_plain(negative, clip_skip)?
            };
            return Ok((uncond, cond));
        }
        let mut neg = tokenize_weighted(&self.tokenizer, negative);
        let mut pos = tokenize_weighted(&self.tokenizer, prompt);
        pad_to_same_chunks(&self.tokenizer, &mut neg, &mut pos);
        let (neg2, pos2) = match &self.text_encoder_2 {
            Some(s) => {
                let mut n = tokenize_weighted(&s.tokenizer, negative);
                let mut p = tokenize_weighted(&s.tokenizer, prompt);
                pad_to_same_chunks(&s.tokenizer, &mut n, &mut p);
                (Some(n), Some(p))
            }
            None => (None, None),
        };
        Ok((
            self.encode_chunks(&neg, neg2.as_ref(), clip_skip)?,
            self.encode_chunks(&pos, pos2.as_ref(), clip_skip)?,
        ))
    }

    /// Encodes a prompt the way diffusers does: raw text, one 77-token window per encoder.
    pub fn encode_plain(&self, prompt: &str, clip_skip: usize) -> Result<Conditioning> {
        let ids = |tok: &ClipTokenizer, enc: &ClipTextModel| -> Result<Tensor> {
            let ids = tok.encode_padded(prompt, enc.max_positions());
            Ok(Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?)
        };
        let Some(second) = &self.text_encoder_2 else {
            let ids = ids(&self.tokenizer, &self.text_encoder)?;
            return Ok(Conditioning {
                context: self.text_encoder.forward(&ids, clip_skip)?,
                pooled: None,
            });
        };
        let first = self
            .text_encoder
            .forward_hidden(&ids(&self.tokenizer, &self.text_encoder)?, clip_skip)?;
        let other = second
            .encoder
            .forward_hidden(&ids(&second.tokenizer, &second.encoder)?, clip_skip)?;
        Ok(Conditioning {
            context: Tensor::cat(&[&first.hidden, &other.hidden], D::Minus1)?,
            pooled: other.pooled,
        })
    }

    /// Encodes one prompt's chunks into `[1, 77 x chunks, width]`, A1111-weighted. For SDXL
    /// (`second` = the same prompt through the second tokenizer) each encoder's output is
    /// weighted on its own, as A1111 wraps each embedder, and the pooled output is the first
    /// chunk's.
    fn encode_chunks(
        &self,
        chunks: &PromptChunks,
        second: Option<&PromptChunks>,
        clip_skip: usize,
    ) -> Result<Conditioning> {
        let ids =
            |ids: &[u32]| -> Result<Tensor> { Ok(Tensor::new(ids, &self.device)?.unsqueeze(0)?) };
        let mut parts = Vec::with_capacity(chunks.chunks.len());
        let mut pooled = None;
        match (&self.text_encoder_2, second) {
            (Some(enc2), Some(second)) => {
                for (a, b) in chunks.chunks.iter().zip(&second.chunks) {
                    let h1 = self.text_encoder.forward_hidden(&ids(&a.ids)?, clip_skip)?;
                    let h2 = enc2.encoder.forward_hidden(&ids(&b.ids)?, clip_skip)?;
                    if pooled.is_none() {
                        pooled = h2.pooled;
                    }
                    parts.push(Tensor::cat(
                        &[
                            clip::apply_weights(&h1.hidden, &a.weights)?,
                            clip::apply_weights(&h2.hidden, &b.weights)?,
                        ],
                        D::Minus1,
                    )?);
                }
            }
            _ => {
                for chunk in &chunks.chunks {
                    let z = self.text_encoder.forward(&ids(&chunk.ids)?, clip_skip)?;
                    parts.push(clip::apply_weights(&z, &chunk.weights)?);
                }
            }
        }
        Ok(Conditioning {
            context: clip::concat_chunks(&parts)?,
            pooled,
        })
    }
}
