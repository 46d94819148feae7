//! Embedding names as one tokenizer sees them: the chunker finds them at token level, as A1111's
//! `EmbeddingDatabase.find_embedding_at_position` does, so `elf-eyes` matches the tokens of
//! `elf-eyes` wherever a prompt has them, but not inside a longer word that tokenizes apart.

use std::collections::HashMap;

use super::tokenizer::ClipTokenizer;

/// Where an embedding's vectors go in a chunk: `len` vectors of embedding `embedding` (an index
/// into the list the [`EmbeddingWords`] were built from) from position `offset` of the chunk's
/// ids (the begin marker is position 0). `len` is short of the embedding's count only where a
/// plain (diffusers) prompt was cut at the window's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fix {
    pub offset: usize,
    pub embedding: usize,
    pub len: usize,
}

/// The id an embedding's positions carry before its vectors replace them (A1111 writes 0 too);
/// being below the end marker it never moves the pooled output's end-of-text position.
pub const PLACEHOLDER_ID: u32 = 0;

/// The usable embeddings' names, tokenized; empty when a model has none.
#[derive(Debug, Clone, Default)]
pub struct EmbeddingWords {
    /// First token -> (the name's tokens, embedding index), longest names first.
    by_first: HashMap<u32, Vec<(Vec<u32>, usize)>>,
    /// Vectors of each embedding, by index.
    vectors: Vec<usize>,
}

impl EmbeddingWords {
    /// `embeddings`: (name, vector count) in index order.
    pub fn new<'a>(
        tok: &ClipTokenizer,
        embeddings: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Self {
        let mut words = Self::default();
        for (index, (name, vectors)) in embeddings.into_iter().enumerate() {
            words.vectors.push(vectors);
            let ids = tok.encode(name);
            if let Some(&first) = ids.first() {
                words.by_first.entry(first).or_default().push((ids, index));
            }
        }
        for list in words.by_first.values_mut() {
            // Longest first, so `elf-eyes-2` wins over `elf-eyes` (A1111 sorts the same way).
            list.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        words
    }

    /// The embedding whose name starts at `tokens[at]`: (its index, tokens the name spans).
    pub fn find_at(&self, tokens: &[u32], at: usize) -> Option<(usize, usize)> {
        let list = self.by_first.get(tokens.get(at)?)?;
        list.iter()
            .find(|(ids, _)| tokens[at..].starts_with(ids))
            .map(|(ids, index)| (*index, ids.len()))
    }

    /// Vectors embedding `index` takes.
    pub fn vectors(&self, index: usize) -> usize {
        self.vectors[index]
    }
}

/// A prompt as diffusers feeds one encoder: begin marker, the prompt's tokens with each
/// embedding name expanded to its vectors (diffusers' `maybe_convert_prompt` adds `name_1`,
/// `name_2`... tokens), cut to `max_len - 2`, end marker, padding.
pub fn plain_ids(
    tok: &ClipTokenizer,
    prompt: &str,
    max_len: usize,
    words: &EmbeddingWords,
) -> (Vec<u32>, Vec<Fix>) {
    let body = max_len.saturating_sub(2);
    let tokens = tok.encode(prompt);
    let mut ids = vec![tok.bos_id()];
    let mut fixes = Vec::new();
    let mut at = 0;
    while at < tokens.len() && ids.len() - 1 < body {
        match words.find_at(&tokens, at) {
            None => {
                ids.push(tokens[at]);
                at += 1;
            }
            Some((embedding, spans)) => {
                let len = words.vectors(embedding).min(body - (ids.len() - 1));
                fixes.push(Fix {
                    offset: ids.len(),
                    embedding,
                    len,
                });
                ids.extend(std::iter::repeat_n(PLACEHOLDER_ID, len));
                at += spans;
            }
        }
    }
    ids.push(tok.eos_id());
    ids.resize(max_len.max(ids.len()), tok.pad_id());
    (ids, fixes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::text::PadToken;
    use std::path::PathBuf;

    fn tok() -> ClipTokenizer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tokenizer");
        ClipTokenizer::from_vocab_merges(
            &dir.join("vocab.json"),
            &dir.join("merges.txt"),
            PadToken::EndOfText,
        )
        .unwrap()
    }

    #[test]
    fn names_match_whole_token_runs_longest_first() {
        let t = tok();
        let words = EmbeddingWords::new(&t, [("elf-eyes", 2), ("elf-eyes-two", 1), ("cat", 4)]);
        let find = |text: &str| {
            let tokens = t.encode(text);
            (0..tokens.len())
                .filter_map(|i| words.find_at(&tokens, i).map(|(e, _)| (i, e)))
                .collect::<Vec<_>>()
        };
        let eyes = t.encode("elf-eyes").len();
        assert_eq!(find("a elf-eyes cat"), [(1, 0), (1 + eyes, 2)]);
        assert_eq!(find("elf-eyes-two"), [(0, 1)], "the longer name wins");
        assert!(
            find("cats and elf-eyesight").is_empty(),
            "not inside other words"
        );
    }

    #[test]
    fn plain_prompts_expand_names_and_cut_vectors_at_the_window() {
        let t = tok();
        let words = EmbeddingWords::new(&t, [("cat", 3)]);
        let (ids, fixes) = plain_ids(&t, "a cat", 77, &words);
        assert_eq!(
            &ids[..6],
            &[t.bos_id(), t.encode("a")[0], 0, 0, 0, t.eos_id()]
        );
        assert_eq!(ids.len(), 77);
        assert_eq!(
            fixes,
            [Fix {
                offset: 2,
                embedding: 0,
                len: 3
            }]
        );
        // 74 words leave one position: diffusers keeps the first vector only.
        let prompt = format!("{} cat", vec!["dog"; 74].join(" "));
        let (ids, fixes) = plain_ids(&t, &prompt, 77, &words);
        assert_eq!(ids.len(), 77);
        assert_eq!((ids[75], ids[76]), (0, t.eos_id()));
        assert_eq!((fixes[0].offset, fixes[0].len), (75, 1));
    }
}
