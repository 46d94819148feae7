//! The CLIP tokenizer of a Stable Diffusion model: Hugging Face's own `tokenizers` pipeline,
//! configured exactly as transformers' `CLIPTokenizer` (5.x) configures it, from the model's
//! `tokenizer/` folder (`vocab.json` + `merges.txt` or `tokenizer.json`, with
//! `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json`).
//!
//! So the ids equal transformers' for every prompt, including special and added tokens typed
//! into the text (`<|endoftext|>`, a textual-inversion token, or SD 2.x's pad token `"!"`,
//! which is a special token there and so never merges with its neighbours): NFC, whitespace
//! runs to one space, lowercase; added tokens split out first; CLIP's pre-tokenizer regex;
//! byte-level mapping; BPE with the `</w>` end-of-word suffix.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{self, Lowercase, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::tokenizer_config::{as_id, model_err, read_file, TokenSettings, BOS_TOKEN, EOS_TOKEN};
use crate::engine::error::Result;

/// CLIP's pre-tokenizer: special markers, English contractions, letter runs, single digits and
/// runs of everything else that is not whitespace.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Which token fills the positions after end-of-text when a folder does not say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PadToken {
    /// `<|endoftext|>` (Stable Diffusion 1.x).
    #[default]
    EndOfText,
    /// A token of the vocabulary, e.g. `"!"` (id 0) for SD 2.x / OpenCLIP; like transformers,
    /// it then also counts as a special token inside prompts.
    Token(String),
}

impl PadToken {
    fn content(&self) -> &str {
        match self {
            PadToken::EndOfText => EOS_TOKEN,
            PadToken::Token(t) => t,
        }
    }
}

/// A CLIP tokenizer. Cheap to share: `encode` takes `&self` (the BPE caches words inside).
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    comma: Option<u32>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `vocab.json` and `merges.txt` with `CLIPTokenizer`'s default special tokens.
    #[cfg(test)]
    pub fn from_vocab_merges(vocab_json: &Path, merges_txt: &Path, pad: PadToken) -> Result<Self> {
        let vocab = read_file(vocab_json)?;
        let merges = read_file(merges_txt)?;
        let (vocab, merges) = parse_vocab_merges(
            &vocab,
            &vocab_json.display().to_string(),
            &merges,
            &merges_txt.display().to_string(),
        )?;
        let source = vocab_json.display().to_string();
        Self::build(
            vocab,
            merges,
            &TokenSettings::clip_defaults(pad.content()),
            &source,
        )
    }

    /// Builds a tokenizer from the bytes of `vocab.json` and `merges.txt`, so a default
    /// tokenizer can be embedded in the binary.
    pub fn from_bytes(vocab_json: &[u8], merges_txt: &[u8], pad: PadToken) -> Result<Self> {
        let (vocab, merges) =
            parse_vocab_merges(vocab_json, "vocab.json", merges_txt, "merges.txt")?;
        Self::build(
            vocab,
            merges,
            &TokenSettings::clip_defaults(pad.content()),
            "vocab.json",
        )
    }

    /// Loads the tokenizer of a model folder as transformers does: the vocabulary and merges
    /// of `tokenizer.json` when it exists, else `vocab.json` + `merges.txt`; special and added
    /// tokens from the config files (see [`super::tokenizer_config`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let (model, source) = if single.is_file() {
            (read_tokenizer_json(&single)?, single.display().to_string())
        } else if vocab.is_file() && merges.is_file() {
            let v = read_file(&vocab)?;
            let m = read_file(&merges)?;
            let vm = parse_vocab_merges(
                &v,
                &vocab.display().to_string(),
                &m,
                &merges.display().to_string(),
            )?;
            (vm, vocab.display().to_string())
        } else {
            return Err(model_err(
                &dir.display().to_string(),
                "no tokenizer found: expected vocab.json + merges.txt or tokenizer.json",
            ));
        };
        let settings = TokenSettings::from_dir(dir)?;
        Self::build(model.0, model.1, &settings, &source)
    }

    fn build(vocab: Vocab, merges: Merges, settings: &TokenSettings, source: &str) -> Result<Self> {
        let lib = |e: Box<dyn std::error::Error + Send + Sync>| model_err(source, e);
        // A special token must be in the vocabulary or be declared with an id of its own;
        // otherwise transformers would invent an id past the text encoder's embeddings.
        for key in ["bos_token", "eos_token", "pad_token"] {
            if let Some(token) = settings.named(key) {
                if !vocab.contains_key(token) && !settings.declares(token) {
                    return Err(model_err(
                        source,
                        format!("special token {token:?} ({key}) is not in the vocabulary"),
                    ));
                }
            }
        }
        let comma = vocab.get(",</w>").copied();
        let unk = settings.named("unk_token").unwrap_or(EOS_TOKEN).to_string();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .unk_token(unk)
            .build()
            .map_err(lib)?;
        let mut inner = Tokenizer::new(bpe);
        let normalizer = normalizers::Sequence::new(vec![
            NFC.into(),
            Replace::new(
                normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                " ",
            )
            .map_err(lib)?
            .into(),
            Lowercase.into(),
        ]);
        inner.with_normalizer(Some(normalizer)).map_err(lib)?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(lib)?;
        inner.with_pre_tokenizer(Some(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        let (first, second) = settings.batches();
        inner.add_tokens(first).map_err(lib)?;
        inner.add_special_tokens(second).map_err(lib)?;
        let id = |key: &str, default: &str| {
            let token = settings.named(key).unwrap_or(default);
            inner.token_to_id(token).ok_or_else(|| {
                model_err(
                    source,
                    format!("special token {token:?} is not in the vocabulary"),
                )
            })
        };
        Ok(Self {
            bos: id("bos_token", BOS_TOKEN)?,
            eos: id("eos_token", EOS_TOKEN)?,
            pad: id("pad_token", EOS_TOKEN)?,
            comma,
            inner,
        })
    }

    /// `<|startoftext|>`'s id (49406 for CLIP).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// `<|endoftext|>`'s id (49407 for CLIP).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The id that fills a sequence after end-of-text.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The id of `,</w>`, which A1111's chunking uses to pick a break point.
    pub fn comma_id(&self) -> Option<u32> {
        self.comma
    }

    /// Number of entries in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` without begin/end markers and without truncation
    /// (transformers' `add_special_tokens=False`), what A1111's chunker consumes.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.inner.encode(text, false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            // The pipeline has no failing step for UTF-8 input (the BPE maps unknown symbols to
            // the unk token), so this is unreachable in practice; an empty prompt is the
            // harmless answer.
            Err(e) => {
                tracing::warn!(error = %e, "tokenizer failed; treating the text as empty");
                Vec::new()
            }
        }
    }

    /// What a diffusers pipeline feeds the text encoder: begin marker, at most `max_len - 2`
    /// ids, end marker, then pad ids up to `max_len` (77 for Stable Diffusion).
    pub fn encode_padded(&self, text: &str, max_len: usize) -> Vec<u32> {
        let body = max_len.saturating_sub(2);
        let mut ids = Vec::with_capacity(max_len.max(2));
        ids.push(self.bos);
        ids.extend(self.encode(text).into_iter().take(body));
        ids.push(self.eos);
        while ids.len() < max_len {
            ids.push(self.pad);
        }
        ids
    }
}

