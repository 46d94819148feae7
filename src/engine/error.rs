//! The engine's one error type: every failure the engine can report, each naming the problem.

use thiserror::Error;

/// Everything that can go wrong inside the engine. Variants that come from bad input name the
/// field and the limit so the API layer can turn them into 4xx replies without rewording.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A request field is out of range or malformed (maps to 422 in the API).
    #[error("invalid {field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },
    /// An unknown sampler name; the message lists the known ones.
    #[error("unknown sampler '{name}'; known samplers: {known}")]
    UnknownSampler { name: String, known: String },
    /// Model files are missing, unreadable, corrupt or of a kind we refuse (pickled .ckpt).
    #[error("model error: {0}")]
    Model(String),
    /// The model named in a request is not loaded / not known.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The job's estimated peak memory is over the engine's limit (maps to 422 `too_large`).
    #[error(
        "{what} needs about {} of memory (weights {} + working memory {}), over this server's \
         {} limit; use a smaller size, fewer images or no hires pass",
        gib(*estimate), gib(*weights), gib(estimate.saturating_sub(*weights)), gib(*limit)
    )]
    TooLarge {
        what: String,
        estimate: u64,
        weights: u64,
        limit: u64,
    },
    /// The job was cancelled through its token.
    #[error("cancelled")]
    Cancelled,
    /// The engine thread is gone or failed to start.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// A tensor operation failed (a bug or a device problem, not bad input). Kept as text so
    /// no candle type is part of the engine's public surface.
    #[error("tensor error: {0}")]
    Tensor(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Tensor(e.to_string())
    }
}

impl EngineError {
    /// Shorthand for [`EngineError::InvalidInput`].
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        EngineError::InvalidInput {
            field,
            message: message.into(),
        }
    }

    /// True when the error was caused by the request, not by the engine or the model.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidInput { .. }
                | EngineError::UnknownSampler { .. }
                | EngineError::UnknownModel(_)
                | EngineError::TooLarge { .. }
        )
    }
}

/// Bytes as GiB with one decimal, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
