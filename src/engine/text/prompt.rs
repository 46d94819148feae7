//! AUTOMATIC1111's prompt syntax and chunking: attention weights from `(word)`, `[word]`,
//! `(word:1.3)` and `BREAK`, then the token stream cut into 77-token chunks (begin marker,
//! 75 tokens, end marker) that the text encoder embeds one by one and the pipeline concatenates.
//!
//! This mirrors A1111's `prompt_parser.parse_prompt_attention` and the chunk rule of
//! `sd_hijack_clip.py` (including the comma backtrack), so a prompt written for A1111 gets the
//! same tokens and the same per-token multipliers here. Scaling the embeddings by the weights is
//! the encoder's job; this module only says which weight each token carries.

use std::sync::OnceLock;

use regex::Regex;

use super::embedding_words::{EmbeddingWords, Fix, PLACEHOLDER_ID};
use super::tokenizer::ClipTokenizer;

/// Tokens per chunk between the begin and end markers.
pub const TOKENS_PER_CHUNK: usize = 75;
/// Ids per chunk as fed to the text encoder.
pub const CHUNK_LEN: usize = TOKENS_PER_CHUNK + 2;
/// How far back from a full chunk A1111 looks for a comma to break at
/// (`opts.comma_padding_backtrack`, default 20).
const COMMA_BACKTRACK: usize = 20;
/// `(` multiplies by this, `[` divides by it.
const ROUND_MULTIPLIER: f64 = 1.1;
/// The weight of the `BREAK` marker in [`parse_prompt_attention`]'s output.
pub const BREAK_WEIGHT: f32 = -1.0;

/// One 77-id window of a prompt and the attention weight of each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// `bos`, up to 75 token ids, `eos`, then pad ids; always [`CHUNK_LEN`] long.
    pub ids: Vec<u32>,
    /// The weight of each position; 1.0 on the markers and padding. Same length as `ids`.
    pub weights: Vec<f32>,
    /// Where embedding vectors replace the (placeholder) ids, in order.
    pub fixes: Vec<Fix>,
}

impl Chunk {
    /// The chunk of the empty prompt: begin marker, end marker, padding, all weight 1.0.
    pub fn empty(tok: &ClipTokenizer) -> Self {
        Self::from_tokens(tok, &[], &[], &[])
    }

    /// `fixes` are offsets into `tokens`; the chunk's count the begin marker too.
    fn from_tokens(tok: &ClipTokenizer, tokens: &[u32], weights: &[f64], fixes: &[Fix]) -> Self {
        let mut ids = Vec::with_capacity(CHUNK_LEN);
        let mut w = Vec::with_capacity(CHUNK_LEN);
        ids.push(tok.bos_id());
        w.push(1.0);
        ids.extend_from_slice(tokens);
        w.extend(weights.iter().map(|&x| x as f32));
        // A1111 pads with end markers and then overwrites everything after the first one with
        // the pad id, so the layout is bos, tokens, eos, pad... as in diffusers.
        ids.push(tok.eos_id());
        w.push(1.0);
        ids.resize(CHUNK_LEN, tok.pad_id());
        w.resize(CHUNK_LEN, 1.0);
        let fixes = fixes
            .iter()
            .map(|f| Fix {
                offset: f.offset + 1,
                ..*f
            })
            .collect();
        Self {
            ids,
            weights: w,
            fixes,
        }
    }
}

/// A prompt cut into chunks, ready for the text encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunks {
    /// At least one chunk.
    pub chunks: Vec<Chunk>,
    /// Tokens the prompt uses, counted as A1111 shows them (75 for every chunk but the last).
    pub token_count: usize,
}

/// Splits a prompt into `(text, weight)` runs the way A1111 does.
///
/// `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.3)` sets a factor, `\(` `\)` `\[` `\]`
/// `\\` are literal; brackets left open apply to the rest of the prompt; a stray `)` or `]` is
/// literal text. `BREAK` (a whole word, upper case) becomes a `("BREAK", -1.0)` marker. Adjacent
/// runs with the same weight are merged; an empty prompt gives `[("", 1.0)]`.
#[cfg(test)]
pub fn parse_prompt_attention(text: &str) -> Vec<(String, f32)> {
    parse_attention(text)
        .into_iter()
        .map(|(text, weight)| (text, weight as f32))
        .collect()
}

