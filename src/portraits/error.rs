//! The portrait layer's one error enum. The HTTP layer maps it to status codes in its own table;
//! the helpers here say which field was wrong and whether the caller (4xx) or the server (5xx) is
//! to blame.

use thiserror::Error;

use super::image_store::ImageStoreError;
use crate::characters::StoreError;
use crate::engine::EngineError;

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
            PortraitError::Engine(EngineError::InvalidInput { field, .. }) => Some(field),
            PortraitError::Engine(EngineError::UnknownSampler { .. }) => Some("sampler"),
            PortraitError::Engine(EngineError::UnknownModel(_)) => Some("model"),
            _ => None,
        }
    }

    /// True when the request (not the server) is at fault: not found, invalid, conflict, or an
    /// engine error caused by input. Cancellation is neither; the caller knows why it cancelled.
    pub fn is_client_error(&self) -> bool {
        match self {
            PortraitError::NotFound(_)
            | PortraitError::Validation { .. }
            | PortraitError::Conflict(_) => true,
            PortraitError::Engine(e) => e.is_client_error(),
            PortraitError::Storage(_)
            | PortraitError::StorageFull(_)
            | PortraitError::Cancelled => false,
        }
    }

    /// A short machine-readable kind, for the API's `error_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            PortraitError::NotFound(_) => "not_found",
            PortraitError::Validation { .. } => "validation",
            PortraitError::Conflict(_) => "conflict",
            PortraitError::Engine(e) if e.is_client_error() => "validation",
            PortraitError::Engine(_) => "engine",
            PortraitError::Storage(_) => "storage",
            PortraitError::StorageFull(_) => "insufficient_storage",
            PortraitError::Cancelled => "cancelled",
        }
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
            StoreError::Validation(v) => PortraitError::Validation {
                field: v.field,
                message: v.message,
            },
            StoreError::Conflict(m) | StoreError::Gone(m) => PortraitError::Conflict(m),
            StoreError::StorageFull(m) => PortraitError::StorageFull(m),
            StoreError::Database(m) => PortraitError::Storage(m),
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
        assert_eq!(m.kind(), "engine");
        let s = PortraitError::from(StoreError::Database("disk".into()));
        assert!(!s.is_client_error());
        let n = PortraitError::from(ImageStoreError::NotFound("a.png".into()));
        assert!(n.is_client_error());
        assert_eq!(n.kind(), "not_found");
    }
}
