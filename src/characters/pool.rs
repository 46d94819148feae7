//! The readers beside the store's single writer: a small pool of connections opened once and
//! reused, each read running in its own deferred transaction. SQLite's WAL lets any number of
//! readers work while the writer commits; each sees the last commit made before its first query.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::StoreResult;

/// Readers kept open for reuse. Each read on the blocking pool holds one, so under load as many
/// are busy as requests are reading; keeping that many avoids reopening (and re-preparing) them.
/// Past this a busy moment opens more and closes them when done: a reader is never waited for.
const MAX_IDLE: usize = 64;

/// Page cache per reader (KiB): the OS page cache is shared by all of them, this is not.
const READER_CACHE_KIB: i64 = 1024;

/// Prepared statements kept per connection; each resource's queries are a handful.
const STATEMENT_CACHE: usize = 64;

/// Read-only connections to one database file.
pub(crate) struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// A reader checked out of the pool; it goes back when dropped.
pub(crate) struct Reader<'a> {
    conn: Option<Connection>,
    pool: &'a ReaderPool,
}

impl ReaderPool {
    /// A pool for the (already created and migrated) database at `path`; opens one reader now
    /// so a file that cannot be read fails at start, not at the first request.
    pub(crate) fn new(path: &Path) -> StoreResult<Self> {
        let pool = ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::with_capacity(MAX_IDLE)),
        };
        let first = pool.open()?;
        pool.idle_list().push(first);
        Ok(pool)
    }

    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // Only whole connections are pushed and popped under this lock, so a panic elsewhere
        // cannot leave the list half-changed.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> StoreResult<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // A reader that tried to write would take the write lock beside the writer's mutex.
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// An idle reader, or a new one when all are busy.
    pub(crate) fn get(&self) -> StoreResult<Reader<'_>> {
        let idle = self.idle_list().pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: self,
        })
    }

    /// Runs `f` on a reader inside one read transaction, so every query of `f` sees the same
    /// committed state even while the writer commits in between.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let reader = self.get()?;
        // Cached statements rather than `Connection::transaction`, which parses BEGIN anew
        // each time. Should `f` panic, the reader is dropped inside its transaction, and the
        // drop closes that connection.
        reader.prepare_cached("BEGIN DEFERRED")?.execute([])?;
        let out = f(&reader);
        // Nothing to keep (also after an error such as "not found"): ending the transaction
        // releases the snapshot so checkpoints can move on.
        reader.prepare_cached("ROLLBACK")?.execute([])?;
        out
    }
}

impl Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A connection still inside a transaction (its read failed before the end) would pin an
        // old snapshot; drop it instead of reusing it.
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.pool.idle_list();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}
