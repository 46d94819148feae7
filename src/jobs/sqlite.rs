//! The SQLite [`JobStore`]: its own connection to the server's database file (WAL, so it writes
//! beside the character store's connections without blocking their readers), or a private
//! in-memory database for tests and tools. The `jobs` table comes from migration 0004, which
//! the character store applies when it opens the file.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::store::{JobRecord, JobStore, JobStoreError, JobStoreResult};
use super::types::{JobFailure, JobId, JobState, JobStatus};

const SCHEMA: &str = include_str!("../../migrations/0004_jobs.sql");

/// Job records in SQLite. One connection behind a mutex: each call is one short statement.
pub struct SqliteJobStore {
    conn: Mutex<Connection>,
}

impl From<rusqlite::Error> for JobStoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // SQLITE_FULL: ENOSPC while writing the database, its WAL or a temp file.
            Some(rusqlite::ErrorCode::DiskFull) => JobStoreError::Full(e.to_string()),
            _ => JobStoreError::Database(e.to_string()),
        }
    }
}

fn ts(t: DateTime<Utc>) -> String {
    // Fixed width and always UTC, so text order is time order (retention compares them).
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(text: Option<String>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn parse_state(s: &str) -> JobState {
    match s {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "done" => JobState::Done,
        "cancelled" => JobState::Cancelled,
        _ => JobState::Failed,
    }
}

fn json_text<T: serde::Serialize>(v: Option<&T>) -> Option<String> {
    v.and_then(|v| serde_json::to_string(v).ok())
}

fn record(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let id: String = row.get("id")?;
    let state: String = row.get("state")?;
    let request: String = row.get("request")?;
    let result: Option<String> = row.get("result")?;
    let error: Option<String> = row.get("error")?;
    let created: String = row.get("created_at")?;
    Ok(JobRecord {
        id: JobId::from(id.as_str()),
        owner: row.get("owner")?,
        kind: row.get("kind")?,
        label: row.get("label")?,
        request: serde_json::from_str(&request).unwrap_or(Value::Null),
        state: parse_state(&state),
        step: row.get::<_, i64>("step")?.max(0) as usize,
        total: row.get::<_, i64>("total")?.max(0) as usize,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
        // A record whose error no longer parses still says that it failed.
        error: error
            .map(|e| serde_json::from_str(&e).unwrap_or_else(|_| JobFailure::internal(e.clone()))),
        seq: row.get::<_, i64>("seq")?.max(0) as u64,
        created_at: parse_ts(Some(created)).unwrap_or_default(),
        started_at: parse_ts(row.get("started_at")?),
        finished_at: parse_ts(row.get("finished_at")?),
    })
}

impl SqliteJobStore {
    /// The job store of an existing, migrated database file (open the character store on it
    /// first: it applies the migrations).
    pub fn open(path: &Path) -> JobStoreResult<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let has_table: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
            [],
            |r| r.get(0),
        )?;
        if !has_table {
            return Err(JobStoreError::Database(format!(
                "{} has no jobs table: open it with the character store first (it applies the \
                 schema migrations)",
                path.display()
            )));
        }
        Ok(SqliteJobStore {
            conn: Mutex::new(conn),
        })
    }

    /// A private in-memory store (tests, tools without a data directory).
    pub fn in_memory() -> JobStoreResult<Self> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteJobStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JobStore for SqliteJobStore {
    fn insert(&self, j: &JobRecord) -> JobStoreResult<()> {
        self.conn().execute(
            "INSERT INTO jobs (id, owner, kind, label, request, state, step, total, result, \
             error, seq, created_at, started_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                j.id.as_str(),
                j.owner,
                j.kind,
                j.label,
                serde_json::to_string(&j.request).unwrap_or_else(|_| "null".into()),
                state_name(j.state),
                j.step as i64,
                j.total as i64,
                json_text(j.result.as_ref()),
                json_text(j.error.as_ref()),
                j.seq as i64,
                ts(j.created_at),
                j.started_at.map(ts),
                j.finished_at.map(ts),
            ],
        )?;
        Ok(())
    }

    fn claim(&self, id: &str, started_at: DateTime<Utc>) -> JobStoreResult<bool> {
        let n = self.conn().execute(
            "UPDATE jobs SET state = 'running', started_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, ts(started_at)],
        )?;
        Ok(n == 1)
    }

    fn progress(&self, id: &str, step: usize, total: usize) -> JobStoreResult<()> {
        self.conn().execute(
            "UPDATE jobs SET step = ?2, total = ?3 WHERE id = ?1 AND state = 'running'",
            params![id, step as i64, total as i64],
        )?;
        Ok(())
    }

    fn finish(&self, s: &JobStatus) -> JobStoreResult<()> {
        self.conn().execute(
            "UPDATE jobs SET state = ?2, step = ?3, total = ?4, result = ?5, error = ?6, \
             started_at = ?7, finished_at = ?8 WHERE id = ?1",
            params![
                s.id.as_str(),
                state_name(s.state),
                s.step as i64,
                s.total as i64,
                json_text(s.result.as_ref()),
                json_text(s.error.as_ref()),
                s.started_at.map(ts),
                s.finished_at.map(ts),
            ],
        )?;
        Ok(())
    }

    fn get(&self, id: &str) -> JobStoreResult<Option<JobRecord>> {
        Ok(self
            .conn()
            .query_row("SELECT * FROM jobs WHERE id = ?1", [id], record)
            .optional()?)
    }

    fn fail_unfinished(
        &self,
        failure: &JobFailure,
        now: DateTime<Utc>,
    ) -> JobStoreResult<Vec<JobId>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids = {
            let mut stmt = tx
                .prepare("SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY seq")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.execute(
            "UPDATE jobs SET state = 'failed', error = ?1, finished_at = ?2 \
             WHERE state IN ('queued', 'running')",
            params![json_text(Some(failure)), ts(now)],
        )?;
        tx.commit()?;
        Ok(ids.iter().map(|i| JobId::from(i.as_str())).collect())
    }

    fn prune(&self, cutoff: DateTime<Utc>) -> JobStoreResult<usize> {
        Ok(self.conn().execute(
            "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
            [ts(cutoff)],
        )?)
    }

    fn max_seq(&self) -> JobStoreResult<u64> {
        let max: Option<i64> = self
            .conn()
            .query_row("SELECT max(seq) FROM jobs", [], |r| r.get(0))?;
        Ok(max.unwrap_or(0).max(0) as u64)
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
