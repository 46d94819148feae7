//! API tokens: created once and shown once, stored only as SHA-256 hashes in the `api_tokens`
//! table of the same SQLite database (schema migration 0002), plus a short-lived cache of verified
//! tokens so a request does not read the database to learn who is calling.
//!
//! The cache trusts a verified token for [`TOKEN_CACHE_TTL`]. A revocation through this store
//! (the server's own) empties it at once; one made by another process (`limner token revoke`
//! while the server runs) is seen when the entry expires, so within that bound. Unknown and
//! revoked tokens are never cached: a token created elsewhere works on its first request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Principal, Role};

/// A token as listed (never the secret itself).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenInfo {
    pub id: i64,
    pub user: String,
    pub role: Role,
    pub created_at: String,
    pub revoked: bool,
}

/// How long a verified token is believed without asking the database again: the longest a
/// token revoked by another process keeps working.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(2);

/// Verified tokens kept at most; past this the expired ones go, then all (they are re-verified).
const CACHE_CAPACITY: usize = 4096;

/// Token storage over its own connection to the database (WAL lets it share the file).
/// Clones share the connection and the cache.
#[derive(Clone)]
pub struct TokenStore {
    conn: Arc<Mutex<Connection>>,
    cache: Arc<Mutex<Cache>>,
}

/// Principals of verified tokens, keyed by the token's SHA-256 (the cache holds no secret).
#[derive(Default)]
struct Cache {
    entries: HashMap<Digest32, (Principal, Instant)>,
    /// Bumped by every revocation: a lookup that began before one must not cache its answer.
    generation: u64,
}

type Digest32 = [u8; 32];

const SCHEMA: &str = include_str!("../../migrations/0002_api_tokens.sql");

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(d: &Digest32) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(token: &str) -> String {
    hex(&digest(token))
}

fn db_err(e: rusqlite::Error) -> String {
    format!("token database error: {e}")
}

