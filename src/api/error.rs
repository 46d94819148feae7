//! The API's one error type and the one table that maps every error kind of the layers below
//! (engine, store, portraits, jobs) to an HTTP status and the JSON shape
//! `{error, error_type, field?}`. Portrait and engine errors are first classified into a job
//! [`FailureKind`] (in `portraits::error`, the one classification) and [`status_of`] maps that
//! kind to a status, so the same error answers the same status before a job and inside one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::characters::{StoreError, ValidationError};
use crate::engine::EngineError;
use crate::jobs::{FailureKind, JobFailure, JobStoreError, QueueError, WaitError};
use crate::portraits::{engine_failure_kind, engine_field, ImageStoreError, PortraitError};

/// The one table: the status and `error_type` of every failure kind.
pub fn status_of(kind: FailureKind) -> (StatusCode, &'static str) {
    match kind {
        FailureKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
        FailureKind::TooLarge => (StatusCode::UNPROCESSABLE_ENTITY, "too_large"),
        FailureKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        FailureKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        FailureKind::Cancelled => (StatusCode::CONFLICT, "cancelled"),
        FailureKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        FailureKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable"),
        FailureKind::Restarted => (StatusCode::SERVICE_UNAVAILABLE, "server_restarted"),
        FailureKind::Engine => (StatusCode::INTERNAL_SERVER_ERROR, "engine_error"),
        FailureKind::Storage => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        FailureKind::InsufficientStorage => {
            (StatusCode::INSUFFICIENT_STORAGE, INSUFFICIENT_STORAGE)
        }
        FailureKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
    }
}

/// An error reply. `field` names the offending request field for validation errors.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// The error of a failure kind, with its status and `error_type` from [`status_of`].
    pub fn of_kind(kind: FailureKind, message: impl Into<String>) -> Self {
        match kind {
            FailureKind::InsufficientStorage => Self::insufficient_storage(message.into()),
            kind => {
                let (status, error_type) = status_of(kind);
                Self::new(status, error_type, message)
            }
        }
    }

    pub fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            field: Some(field.clone()),
            // Keep the field in the text too, for clients that only show `error`.
            message: if message.contains(&field) {
                message
            } else {
                format!("{field}: {message}")
            },
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", "")
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 for anything the caller may not know exists (also used instead of 403 so a
    /// character's existence never leaks).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// 507: the disk holding the data directory is full; `what` failed and nothing was kept.
    pub fn insufficient_storage(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            INSUFFICIENT_STORAGE,
            format!(
                "insufficient storage: the server's disk is full, so nothing was saved ({what}). \
                 Free space (deleting characters works on a full disk) and retry; /health shows the free space"
            ),
        )
    }
}

/// The `error_type` of every 507.
pub const INSUFFICIENT_STORAGE: &str = "insufficient_storage";

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.error_type, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error_type = self.error_type, "{}", self.message);
        }
        let body = Body {
            error: &self.message,
            error_type: self.error_type,
            field: self.field.as_deref(),
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"limner\""),
            );
        }
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::validation(e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, .. } => ApiError::not_found(what),
            StoreError::Validation(v) => v.into(),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Gone(m) => ApiError::new(StatusCode::GONE, "gone", m),
            StoreError::StorageFull(m) => ApiError::insufficient_storage(m),
            StoreError::Database(m) => ApiError::internal(format!("database error: {m}")),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let kind = engine_failure_kind(&e);
        let field = engine_field(&e).map(str::to_string);
        let message = match &e {
            EngineError::InvalidInput { message, .. } => message.clone(),
            EngineError::Cancelled => "the job was cancelled".to_string(),
            EngineError::Unavailable(m) => format!("the engine is not available: {m}"),
            other => other.to_string(),
        };
        match field {
            Some(field) if kind == FailureKind::Invalid => ApiError::validation(field, message),
            _ => ApiError::of_kind(kind, message),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full {
                max_queued,
                retry_after_secs,
            } => ApiError {
                retry_after: Some(retry_after_secs),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!(
                        "the generation queue is full ({max_queued} waiting); retry in {retry_after_secs} s"
                    ),
                )
            },
            QueueError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
            QueueError::Storage(JobStoreError::Full(m)) => ApiError::insufficient_storage(m),
            QueueError::Storage(e) => ApiError::of_kind(FailureKind::Storage, e.to_string()),
        }
    }
}

impl From<JobFailure> for ApiError {
    fn from(f: JobFailure) -> Self {
        match f.field {
            Some(field) if f.kind == FailureKind::Invalid => ApiError::validation(field, f.message),
            _ => ApiError::of_kind(f.kind, f.message),
        }
    }
}

impl From<PortraitError> for ApiError {
    fn from(e: PortraitError) -> Self {
        let kind = e.failure_kind();
        match e {
            PortraitError::NotFound(what) => ApiError::not_found(&what),
            PortraitError::Validation { field, message } => ApiError::validation(field, message),
            PortraitError::Engine(e) => e.into(),
            PortraitError::Cancelled => ApiError::of_kind(kind, "the job was cancelled"),
            PortraitError::Conflict(m)
            | PortraitError::Storage(m)
            | PortraitError::StorageFull(m) => ApiError::of_kind(kind, m),
        }
    }
}

impl From<ImageStoreError> for ApiError {
    fn from(e: ImageStoreError) -> Self {
        PortraitError::from(e).into()
    }
}

impl<E: Into<ApiError>> From<WaitError<E>> for ApiError {
    fn from(e: WaitError<E>) -> Self {
        match e {
            WaitError::Job(e) => e.into(),
            WaitError::NotFound(id) => ApiError::not_found(&format!("job {id}")),
            WaitError::Timeout { waited, .. } => ApiError::of_kind(
                FailureKind::Timeout,
                format!(
                    "generation did not finish within {} s; the job was cancelled (use ?async=true for long jobs)",
                    waited.as_secs()
                ),
            ),
            WaitError::Failed(f) | WaitError::Cancelled(f) => f.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_full_disk_is_507_insufficient_storage() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let from_file = ApiError::from(ImageStoreError::StorageFull {
            key: "portraits/a/b.png".into(),
            message: enospc.to_string(),
        });
        let from_db = ApiError::from(StoreError::StorageFull("database or disk is full".into()));
        let from_job = ApiError::from(JobFailure::new(
            FailureKind::InsufficientStorage,
            "no space",
        ));
        let from_portrait = ApiError::from(PortraitError::StorageFull("thumbnail".into()));
        for e in [from_file, from_db, from_job, from_portrait] {
            assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE, "{e}");
            assert_eq!(e.error_type, INSUFFICIENT_STORAGE);
            assert!(e.message.contains("disk is full"), "{}", e.message);
        }
        // Other storage errors stay 500s.
        let io = ApiError::from(ImageStoreError::Io {
            key: "k".into(),
            message: "permission denied".into(),
        });
        assert_eq!(io.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
