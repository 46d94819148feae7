//! The store seam ([`CharacterStore`]) and its SQLite implementation ([`SqliteStore`]): opening
//! the database (WAL, foreign keys, busy timeout), versioned schema migrations applied at open in
//! one transaction, transactional writes, and online backup.
//!
//! The SQL of each resource lives in `profiles.rs`, `campaigns.rs` and `portraits.rs` as functions
//! over a `&Connection`, so that one operation (or a whole legacy migration) can compose several of
//! them inside a single transaction. A PostgreSQL store would implement the same trait.

use super::error::{StoreError, StoreResult};
use super::pool::ReaderPool;
use super::types::{
    Campaign, CampaignFilter, CampaignInvite, CampaignStatePatch, CharacterFilter, CharacterInfo,
    CharacterPatch, CharacterProfile, EnrichedCharacter, NewCampaign, NewCharacter, NewInvite,
    NewPortrait, Page, PortraitRecord, Viewer,
};
use super::{campaigns, invites, listing, portraits, profiles, rows};
use rusqlite::backup::StepResult;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "limner.db";

/// The versioned schema migrations, in order; version N is `MIGRATIONS[N - 1]`. Never edit a
/// released one: append a new file instead.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_initial.sql"),
    // API tokens (src/auth); idempotent, the token store may also apply it itself.
    include_str!("../../migrations/0002_api_tokens.sql"),
    // Indexes for visibility and pagination in SQL; campaign invitations.
    include_str!("../../migrations/0003_visibility_and_invites.sql"),
    // Durable job records (src/jobs); idempotent, an in-memory job store applies it itself.
    include_str!("../../migrations/0004_jobs.sql"),
    // Characters pin LoRAs and embeddings.
    include_str!("../../migrations/0005_pinned_networks.sql"),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Every operation on characters, campaigns and portraits. All writes are transactional: on any
/// error nothing of the operation is kept.
pub trait CharacterStore: Send + Sync {
    /// Creates a profile (and joins `new.campaign_id` when given).
    fn create_character(&self, new: &NewCharacter) -> StoreResult<CharacterProfile>;
    /// Creates a profile under a stable import key unless one exists; returns it and whether it
    /// was created now.
    fn import_character(
        &self,
        import_key: &str,
        new: &NewCharacter,
    ) -> StoreResult<(CharacterProfile, bool)>;
    fn get_character(&self, id: &str) -> StoreResult<CharacterProfile>;
    fn find_by_import_key(&self, import_key: &str) -> StoreResult<Option<CharacterProfile>>;
    /// Profiles matching every given filter that `filter.visible_to` may see, ordered by name
    /// (case-insensitive), then id.
    fn list_characters(&self, filter: &CharacterFilter) -> StoreResult<Vec<CharacterProfile>>;
    /// The same rows as merged views (with the campaign's state when filtered by one), and the
    /// key the next page starts after.
    fn character_page(&self, filter: &CharacterFilter) -> StoreResult<Page<EnrichedCharacter>>;
    /// The character if `viewer` may see it, else NotFound (one indexed query).
    fn visible_character(&self, viewer: &Viewer, id: &str) -> StoreResult<CharacterProfile>;
    fn update_character(&self, id: &str, patch: &CharacterPatch) -> StoreResult<CharacterProfile>;
    /// Deletes a profile, its campaign states and its portrait records; returns the portrait and
    /// thumbnail file paths so the caller can delete the files.
    fn delete_character(&self, id: &str) -> StoreResult<Vec<String>>;

