//! SQL for character profiles, as functions over a connection so that callers can compose them
//! inside one transaction; also the row <-> type helpers the other SQL modules share.

use super::enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
use super::error::{StoreError, StoreResult};
use super::types::{CharacterPatch, CharacterProfile, NewCharacter};
use super::validate::{self, ValidationError};
use super::{campaigns, types::CampaignStatePatch};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rusqlite::types::Type;
use rusqlite::{named_params, Connection, OptionalExtension, Row};
use serde_json::Value;

/// Default and maximum page sizes of list operations.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

pub(crate) fn page(limit: Option<u32>, offset: Option<u32>) -> (i64, i64) {
    let limit = limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    (i64::from(limit), i64::from(offset.unwrap_or(0)))
}

/// Now, at the microsecond precision the database keeps, so what a write returns equals what
/// a later read returns.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Timestamps are stored as fixed-width RFC 3339 so that text order is time order.
pub(crate) fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

pub(crate) fn time_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| conversion(idx, e))
}

pub(crate) fn json_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| conversion(idx, e))
}

fn enum_col<T>(
    row: &Row<'_>,
    idx: usize,
    parse: fn(&str) -> Result<T, ValidationError>,
) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).map_err(|e| conversion(idx, e))
}

fn opt_enum_col<T>(
    row: &Row<'_>,
    idx: usize,
    parse: fn(&str) -> Result<T, ValidationError>,
) -> rusqlite::Result<Option<T>> {
    let s: Option<String> = row.get(idx)?;
    s.map(|s| parse(&s).map_err(|e| conversion(idx, e)))
        .transpose()
}

/// The profile columns, in the order `from_row` reads them (prefixed with `c.`).
pub(crate) const COLUMNS: &str = "c.id, c.name, c.character_type, c.race, c.character_class, \
    c.base_level, c.voice_id, c.voice_settings, c.voice_archetype, c.gender, c.age_category, \
    c.build, c.height_description, c.facial_expression, c.facial_features, c.attire, \
    c.primary_weapon, c.distinguishing_feature, c.background_setting, c.pose, c.backstory, \
    c.description, c.appearance, c.visual_description, c.current_portrait_id, c.owner_id, \
    c.total_interactions, c.import_key, c.created_at, c.updated_at";

/// Number of columns in [`COLUMNS`], where a joined query's own columns start.
pub(crate) const COLUMN_COUNT: usize = 30;

pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<CharacterProfile> {
    Ok(CharacterProfile {
        id: r.get(0)?,
        name: r.get(1)?,
        character_type: enum_col(r, 2, CharacterType::parse)?,
        race: opt_enum_col(r, 3, Race::parse)?,
        character_class: opt_enum_col(r, 4, CharacterClass::parse)?,
        base_level: r.get(5)?,
        voice_id: r.get(6)?,
        voice_settings: json_col(r, 7)?,
        voice_archetype: r.get(8)?,
        gender: enum_col(r, 9, Gender::parse)?,
        age_category: opt_enum_col(r, 10, AgeCategory::parse)?,
        build: enum_col(r, 11, Build::parse)?,
        height_description: r.get(12)?,
        facial_expression: enum_col(r, 13, FacialExpression::parse)?,
        facial_features: r.get(14)?,
        attire: r.get(15)?,
        primary_weapon: r.get(16)?,
        distinguishing_feature: r.get(17)?,
        background_setting: r.get(18)?,
        pose: opt_enum_col(r, 19, Pose::parse)?,
        backstory: r.get(20)?,
        description: r.get(21)?,
        appearance: r.get(22)?,
        visual_description: r.get(23)?,
        current_portrait_id: r.get(24)?,
        owner_id: r.get(25)?,
        total_interactions: r.get(26)?,
        import_key: r.get(27)?,
        created_at: time_col(r, 28)?,
        updated_at: time_col(r, 29)?,
    })
}

/// Inserts a complete profile (already validated).
pub(crate) fn insert(conn: &Connection, p: &CharacterProfile) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO characters (id, name, character_type, race, character_class, base_level, \
         voice_id, voice_settings, voice_archetype, gender, age_category, build, \
         height_description, facial_expression, facial_features, attire, primary_weapon, \
         distinguishing_feature, background_setting, pose, backstory, description, appearance, \
         visual_description, current_portrait_id, owner_id, total_interactions, import_key, \
         created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
         ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)",
        rusqlite::params![
            p.id,
            p.name,
            p.character_type.as_str(),
            p.race.map(|v| v.as_str()),
            p.character_class.map(|v| v.as_str()),
            p.base_level,
            p.voice_id,
            p.voice_settings.to_string(),
            p.voice_archetype,
            p.gender.as_str(),
            p.age_category.map(|v| v.as_str()),
            p.build.as_str(),
            p.height_description,
            p.facial_expression.as_str(),
            p.facial_features,
            p.attire,
            p.primary_weapon,
            p.distinguishing_feature,
            p.background_setting,
            p.pose.map(|v| v.as_str()),
            p.backstory,
            p.description,
            p.appearance,
            p.visual_description,
            p.current_portrait_id,
            p.owner_id,
            p.total_interactions,
            p.import_key,
            time_text(&p.created_at),
            time_text(&p.updated_at),
        ],
    )?;
    Ok(())
}