/// [`parse_prompt_attention`] in f64, as Python computes it: merging compares weights exactly,
/// so rounding to f32 first could merge runs A1111 keeps apart.
fn parse_attention(text: &str) -> Vec<(String, f64)> {
    static ATTENTION: OnceLock<Regex> = OnceLock::new();
    static BREAK: OnceLock<Regex> = OnceLock::new();
    let attention = ATTENTION.get_or_init(|| {
        Regex::new(
            r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:",
        )
        .expect("constant attention regex")
    });
    let break_re =
        BREAK.get_or_init(|| Regex::new(r"\s*\bBREAK\b\s*").expect("constant BREAK regex"));

    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply_from = |res: &mut Vec<(String, f64)>, start: usize, factor: f64| {
        for entry in res.iter_mut().skip(start) {
            entry.1 *= factor;
        }
    };

    for caps in attention.captures_iter(text) {
        let Some(whole) = caps.get(0) else { continue };
        let piece = whole.as_str();
        // A weight that does not parse as a number ("1.2.3") is kept as text; A1111 would
        // raise here, we prefer to paint something.
        let weight = caps.get(1).and_then(|m| m.as_str().parse::<f64>().ok());

        if let Some(escaped) = piece.strip_prefix('\\') {
            res.push((escaped.to_string(), 1.0));
        } else if piece == "(" {
            round.push(res.len());
        } else if piece == "[" {
            square.push(res.len());
        } else if let (Some(w), Some(start)) = (weight, round.last().copied()) {
            round.pop();
            multiply_from(&mut res, start, w);
        } else if piece == ")" && !round.is_empty() {
            let start = round.pop().unwrap_or(0);
            multiply_from(&mut res, start, ROUND_MULTIPLIER);
        } else if piece == "]" && !square.is_empty() {
            let start = square.pop().unwrap_or(0);
            multiply_from(&mut res, start, 1.0 / ROUND_MULTIPLIER);
        } else {
            for (i, part) in break_re.split(piece).enumerate() {
                if i > 0 {
                    res.push(("BREAK".to_string(), f64::from(BREAK_WEIGHT)));
                }
                res.push((part.to_string(), 1.0));
            }
        }
    }
    for start in round {
        multiply_from(&mut res, start, ROUND_MULTIPLIER);
    }
    for start in square {
        multiply_from(&mut res, start, 1.0 / ROUND_MULTIPLIER);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }

    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    merged
}

/// Tokenizes a prompt with A1111's attention syntax into weighted 77-id chunks.
///
/// Each weighted run is tokenized on its own. A chunk takes 75 tokens; when it is full and a
/// comma sits among its last 20 tokens, the tokens after that comma move to the next chunk so
/// phrases are not cut in half. `BREAK` closes the current chunk. An empty prompt gives one
/// chunk of begin marker, end marker and padding.
#[cfg(test)]
pub fn tokenize_weighted(tok: &ClipTokenizer, prompt: &str) -> PromptChunks {
    tokenize_with_embeddings(tok, prompt, &EmbeddingWords::default())
}

/// [`tokenize_weighted`] where the names of `words` become embedding vectors, as A1111's
/// `tokenize_line` places them: an embedding takes as many positions as it has vectors, carries
/// its run's weight, and starts a new chunk rather than straddle the end of one.
pub fn tokenize_with_embeddings(
    tok: &ClipTokenizer,
    prompt: &str,
    words: &EmbeddingWords,
) -> PromptChunks {
    let mut builder = ChunkBuilder::new(tok);
    for (text, weight) in parse_attention(prompt) {
        if text == "BREAK" && weight == f64::from(BREAK_WEIGHT) {
            builder.next_chunk(false);
            continue;
        }
        let tokens = tok.encode(&text);
        let mut at = 0;
        while at < tokens.len() {
            builder.make_room(tokens[at]);
            match words.find_at(&tokens, at) {
                None => {
                    builder.tokens.push(tokens[at]);
                    builder.weights.push(weight);
                    at += 1;
                }
                Some((embedding, spans)) => {
                    builder.push_embedding(embedding, words.vectors(embedding), weight);
                    at += spans;
                }
            }
        }
    }
    builder.finish()
}

/// Appends empty-prompt chunks to the shorter of `a` and `b` so both have as many chunks; A1111
/// does this to the conditional and unconditional prompts so they batch together.
pub fn pad_to_same_chunks(tok: &ClipTokenizer, a: &mut PromptChunks, b: &mut PromptChunks) {
    let target = a.chunks.len().max(b.chunks.len());
    for side in [a, b] {
        while side.chunks.len() < target {
            side.chunks.push(Chunk::empty(tok));
        }
    }
}

/// The state of A1111's `tokenize_line` loop.
struct ChunkBuilder<'a> {
    tok: &'a ClipTokenizer,
    chunks: Vec<Chunk>,
    tokens: Vec<u32>,
    weights: Vec<f64>,
    /// Embeddings of the current chunk, offsets into `tokens`.
    fixes: Vec<Fix>,
    token_count: usize,
    /// Index in `tokens` of the last comma of the current chunk.
    last_comma: Option<usize>,
}

