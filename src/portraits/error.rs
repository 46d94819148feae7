//! The portrait layer's one error enum, and the one place where portrait and engine errors are
//! classified into a [`FailureKind`]: a job's record keeps that kind, and the HTTP layer's table
//! (`api::error`) picks the status from the same kind, so an error has one status whether it
//! happens before a job or inside one.

use thiserror::Error;

use super::image_store::ImageStoreError;
use crate::characters::StoreError;
use crate::engine::EngineError;
use crate::jobs::{FailureKind, JobError, JobFailure};

/// Everything a portrait operation can fail with.
#[derive(Debug, Error)]
pub enum PortraitError {
    /// The character (or its portrait, or an image file) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A request field is out of range or malformed; `field` uses the API's spelling.
    #[error("invalid {field}: {message}")]
    Validation { field: String, message: String },
    /// The request is well-formed but the character's state does not allow it (e.g. nothing to
    /// regenerate from).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The engine failed (or refused a request it validated itself).
    #[error("engine: {0}")]
    Engine(EngineError),
    /// The database or the image files failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The disk is full: nothing of the portrait was kept.
    #[error("insufficient storage: {0}")]
    StorageFull(String),
    /// The job's cancel token was set; nothing was written.
    #[error("cancelled")]
    Cancelled,
}

impl PortraitError {
    /// Renames the engine's `denoising_strength` to the API field of a regeneration.
    pub(super) fn for_regenerate(self) -> PortraitError {
        match self {
            PortraitError::Validation { field, message } if field == "denoising_strength" => {
                PortraitError::Validation {
                    field: "denoisingStrength".into(),
                    message,
                }
            }
            other => other,
        }
    }

    pub(crate) fn validation(field: &str, message: impl Into<String>) -> Self {
        PortraitError::Validation {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The request field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            PortraitError::Validation { field, .. } => Some(field),
            PortraitError::Engine(e) => engine_field(e),
            _ => None,
        }
    }

    /// What kind of failure this is: the record's `error.kind` and, through the API's table,
    /// the HTTP status.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            PortraitError::NotFound(_) => FailureKind::NotFound,
            PortraitError::Validation { .. } => FailureKind::Invalid,
            PortraitError::Conflict(_) => FailureKind::Conflict,
            PortraitError::Engine(e) => engine_failure_kind(e),
            PortraitError::Storage(_) => FailureKind::Storage,
            PortraitError::StorageFull(_) => FailureKind::InsufficientStorage,
            PortraitError::Cancelled => FailureKind::Cancelled,
        }
    }

    /// True when the request (not the server) is at fault: not found, invalid, conflict, or an
    /// engine error caused by input. Cancellation is neither; the caller knows why it cancelled.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self.failure_kind(),
            FailureKind::NotFound
                | FailureKind::Invalid
                | FailureKind::Conflict
                | FailureKind::TooLarge
        )
    }
}

/// The [`FailureKind`] of an engine error (the engine sits below the job queue, so its errors
/// are classified here, next to the portrait errors that wrap them).
pub fn engine_failure_kind(e: &EngineError) -> FailureKind {
    match e {
        EngineError::Cancelled => FailureKind::Cancelled,
        EngineError::TooLarge { .. } => FailureKind::TooLarge,
        EngineError::Unavailable(_) => FailureKind::Unavailable,
        e if e.is_client_error() => FailureKind::Invalid,
        _ => FailureKind::Engine,
    }
}

/// The request field an engine error is about, in the API's spelling.
pub fn engine_field(e: &EngineError) -> Option<&str> {
    match e {
        EngineError::InvalidInput { field, .. } => Some(field),
        EngineError::UnknownSampler { .. } => Some("sampler"),
        EngineError::UnknownModel(_) => Some("model"),
        _ => None,
    }
}

impl JobError for PortraitError {
    fn failure(&self) -> JobFailure {
        JobFailure::new(self.failure_kind(), self.to_string()).with_field(self.field())
    }
}

impl JobError for EngineError {
    fn failure(&self) -> JobFailure {
        JobFailure::new(engine_failure_kind(self), self.to_string()).with_field(engine_field(self))
    }
}

impl From<EngineError> for PortraitError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Cancelled => PortraitError::Cancelled,
            EngineError::InvalidInput { field, message } => PortraitError::Validation {
                field: field.to_string(),
                message,
            },
            other => PortraitError::Engine(other),
        }
    }
}

impl From<StoreError> for PortraitError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => PortraitError::NotFound(format!("{what} {id:?}")),
            StoreError::Validation(v) => v.into(),
            StoreError::Conflict(m) | StoreError::Gone(m) => PortraitError::Conflict(m),
            StoreError::StorageFull(m) => PortraitError::StorageFull(m),
            StoreError::Database(m) => PortraitError::Storage(m),
        }
    }
}

impl From<crate::characters::ValidationError> for PortraitError {
    fn from(v: crate::characters::ValidationError) -> Self {
        PortraitError::Validation {
            field: v.field,
            message: v.message,
        }
    }
}

impl From<ImageStoreError> for PortraitError {
    fn from(e: ImageStoreError) -> Self {
        match e {
            ImageStoreError::NotFound(key) => PortraitError::NotFound(format!("image {key:?}")),
            ImageStoreError::InvalidKey { .. } => PortraitError::validation("path", e.to_string()),
            ImageStoreError::StorageFull { .. } => PortraitError::StorageFull(e.to_string()),
            ImageStoreError::Io { .. } => PortraitError::Storage(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let v: PortraitError = EngineError::invalid("steps", "too many").into();
        assert_eq!(v.field(), Some("steps"));
        assert!(v.is_client_error());
        assert!(matches!(
            PortraitError::from(EngineError::Cancelled),
            PortraitError::Cancelled
        ));
        let m = PortraitError::from(EngineError::Model("oom".into()));
        assert!(!m.is_client_error());
        assert_eq!(m.failure_kind(), FailureKind::Engine);
        let s = PortraitError::from(StoreError::Database("disk".into()));
        assert!(!s.is_client_error());
        let n = PortraitError::from(ImageStoreError::NotFound("a.png".into()));
        assert!(n.is_client_error());
        assert_eq!(n.failure_kind(), FailureKind::NotFound);
        assert_eq!(n.failure().kind, FailureKind::NotFound);
        let u = EngineError::Unavailable("loading".into());
        assert_eq!(u.failure().kind, FailureKind::Unavailable);
        let f = EngineError::UnknownSampler {
            name: "x".into(),
            known: "euler".into(),
        }
        .failure();
        assert_eq!(
            (f.kind, f.field.as_deref()),
            (FailureKind::Invalid, Some("sampler"))
        );
    }
}
