//! Reads a tokenizer folder's special and added tokens the way transformers' `CLIPTokenizer`
//! (5.x, `from_pretrained`) does, so the `tokenizers` pipeline built from them splits a prompt
//! on exactly the same added tokens, with the same flags, in the same order.
//!
//! Sources, in transformers' order: `tokenizer_config.json` (named special tokens, and
//! `added_tokens_decoder` when present); otherwise the legacy trio `special_tokens_map.json`,
//! `added_tokens.json` and `tokenizer.json`'s `added_tokens`.
//!
//! Also the markers and file helpers the tokenizer shares with it: `tokenizer.rs` builds on
//! this file, never the other way round.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::AddedToken;

use crate::engine::error::{EngineError, Result};

/// The beginning-of-text marker every CLIP prompt starts with.
pub(crate) const BOS_TOKEN: &str = "<|startoftext|>";
/// The end-of-text marker; CLIP also uses it as the unknown token.
pub(crate) const EOS_TOKEN: &str = "<|endoftext|>";

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| model_err(&path.display().to_string(), format!("cannot read: {e}")))
}

pub(crate) fn model_err(file: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::Model(format!("tokenizer {file}: {message}"))
}

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES`, in its order (the order tokens are added in,
/// which decides whose flags win when two names share one token).
const NAMED: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];
const EXTRA_KEYS: [&str; 2] = ["extra_special_tokens", "additional_special_tokens"];

/// A special token as a config names it: a bare string, or an `AddedToken` with its flags.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TokenValue {
    Plain(String),
    Token(AddedToken),
}

impl TokenValue {
    pub(crate) fn content(&self) -> &str {
        match self {
            TokenValue::Plain(s) => s,
            TokenValue::Token(t) => &t.content,
        }
    }

    /// What the backend finally registers for a special token: bare strings become
    /// special, un-normalized tokens.
    fn as_special(&self) -> AddedToken {
        match self {
            TokenValue::Plain(s) => AddedToken::from(s.clone(), true),
            TokenValue::Token(t) => t.clone(),
        }
    }
}

/// Everything about special and added tokens a tokenizer folder declares.
#[derive(Debug, Clone)]
pub(crate) struct TokenSettings {
    /// `(attribute, value)` for each named special token that is set.
    named: Vec<(&'static str, TokenValue)>,
    extra: Vec<TokenValue>,
    /// Added tokens by their declared id.
    decoder: BTreeMap<u32, AddedToken>,
}

impl TokenSettings {
    /// `CLIPTokenizer`'s defaults, with `pad` as the pad token.
    pub(crate) fn clip_defaults(pad: &str) -> Self {
        let named = vec![
            ("bos_token", TokenValue::Plain(BOS_TOKEN.into())),
            ("eos_token", TokenValue::Plain(EOS_TOKEN.into())),
            ("unk_token", TokenValue::Plain(EOS_TOKEN.into())),
            ("pad_token", TokenValue::Plain(pad.into())),
        ];
        Self {
            named,
            extra: Vec::new(),
            decoder: BTreeMap::new(),
        }
    }

    /// Reads the settings of the tokenizer folder `dir`.
    pub(crate) fn from_dir(dir: &Path) -> Result<Self> {
        let mut settings = Self::clip_defaults(EOS_TOKEN);
        let config = read_object(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        for key in NAMED {
            if let Some(value) = config.get(key).and_then(|v| parse_value(v, false)) {
                settings.set(key, value);
            }
        }
        for key in EXTRA_KEYS {
            if let Some(list) = config.get(key).and_then(Value::as_array) {
                settings.merge_extra(list.iter().filter_map(|v| parse_value(v, false)));
            }
        }
        let mut by_content: Vec<AddedToken> = Vec::new();
        if let Some(decoder) = config.get("added_tokens_decoder") {
            let name = dir.join("tokenizer_config.json").display().to_string();
            let decoder = decoder
                .as_object()
                .ok_or_else(|| model_err(&name, "added_tokens_decoder is not an object"))?;
            for (id, token) in decoder {
                let id = id.parse::<u32>().map_err(|_| {
                    model_err(
                        &name,
                        format!("added_tokens_decoder key {id:?} is not an id"),
                    )
                })?;
                let token = parse_added(token).ok_or_else(|| {
                    model_err(&name, format!("added_tokens_decoder[{id}] is not a token"))
                })?;
                by_content.push(token.clone());
                settings.decoder.insert(id, token);
            }
        } else {
            settings.read_legacy(dir, &mut by_content)?;
        }
        // A named token that is also a declared added token takes that token's flags.
        for (_, value) in settings.named.iter_mut() {
            if let Some(t) = by_content
                .iter()
                .rev()
                .find(|t| t.content == value.content())
            {
                *value = TokenValue::Token(t.clone());
            }
        }
        Ok(settings)
    }

    fn read_legacy(&mut self, dir: &Path, by_content: &mut Vec<AddedToken>) -> Result<()> {
        if let Some(map) = read_object(&dir.join("special_tokens_map.json"))? {
            for (key, value) in &map {
                if let Some(named) = NAMED.iter().find(|n| **n == key.as_str()) {
                    if let Some(value) = parse_value(value, true) {
                        self.set(named, value);
                    }
                } else if EXTRA_KEYS.contains(&key.as_str()) {
                    if let Some(list) = value.as_array() {
                        self.merge_extra(list.iter().filter_map(|v| parse_value(v, true)));
                    }
                }
            }
        }
        let path = dir.join("added_tokens.json");
        if let Some(added) = read_object(&path)? {
            let specials: HashSet<String> = self
                .named
                .iter()
                .map(|(_, v)| v.content().to_string())
                .chain(self.extra.iter().map(|v| v.content().to_string()))
                .collect();
            for (content, id) in &added {
                let id = as_id(id).ok_or_else(|| {
                    model_err(
                        &path.display().to_string(),
                        format!("{content:?} has no id"),
                    )
                })?;
                let token = AddedToken::from(content.clone(), specials.contains(content));
                by_content.push(token.clone());
                self.decoder.insert(id, token);
            }
        }
        let path = dir.join("tokenizer.json");
        if let Some(root) = read_object(&path)? {
            let name = path.display().to_string();
            for token in root
                .get("added_tokens")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = token.get("id").and_then(as_id);
                let (Some(id), Some(parsed)) = (id, parse_added(token)) else {
                    return Err(model_err(&name, format!("bad added_tokens entry {token}")));
                };
                by_content.push(parsed.clone());
                self.decoder.insert(id, parsed);
            }
        }
        Ok(())
    }

    fn set(&mut self, key: &'static str, value: TokenValue) {
        match self.named.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => {
                self.named.push((key, value));
                // Keep transformers' attribute order.
                self.named
                    .sort_by_key(|(k, _)| NAMED.iter().position(|n| n == k));
            }
        }
    }

    fn merge_extra(&mut self, values: impl Iterator<Item = TokenValue>) {
        for value in values {
            if !self.extra.contains(&value) {
                self.extra.push(value);
            }
        }
    }

    pub(crate) fn named(&self, key: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.content())
    }

    /// Whether `content` is declared with an id of its own (so it need not be in the vocab).
    pub(crate) fn declares(&self, content: &str) -> bool {
        self.decoder.values().any(|t| t.content == content)
    }

    /// The two batches of tokens transformers adds to a fresh backend: first the declared
    /// added tokens by id plus named/extra specials not yet among them (`add_tokens`), then
    /// every named and extra special again (`add_special_tokens`, in `_post_init`).
    pub(crate) fn batches(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut to_add: Vec<TokenValue> = self
            .decoder
            .values()
            .cloned()
            .map(TokenValue::Token)
            .collect();
        let encoder: HashSet<&str> = self.decoder.values().map(|t| t.content.as_str()).collect();
        for value in self.named.iter().map(|(_, v)| v).chain(&self.extra) {
            if !encoder.contains(value.content()) && !to_add.contains(value) {
                to_add.push(value.clone());
            }
        }
        let named: HashSet<&str> = self.named.iter().map(|(_, v)| v.content()).collect();
        let first = to_add
            .iter()
            .map(|v| {
                let mut t = v.as_special();
                // transformers marks a named token special in place, before `_post_init`.
                t.special |= named.contains(t.content.as_str());
                t
            })
            .collect();
        let second = self
            .named
            .iter()
            .map(|(_, v)| v)
            .chain(&self.extra)
            .map(|v| {
                let mut t = v.as_special();
                t.special = true;
                t
            })
            .collect();
        (first, second)
    }
}

/// A token from a config: a string, or an object with `content` (and optional flags).
/// `force_special` is how `special_tokens_map.json` is read: its `special` field is dropped
/// and the token is special.
fn parse_value(value: &Value, force_special: bool) -> Option<TokenValue> {
    match value {
        Value::String(s) => Some(TokenValue::Plain(s.clone())),
        Value::Object(o) => parse_added_object(o, force_special).map(TokenValue::Token),
        _ => None,
    }
}

/// A serialized `AddedToken` (`{"content": .., "lstrip": .., ...}`), as in `tokenizer.json`.
fn parse_added(value: &Value) -> Option<AddedToken> {
    parse_added_object(value.as_object()?, false)
}

fn parse_added_object(o: &Map<String, Value>, force_special: bool) -> Option<AddedToken> {
    let content = o.get("content")?.as_str()?;
    let flag = |name: &str| o.get(name).and_then(Value::as_bool);
    // An AddedToken's `normalized` defaults to "not special".
    let special = force_special || flag("special").unwrap_or(false);
    Some(
        AddedToken::from(content.to_string(), special)
            .single_word(flag("single_word").unwrap_or(false))
            .lstrip(flag("lstrip").unwrap_or(false))
            .rstrip(flag("rstrip").unwrap_or(false))
            .normalized(flag("normalized").unwrap_or(!special)),
    )
}

fn read_object(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let name = path.display().to_string();
    let bytes = read_file(path)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(model_err(&name, "not a JSON object")),
        Err(e) => Err(model_err(&name, format!("malformed JSON: {e}"))),
    }
}

pub(crate) fn as_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}
