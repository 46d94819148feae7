//! SQL for portrait history: every portrait a character ever had is a row; regenerating adds a
//! row and never removes one; "current" is a pointer on the profile.

use super::error::ValidationError;
use super::error::{OrNotFound, StoreError, StoreResult};
use super::profiles;
use super::rows::{find_one, json_col, new_id, now, time_col, time_text};
use super::types::{CharacterProfile, NewPortrait, PortraitRecord};
use super::validate;
use rusqlite::{params, Connection, Row};
use serde_json::json;

const COLUMNS: &str = "p.id, p.character_id, p.file_path, p.thumbnail_path, p.prompt, \
    p.negative_prompt, p.parameters, p.seed, p.model, p.art_style, p.parent_portrait_id, \
    p.created_at, (c.current_portrait_id IS p.id)";

const FROM: &str = "FROM portraits p JOIN characters c ON c.id = p.character_id";

fn from_row(r: &Row<'_>) -> rusqlite::Result<PortraitRecord> {
    Ok(PortraitRecord {
        id: r.get(0)?,
        character_id: r.get(1)?,
        file_path: r.get(2)?,
        thumbnail_path: r.get(3)?,
        prompt: r.get(4)?,
        negative_prompt: r.get(5)?,
        parameters: json_col(r, 6)?,
        // Stored bit-for-bit as i64 (SQLite has no u64).
        seed: r.get::<_, Option<i64>>(7)?.map(|s| s as u64),
        model: r.get(8)?,
        art_style: r.get(9)?,
        parent_portrait_id: r.get(10)?,
        created_at: time_col(r, 11)?,
        is_current: r.get(12)?,
    })
}

pub(crate) fn find(conn: &Connection, id: &str) -> StoreResult<Option<PortraitRecord>> {
    // Every merged view with a portrait asks this.
    find_one(
        conn,
        &format!("SELECT {COLUMNS} {FROM} WHERE p.id = ?1"),
        [id],
        from_row,
    )
}

pub(crate) fn get(conn: &Connection, id: &str) -> StoreResult<PortraitRecord> {
    find(conn, id)?.or_not_found("portrait", id)
}

pub(crate) fn add(
    conn: &Connection,
    new: &NewPortrait,
    make_current: bool,
) -> StoreResult<PortraitRecord> {
    let p = validate::validate_portrait(new)?;
    let mut profile = profiles::get(conn, &p.character_id)?;
    if let Some(parent) = p.parent_portrait_id.as_deref() {
        // A variation must start from one of the same character's portraits.
        let owner = find(conn, parent)?.map(|r| r.character_id);
        if owner.as_deref() != Some(p.character_id.as_str()) {
            return Err(ValidationError::new(
                "parent_portrait_id",
                format!("{parent:?} is not a portrait of this character"),
            )
            .into());
        }
    }
    let id = new_id();
    let created = now();
    conn.execute(
        "INSERT INTO portraits (id, character_id, file_path, thumbnail_path, prompt, \
         negative_prompt, parameters, seed, model, art_style, parent_portrait_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
            p.character_id,
            p.file_path,
            p.thumbnail_path,
            p.prompt,
            p.negative_prompt,
            p.parameters.unwrap_or_else(|| json!({})).to_string(),
            p.seed.map(|s| s as i64),
            p.model,
            p.art_style,
            p.parent_portrait_id,
            time_text(&created),
        ],
    )?;
    if make_current {
        profile.current_portrait_id = Some(id.clone());
        profile.updated_at = created;
        profiles::save(conn, &profile)?;
    }
    get(conn, &id)
}

pub(crate) fn history(conn: &Connection, character_id: &str) -> StoreResult<Vec<PortraitRecord>> {
    profiles::get(conn, character_id)?;
    let sql = format!(
        "SELECT {COLUMNS} {FROM} WHERE p.character_id = ?1 \
         ORDER BY p.created_at DESC, p.rowid DESC"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([character_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn make_current(
    conn: &Connection,
    character_id: &str,
    portrait_id: &str,
) -> StoreResult<CharacterProfile> {
    let mut profile = profiles::get(conn, character_id)?;
    let portrait = get(conn, portrait_id)?;
    if portrait.character_id != character_id {
        // Reported as not found so one character's portrait ids reveal nothing about another's.
        return Err(StoreError::not_found("portrait", portrait_id));
    }
    profile.current_portrait_id = Some(portrait.id);
    profile.updated_at = now();
    profiles::save(conn, &profile)?;
    Ok(profile)
}
