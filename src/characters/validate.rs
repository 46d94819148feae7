//! The one place where raw character input becomes trusted data: enum parsing with defaults,
//! free-text trimming and length limits, numeric ranges. Every error is a [`ValidationError`]
//! naming the field and the limit, so the HTTP layer can answer 422 with it unchanged.

use super::enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
use super::types::{
    CampaignStatePatch, CharacterInfo, CharacterPatch, CharacterProfile, NewCampaign, NewCharacter,
    NewPortrait,
};
use crate::engine::{LoraRef, MAX_LORAS, MAX_LORA_WEIGHT};
use chrono::{DateTime, Utc};
use serde_json::Value;

pub use super::error::ValidationError;

/// The limits every input is checked against (characters, not bytes, for text).
pub mod limits {
    /// Character and campaign names.
    pub const NAME_MAX: usize = 100;
    /// Short free text: visual fields, voice id, owner id, location, status...
    pub const SHORT_TEXT_MAX: usize = 200;
    /// Backstory, description, appearance, visual description.
    pub const LONG_TEXT_MAX: usize = 4000;
    /// Portrait prompts (weighted prompts can be long).
    pub const PROMPT_MAX: usize = 8000;
    /// File paths of portraits and thumbnails.
    pub const PATH_MAX: usize = 1024;
    /// Serialized size of a JSON value (inventory, quests, parameters, voice settings), bytes.
    pub const JSON_MAX_BYTES: usize = 64 * 1024;
    pub const LEVEL_MIN: i64 = 1;
    pub const LEVEL_MAX: i64 = 30;
    pub const HIT_POINTS_MIN: i64 = -10_000;
    pub const HIT_POINTS_MAX: i64 = 1_000_000;
    pub const ARMOR_CLASS_MIN: i64 = 0;
    pub const ARMOR_CLASS_MAX: i64 = 100;
    /// A LoRA or embedding name (a file stem).
    pub const NETWORK_NAME_MAX: usize = 200;
    /// Embeddings one character pins, or one request names.
    pub const EMBEDDINGS_MAX: usize = 16;
}
use limits::*;

/// Trims `raw` and checks its length and characters; `multiline` allows newlines and tabs.
fn text(field: &str, raw: &str, max: usize, multiline: bool) -> Result<String, ValidationError> {
    let value = raw.trim();
    let len = value.chars().count();
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters (got {len})"),
        ));
    }
    let bad = |c: char| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t'));
    if value.chars().any(bad) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_string())
}

/// Optional short text: blank becomes `None`.
pub(crate) fn short_text(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<String>, ValidationError> {
    match raw {
        None => Ok(None),
        Some(raw) => {
            let v = text(field, raw, SHORT_TEXT_MAX, false)?;
            Ok((!v.is_empty()).then_some(v))
        }
    }
}

pub(crate) fn long_text(field: &str, raw: Option<&str>) -> Result<String, ValidationError> {
    text(field, raw.unwrap_or(""), LONG_TEXT_MAX, true)
}

pub(crate) fn name(field: &str, raw: &str) -> Result<String, ValidationError> {
    let v = text(field, raw, NAME_MAX, false)?;
    if v.is_empty() {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {NAME_MAX} characters"),
        ));
    }
    Ok(v)
}

/// An id given by a caller (campaign, owner, portrait): non-empty, short, printable.
pub fn id(field: &str, raw: &str) -> Result<String, ValidationError> {
    let v = text(field, raw, SHORT_TEXT_MAX, false)?;
    if v.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    Ok(v)
}

/// A LoRA or embedding name: a file stem of the models folder, so never a path.
fn network_name(field: &str, raw: &str) -> Result<String, ValidationError> {
    let v = text(field, raw, NETWORK_NAME_MAX, false)?;
    if v.is_empty() {
        return Err(ValidationError::new(
            field,
            format!(
                "must be 1 to {NETWORK_NAME_MAX} characters (a file name without .safetensors)"
            ),
        ));
    }
    if v.contains(['/', '\\']) {
        return Err(ValidationError::new(
            field,
            format!("must be a file name, not a path (got {v:?})"),
        ));
    }
    Ok(v)
}