    fn create_campaign(&self, new: &NewCampaign) -> StoreResult<Campaign>;
    fn get_campaign(&self, id: &str) -> StoreResult<Campaign>;
    /// Campaigns matching the filters that `filter.visible_to` may see, ordered by name.
    fn list_campaigns(&self, filter: &CampaignFilter) -> StoreResult<Vec<Campaign>>;
    fn campaign_page(&self, filter: &CampaignFilter) -> StoreResult<Page<Campaign>>;
    /// The campaign if `viewer` may see it (admin, its DM, a player in it), else NotFound.
    fn visible_campaign(&self, viewer: &Viewer, id: &str) -> StoreResult<Campaign>;
    /// Deletes a campaign and its campaign states (profiles stay).
    fn delete_campaign(&self, id: &str) -> StoreResult<()>;
    /// Adds a character to a campaign with an initial state; Conflict if already there.
    fn join_campaign(
        &self,
        campaign_id: &str,
        character_id: &str,
        initial: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo>;
    fn leave_campaign(&self, campaign_id: &str, character_id: &str) -> StoreResult<()>;
    /// A new invite code for a campaign (validated: lifetime and uses within their limits).
    fn create_invite(
        &self,
        campaign_id: &str,
        created_by: Option<&str>,
        new: &NewInvite,
    ) -> StoreResult<CampaignInvite>;
    /// The campaign's codes that can still be used, newest first.
    fn list_invites(&self, campaign_id: &str) -> StoreResult<Vec<CampaignInvite>>;
    fn revoke_invite(&self, campaign_id: &str, code: &str) -> StoreResult<()>;
    /// The invite behind a code (NotFound when unknown or revoked; expired ones are returned).
    fn find_invite(&self, code: &str) -> StoreResult<CampaignInvite>;
    /// Joins the character to the code's campaign with the default state and counts one use;
    /// Gone when the code expired or is used up, Conflict when the character already takes part.
    fn redeem_invite(&self, code: &str, character_id: &str) -> StoreResult<CharacterInfo>;
    fn campaign_state(&self, campaign_id: &str, character_id: &str) -> StoreResult<CharacterInfo>;
    fn update_campaign_state(
        &self,
        campaign_id: &str,
        character_id: &str,
        patch: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo>;
    /// The merged view; with a campaign, the character must take part in it.
    fn enriched_character(
        &self,
        character_id: &str,
        campaign_id: Option<&str>,
    ) -> StoreResult<EnrichedCharacter>;
    /// Every character of a campaign as merged views (the DM roster), ordered by name.
    fn campaign_roster(&self, campaign_id: &str) -> StoreResult<Vec<EnrichedCharacter>>;

    /// Records a portrait; earlier ones are kept. `make_current` points the profile at it.
    fn add_portrait(&self, new: &NewPortrait, make_current: bool) -> StoreResult<PortraitRecord>;
    fn get_portrait(&self, id: &str) -> StoreResult<PortraitRecord>;
    /// Every portrait of a character, newest first.
    fn portrait_history(&self, character_id: &str) -> StoreResult<Vec<PortraitRecord>>;
    /// Makes one of the character's own portraits current again.
    fn set_current_portrait(
        &self,
        character_id: &str,
        portrait_id: &str,
    ) -> StoreResult<CharacterProfile>;

    /// Writes a consistent copy of the whole database to `dest` (atomically replaced).
    fn backup_to(&self, dest: &Path) -> StoreResult<()>;

    /// A cheap read that proves the database answers (for `/health`).
    fn ping(&self) -> StoreResult<()> {
        self.list_campaigns(&CampaignFilter {
            limit: Some(1),
            ..Default::default()
        })
        .map(|_| ())
    }
}

/// The SQLite store: one writer connection behind a mutex (SQLite allows one writer at a time;
/// the mutex queues them here instead of in busy retries) and, for a database file, a pool of
/// readers that run beside it (WAL). Cheap to clone and share between threads. WAL also lets
/// other processes (`limner backup`) read while this one writes.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// None in memory: a private in-memory database has only the one connection.
    readers: Option<Arc<ReaderPool>>,
    path: Option<PathBuf>,
}

/// The store the rest of limner uses.
pub type Store = SqliteStore;

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Database(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn, Some(path.to_path_buf()))
    }

    /// Opens `<data_dir>/limner.db`.
    pub fn open_in_data_dir(data_dir: &Path) -> StoreResult<Self> {
        Self::open(&data_dir.join(DB_FILE_NAME))
    }

    /// Opens an existing database file only (never creates one), e.g. for `limner backup`.
    pub fn open_existing(path: &Path) -> StoreResult<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn, Some(path.to_path_buf()))
    }

    /// A private in-memory database (tests, dry runs).
    pub fn open_in_memory() -> StoreResult<Self> {
        Self::init(Connection::open_in_memory()?, None)
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> StoreResult<Self> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL: readers never block the writer; FULL sync: a commit survives power loss too.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        migrate_schema(&mut conn)?;
        // Readers open only after the schema is current, so none sees an old one.
        let readers = match &path {
            Some(p) => Some(Arc::new(ReaderPool::new(p)?)),
            None => None,
        };
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            readers,
            path,
        })
    }

    /// The database file, if not in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version recorded in the database (`PRAGMA user_version`).
    pub fn schema_version(&self) -> StoreResult<i64> {
        self.read(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
    }

    /// `PRAGMA integrity_check`: "ok" for a sound database.
    pub fn integrity_check(&self) -> StoreResult<String> {
        self.read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction (rolled back), so the
        // connection itself is still sound.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a pooled reader in one read transaction (one consistent snapshot that
    /// includes every write committed before it started), never waiting for the writer.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        match &self.readers {
            Some(pool) => pool.read(f),
            None => f(&self.lock()),
        }
    }

    /// Runs `f` in one IMMEDIATE transaction, committed only if `f` succeeds.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a transaction that is always rolled back (a dry run sees its own writes).
    pub(crate) fn rehearse<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        f(&tx)
    }
}

