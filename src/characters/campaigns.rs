//! SQL for campaigns and per-campaign character state (`CharacterInfo`), and the merged
//! [`EnrichedCharacter`] view of one character or a whole roster.

use super::error::{OrNotFound, StoreError, StoreResult};
use super::rows::{
    self, find_one, new_id, now, state_from_row, time_col, time_text, COLUMN_COUNT, STATE_COLUMNS,
};
use super::types::{
    Campaign, CampaignStatePatch, CharacterInfo, CharacterProfile, EnrichedCharacter, NewCampaign,
    NewCharacter,
};
use super::{portraits, profiles, validate};
use rusqlite::{params, Connection, Row};
use serde_json::json;

pub(crate) fn create(
    conn: &Connection,
    new: &NewCampaign,
    import_key: Option<&str>,
) -> StoreResult<Campaign> {
    let (name, dm_id, description) = validate::validate_campaign(new)?;
    let t = now();
    let campaign = Campaign {
        id: new_id(),
        name,
        dm_id,
        description,
        character_ids: Vec::new(),
        import_key: import_key.map(str::to_string),
        created_at: t,
        updated_at: t,
    };
    conn.execute(
        "INSERT INTO campaigns (id, import_key, name, dm_id, description, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            campaign.id,
            campaign.import_key,
            campaign.name,
            campaign.dm_id,
            campaign.description,
            time_text(&t),
            time_text(&t),
        ],
    )?;
    Ok(campaign)
}

pub(crate) const CAMPAIGN_COLUMNS: &str =
    "k.id, k.name, k.dm_id, k.description, k.import_key, k.created_at, k.updated_at";

pub(crate) fn campaign_from_row(r: &Row<'_>) -> rusqlite::Result<Campaign> {
    Ok(Campaign {
        id: r.get(0)?,
        name: r.get(1)?,
        dm_id: r.get(2)?,
        description: r.get(3)?,
        character_ids: Vec::new(),
        import_key: r.get(4)?,
        created_at: time_col(r, 5)?,
        updated_at: time_col(r, 6)?,
    })
}

pub(crate) fn with_members(conn: &Connection, mut c: Campaign) -> StoreResult<Campaign> {
    let mut stmt = conn.prepare(
        "SELECT character_id FROM campaign_characters WHERE campaign_id = ?1 \
         ORDER BY joined_at, character_id",
    )?;
    let ids = stmt.query_map([&c.id], |r| r.get(0))?;
    c.character_ids = ids.collect::<Result<_, _>>()?;
    Ok(c)
}

/// The campaign whose `column` is `value`, with its members.
fn find_by(conn: &Connection, column: &str, value: &str) -> StoreResult<Option<Campaign>> {
    let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns k WHERE k.{column} = ?1");
    match find_one(conn, &sql, [value], campaign_from_row)? {
        Some(c) => Ok(Some(with_members(conn, c)?)),
        None => Ok(None),
    }
}

pub(crate) fn get(conn: &Connection, id: &str) -> StoreResult<Campaign> {
    find_by(conn, "id", id)?.or_not_found("campaign", id)
}

pub(crate) fn by_import_key(conn: &Connection, key: &str) -> StoreResult<Option<Campaign>> {
    find_by(conn, "import_key", key)
}

pub(crate) fn delete(conn: &Connection, id: &str) -> StoreResult<()> {
    if conn.execute("DELETE FROM campaigns WHERE id = ?1", [id])? == 0 {
        return Err(StoreError::not_found("campaign", id));
    }
    Ok(())
}