/// The index of the first entry of `names` before `i` with the same name as entry `i`
/// (case-insensitively, as the engine matches names).
fn earlier_duplicate<'a>(names: impl Iterator<Item = &'a str>, i: usize, name: &str) -> bool {
    names.take(i).any(|n| n.eq_ignore_ascii_case(name))
}

/// LoRAs named by a request or pinned to a character (`field` is `loras`): at most
/// [`MAX_LORAS`], each a file name once, with a finite weight within ±[`MAX_LORA_WEIGHT`].
/// Errors name the entry (`loras[1].weight`) and the limit.
pub fn loras(field: &str, list: &[LoraRef]) -> Result<Vec<LoraRef>, ValidationError> {
    if list.len() > MAX_LORAS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_LORAS} LoRAs (got {})", list.len()),
        ));
    }
    let mut out: Vec<LoraRef> = Vec::with_capacity(list.len());
    for (i, l) in list.iter().enumerate() {
        let name = network_name(&format!("{field}[{i}].name"), &l.name)?;
        if earlier_duplicate(out.iter().map(|l| l.name.as_str()), i, &name) {
            return Err(ValidationError::new(
                format!("{field}[{i}].name"),
                format!("names LoRA {name:?} a second time; give each LoRA once"),
            ));
        }
        if !l.weight.is_finite() || l.weight.abs() > MAX_LORA_WEIGHT {
            return Err(ValidationError::new(
                format!("{field}[{i}].weight"),
                format!(
                    "must be a number between -{MAX_LORA_WEIGHT} and {MAX_LORA_WEIGHT} (got {})",
                    l.weight
                ),
            ));
        }
        out.push(LoraRef {
            name,
            weight: l.weight,
        });
    }
    Ok(out)
}

/// Embedding names of a request or a character (`field` is `embeddings`): at most
/// [`EMBEDDINGS_MAX`], each a file name once.
pub fn embeddings(field: &str, list: &[String]) -> Result<Vec<String>, ValidationError> {
    if list.len() > EMBEDDINGS_MAX {
        return Err(ValidationError::new(
            field,
            format!("at most {EMBEDDINGS_MAX} embeddings (got {})", list.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let name = network_name(&format!("{field}[{i}]"), raw)?;
        if earlier_duplicate(out.iter().map(String::as_str), i, &name) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("names embedding {name:?} a second time; give each embedding once"),
            ));
        }
        out.push(name);
    }
    Ok(out)
}

fn range(field: &str, v: i64, min: i64, max: i64) -> Result<i64, ValidationError> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ValidationError::new(
            field,
            format!("must be between {min} and {max} (got {v})"),
        ))
    }
}

pub(crate) fn level(field: &str, v: i64) -> Result<i64, ValidationError> {
    range(field, v, LEVEL_MIN, LEVEL_MAX)
}

/// A JSON value of bounded size, optionally required to be an object.
pub(crate) fn json(field: &str, v: &Value, object: bool) -> Result<Value, ValidationError> {
    if object && !v.is_object() {
        return Err(ValidationError::new(field, "must be a JSON object"));
    }
    let size = v.to_string().len();
    if size > JSON_MAX_BYTES {
        return Err(ValidationError::new(
            field,
            format!("must be at most {JSON_MAX_BYTES} bytes of JSON (got {size})"),
        ));
    }
    Ok(v.clone())
}

fn opt_enum<T>(
    raw: Option<&str>,
    parse: fn(&str) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => parse(v).map(Some),
    }
}

