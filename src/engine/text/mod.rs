//! The text front end: turns a prompt into the token ids and per-token weights the CLIP text
//! encoder consumes (Hugging Face's `tokenizers` set up as transformers' `CLIPTokenizer`, plus AUTOMATIC1111's attention syntax and
//! 77-token chunking).

pub mod prompt;
pub mod tokenizer;
mod tokenizer_config;

pub use prompt::{pad_to_same_chunks, tokenize_weighted, PromptChunks};
pub use tokenizer::{ClipTokenizer, PadToken};