fn save_state(conn: &Connection, s: &CharacterInfo, insert: bool) -> StoreResult<()> {
    // One parameter list for both statements; an update leaves `joined_at` (?12) alone.
    let sql = if insert {
        "INSERT INTO campaign_characters (campaign_id, character_id, level, \
         hit_points_current, hit_points_max, armor_class, status, inventory, location, \
         quests, extra, joined_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    } else {
        "UPDATE campaign_characters SET level = ?3, hit_points_current = ?4, \
         hit_points_max = ?5, armor_class = ?6, status = ?7, inventory = ?8, location = ?9, \
         quests = ?10, extra = ?11, updated_at = ?13 \
         WHERE campaign_id = ?1 AND character_id = ?2"
    };
    conn.execute(
        sql,
        params![
            s.campaign_id,
            s.character_id,
            s.level,
            s.hit_points_current,
            s.hit_points_max,
            s.armor_class,
            s.status,
            s.inventory.to_string(),
            s.location,
            s.quests.to_string(),
            s.extra.to_string(),
            time_text(&s.joined_at),
            time_text(&s.updated_at),
        ],
    )?;
    Ok(())
}

/// The state a character starts a campaign with (the portrait-creator spec's CharacterInfo defaults).
pub(crate) fn default_state(campaign_id: &str, character_id: &str) -> CharacterInfo {
    let t = now();
    CharacterInfo {
        campaign_id: campaign_id.to_string(),
        character_id: character_id.to_string(),
        level: None,
        hit_points_current: 10,
        hit_points_max: 10,
        armor_class: 10,
        status: "healthy".to_string(),
        inventory: json!({}),
        location: None,
        quests: json!([]),
        extra: json!({}),
        joined_at: t,
        updated_at: t,
    }
}

pub(crate) fn find_state(
    conn: &Connection,
    campaign_id: &str,
    character_id: &str,
) -> StoreResult<Option<CharacterInfo>> {
    let sql = format!(
        "SELECT {STATE_COLUMNS} FROM campaign_characters s \
         WHERE s.campaign_id = ?1 AND s.character_id = ?2"
    );
    find_one(conn, &sql, [campaign_id, character_id], |r| {
        state_from_row(r, 0)
    })
}

pub(crate) fn state(
    conn: &Connection,
    campaign_id: &str,
    character_id: &str,
) -> StoreResult<CharacterInfo> {
    find_state(conn, campaign_id, character_id)?
        .or_not_found("campaign state", &format!("{campaign_id}/{character_id}"))
}

/// Inserts a complete, already validated state (used by `join` and the legacy migration).
pub(crate) fn insert_state(conn: &Connection, s: &CharacterInfo) -> StoreResult<()> {
    save_state(conn, s, true)
}

pub(crate) fn join(
    conn: &Connection,
    campaign_id: &str,
    character_id: &str,
    initial: &CampaignStatePatch,
) -> StoreResult<CharacterInfo> {
    get(conn, campaign_id)?;
    profiles::get(conn, character_id)?;
    if find_state(conn, campaign_id, character_id)?.is_some() {
        return Err(StoreError::Conflict(format!(
            "character {character_id} already takes part in campaign {campaign_id}"
        )));
    }
    let mut s = default_state(campaign_id, character_id);
    validate::apply_state_patch(&mut s, initial)?;
    insert_state(conn, &s)?;
    Ok(s)
}

/// Validates and inserts a new profile, joining `new.campaign_id` when given (one transaction:
/// the caller's).
pub(crate) fn create_character(
    conn: &Connection,
    new: &NewCharacter,
    import_key: Option<&str>,
) -> StoreResult<CharacterProfile> {
    let profile = profiles::create(conn, new, import_key)?;
    if let Some(campaign_id) = new.campaign_id.as_deref() {
        let campaign_id = validate::id("campaign_id", campaign_id)?;
        join(
            conn,
            &campaign_id,
            &profile.id,
            &CampaignStatePatch::default(),
        )?;
    }
    Ok(profile)
}