/// Validates a new character into a profile with the given id and timestamps.
pub fn build_profile(
    new: &NewCharacter,
    id: String,
    now: DateTime<Utc>,
) -> Result<CharacterProfile, ValidationError> {
    let owner_id = match new.owner_id.as_deref() {
        Some(o) => Some(self::id("owner_id", o)?),
        None => None,
    };
    Ok(CharacterProfile {
        id,
        name: name("name", &new.name)?,
        character_type: opt_enum(new.character_type.as_deref(), CharacterType::parse)?
            .unwrap_or_default(),
        race: opt_enum(new.race.as_deref(), Race::parse)?,
        character_class: opt_enum(new.character_class.as_deref(), CharacterClass::parse)?,
        base_level: level("base_level", new.base_level.unwrap_or(1))?,
        voice_id: short_text("voice_id", new.voice_id.as_deref())?,
        voice_settings: json(
            "voice_settings",
            new.voice_settings
                .as_ref()
                .unwrap_or(&Value::Object(Default::default())),
            true,
        )?,
        voice_archetype: short_text("voice_archetype", new.voice_archetype.as_deref())?,
        gender: opt_enum(new.gender.as_deref(), Gender::parse)?.unwrap_or_default(),
        age_category: opt_enum(new.age_category.as_deref(), AgeCategory::parse)?,
        build: opt_enum(new.build.as_deref(), Build::parse)?.unwrap_or_default(),
        height_description: short_text("height_description", new.height_description.as_deref())?,
        facial_expression: opt_enum(new.facial_expression.as_deref(), FacialExpression::parse)?
            .unwrap_or_default(),
        facial_features: short_text("facial_features", new.facial_features.as_deref())?,
        attire: short_text("attire", new.attire.as_deref())?,
        primary_weapon: short_text("primary_weapon", new.primary_weapon.as_deref())?,
        distinguishing_feature: short_text(
            "distinguishing_feature",
            new.distinguishing_feature.as_deref(),
        )?,
        background_setting: short_text("background_setting", new.background_setting.as_deref())?,
        pose: opt_enum(new.pose.as_deref(), Pose::parse)?,
        loras: loras("loras", &new.loras)?,
        embeddings: embeddings("embeddings", &new.embeddings)?,
        backstory: long_text("backstory", new.backstory.as_deref())?,
        description: long_text("description", new.description.as_deref())?,
        appearance: long_text("appearance", new.appearance.as_deref())?,
        visual_description: long_text("visual_description", new.visual_description.as_deref())?,
        current_portrait_id: None,
        owner_id,
        total_interactions: 0,
        import_key: None,
        created_at: now,
        updated_at: now,
    })
}