/// Rewrites every column of an existing profile: delete + insert would cascade, so UPDATE.
pub(crate) fn save(conn: &Connection, p: &CharacterProfile) -> StoreResult<()> {
    let n = conn.execute(
        "UPDATE characters SET name = :name, character_type = :character_type, race = :race, \
         character_class = :character_class, base_level = :base_level, voice_id = :voice_id, \
         voice_settings = :voice_settings, voice_archetype = :voice_archetype, gender = :gender, \
         age_category = :age_category, build = :build, height_description = :height, \
         facial_expression = :expression, facial_features = :facial_features, attire = :attire, \
         primary_weapon = :weapon, distinguishing_feature = :feature, \
         background_setting = :background, pose = :pose, backstory = :backstory, \
         description = :description, appearance = :appearance, \
         visual_description = :visual_description, current_portrait_id = :portrait, \
         owner_id = :owner_id, total_interactions = :interactions, updated_at = :updated_at \
         WHERE id = :id",
        named_params! {
            ":id": p.id,
            ":name": p.name,
            ":character_type": p.character_type.as_str(),
            ":race": p.race.map(|v| v.as_str()),
            ":character_class": p.character_class.map(|v| v.as_str()),
            ":base_level": p.base_level,
            ":voice_id": p.voice_id,
            ":voice_settings": p.voice_settings.to_string(),
            ":voice_archetype": p.voice_archetype,
            ":gender": p.gender.as_str(),
            ":age_category": p.age_category.map(|v| v.as_str()),
            ":build": p.build.as_str(),
            ":height": p.height_description,
            ":expression": p.facial_expression.as_str(),
            ":facial_features": p.facial_features,
            ":attire": p.attire,
            ":weapon": p.primary_weapon,
            ":feature": p.distinguishing_feature,
            ":background": p.background_setting,
            ":pose": p.pose.map(|v| v.as_str()),
            ":backstory": p.backstory,
            ":description": p.description,
            ":appearance": p.appearance,
            ":visual_description": p.visual_description,
            ":portrait": p.current_portrait_id,
            ":owner_id": p.owner_id,
            ":interactions": p.total_interactions,
            ":updated_at": time_text(&p.updated_at),
        },
    )?;
    if n == 0 {
        return Err(StoreError::not_found("character", &p.id));
    }
    Ok(())
}

/// Validates and inserts a new profile, joining `new.campaign_id` when given.
pub(crate) fn create(
    conn: &Connection,
    new: &NewCharacter,
    import_key: Option<&str>,
) -> StoreResult<CharacterProfile> {
    let mut profile = validate::build_profile(new, new_id(), now())?;
    profile.import_key = import_key.map(str::to_string);
    insert(conn, &profile)?;
    if let Some(campaign_id) = new.campaign_id.as_deref() {
        let campaign_id = validate::id("campaign_id", campaign_id)?;
        campaigns::join(
            conn,
            &campaign_id,
            &profile.id,
            &CampaignStatePatch::default(),
        )?;
    }
    Ok(profile)
}

pub(crate) fn find(conn: &Connection, id: &str) -> StoreResult<Option<CharacterProfile>> {
    let sql = format!("SELECT {COLUMNS} FROM characters c WHERE c.id = ?1");
    // Cached: this is every GET's query (the statement is parsed once per connection).
    let mut stmt = conn.prepare_cached(&sql)?;
    Ok(stmt.query_row([id], from_row).optional()?)
}

pub(crate) fn get(conn: &Connection, id: &str) -> StoreResult<CharacterProfile> {
    find(conn, id)?.ok_or_else(|| StoreError::not_found("character", id))
}

pub(crate) fn by_import_key(conn: &Connection, key: &str) -> StoreResult<Option<CharacterProfile>> {
    let sql = format!("SELECT {COLUMNS} FROM characters c WHERE c.import_key = ?1");
    Ok(conn.query_row(&sql, [key], from_row).optional()?)
}

pub(crate) fn update(
    conn: &Connection,
    id: &str,
    patch: &CharacterPatch,
) -> StoreResult<CharacterProfile> {
    let mut profile = get(conn, id)?;
    validate::apply_character_patch(&mut profile, patch)?;
    profile.updated_at = now();
    save(conn, &profile)?;
    Ok(profile)
}

pub(crate) fn delete(conn: &Connection, id: &str) -> StoreResult<Vec<String>> {
    get(conn, id)?;
    let mut stmt = conn.prepare(
        "SELECT file_path, thumbnail_path FROM portraits WHERE character_id = ?1 \
         ORDER BY created_at, rowid",
    )?;
    let mut files = Vec::new();
    let rows = stmt.query_map([id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for row in rows {
        let (file, thumb) = row?;
        files.push(file);
        files.extend(thumb);
    }
    // Portraits and campaign states go with it (ON DELETE CASCADE).
    conn.execute("DELETE FROM characters WHERE id = ?1", [id])?;
    Ok(files)
}
