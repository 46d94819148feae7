//! The store's one error enum and the [`ValidationError`] it wraps (kept here, below every
//! other characters module, so that the vocabularies, the types and `validate` all use it). The
//! HTTP layer maps it to status codes in one table: NotFound -> 404, Validation -> 422,
//! Conflict -> 409, Gone -> 410, StorageFull -> 507, Database -> 500.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A rejected input value: which field, and why (with the limit or the allowed values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unknown_value(field: &str, raw: &str, allowed: &[&str]) -> Self {
        Self::new(
            field,
            format!(
                "unknown {field} {raw:?}; allowed values: {}",
                allowed.join(", ")
            ),
        )
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

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
    /// The disk (or the database's size limit) is full; the write was rolled back whole.
    #[error("insufficient storage: {0}")]
    StorageFull(String),
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

/// A looked-up record that must exist: `None` becomes NotFound naming what was looked for.
pub(crate) trait OrNotFound<T> {
    fn or_not_found(self, what: &'static str, id: &str) -> StoreResult<T>;
}

impl<T> OrNotFound<T> for Option<T> {
    fn or_not_found(self, what: &'static str, id: &str) -> StoreResult<T> {
        self.ok_or_else(|| StoreError::not_found(what, id))
    }
}

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
            // SQLITE_FULL: ENOSPC while writing the database, its WAL or a temp file.
            if f.code == rusqlite::ErrorCode::DiskFull {
                return StoreError::StorageFull(e.to_string());
            }
        }
        StoreError::Database(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_database_is_storage_full_not_a_broken_one() {
        // A real SQLITE_FULL: the database may not grow past its page limit.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB); PRAGMA max_page_count = 8;")
            .unwrap();
        let err = (0..100)
            .find_map(|_| {
                conn.execute("INSERT INTO t VALUES (zeroblob(4000))", [])
                    .err()
            })
            .expect("the page limit is reached");
        match StoreError::from(err) {
            StoreError::StorageFull(m) => assert!(m.contains("full"), "{m}"),
            other => panic!("not StorageFull: {other:?}"),
        }
        let other = conn.execute("INSERT INTO nope VALUES (1)", []).unwrap_err();
        assert!(matches!(StoreError::from(other), StoreError::Database(_)));
    }
}