/// Applies a patch to a profile; on error the profile may be partly changed, so callers apply
/// it to a copy (the store does, inside its transaction).
pub fn apply_character_patch(
    p: &mut CharacterProfile,
    patch: &CharacterPatch,
) -> Result<(), ValidationError> {
    fn set_short(
        slot: &mut Option<String>,
        field: &str,
        v: &Option<Option<String>>,
    ) -> Result<(), ValidationError> {
        if let Some(v) = v {
            *slot = short_text(field, v.as_deref())?;
        }
        Ok(())
    }
    fn set_long(
        slot: &mut String,
        field: &str,
        v: &Option<Option<String>>,
    ) -> Result<(), ValidationError> {
        if let Some(v) = v {
            *slot = long_text(field, v.as_deref())?;
        }
        Ok(())
    }
    fn set_enum<T>(
        slot: &mut Option<T>,
        v: &Option<Option<String>>,
        parse: fn(&str) -> Result<T, ValidationError>,
    ) -> Result<(), ValidationError> {
        if let Some(v) = v {
            *slot = opt_enum(v.as_deref(), parse)?;
        }
        Ok(())
    }
    // Fields with a default: null (or blank) restores the default.
    fn set_defaulted<T: Default>(
        slot: &mut T,
        v: &Option<Option<String>>,
        parse: fn(&str) -> Result<T, ValidationError>,
    ) -> Result<(), ValidationError> {
        if let Some(v) = v {
            *slot = opt_enum(v.as_deref(), parse)?.unwrap_or_default();
        }
        Ok(())
    }

    if let Some(n) = &patch.name {
        p.name = name("name", n)?;
    }
    set_defaulted(
        &mut p.character_type,
        &patch.character_type,
        CharacterType::parse,
    )?;
    set_enum(&mut p.race, &patch.race, Race::parse)?;
    set_enum(
        &mut p.character_class,
        &patch.character_class,
        CharacterClass::parse,
    )?;
    if let Some(l) = patch.base_level {
        p.base_level = level("base_level", l)?;
    }
    set_short(&mut p.voice_id, "voice_id", &patch.voice_id)?;
    if let Some(v) = &patch.voice_settings {
        p.voice_settings = json("voice_settings", v, true)?;
    }
    set_short(
        &mut p.voice_archetype,
        "voice_archetype",
        &patch.voice_archetype,
    )?;
    set_defaulted(&mut p.gender, &patch.gender, Gender::parse)?;
    set_enum(&mut p.age_category, &patch.age_category, AgeCategory::parse)?;
    set_defaulted(&mut p.build, &patch.build, Build::parse)?;
    set_short(
        &mut p.height_description,
        "height_description",
        &patch.height_description,
    )?;
    set_defaulted(
        &mut p.facial_expression,
        &patch.facial_expression,
        FacialExpression::parse,
    )?;
    set_short(
        &mut p.facial_features,
        "facial_features",
        &patch.facial_features,
    )?;
    set_short(&mut p.attire, "attire", &patch.attire)?;
    set_short(
        &mut p.primary_weapon,
        "primary_weapon",
        &patch.primary_weapon,
    )?;
    set_short(
        &mut p.distinguishing_feature,
        "distinguishing_feature",
        &patch.distinguishing_feature,
    )?;
    set_short(
        &mut p.background_setting,
        "background_setting",
        &patch.background_setting,
    )?;
    set_enum(&mut p.pose, &patch.pose, Pose::parse)?;
    if let Some(l) = &patch.loras {
        p.loras = loras("loras", l.as_deref().unwrap_or_default())?;
    }
    if let Some(e) = &patch.embeddings {
        p.embeddings = embeddings("embeddings", e.as_deref().unwrap_or_default())?;
    }
    set_long(&mut p.backstory, "backstory", &patch.backstory)?;
    set_long(&mut p.description, "description", &patch.description)?;
    set_long(&mut p.appearance, "appearance", &patch.appearance)?;
    set_long(
        &mut p.visual_description,
        "visual_description",
        &patch.visual_description,
    )?;
    if let Some(o) = &patch.owner_id {
        p.owner_id = match o {
            Some(o) => Some(id("owner_id", o)?),
            None => None,
        };
    }
    Ok(())
}

/// Validated fields of a new campaign: (name, dm_id, description).
pub fn validate_campaign(
    new: &NewCampaign,
) -> Result<(String, Option<String>, String), ValidationError> {
    let dm = match new.dm_id.as_deref() {
        Some(d) => Some(id("dm_id", d)?),
        None => None,
    };
    Ok((
        name("name", &new.name)?,
        dm,
        long_text("description", new.description.as_deref())?,
    ))
}

/// Applies a campaign-state patch (also used for the initial state when joining).
pub fn apply_state_patch(
    s: &mut CharacterInfo,
    patch: &CampaignStatePatch,
) -> Result<(), ValidationError> {
    if let Some(l) = patch.level {
        s.level = l.map(|l| level("level", l)).transpose()?;
    }
    if let Some(v) = patch.hit_points_max {
        s.hit_points_max = range("hit_points_max", v, 0, HIT_POINTS_MAX)?;
    }
    if let Some(v) = patch.hit_points_current {
        s.hit_points_current = range("hit_points_current", v, HIT_POINTS_MIN, HIT_POINTS_MAX)?;
    }
    if let Some(v) = patch.armor_class {
        s.armor_class = range("armor_class", v, ARMOR_CLASS_MIN, ARMOR_CLASS_MAX)?;
    }
    if let Some(v) = &patch.status {
        let v = text("status", v, SHORT_TEXT_MAX, false)?;
        if v.is_empty() {
            return Err(ValidationError::new("status", "must not be empty"));
        }
        s.status = v;
    }
    if let Some(v) = &patch.inventory {
        s.inventory = json("inventory", v, false)?;
    }
    if let Some(v) = &patch.location {
        s.location = short_text("location", v.as_deref())?;
    }
    if let Some(v) = &patch.quests {
        s.quests = json("quests", v, false)?;
    }
    if let Some(v) = &patch.extra {
        s.extra = json("extra", v, true)?;
    }
    Ok(())
}