impl<'a> ChunkBuilder<'a> {
    fn new(tok: &'a ClipTokenizer) -> Self {
        Self {
            tok,
            chunks: Vec::new(),
            tokens: Vec::with_capacity(TOKENS_PER_CHUNK),
            weights: Vec::with_capacity(TOKENS_PER_CHUNK),
            fixes: Vec::new(),
            token_count: 0,
            last_comma: None,
        }
    }

    /// Closes the current chunk; the last one counts only the tokens it holds.
    fn next_chunk(&mut self, is_last: bool) {
        self.token_count += if is_last {
            self.tokens.len()
        } else {
            TOKENS_PER_CHUNK
        };
        self.chunks.push(Chunk::from_tokens(
            self.tok,
            &self.tokens,
            &self.weights,
            &self.fixes,
        ));
        self.tokens.clear();
        self.weights.clear();
        self.fixes.clear();
        self.last_comma = None;
    }

    /// Before `token` is placed: notes a comma, or moves the words after a recent comma to a new
    /// chunk when this one is full, or closes a full chunk.
    fn make_room(&mut self, token: u32) {
        let full = self.tokens.len() == TOKENS_PER_CHUNK;
        if Some(token) == self.tok.comma_id() {
            self.last_comma = Some(self.tokens.len());
        } else if let Some(comma) = self
            .last_comma
            .filter(|&c| full && TOKENS_PER_CHUNK.saturating_sub(c) <= COMMA_BACKTRACK)
        {
            // Move the words after the comma to the next chunk instead of splitting them.
            let cut = comma + 1;
            let moved_tokens = self.tokens.split_off(cut);
            let moved_weights = self.weights.split_off(cut);
            // Embeddings move with their positions (A1111 leaves them behind, which paints
            // its placeholder ids as `!` tokens; they belong with the words they sit among).
            let (kept, moved): (Vec<Fix>, Vec<Fix>) =
                self.fixes.iter().partition(|f| f.offset < cut);
            self.fixes = kept;
            self.next_chunk(false);
            self.tokens = moved_tokens;
            self.weights = moved_weights;
            self.fixes = moved
                .into_iter()
                .map(|f| Fix {
                    offset: f.offset - cut,
                    ..f
                })
                .collect();
        }
        if self.tokens.len() == TOKENS_PER_CHUNK {
            self.next_chunk(false);
        }
    }

    /// Places `vectors` placeholders for an embedding, in a new chunk if they do not fit here.
    fn push_embedding(&mut self, embedding: usize, vectors: usize, weight: f64) {
        if self.tokens.len() + vectors > TOKENS_PER_CHUNK {
            self.next_chunk(false);
        }
        self.fixes.push(Fix {
            offset: self.tokens.len(),
            embedding,
            len: vectors,
        });
        self.tokens
            .extend(std::iter::repeat_n(PLACEHOLDER_ID, vectors));
        self.weights.extend(std::iter::repeat_n(weight, vectors));
    }

