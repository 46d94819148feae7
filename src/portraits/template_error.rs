//! What can be wrong with a folder of prompt templates (styles and model families), named by
//! file and line.

use std::path::PathBuf;

use thiserror::Error;

/// A template directory that cannot be used.
#[derive(Debug, Error)]
pub enum TemplateError {
    #[error("cannot read prompt templates at {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    /// A file is invalid; `line` is 1-based.
    #[error("{}:{line}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("no default.toml in prompt templates folder {}", dir.display())]
    MissingDefault { dir: PathBuf },
}
