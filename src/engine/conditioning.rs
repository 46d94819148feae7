//! Prompt text -> the UNet's conditioning, for both families: SD 1.x/2.x's one CLIP encoder and
//! SDXL's two (CLIP-L and OpenCLIP-G, penultimate layers concatenated, pooled output from the
//! second). A1111's emphasis and 75-token chunks work the same way for both; `plain` prompts are
//! tokenized as diffusers does, which is what the parity tests compare with.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::embeddings::Embedding;
use super::error::{EngineError, Result};
use super::loading::model::StableDiffusion;
use super::models::clip::{self, ClipTextModel};
use super::models::unet::AddedConditioning;
use super::text::{
    pad_to_same_chunks, plain_ids, tokenize_with_embeddings, ClipTokenizer, EmbeddingWords, Fix,
    PromptChunks,
};

/// One prompt's conditioning.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// `[1, 77 x chunks, context width]`.
    pub context: Tensor,
    /// SDXL's pooled text embedding `[1, pooled width]`; None for SD 1.x/2.x.
    pub pooled: Option<Tensor>,
    /// The embeddings the prompt used (indices into the list it was encoded with), in order of
    /// first use.
    pub used: Vec<usize>,
}

/// The embeddings a prompt may use, as each of the model's tokenizers finds their names.
struct PromptEmbeddings<'a> {
    list: &'a [Arc<Embedding>],
    words: EmbeddingWords,
    /// SDXL's second tokenizer.
    words2: Option<EmbeddingWords>,
}

impl PromptEmbeddings<'_> {
    /// The vectors `fixes` put into text encoder `encoder`'s input.
    fn vectors(&self, fixes: &[Fix], encoder: usize) -> Result<Vec<(usize, Tensor)>> {
        fixes
            .iter()
            .map(|f| {
                let v = self.list[f.embedding].vectors_for(encoder).ok_or_else(|| {
                    EngineError::Model(format!(
                        "embedding {} has no vectors for text encoder {}",
                        self.list[f.embedding].name,
                        encoder + 1
                    ))
                })?;
                Ok((f.offset, v.narrow(0, 0, f.len)?))
            })
            .collect()
    }
}

/// One encoder's input: ids, the embedding vectors spliced over them, and where they go.
type EncoderInput = (Tensor, Vec<(usize, Tensor)>, Vec<Fix>);

/// The embeddings `fixes` name, in order of first use.
fn used_in<'a>(fixes: impl IntoIterator<Item = &'a Fix>) -> Vec<usize> {
    let mut used = Vec::new();
    for f in fixes {
        if !used.contains(&f.embedding) {
            used.push(f.embedding);
        }
    }
    used
}