pub(crate) fn leave(conn: &Connection, campaign_id: &str, character_id: &str) -> StoreResult<()> {
    let n = conn.execute(
        "DELETE FROM campaign_characters WHERE campaign_id = ?1 AND character_id = ?2",
        [campaign_id, character_id],
    )?;
    if n == 0 {
        return Err(StoreError::not_found(
            "campaign state",
            &format!("{campaign_id}/{character_id}"),
        ));
    }
    Ok(())
}

pub(crate) fn update_state(
    conn: &Connection,
    campaign_id: &str,
    character_id: &str,
    patch: &CampaignStatePatch,
) -> StoreResult<CharacterInfo> {
    let mut s = state(conn, campaign_id, character_id)?;
    validate::apply_state_patch(&mut s, patch)?;
    s.updated_at = now();
    save_state(conn, &s, false)?;
    Ok(s)
}

/// The parts of the current portrait a merged view shows: file, thumbnail, prompt.
pub(crate) type PortraitParts = (String, Option<String>, String);

/// Merges a profile, its optional campaign state and its current portrait.
fn merge(
    conn: &Connection,
    profile: CharacterProfile,
    state: Option<CharacterInfo>,
) -> StoreResult<EnrichedCharacter> {
    let portrait = match profile.current_portrait_id.as_deref() {
        Some(id) => portraits::find(conn, id)?.map(|p| (p.file_path, p.thumbnail_path, p.prompt)),
        None => None,
    };
    Ok(assemble(profile, state, portrait))
}

/// The merged view from parts already read (a list reads them all in one query).
pub(crate) fn assemble(
    profile: CharacterProfile,
    state: Option<CharacterInfo>,
    portrait: Option<PortraitParts>,
) -> EnrichedCharacter {
    let level = state
        .as_ref()
        .and_then(|s| s.level)
        .unwrap_or(profile.base_level);
    let (portrait_path, portrait_thumbnail_path, portrait_prompt) = match portrait {
        Some((file, thumb, prompt)) => (Some(file), thumb, Some(prompt)),
        None => (None, None, None),
    };
    EnrichedCharacter {
        character_id: profile.id.clone(),
        campaign_id: state.as_ref().map(|s| s.campaign_id.clone()),
        level,
        hit_points_current: state.as_ref().map(|s| s.hit_points_current),
        hit_points_max: state.as_ref().map(|s| s.hit_points_max),
        armor_class: state.as_ref().map(|s| s.armor_class),
        status: state.as_ref().map(|s| s.status.clone()),
        inventory: state.as_ref().map(|s| s.inventory.clone()),
        location: state.as_ref().and_then(|s| s.location.clone()),
        quests: state.as_ref().map(|s| s.quests.clone()),
        extra: state.map(|s| s.extra),
        portrait_path,
        portrait_thumbnail_path,
        portrait_prompt,
        portrait_url: None,
        profile,
    }
}

pub(crate) fn enriched(
    conn: &Connection,
    character_id: &str,
    campaign_id: Option<&str>,
) -> StoreResult<EnrichedCharacter> {
    let profile = profiles::get(conn, character_id)?;
    let state = match campaign_id {
        Some(c) => Some(state(conn, c, character_id)?),
        None => None,
    };
    merge(conn, profile, state)
}

pub(crate) fn roster(conn: &Connection, campaign_id: &str) -> StoreResult<Vec<EnrichedCharacter>> {
    get(conn, campaign_id)?;
    let sql = format!(
        "SELECT {}, {STATE_COLUMNS} FROM campaign_characters s \
         JOIN characters c ON c.id = s.character_id WHERE s.campaign_id = ?1 \
         ORDER BY c.name COLLATE NOCASE, c.id",
        rows::COLUMNS
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([campaign_id], |r| {
        Ok((rows::from_row(r)?, state_from_row(r, COLUMN_COUNT)?))
    })?;
    let pairs: Vec<(CharacterProfile, CharacterInfo)> = rows.collect::<Result<_, _>>()?;
    pairs
        .into_iter()
        .map(|(p, s)| merge(conn, p, Some(s)))
        .collect()
}
