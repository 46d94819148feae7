//! API tokens: created once and shown once, stored only as SHA-256 hashes in the `api_tokens`
//! table of the same SQLite database (schema migration 0002).

use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// Token storage over its own connection to the database (WAL lets it share the file).
#[derive(Clone)]
pub struct TokenStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = include_str!("../../migrations/0002_api_tokens.sql");

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
        })
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

    /// The principal a bearer token stands for, if it is known and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, String> {
        let conn = self.lock()?;
        let row: Option<(String, String)> = conn
            .query_row(
                "SELECT user, role FROM api_tokens WHERE token_hash = ?1 AND revoked = 0",
                params![hash(token.trim())],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        Ok(row
            .and_then(|(user, role)| Role::parse(&role).ok().map(|role| Principal { user, role })))
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

    pub fn revoke(&self, id: i64) -> Result<bool, String> {
        let conn = self.lock()?;
        let n = conn
            .execute(
                "UPDATE api_tokens SET revoked = 1 WHERE id = ?1",
                params![id],
            )
            .map_err(db_err)?;
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
    fn first_admin_is_created_once() {
        let s = TokenStore::open_in_memory().unwrap();
        let first = s.ensure_admin().unwrap().expect("admin created");
        assert_eq!(s.authenticate(&first).unwrap().unwrap().role, Role::Admin);
        assert_eq!(s.ensure_admin().unwrap(), None);
    }
}