    fn finish(mut self) -> PromptChunks {
        if !self.tokens.is_empty() || self.chunks.is_empty() {
            self.next_chunk(true);
        }
        PromptChunks {
            chunks: self.chunks,
            token_count: self.token_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::text::tokenizer::tests::reference_cases;
    use crate::engine::text::PadToken;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn tok() -> &'static ClipTokenizer {
        static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
        TOK.get_or_init(|| {
            let dir = fixtures().join("clip-tokenizer");
            ClipTokenizer::from_vocab_merges(
                &dir.join("vocab.json"),
                &dir.join("merges.txt"),
                PadToken::EndOfText,
            )
            .unwrap()
        })
    }

    /// The id of a word that must be a single token.
    fn id(word: &str) -> u32 {
        let ids = tok().encode(word);
        assert_eq!(ids.len(), 1, "{word:?} is not one token");
        ids[0]
    }

    fn assert_parsed(text: &str, expected: &[(&str, f64)]) {
        let got = parse_prompt_attention(text);
        assert_eq!(got.len(), expected.len(), "{text:?} -> {got:?}");
        for ((gt, gw), (et, ew)) in got.iter().zip(expected) {
            assert_eq!(gt, et, "{text:?} -> {got:?}");
            assert!((f64::from(*gw) - ew).abs() < 1e-6, "{text:?} -> {got:?}");
        }
    }

    /// bos, `tokens`, eos, then padding: what a chunk holding `tokens` must look like.
    fn expected_ids(tokens: &[u32]) -> Vec<u32> {
        let t = tok();
        let mut ids = vec![t.bos_id()];
        ids.extend_from_slice(tokens);
        ids.push(t.eos_id());
        ids.resize(CHUNK_LEN, t.pad_id());
        ids
    }

    fn words(word: &str, n: usize) -> String {
        vec![word; n].join(" ")
    }

    #[test]
    fn attention_syntax_matches_a1111_examples() {
        assert_parsed("normal text", &[("normal text", 1.0)]);
        assert_parsed(
            "an (important) word",
            &[("an ", 1.0), ("important", 1.1), (" word", 1.0)],
        );
        assert_parsed("a (b:1.5) c", &[("a ", 1.0), ("b", 1.5), (" c", 1.0)]);
        assert_parsed("((x))", &[("x", 1.21)]);
        assert_parsed("[y]", &[("y", 1.0 / 1.1)]);
        assert_parsed("\\(literal\\)", &[("(literal)", 1.0)]);
        assert_parsed("\\(literal\\]", &[("(literal]", 1.0)]);
        assert_parsed("(unbalanced", &[("unbalanced", 1.1)]);
        assert_parsed("[unbalanced", &[("unbalanced", 1.0 / 1.1)]);
        assert_parsed("(unnecessary)(parens)", &[("unnecessaryparens", 1.1)]);
        assert_parsed(
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            &[
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        );
        // Stray closers, a lone colon and backslashes are text.
        assert_parsed("a) b] c:d \\\\e", &[("a) b] c:d \\e", 1.0)]);
        assert_parsed("(x: 0.5 )", &[("x", 0.5)]);
        assert_parsed("", &[("", 1.0)]);
        // A malformed number stays text instead of failing.
        assert_parsed("(a:1.2.3)", &[("a:1.2.3)", 1.1)]);
    }

    #[test]
    fn break_becomes_a_marker() {
        assert_parsed("a BREAK b", &[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]);
        // Only the whole upper-case word.
        assert_parsed("BREAKFAST break", &[("BREAKFAST break", 1.0)]);
        // Inside brackets the marker is scaled like everything else, so (as in A1111) it is
        // no longer a marker.
        assert_parsed("(a BREAK b)", &[("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]);
    }

    #[test]
    fn plain_prompts_chunk_like_the_reference_ids() {
        let mut checked = 0;
        for (prompt, expected) in reference_cases() {
            let prompt = prompt.as_str();
            let plain = !prompt.contains(['(', ')', '[', ']', '\\']);
            if !plain || tok().encode(prompt).len() > TOKENS_PER_CHUNK {
                continue;
            }
            let chunks = tokenize_weighted(tok(), prompt);
            assert_eq!(chunks.chunks.len(), 1, "{prompt:?}");
            assert_eq!(chunks.chunks[0].ids, expected, "{prompt:?}");
            assert_eq!(chunks.chunks[0].weights, vec![1.0; CHUNK_LEN]);
            checked += 1;
        }
        assert_eq!(checked, 3, "the empty prompt and two plain ones");
    }

    #[test]
    fn weights_follow_their_tokens() {
        let chunks = tokenize_weighted(tok(), "a (cat:1.5) [dog]");
        assert_eq!(chunks.chunks.len(), 1);
        let chunk = &chunks.chunks[0];
        assert_eq!(chunk.ids, expected_ids(&[id("a"), id("cat"), id("dog")]));
        let mut weights = vec![1.0f32, 1.0, 1.5, (1.0 / 1.1) as f32];
        weights.resize(CHUNK_LEN, 1.0);
        assert_eq!(chunk.weights, weights);
        assert_eq!(chunks.token_count, 3);
    }

    #[test]
    fn a_hundred_tokens_make_two_chunks() {
        let cat = id("cat");
        let chunks = tokenize_weighted(tok(), &words("cat", 100));
        assert_eq!(chunks.chunks.len(), 2);
        assert_eq!(chunks.chunks[0].ids, expected_ids(&[cat; 75]));
        assert_eq!(chunks.chunks[1].ids, expected_ids(&[cat; 25]));
        assert_eq!(chunks.token_count, 100);
        for chunk in &chunks.chunks {
            assert_eq!(chunk.ids.len(), CHUNK_LEN);
            assert_eq!(chunk.weights.len(), CHUNK_LEN);
        }
        // Exactly 75 tokens still fit in one chunk.
        assert_eq!(tokenize_weighted(tok(), &words("cat", 75)).chunks.len(), 1);
    }

    #[test]
    fn break_forces_a_new_chunk() {
        let chunks = tokenize_weighted(tok(), "cat BREAK dog");
        assert_eq!(chunks.chunks.len(), 2);
        assert_eq!(chunks.chunks[0].ids, expected_ids(&[id("cat")]));
        assert_eq!(chunks.chunks[1].ids, expected_ids(&[id("dog")]));
        assert_eq!(chunks.token_count, 76, "a closed chunk counts as 75");
        // A lone BREAK closes the (empty) first chunk and nothing follows.
        let lone = tokenize_weighted(tok(), "BREAK");
        assert_eq!(lone.chunks, vec![Chunk::empty(tok())]);
    }

    #[test]
    fn full_chunk_breaks_after_a_recent_comma() {
        let (cat, dog, comma) = (id("cat"), id("dog"), id(","));
        // Comma at index 55: 75 - 55 = 20 is within the backtrack, so the 19 dogs after it move.
        let prompt = format!("{} , {}", words("cat", 55), words("dog", 30));
        let chunks = tokenize_weighted(tok(), &prompt);
        let mut first = vec![cat; 55];
        first.push(comma);
        assert_eq!(chunks.chunks.len(), 2);
        assert_eq!(chunks.chunks[0].ids, expected_ids(&first));
        assert_eq!(chunks.chunks[1].ids, expected_ids(&[dog; 30]));
        assert_eq!(chunks.token_count, 75 + 30);

        // Comma at index 54: 21 tokens back is too far, so the chunk is cut at 75.
        let prompt = format!("{} , {}", words("cat", 54), words("dog", 30));
        let chunks = tokenize_weighted(tok(), &prompt);
        let mut first = vec![cat; 54];
        first.push(comma);
        first.extend([dog; 20]);
        assert_eq!(chunks.chunks[0].ids, expected_ids(&first));
        assert_eq!(chunks.chunks[1].ids, expected_ids(&[dog; 10]));
    }

    #[test]
    fn moved_tokens_keep_their_weights() {
        let prompt = format!("{} , ({})", words("cat", 60), words("dog", 20));
        let chunks = tokenize_weighted(tok(), &prompt);
        assert_eq!(chunks.chunks.len(), 2);
        let second = &chunks.chunks[1];
        assert_eq!(second.ids, expected_ids(&[id("dog"); 20]));
        assert!(second.weights[1..21]
            .iter()
            .all(|&w| (w - 1.1).abs() < 1e-6));
        assert!(second.weights[21..].iter().all(|&w| w == 1.0));
        assert_eq!(second.weights[0], 1.0);
    }

    #[test]
    fn long_reference_prompt_breaks_at_its_comma() {
        let (prompt, reference) = reference_cases()
            .into_iter()
            .find(|(p, _)| p.len() > 300)
            .unwrap();
        let prompt = prompt.as_str();
        let comma = id(",");
        // The reference is the plain truncation; our first chunk must be its prefix up to the
        // last comma within the last 20 of its 75 tokens.
        let body = &reference[1..76];
        let cut = body.iter().rposition(|&t| t == comma).unwrap() + 1;
        assert!(
            cut < 75 && 75 - (cut - 1) <= 20,
            "fixture has a comma near the end"
        );
        let chunks = tokenize_weighted(tok(), prompt);
        assert_eq!(chunks.chunks[0].ids, expected_ids(&body[..cut]));
        // Nothing is lost: the chunks hold every token of the prompt, in order.
        let all: Vec<u32> = chunks
            .chunks
            .iter()
            .flat_map(|c| {
                let end = c.ids.iter().position(|&t| t == tok().eos_id()).unwrap();
                c.ids[1..end].to_vec()
            })
            .collect();
        assert_eq!(all, tok().encode(prompt));
        assert_eq!(&all[..75], body);
    }

    #[test]
    fn padding_equalizes_chunk_counts() {
        let mut cond = tokenize_weighted(tok(), &words("cat", 100));
        let mut uncond = tokenize_weighted(tok(), "");
        assert_eq!(uncond.chunks.len(), 1);
        pad_to_same_chunks(tok(), &mut cond, &mut uncond);
        assert_eq!(cond.chunks.len(), 2);
        assert_eq!(uncond.chunks.len(), 2);
        let empty = tokenize_weighted(tok(), "").chunks.remove(0);
        assert_eq!(uncond.chunks[1], empty);
        assert_eq!(empty.ids, expected_ids(&[]));
        // Also the other way round.
        let mut short = tokenize_weighted(tok(), "cat");
        let mut long = tokenize_weighted(tok(), &words("dog", 160));
        pad_to_same_chunks(tok(), &mut long, &mut short);
        assert_eq!((long.chunks.len(), short.chunks.len()), (3, 3));
    }
}