/// Checks a portrait record's own fields (that the character and parent exist is the store's job).
pub fn validate_portrait(p: &NewPortrait) -> Result<NewPortrait, ValidationError> {
    let path = |field: &str, v: &str| -> Result<String, ValidationError> {
        let v = text(field, v, PATH_MAX, false)?;
        if v.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        Ok(v)
    };
    Ok(NewPortrait {
        character_id: id("character_id", &p.character_id)?,
        file_path: path("file_path", &p.file_path)?,
        thumbnail_path: p
            .thumbnail_path
            .as_deref()
            .map(|t| path("thumbnail_path", t))
            .transpose()?,
        prompt: text("prompt", &p.prompt, PROMPT_MAX, true)?,
        negative_prompt: text("negative_prompt", &p.negative_prompt, PROMPT_MAX, true)?,
        parameters: Some(json(
            "parameters",
            p.parameters
                .as_ref()
                .unwrap_or(&Value::Object(Default::default())),
            true,
        )?),
        seed: p.seed,
        model: short_text("model", p.model.as_deref())?,
        art_style: short_text("art_style", p.art_style.as_deref())?,
        parent_portrait_id: p
            .parent_portrait_id
            .as_deref()
            .map(|v| id("parent_portrait_id", v))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str) -> NewCharacter {
        NewCharacter {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_applied() {
        let p = build_profile(&new("Ada"), "x".into(), Utc::now()).unwrap();
        assert_eq!(p.gender, Gender::NonBinary);
        assert_eq!(p.build, Build::Average);
        assert_eq!(p.facial_expression, FacialExpression::Determined);
        assert_eq!(p.base_level, 1);
        assert_eq!(p.race, None);
    }

    #[test]
    fn limits_name_the_field_and_limit() {
        let err = build_profile(&new(&"a".repeat(101)), "x".into(), Utc::now()).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.message.contains("100"), "{}", err.message);
        let err = build_profile(&new("   "), "x".into(), Utc::now()).unwrap_err();
        assert_eq!(err.field, "name");
        let mut n = new("Ada");
        n.attire = Some("x".repeat(201));
        let err = build_profile(&n, "x".into(), Utc::now()).unwrap_err();
        assert_eq!(err.field, "attire");
        assert!(err.message.contains("200"), "{}", err.message);
        let mut n = new("Ada");
        n.base_level = Some(31);
        assert_eq!(
            build_profile(&n, "x".into(), Utc::now()).unwrap_err().field,
            "base_level"
        );
    }

    #[test]
    fn patch_null_clears_and_restores_defaults() {
        let mut n = new("Ada");
        n.gender = Some("female".into());
        n.attire = Some("robes".into());
        let mut p = build_profile(&n, "x".into(), Utc::now()).unwrap();
        let patch: CharacterPatch =
            serde_json::from_str(r#"{"gender": null, "attire": null}"#).unwrap();
        apply_character_patch(&mut p, &patch).unwrap();
        assert_eq!(p.gender, Gender::NonBinary);
        assert_eq!(p.attire, None);
        let untouched: CharacterPatch = serde_json::from_str("{}").unwrap();
        assert_eq!(untouched, CharacterPatch::default());
    }
}
