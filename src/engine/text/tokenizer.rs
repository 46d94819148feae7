//! Our own CLIP byte-level BPE tokenizer, built from a Stable Diffusion repository's
//! `tokenizer/` folder (`vocab.json` + `merges.txt`, or one HF `tokenizer.json`).
//!
//! It reproduces what the Python `CLIPTokenizer` does when `ftfy` is installed (the setup
//! AUTOMATIC1111 runs): html-unescape, collapse whitespace, lowercase, split with CLIP's
//! pre-tokenizer regex, map bytes to printable unicode, then apply the merges by rank with a
//! `</w>` end-of-word marker. `ftfy`'s mojibake repair and NFC normalisation are not reproduced.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use regex::Regex;
use serde_json::Value;

use crate::engine::error::{EngineError, Result};

/// The beginning-of-text marker every CLIP prompt starts with.
const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text marker; CLIP also uses it as the unknown token.
const EOS_TOKEN: &str = "<|endoftext|>";
/// CLIP's pre-tokenizer: special markers, English contractions, letter runs, single digits and
/// runs of everything else that is not whitespace.
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// The Python tokenizer reads only this many merges from `merges.txt`
/// (`49152 - 256 - 2`); we do the same so an over-long file tokenizes identically.
const MAX_MERGES_TXT: usize = 49152 - 256 - 2;
/// Distinct words remembered by the BPE cache before it is emptied; prompts repeat words a lot,
/// but a long-running server must not grow without bound.
const CACHE_LIMIT: usize = 20_000;

/// Which token fills the positions after end-of-text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PadToken {
    /// `<|endoftext|>` (Stable Diffusion 1.x).
    #[default]
    EndOfText,
    /// A token looked up in the vocabulary, e.g. `"!"` (id 0) for SD 2.x / OpenCLIP.
    Token(String),
    /// A raw id.
    Id(u32),
}

