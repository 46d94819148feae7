//! The text front end: turns a prompt into the token ids and per-token weights the CLIP text
//! encoder consumes (Hugging Face's `tokenizers` set up as transformers' `CLIPTokenizer`, plus AUTOMATIC1111's attention syntax and
//! 77-token chunking).

pub mod embedding_words;
pub mod prompt;
pub mod tokenizer;
mod tokenizer_config;

pub use embedding_words::{plain_ids, EmbeddingWords, Fix};
pub use prompt::{pad_to_same_chunks, tokenize_with_embeddings, PromptChunks};
pub use tokenizer::{ClipTokenizer, PadToken};