impl Conditioning {
    /// The same shape, all zeros: SDXL's empty negative prompt (diffusers'
    /// `force_zeros_for_empty_prompt`, A1111's `force_zero_negative_prompt`).
    fn zeros_like(&self) -> Result<Self> {
        Ok(Self {
            context: self.context.zeros_like()?,
            pooled: self.pooled.as_ref().map(|p| p.zeros_like()).transpose()?,
            used: Vec::new(),
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
    #[cfg(test)]
    pub fn encode_prompt(
        &self,
        prompt: &str,
        clip_skip: usize,
        plain: bool,
    ) -> Result<Conditioning> {
        self.encode_prompt_with(prompt, clip_skip, plain, &[])
    }

    /// The widths of the text encoders' token embeddings, in encoder order: what an embedding
    /// must match to be used with this model.
    pub fn text_widths(&self) -> Vec<usize> {
        let mut widths = vec![self.text_encoder.width()];
        if let Some(s) = &self.text_encoder_2 {
            widths.push(s.encoder.width());
        }
        widths
    }

    fn prompt_embeddings<'a>(&self, list: &'a [Arc<Embedding>]) -> PromptEmbeddings<'a> {
        let names = || list.iter().map(|e| (e.name.as_str(), e.shape.vectors));
        PromptEmbeddings {
            list,
            words: EmbeddingWords::new(&self.tokenizer, names()),
            words2: self
                .text_encoder_2
                .as_ref()
                .map(|s| EmbeddingWords::new(&s.tokenizer, names())),
        }
    }

    /// [`Self::encode_prompt`] where the names of `embeddings` (which must fit this model's
    /// text encoders) stand for their vectors.
    pub fn encode_prompt_with(
        &self,
        prompt: &str,
        clip_skip: usize,
        plain: bool,
        embeddings: &[Arc<Embedding>],
    ) -> Result<Conditioning> {
        let embs = self.prompt_embeddings(embeddings);
        if plain {
            return self.plain_with(prompt, clip_skip, &embs);
        }
        let chunks = tokenize_with_embeddings(&self.tokenizer, prompt, &embs.words);
        let second = self.second_chunks(prompt, &embs);
        self.encode_chunks(&chunks, second.as_ref(), clip_skip, &embs)
    }

    fn second_chunks(&self, prompt: &str, embs: &PromptEmbeddings) -> Option<PromptChunks> {
        let s = self.text_encoder_2.as_ref()?;
        let words = embs.words2.as_ref()?;
        Some(tokenize_with_embeddings(&s.tokenizer, prompt, words))
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
        self.encode_pair_with(negative, prompt, clip_skip, plain, &[])
    }

    /// [`Self::encode_pair`] with textual-inversion `embeddings` (see
    /// [`Self::encode_prompt_with`]); each side reports the ones it used.
    pub fn encode_pair_with(
        &self,
        negative: &str,
        prompt: &str,
        clip_skip: usize,
        plain: bool,
        embeddings: &[Arc<Embedding>],
    ) -> Result<(Conditioning, Conditioning)> {
        let zero_negative = self.force_zeros_for_empty_prompt && negative.is_empty();
        if plain || zero_negative {
            let cond = self.encode_prompt_with(prompt, clip_skip, plain, embeddings)?;
            let uncond = if zero_negative {
                cond.zeros_like()?
            } else {
                self.plain_with(negative, clip_skip, &self.prompt_embeddings(embeddings))?
            };
            return Ok((uncond, cond));
        }
        let embs = self.prompt_embeddings(embeddings);
        let mut neg = tokenize_with_embeddings(&self.tokenizer, negative, &embs.words);
        let mut pos = tokenize_with_embeddings(&self.tokenizer, prompt, &embs.words);
        pad_to_same_chunks(&self.tokenizer, &mut neg, &mut pos);
        let (neg2, pos2) = match (&self.text_encoder_2, &embs.words2) {
            (Some(s), Some(words)) => {
                let mut n = tokenize_with_embeddings(&s.tokenizer, negative, words);
                let mut p = tokenize_with_embeddings(&s.tokenizer, prompt, words);
                pad_to_same_chunks(&s.tokenizer, &mut n, &mut p);
                (Some(n), Some(p))
            }
            _ => (None, None),
        };
        Ok((
            self.encode_chunks(&neg, neg2.as_ref(), clip_skip, &embs)?,
            self.encode_chunks(&pos, pos2.as_ref(), clip_skip, &embs)?,
        ))
    }

    /// Encodes a prompt the way diffusers does: raw text, one 77-token window per encoder.
    pub fn encode_plain(&self, prompt: &str, clip_skip: usize) -> Result<Conditioning> {
        self.plain_with(prompt, clip_skip, &self.prompt_embeddings(&[]))
    }

    /// [`Self::encode_plain`] with embeddings: each name expands to its vectors, as diffusers'
    /// `load_textual_inversion` tokens do, inside the one 77-token window.
    fn plain_with(
        &self,
        prompt: &str,
        clip_skip: usize,
        embs: &PromptEmbeddings,
    ) -> Result<Conditioning> {
        let input = |tok: &ClipTokenizer,
                     enc: &ClipTextModel,
                     words: &EmbeddingWords,
                     encoder: usize|
         -> Result<EncoderInput> {
            let (ids, fixes) = plain_ids(tok, prompt, enc.max_positions(), words);
            let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
            Ok((ids, embs.vectors(&fixes, encoder)?, fixes))
        };
        let (ids, vectors, fixes) = input(&self.tokenizer, &self.text_encoder, &embs.words, 0)?;
        let used = used_in(&fixes);
        let (Some(second), Some(words2)) = (&self.text_encoder_2, &embs.words2) else {
            return Ok(Conditioning {
                context: self.text_encoder.forward(&ids, clip_skip, &vectors)?,
                pooled: None,
                used,
            });
        };
        let first = self
            .text_encoder
            .forward_hidden(&ids, clip_skip, &vectors)?;
        let (ids2, vectors2, _) = input(&second.tokenizer, &second.encoder, words2, 1)?;
        let other = second.encoder.forward_hidden(&ids2, clip_skip, &vectors2)?;
        Ok(Conditioning {
            context: Tensor::cat(&[&first.hidden, &other.hidden], D::Minus1)?,
            pooled: other.pooled,
            used,
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
        embs: &PromptEmbeddings,
    ) -> Result<Conditioning> {
        let ids =
            |ids: &[u32]| -> Result<Tensor> { Ok(Tensor::new(ids, &self.device)?.unsqueeze(0)?) };
        let mut parts = Vec::with_capacity(chunks.chunks.len());
        let mut pooled = None;
        match (&self.text_encoder_2, second) {
            (Some(enc2), Some(second)) => {
                for (a, b) in chunks.chunks.iter().zip(&second.chunks) {
                    let h1 = self.text_encoder.forward_hidden(
                        &ids(&a.ids)?,
                        clip_skip,
                        &embs.vectors(&a.fixes, 0)?,
                    )?;
                    let h2 = enc2.encoder.forward_hidden(
                        &ids(&b.ids)?,
                        clip_skip,
                        &embs.vectors(&b.fixes, 1)?,
                    )?;
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
                    let z = self.text_encoder.forward(
                        &ids(&chunk.ids)?,
                        clip_skip,
                        &embs.vectors(&chunk.fixes, 0)?,
                    )?;
                    parts.push(clip::apply_weights(&z, &chunk.weights)?);
                }
            }
        }
        Ok(Conditioning {
            context: clip::concat_chunks(&parts)?,
            pooled,
            used: used_in(chunks.chunks.iter().flat_map(|c| &c.fixes)),
        })
    }
}