/// A CLIP BPE tokenizer. Cheap to share: `encode` takes `&self` and caches words internally.
#[derive(Debug)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_encoder: [char; 256],
    pattern: Regex,
    bos: u32,
    eos: u32,
    pad: u32,
    comma: Option<u32>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl ClipTokenizer {
    /// Loads `vocab.json` and `merges.txt` (the layout of a diffusers `tokenizer/` folder).
    pub fn from_vocab_merges(vocab_json: &Path, merges_txt: &Path, pad: PadToken) -> Result<Self> {
        let vocab = read_file(vocab_json)?;
        let merges = read_file(merges_txt)?;
        Self::from_bytes_named(
            &vocab,
            &vocab_json.display().to_string(),
            &merges,
            &merges_txt.display().to_string(),
            pad,
        )
    }

    /// Builds a tokenizer from the bytes of `vocab.json` and `merges.txt`, so a default
    /// tokenizer can be embedded in the binary.
    pub fn from_bytes(vocab_json: &[u8], merges_txt: &[u8], pad: PadToken) -> Result<Self> {
        Self::from_bytes_named(vocab_json, "vocab.json", merges_txt, "merges.txt", pad)
    }

    fn from_bytes_named(
        vocab_json: &[u8],
        vocab_name: &str,
        merges_txt: &[u8],
        merges_name: &str,
        pad: PadToken,
    ) -> Result<Self> {
        let encoder: HashMap<String, u32> = serde_json::from_slice(vocab_json)
            .map_err(|e| model_err(vocab_name, format!("not a JSON map of token -> id: {e}")))?;
        let text = std::str::from_utf8(merges_txt)
            .map_err(|e| model_err(merges_name, format!("not UTF-8: {e}")))?;
        let mut merges = Vec::new();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (lineno == 0 && line.starts_with("#version")) {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
                _ => {
                    return Err(model_err(
                        merges_name,
                        format!("line {}: expected two symbols, got {line:?}", lineno + 1),
                    ))
                }
            }
            if merges.len() == MAX_MERGES_TXT {
                break;
            }
        }
        Self::build(encoder, merges, pad, vocab_name)
    }

    /// Loads a Hugging Face `tokenizer.json` (BPE model; merges as `"a b"` strings or `[a, b]`
    /// pairs; added tokens such as `<|endoftext|>` join the vocabulary).
    pub fn from_tokenizer_json(path: &Path, pad: PadToken) -> Result<Self> {
        let name = path.display().to_string();
        let bytes = read_file(path)?;
        let root: Value = serde_json::from_slice(&bytes)
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
        if let Some(suffix) = model.get("end_of_word_suffix").and_then(Value::as_str) {
            if suffix != "</w>" {
                return Err(model_err(
                    &name,
                    format!("end_of_word_suffix is {suffix:?}; only CLIP's \"</w>\" is supported"),
                ));
            }
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| model_err(&name, "model.vocab is missing or not an object"))?;
        let mut encoder = HashMap::with_capacity(vocab.len());
        for (token, id) in vocab {
            let id = as_id(id)
                .ok_or_else(|| model_err(&name, format!("model.vocab[{token:?}] is not an id")))?;
            encoder.insert(token.clone(), id);
        }
        let raw_merges = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| model_err(&name, "model.merges is missing or not a list"))?;
        let mut merges = Vec::with_capacity(raw_merges.len());
        for (i, merge) in raw_merges.iter().enumerate() {
            let pair = match merge {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(items) => match items.as_slice() {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            let pair = pair.ok_or_else(|| {
                model_err(
                    &name,
                    format!("model.merges[{i}] is neither \"a b\" nor [a, b]"),
                )
            })?;
            merges.push(pair);
        }
        // Special tokens usually live in `added_tokens` only; `encode` must still find them.
        if let Some(added) = root.get("added_tokens").and_then(Value::as_array) {
            for token in added {
                if let (Some(content), Some(id)) = (
                    token.get("content").and_then(Value::as_str),
                    token.get("id").and_then(as_id),
                ) {
                    encoder.entry(content.to_string()).or_insert(id);
                }
            }
        }
        Self::build(encoder, merges, pad, &name)
    }

    /// Loads the tokenizer of a model folder: `vocab.json` + `merges.txt` when both exist, else
    /// `tokenizer.json`. The pad token comes from `tokenizer_config.json` or
    /// `special_tokens_map.json` (`pad_token`), defaulting to `<|endoftext|>`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let pad = pad_from_config(dir)?;
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let single = dir.join("tokenizer.json");
        if vocab.is_file() && merges.is_file() {
            Self::from_vocab_merges(&vocab, &merges, pad)
        } else if single.is_file() {
            Self::from_tokenizer_json(&single, pad)
        } else {
            Err(model_err(
                &dir.display().to_string(),
                "no tokenizer found: expected vocab.json + merges.txt or tokenizer.json",
            ))
        }
    }

    fn build(
        encoder: HashMap<String, u32>,
        merges: Vec<(String, String)>,
        pad: PadToken,
        source: &str,
    ) -> Result<Self> {
        let lookup = |token: &str| {
            encoder.get(token).copied().ok_or_else(|| {
                model_err(
                    source,
                    format!("special token {token:?} is not in the vocabulary"),
                )
            })
        };
        let bos = lookup(BOS_TOKEN)?;
        let eos = lookup(EOS_TOKEN)?;
        let pad = match pad {
            PadToken::EndOfText => eos,
            PadToken::Token(token) => lookup(&token)?,
            PadToken::Id(id) => id,
        };
        let comma = encoder.get(",</w>").copied();
        // Later duplicates win, as in the Python `dict(zip(merges, range(...)))`.
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(rank, pair)| (pair, rank as u32))
            .collect();
        let pattern = Regex::new(CLIP_PATTERN).map_err(|e| model_err(source, e.to_string()))?;
        Ok(Self {
            encoder,
            ranks,
            byte_encoder: bytes_to_unicode(),
            pattern,
            bos,
            eos,
            pad,
            comma,
            cache: Mutex::new(HashMap::new()),
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

    /// Number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// The BPE ids of `text`, without begin/end markers and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = normalize(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&text) {
            let word = piece.as_str();
            if word == BOS_TOKEN || word == EOS_TOKEN {
                // Special markers typed into a prompt map straight to their ids, as the Python
                // tokenizer's cache does.
                ids.push(if word == BOS_TOKEN {
                    self.bos
                } else {
                    self.eos
                });
                continue;
            }
            let mapped: String = word
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            ids.extend(self.bpe_ids(&mapped));
        }
        ids
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

    /// The ids of one pre-tokenized, byte-mapped word, from the cache when possible.
    fn bpe_ids(&self, word: &str) -> Vec<u32> {
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ids) = cache.get(word) {
                return ids.clone();
            }
        }
        let ids: Vec<u32> = self
            .bpe(word)
            .iter()
            // CLIP's unknown token is <|endoftext|>; every single byte symbol is in the
            // vocabulary, so this only triggers with a damaged vocab.
            .map(|sym| self.encoder.get(sym).copied().unwrap_or(self.eos))
            .collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_string(), ids.clone());
        ids
    }

    /// Merges the symbols of `word` (last one marked `</w>`) by rank until no pair merges.
    fn bpe(&self, word: &str) -> Vec<String> {
        let mut symbols: Vec<String> = word.chars().map(String::from).collect();
        match symbols.last_mut() {
            Some(last) => last.push_str("</w>"),
            None => return Vec::new(),
        }
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0].clone(), w[1].clone())))
                .min()
                .copied();
            let Some(best) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&best)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        symbols
    }
}

/// `pad_token` from the model's tokenizer config, if it names one.
fn pad_from_config(dir: &Path) -> Result<PadToken> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            continue;
        }
        let name = path.display().to_string();
        let bytes = read_file(&path)?;
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|e| model_err(&name, format!("malformed JSON: {e}")))?;
        // Either "pad_token": "!" or the serialized AddedToken {"content": "!", ...}.
        let pad = match config.get("pad_token") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        if let Some(pad) = pad {
            return Ok(if pad == EOS_TOKEN {
                PadToken::EndOfText
            } else {
                PadToken::Token(pad.to_string())
            });
        }
    }
    Ok(PadToken::EndOfText)
}

/// What CLIP does to a prompt before splitting it: html entities decoded (twice, like
/// `basic_clean`), control characters dropped, whitespace collapsed and trimmed, lowercased.
fn normalize(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control() || c.is_whitespace())
        .collect();
    cleaned
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The common html entities (`&amp;` `&lt;` `&gt;` `&quot;` `&apos;` `&nbsp;` and numeric
/// `&#39;` / `&#x27;`); anything else is left as written.
fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => entity.strip_prefix('#').and_then(|num| {
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => num.parse::<u32>().ok(),
                    };
                    code.and_then(char::from_u32)
                }),
            };
            c.map(|c| (c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// GPT-2/CLIP's reversible map from bytes to printable characters: printable Latin-1 bytes map
/// to themselves, the rest to code points from 256 upwards, in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        // All codes are below 0x200, so they are valid scalar values.
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

fn as_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| model_err(&path.display().to_string(), format!("cannot read: {e}")))
}

fn model_err(file: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("tokenizer {file}: {message}"))
}

#[cfg(test)]
#[path = "tokenizer_tests.rs"]
pub(crate) mod tests;