impl TokenStore {
    /// Opens the tokens table in the database at `path` (the character store's file).
    pub fn open(path: &Path) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        Self::with_connection(conn)
    }

    pub fn open_in_memory() -> Result<Self, String> {
        Self::with_connection(Connection::open_in_memory().map_err(db_err)?)
    }

    fn with_connection(conn: Connection) -> Result<Self, String> {
        // Idempotent: the same statements the versioned migration holds.
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            cache: Arc::default(),
        })
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Every change to the cache is a single map operation, so a panic cannot leave it torn.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, String> {
        self.conn
            .lock()
            .map_err(|_| "token store lock poisoned".to_string())
    }

    /// Creates a token for `user` and returns the secret (shown once) and its record.
    pub fn create(&self, user: &str, role: Role) -> Result<(String, TokenInfo), String> {
        let user = user.trim();
        if user.is_empty() || user.len() > 100 {
            return Err("user name must be 1 to 100 characters".into());
        }
        let mut raw = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut raw);
        let secret = format!(
            "lmn_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let now = chrono::Utc::now().to_rfc3339();
        let conn = self.lock()?;
        conn.execute(
            "INSERT INTO api_tokens (user, role, token_hash, created_at, revoked) VALUES (?1, ?2, ?3, ?4, 0)",
            params![user, role.as_str(), hash(&secret), now],
        )
        .map_err(db_err)?;
        let id = conn.last_insert_rowid();
        Ok((
            secret,
            TokenInfo {
                id,
                user: user.to_string(),
                role,
                created_at: now,
                revoked: false,
            },
        ))
    }

    /// The principal of a token verified less than [`TOKEN_CACHE_TTL`] ago, without touching
    /// the database (cheap enough for an async thread); None means "ask [`Self::authenticate`]".
    pub fn cached(&self, token: &str) -> Option<Principal> {
        let key = digest(token.trim());
        let cache = self.cache();
        match cache.entries.get(&key) {
            Some((p, at)) if at.elapsed() < TOKEN_CACHE_TTL => Some(p.clone()),
            _ => None,
        }
    }

    /// The principal a bearer token stands for, if it is known and not revoked: from the cache
    /// when fresh, else from the database (and then cached).
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, String> {
        let key = digest(token.trim());
        let generation = {
            let cache = self.cache();
            if let Some((p, at)) = cache.entries.get(&key) {
                if at.elapsed() < TOKEN_CACHE_TTL {
                    return Ok(Some(p.clone()));
                }
            }
            cache.generation
        };
        let row: Option<(String, String)> = {
            let conn = self.lock()?;
            conn.query_row(
                "SELECT user, role FROM api_tokens WHERE token_hash = ?1 AND revoked = 0",
                params![hex(&key)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?
        };
        let principal = row
            .and_then(|(user, role)| Role::parse(&role).ok().map(|role| Principal { user, role }));
        if let Some(p) = &principal {
            let mut cache = self.cache();
            // A revocation since our read may concern this very token: answer, but don't keep it.
            if cache.generation == generation {
                if cache.entries.len() >= CACHE_CAPACITY {
                    cache
                        .entries
                        .retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
                    if cache.entries.len() >= CACHE_CAPACITY {
                        cache.entries.clear();
                    }
                }
                cache.entries.insert(key, (p.clone(), Instant::now()));
            }
        }
        Ok(principal)
    }

    pub fn list(&self) -> Result<Vec<TokenInfo>, String> {
        let conn = self.lock()?;
        let mut stmt = conn
            .prepare("SELECT id, user, role, created_at, revoked FROM api_tokens ORDER BY id")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = vec![];
        for row in rows {
            let (id, user, role, created_at, revoked) = row.map_err(db_err)?;
            out.push(TokenInfo {
                id,
                user,
                role: Role::parse(&role).unwrap_or(Role::Player),
                created_at,
                revoked,
            });
        }
        Ok(out)
    }

    /// Revokes a token; from this store's next check on, it is refused (the cache is emptied,
    /// as it knows tokens only by hash, not by id).
    pub fn revoke(&self, id: i64) -> Result<bool, String> {
        let conn = self.lock()?;
        let n = conn
            .execute(
                "UPDATE api_tokens SET revoked = 1 WHERE id = ?1",
                params![id],
            )
            .map_err(db_err)?;
        // Still holding the connection: no lookup can read the row between commit and clear.
        let mut cache = self.cache();
        cache.entries.clear();
        cache.generation += 1;
        Ok(n > 0)
    }

    /// On a database without any admin token, creates one and returns its secret so the first
    /// start can print a login URL; None when an admin token already exists.
    pub fn ensure_admin(&self) -> Result<Option<String>, String> {
        let has_admin: bool = {
            let conn = self.lock()?;
            conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked = 0)",
                [],
                |r| r.get(0),
            )
            .map_err(db_err)?
        };
        if has_admin {
            return Ok(None);
        }
        self.create("admin", Role::Admin)
            .map(|(secret, _)| Some(secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_until_revoked_and_only_hashes_are_stored() {
        let s = TokenStore::open_in_memory().unwrap();
        let (secret, info) = s.create("alice", Role::Player).unwrap();
        assert!(secret.starts_with("lmn_") && secret.len() > 40);
        let p = s.authenticate(&secret).unwrap().unwrap();
        assert_eq!(
            p,
            Principal {
                user: "alice".into(),
                role: Role::Player
            }
        );
        assert_eq!(s.authenticate("lmn_wrong").unwrap(), None);
        let stored: String = s
            .lock()
            .unwrap()
            .query_row("SELECT token_hash FROM api_tokens", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, secret);
        assert!(!stored.contains(&secret[4..]));
        assert!(s.revoke(info.id).unwrap());
        assert_eq!(s.authenticate(&secret).unwrap(), None);
        assert!(s.list().unwrap()[0].revoked);
        assert!(s.create("  ", Role::Player).is_err());
    }

    #[test]
    fn a_revocation_through_the_store_empties_the_cache_at_once() {
        let s = TokenStore::open_in_memory().unwrap();
        let (alice, alice_info) = s.create("alice", Role::Player).unwrap();
        let (bob, _) = s.create("bob", Role::Player).unwrap();
        assert_eq!(
            s.cached(&alice),
            None,
            "nothing is cached before the first check"
        );
        assert_eq!(s.authenticate(&alice).unwrap().unwrap().user, "alice");
        assert_eq!(s.authenticate(&bob).unwrap().unwrap().user, "bob");
        assert_eq!(s.cached(&alice).unwrap().user, "alice");
        // A clone (another handler's copy) revokes: every copy stops believing the token.
        assert!(s.clone().revoke(alice_info.id).unwrap());
        assert_eq!(s.cached(&alice), None);
        assert_eq!(s.authenticate(&alice).unwrap(), None);
        // Others are re-verified from the database, and still pass.
        assert_eq!(s.cached(&bob), None);
        assert_eq!(s.authenticate(&bob).unwrap().unwrap().user, "bob");
    }

    #[test]
    fn unknown_tokens_are_not_cached_so_one_created_elsewhere_works_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.db");
        let server = TokenStore::open(&path).unwrap();
        let cli = TokenStore::open(&path).unwrap();
        assert_eq!(server.authenticate("lmn_not_yet").unwrap(), None);
        let (secret, _) = cli.create("carol", Role::Player).unwrap();
        assert_eq!(server.authenticate(&secret).unwrap().unwrap().user, "carol");
    }

    #[test]
    fn a_revocation_by_another_process_is_seen_once_the_entry_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.db");
        let server = TokenStore::open(&path).unwrap();
        let cli = TokenStore::open(&path).unwrap();
        let (secret, info) = cli.create("dave", Role::Admin).unwrap();
        assert_eq!(
            server.authenticate(&secret).unwrap().unwrap().role,
            Role::Admin
        );
        assert!(cli.revoke(info.id).unwrap());
        let revoked_at = Instant::now();
        // Poll as requests would; the bound is TOKEN_CACHE_TTL, the slack only a hang guard.
        while server.authenticate(&secret).unwrap().is_some() {
            assert!(
                revoked_at.elapsed() < TOKEN_CACHE_TTL + Duration::from_secs(10),
                "a token revoked elsewhere was still accepted long after the cache bound"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(server.cached(&secret), None);
    }

    #[test]
    fn first_admin_is_created_once() {
        let s = TokenStore::open_in_memory().unwrap();
        let first = s.ensure_admin().unwrap().expect("admin created");
        assert_eq!(s.authenticate(&first).unwrap().unwrap().role, Role::Admin);
        assert_eq!(s.ensure_admin().unwrap(), None);
    }
}
