//! Which id a migrated character or campaign gets. Game servers and voice settings hold the
//! legacy ids (`thorin_01`, `camp_a`), so a legacy id becomes the limner id itself whenever it
//! can: when it is URL- and media-key-safe ([`unusable`]) and no other row has it. Otherwise the
//! record gets a fresh UUID and the report says why. A record imported by an older limner under
//! a UUID is renamed to its legacy id (every reference follows), so re-running the migration
//! repairs such an install.

use crate::characters::error::StoreResult;
use crate::characters::rows::new_id;
use rusqlite::{Connection, OptionalExtension};

/// The longest legacy id kept as an id, in bytes.
pub const LEGACY_ID_MAX: usize = 64;

/// The two tables whose ids come from legacy ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Characters,
    Campaigns,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Characters => "characters",
            Table::Campaigns => "campaigns",
        }
    }

    /// The word the report uses.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Table::Characters => "character",
            Table::Campaigns => "campaign",
        }
    }
}

/// Why `id` cannot be used as is, if it cannot. Kept: `A-Z a-z 0-9 _ -`, and `.` except first or
/// last. Such an id needs no escaping in a URL path, is one media key segment unchanged
/// (`portraits/<id>/...`, see the portrait service's key rules), and is never `.` or `..`.
pub fn unusable(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("the legacy id is empty".into());
    }
    if id.len() > LEGACY_ID_MAX {
        return Some(format!(
            "the legacy id is longer than {LEGACY_ID_MAX} bytes"
        ));
    }
    if id.starts_with('.') || id.ends_with('.') {
        return Some("the legacy id starts or ends with '.'".into());
    }
    id.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map(|c| format!("the legacy id contains {c:?} (only A-Z a-z 0-9 _ - . are kept as ids)"))
}

fn taken(conn: &Connection, table: Table, id: &str) -> StoreResult<bool> {
    let sql = format!("SELECT 1 FROM {} WHERE id = ?1", table.name());
    Ok(conn.query_row(&sql, [id], |_| Ok(())).optional()?.is_some())
}

/// The id for a new record of `legacy_id`: the legacy id, or a fresh UUID and the reason.
pub(crate) fn for_new(
    conn: &Connection,
    table: Table,
    legacy_id: &str,
) -> StoreResult<(String, Option<String>)> {
    if let Some(reason) = unusable(legacy_id) {
        return Ok((new_id(), Some(reason)));
    }
    if taken(conn, table, legacy_id)? {
        let reason = format!("another {} already has this id", table.kind());
        return Ok((new_id(), Some(reason)));
    }
    Ok((legacy_id.to_string(), None))
}

/// Moves an already imported record from `current` to its legacy id when that is possible;
/// returns the id it has now and, when that is not the legacy id, why.
pub(crate) fn settle(
    conn: &Connection,
    table: Table,
    current: &str,
    legacy_id: &str,
) -> StoreResult<(String, Option<String>)> {
    if current == legacy_id {
        return Ok((current.to_string(), None));
    }
    if let Some(reason) = unusable(legacy_id) {
        return Ok((current.to_string(), Some(reason)));
    }
    if taken(conn, table, legacy_id)? {
        let reason = format!("another {} already has this id", table.kind());
        return Ok((current.to_string(), Some(reason)));
    }
    rename(conn, table, current, legacy_id)?;
    Ok((legacy_id.to_string(), None))
}

/// Renames a row's primary key and every foreign key that points at it, whatever table holds
/// it (found from the schema, so tables added by later migrations follow too). Foreign keys are
/// checked at commit, when every reference has moved.
fn rename(conn: &Connection, table: Table, from: &str, to: &str) -> StoreResult<()> {
    conn.pragma_update(None, "defer_foreign_keys", true)?;
    let mut stmt = conn.prepare(
        "SELECT m.name, f.\"from\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
         WHERE m.type = 'table' AND f.\"table\" = ?1 AND (f.\"to\" IS NULL OR f.\"to\" = 'id')",
    )?;
    let references = stmt
        .query_map([table.name()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!("UPDATE {} SET id = ?2 WHERE id = ?1", table.name());
    conn.execute(&sql, [from, to])?;
    for (other, column) in references {
        let sql = format!("UPDATE \"{other}\" SET \"{column}\" = ?2 WHERE \"{column}\" = ?1");
        conn.execute(&sql, [from, to])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_url_and_key_safe_ids_are_kept() {
        for ok in [
            "thorin_01",
            "camp_a",
            "char-abc123",
            "npc.innkeeper",
            "A",
            &"x".repeat(LEGACY_ID_MAX),
        ] {
            assert_eq!(unusable(ok), None, "{ok}");
        }
        for bad in [
            "",
            "thorin 01",
            "a/b",
            "..",
            ".hidden",
            "thorin.",
            ".",
            "caf\u{e9}",
            "50%",
            "a?b",
            "a#b",
            &"x".repeat(LEGACY_ID_MAX + 1),
        ] {
            assert!(unusable(bad).is_some(), "{bad:?} was kept");
        }
    }
}
