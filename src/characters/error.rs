//! The store's one error enum. The HTTP layer maps it to status codes in one table:
//! NotFound -> 404, Validation -> 422, Conflict -> 409, Gone -> 410, Database -> 500.

use super::validate::ValidationError;

/// What can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("invalid {0}")]
    Validation(#[from] ValidationError),
    #[error("conflict: {0}")]
    Conflict(String),
    /// Something that existed and can no longer be used (an expired or used-up invite code).
    #[error("{0}")]
    Gone(String),
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    pub(crate) fn not_found(what: &'static str, id: &str) -> Self {
        StoreError::NotFound {
            what,
            id: id.to_string(),
        }
    }
}

/// Result of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        // Unique / primary-key violations are a caller's conflict, not a broken database.
        if let rusqlite::Error::SqliteFailure(f, _) = &e {
            if matches!(
                f.extended_code,
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ) {
                return StoreError::Conflict(e.to_string());
            }
        }
        StoreError::Database(e.to_string())
    }
}
