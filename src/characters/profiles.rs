//! SQL for character profiles, as functions over a connection so that callers can compose them
//! inside one transaction (joining a campaign on creation is `campaigns::create_character`).

use super::error::{OrNotFound, StoreError, StoreResult};
use super::rows::{find_one, from_row, new_id, now, time_text, COLUMNS};
use super::types::{CharacterPatch, CharacterProfile, NewCharacter};
use super::validate;
use rusqlite::{named_params, Connection};

/// A pinned-network list as its column text (a JSON array).
fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// Inserts a complete profile (already validated).
pub(crate) fn insert(conn: &Connection, p: &CharacterProfile) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO characters (id, name, character_type, race, character_class, base_level, \
         voice_id, voice_settings, voice_archetype, gender, age_category, build, \
         height_description, facial_expression, facial_features, attire, primary_weapon, \
         distinguishing_feature, background_setting, pose, backstory, description, appearance, \
         visual_description, current_portrait_id, owner_id, total_interactions, import_key, \
         created_at, updated_at, loras, embeddings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
         ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, \
         ?28, ?29, ?30, ?31, ?32)",
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
            json_text(&p.loras),
            json_text(&p.embeddings),
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
         background_setting = :background, pose = :pose, loras = :loras, \
         embeddings = :embeddings, backstory = :backstory, \
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
            ":loras": json_text(&p.loras),
            ":embeddings": json_text(&p.embeddings),
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

/// Validates and inserts a new profile (its `campaign_id` is the caller's to join).
pub(crate) fn create(
    conn: &Connection,
    new: &NewCharacter,
    import_key: Option<&str>,
) -> StoreResult<CharacterProfile> {
    let mut profile = validate::build_profile(new, new_id(), now())?;
    profile.import_key = import_key.map(str::to_string);
    insert(conn, &profile)?;
    Ok(profile)
}

pub(crate) fn find(conn: &Connection, id: &str) -> StoreResult<Option<CharacterProfile>> {
    find_one(
        conn,
        &format!("SELECT {COLUMNS} FROM characters c WHERE c.id = ?1"),
        [id],
        from_row,
    )
}

pub(crate) fn get(conn: &Connection, id: &str) -> StoreResult<CharacterProfile> {
    find(conn, id)?.or_not_found("character", id)
}

pub(crate) fn by_import_key(conn: &Connection, key: &str) -> StoreResult<Option<CharacterProfile>> {
    find_one(
        conn,
        &format!("SELECT {COLUMNS} FROM characters c WHERE c.import_key = ?1"),
        [key],
        from_row,
    )
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