/// Applies every migration newer than the database's `user_version`, all in one transaction.
fn migrate_schema(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "database schema version {current} is newer than this limner ({SCHEMA_VERSION})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

impl CharacterStore for SqliteStore {
    fn create_character(&self, new: &NewCharacter) -> StoreResult<CharacterProfile> {
        self.write(|tx| campaigns::create_character(tx, new, None))
    }

    fn import_character(
        &self,
        import_key: &str,
        new: &NewCharacter,
    ) -> StoreResult<(CharacterProfile, bool)> {
        self.write(|tx| match profiles::by_import_key(tx, import_key)? {
            Some(p) => Ok((p, false)),
            None => Ok((
                campaigns::create_character(tx, new, Some(import_key))?,
                true,
            )),
        })
    }

    fn get_character(&self, id: &str) -> StoreResult<CharacterProfile> {
        self.read(|c| profiles::get(c, id))
    }

    fn find_by_import_key(&self, import_key: &str) -> StoreResult<Option<CharacterProfile>> {
        self.read(|c| profiles::by_import_key(c, import_key))
    }

    fn list_characters(&self, filter: &CharacterFilter) -> StoreResult<Vec<CharacterProfile>> {
        let page = self.character_page(filter)?;
        Ok(page.items.into_iter().map(|e| e.profile).collect())
    }

    fn character_page(&self, filter: &CharacterFilter) -> StoreResult<Page<EnrichedCharacter>> {
        self.read(|c| listing::character_page(c, filter))
    }

    fn visible_character(&self, viewer: &Viewer, id: &str) -> StoreResult<CharacterProfile> {
        self.read(|c| listing::visible_character(c, viewer, id))
    }

    fn update_character(&self, id: &str, patch: &CharacterPatch) -> StoreResult<CharacterProfile> {
        self.write(|tx| profiles::update(tx, id, patch))
    }

    fn delete_character(&self, id: &str) -> StoreResult<Vec<String>> {
        self.write(|tx| profiles::delete(tx, id))
    }

    fn create_campaign(&self, new: &NewCampaign) -> StoreResult<Campaign> {
        self.write(|tx| campaigns::create(tx, new, None))
    }

    fn get_campaign(&self, id: &str) -> StoreResult<Campaign> {
        self.read(|c| campaigns::get(c, id))
    }

    fn list_campaigns(&self, filter: &CampaignFilter) -> StoreResult<Vec<Campaign>> {
        Ok(self.campaign_page(filter)?.items)
    }

    fn campaign_page(&self, filter: &CampaignFilter) -> StoreResult<Page<Campaign>> {
        self.read(|c| listing::campaign_page(c, filter))
    }

    fn visible_campaign(&self, viewer: &Viewer, id: &str) -> StoreResult<Campaign> {
        self.read(|c| listing::visible_campaign(c, viewer, id))
    }

    fn delete_campaign(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| campaigns::delete(tx, id))
    }

    fn join_campaign(
        &self,
        campaign_id: &str,
        character_id: &str,
        initial: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo> {
        self.write(|tx| campaigns::join(tx, campaign_id, character_id, initial))
    }

    fn leave_campaign(&self, campaign_id: &str, character_id: &str) -> StoreResult<()> {
        self.write(|tx| campaigns::leave(tx, campaign_id, character_id))
    }

    fn create_invite(
        &self,
        campaign_id: &str,
        created_by: Option<&str>,
        new: &NewInvite,
    ) -> StoreResult<CampaignInvite> {
        self.write(|tx| invites::create(tx, campaign_id, created_by, new, rows::now()))
    }

    fn list_invites(&self, campaign_id: &str) -> StoreResult<Vec<CampaignInvite>> {
        self.read(|c| invites::list(c, campaign_id, rows::now()))
    }

    fn revoke_invite(&self, campaign_id: &str, code: &str) -> StoreResult<()> {
        self.write(|tx| invites::revoke(tx, campaign_id, code))
    }

    fn find_invite(&self, code: &str) -> StoreResult<CampaignInvite> {
        self.read(|c| invites::find(c, code))
    }

    fn redeem_invite(&self, code: &str, character_id: &str) -> StoreResult<CharacterInfo> {
        self.write(|tx| invites::redeem(tx, code, character_id, rows::now()))
    }

    fn campaign_state(&self, campaign_id: &str, character_id: &str) -> StoreResult<CharacterInfo> {
        self.read(|c| campaigns::state(c, campaign_id, character_id))
    }

    fn update_campaign_state(
        &self,
        campaign_id: &str,
        character_id: &str,
        patch: &CampaignStatePatch,
    ) -> StoreResult<CharacterInfo> {
        self.write(|tx| campaigns::update_state(tx, campaign_id, character_id, patch))
    }

    fn enriched_character(
        &self,
        character_id: &str,
        campaign_id: Option<&str>,
    ) -> StoreResult<EnrichedCharacter> {
        self.read(|c| campaigns::enriched(c, character_id, campaign_id))
    }

    fn campaign_roster(&self, campaign_id: &str) -> StoreResult<Vec<EnrichedCharacter>> {
        self.read(|c| campaigns::roster(c, campaign_id))
    }

    fn add_portrait(&self, new: &NewPortrait, make_current: bool) -> StoreResult<PortraitRecord> {
        self.write(|tx| portraits::add(tx, new, make_current))
    }

    fn get_portrait(&self, id: &str) -> StoreResult<PortraitRecord> {
        self.read(|c| portraits::get(c, id))
    }

    fn portrait_history(&self, character_id: &str) -> StoreResult<Vec<PortraitRecord>> {
        self.read(|c| portraits::history(c, character_id))
    }

    fn set_current_portrait(
        &self,
        character_id: &str,
        portrait_id: &str,
    ) -> StoreResult<CharacterProfile> {
        self.write(|tx| portraits::make_current(tx, character_id, portrait_id))
    }

    fn ping(&self) -> StoreResult<()> {
        self.schema_version().map(|_| ())
    }

    fn backup_to(&self, dest: &Path) -> StoreResult<()> {
        let db_err = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Database(format!("backup to {}: {what}: {e}", dest.display()))
        };
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| db_err("create folder", &e))?;
        }
        // Copy into a temporary sibling, then rename: a reader never sees half a backup.
        let tmp = dest.with_extension("db.partial");
        let _ = std::fs::remove_file(&tmp);
        {
            let src = self.lock();
            let mut dst = Connection::open(&tmp).map_err(|e| db_err("open", &e))?;
            let backup =
                rusqlite::backup::Backup::new(&src, &mut dst).map_err(|e| db_err("start", &e))?;
            // All pages in one step (-1): one consistent snapshot even while other processes
            // write. Busy / locked: another connection holds a lock briefly; retry.
            let mut attempts = 0;
            loop {
                match backup.step(-1).map_err(|e| db_err("copy", &e))? {
                    StepResult::Done => break,
                    StepResult::More => continue,
                    _ if attempts < 200 => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    other => return Err(db_err("copy", &format!("{other:?}"))),
                }
            }
        }
        std::fs::rename(&tmp, dest).map_err(|e| db_err("rename", &e))?;
        Ok(())
    }
}