/// `vocab.json` (token -> id) and `merges.txt` (`#version` line, then one `a b` per line), read
/// as the `tokenizers` library reads them.
fn parse_vocab_merges(
    vocab_json: &[u8],
    vocab_name: &str,
    merges_txt: &[u8],
    merges_name: &str,
) -> Result<(Vocab, Merges)> {
    let map: serde_json::Map<String, Value> = serde_json::from_slice(vocab_json)
        .map_err(|e| model_err(vocab_name, format!("not a JSON map of token -> id: {e}")))?;
    let vocab = vocab_from_map(&map, vocab_name)?;
    let text = std::str::from_utf8(merges_txt)
        .map_err(|e| model_err(merges_name, format!("not UTF-8: {e}")))?;
    let mut merges = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        if line.starts_with("#version") {
            continue;
        }
        match line.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => merges.push((a.to_string(), b.to_string())),
            _ => {
                return Err(model_err(
                    merges_name,
                    format!("line {}: expected two symbols, got {line:?}", lineno + 1),
                ))
            }
        }
    }
    Ok((vocab, merges))
}

fn vocab_from_map(map: &serde_json::Map<String, Value>, name: &str) -> Result<Vocab> {
    map.iter()
        .map(|(token, id)| {
            as_id(id)
                .map(|id| (token.clone(), id))
                .ok_or_else(|| model_err(name, format!("vocab[{token:?}] is not an id")))
        })
        .collect()
}

/// The BPE vocabulary and merges of a Hugging Face `tokenizer.json` (its pipeline settings are
/// not used: `CLIPTokenizer` always builds CLIP's own, and so do we).
fn read_tokenizer_json(path: &Path) -> Result<(Vocab, Merges)> {
    let name = path.display().to_string();
    let root: Value = serde_json::from_slice(&read_file(path)?)
        .map_err(|e| model_err(&name, format!("malformed JSON: {e}")))?;
    let model = root
        .get("model")
        .ok_or_else(|| model_err(&name, "no \"model\" object"))?;
    if let Some(kind) = model.get("type").and_then(Value::as_str) {
        if kind != "BPE" {
            return Err(model_err(
                &name,
                format!("model.type is {kind:?}, expected \"BPE\""),
            ));
        }
    }
    let vocab = match model.get("vocab") {
        Some(Value::Object(map)) => vocab_from_map(map, &name)?,
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let token = t.as_str().or_else(|| t.get(0).and_then(Value::as_str));
                token
                    .map(|t| (t.to_string(), i as u32))
                    .ok_or_else(|| model_err(&name, format!("model.vocab[{i}] is not a token")))
            })
            .collect::<Result<Vocab>>()?,
        _ => return Err(model_err(&name, "model.vocab is missing or not an object")),
    };
    let raw = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| model_err(&name, "model.merges is missing or not a list"))?;
    let mut merges = Vec::with_capacity(raw.len());
    for (i, merge) in raw.iter().enumerate() {
        let pair = match merge {
            Value::String(s) => s
                .split_once(' ')
                .filter(|(_, b)| !b.contains(' '))
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(items) => match items.as_slice() {
                [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            model_err(
                &name,
                format!("model.merges[{i}] is neither \"a b\" nor [a, b]"),
            )
        })?);
    }
    Ok((vocab, merges))
}

#[cfg(test)]
#[path = "tokenizer_tests.rs"]
pub(crate) mod tests;
