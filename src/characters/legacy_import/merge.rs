//! Merges the copies of each legacy character read by `read.rs`: identity and visual fields are
//! normalized and go to one profile (the profile file wins, then the first campaign by id; every
//! disagreement is a conflict, every value that cannot be normalized is listed), portrait files
//! become history, and the rest of each campaign copy becomes that campaign's state.

use super::plan::{
    as_text, CampaignCopies, Copy, LegacyPlan, PlannedCampaign, PlannedCharacter, PlannedPortrait,
};
use super::report::{Conflict, FileProblem, LegacyImportReport, Unrecognized};
use crate::characters::campaigns::default_state;
use crate::characters::enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
use crate::characters::error::ValidationError;
use crate::characters::types::{CampaignStatePatch, CharacterInfo, NewCharacter};
use crate::characters::validate;
use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Parses one enum field to its canonical spelling.
type Normalizer = fn(&str) -> Result<&'static str, ValidationError>;

/// Fields that belong to the profile, with how each is normalized.
const ENUM_FIELDS: &[(&str, Normalizer)] = &[
    ("character_type", |s| {
        CharacterType::parse(s).map(|v| v.as_str())
    }),
    ("race", |s| Race::parse(s).map(|v| v.as_str())),
    ("character_class", |s| {
        CharacterClass::parse(s).map(|v| v.as_str())
    }),
    ("gender", |s| Gender::parse(s).map(|v| v.as_str())),
    ("age_category", |s| {
        AgeCategory::parse(s).map(|v| v.as_str())
    }),
    ("build", |s| Build::parse(s).map(|v| v.as_str())),
    ("facial_expression", |s| {
        FacialExpression::parse(s).map(|v| v.as_str())
    }),
    ("pose", |s| Pose::parse(s).map(|v| v.as_str())),
];
const SHORT_FIELDS: &[&str] = &[
    "height_description",
    "facial_features",
    "attire",
    "primary_weapon",
    "distinguishing_feature",
    "background_setting",
    "voice_id",
    "voice_archetype",
];
const LONG_FIELDS: &[&str] = &[
    "backstory",
    "description",
    "appearance",
    "visual_description",
];
/// Portrait and bookkeeping keys: handled separately, never campaign state.
const PROFILE_ONLY_KEYS: &[&str] = &[
    "name",
    "character_id",
    "id",
    "profile_id",
    "class",
    "portrait_url",
    "portrait_path",
    "portrait_prompt",
    "additional_images",
    "voice_settings",
    "first_created",
    "base_level",
    "total_interactions",
];

fn is_profile_key(key: &str) -> bool {
    PROFILE_ONLY_KEYS.contains(&key)
        || SHORT_FIELDS.contains(&key)
        || LONG_FIELDS.contains(&key)
        || ENUM_FIELDS.iter().any(|(f, _)| *f == key)
}

/// Normalizes one identity field of one copy: Ok(None) when absent or blank.
fn normalize(field: &str, raw: &Value) -> Result<Option<String>, String> {
    if raw.is_null() {
        return Ok(None);
    }
    let text = as_text(raw).ok_or_else(|| "expected text".to_string())?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if let Some((_, parse)) = ENUM_FIELDS.iter().find(|(f, _)| *f == field) {
        // Python enums were sometimes written as "CharacterType.NPC".
        let bare = text.rsplit('.').next().unwrap_or(&text);
        return parse(bare)
            .or_else(|_| parse(&text))
            .map(|v| Some(v.to_string()))
            .map_err(|e| e.message);
    }
    let checked = if field == "name" {
        validate::name(field, &text).map(Some)
    } else if LONG_FIELDS.contains(&field) {
        validate::long_text(field, Some(&text)).map(Some)
    } else {
        validate::short_text(field, Some(&text))
    };
    checked.map_err(|e| e.message)
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn timestamp(v: &Value) -> Option<DateTime<Utc>> {
    // Microseconds: the precision the database keeps.
    parse_timestamp(v.as_str()?).map(|t| t.trunc_subsecs(6))
}

fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    // Python's isoformat() without a zone; taken as UTC.
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

/// Merges every copy of every character into profiles and campaign states.
pub(super) fn merge(
    plan: &mut LegacyPlan,
    dir: &Path,
    mut profiles: BTreeMap<String, Copy>,
    campaigns: CampaignCopies,
) {
    let mut copies: BTreeMap<String, Vec<Copy>> = BTreeMap::new();
    for (id, copy) in std::mem::take(&mut profiles) {
        copies.entry(id).or_default().push(copy);
    }
    for (cid, (meta, entries)) in &campaigns {
        let source = format!("campaigns/{cid}/characters.json");
        for (id, obj) in entries {
            copies.entry(id.clone()).or_default().push(Copy {
                source: source.clone(),
                campaign: Some(cid.clone()),
                obj: obj.clone(),
            });
        }
        let text = |k: &str| {
            meta.get(k)
                .and_then(as_text)
                .filter(|s| !s.trim().is_empty())
        };
        let name = text("name")
            .or_else(|| text("title"))
            .unwrap_or_else(|| cid.clone());
        plan.campaigns.push(PlannedCampaign {
            legacy_id: cid.clone(),
            name,
            dm_id: text("dm_id").or_else(|| text("owner_id")),
            states: Vec::new(),
        });
    }
    for (id, copies) in copies {
        let base_level = merge_character(plan, dir, &id, &copies);
        for copy in copies.iter().filter(|c| c.campaign.is_some()) {
            let state = campaign_state(&mut plan.report, &id, copy, base_level);
            if let Some(c) = plan
                .campaigns
                .iter_mut()
                .find(|c| Some(&c.legacy_id) == copy.campaign.as_ref())
            {
                c.states.push((id.clone(), state));
            }
        }
    }
}

/// Builds the profile of one character from its copies; returns its base level.
fn merge_character(plan: &mut LegacyPlan, dir: &Path, id: &str, copies: &[Copy]) -> i64 {
    let report = &mut plan.report;
    let mut fields: BTreeMap<&str, String> = BTreeMap::new();
    let all: Vec<&str> = ["name"]
        .into_iter()
        .chain(ENUM_FIELDS.iter().map(|(f, _)| *f))
        .chain(SHORT_FIELDS.iter().copied())
        .chain(LONG_FIELDS.iter().copied())
        .chain(["portrait_path"])
        .collect();
    for field in all {
        let mut kept: Option<(String, &str)> = None;
        for copy in copies {
            let raw = copy.obj.get(field).or_else(|| match field {
                "character_class" => copy.obj.get("class"),
                _ => None,
            });
            let Some(raw) = raw else { continue };
            let value = match normalize(field, raw) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(reason) => {
                    report.unrecognized.push(Unrecognized {
                        character_id: id.to_string(),
                        source: copy.source.clone(),
                        field: field.to_string(),
                        value: raw.clone(),
                        reason,
                    });
                    continue;
                }
            };
            match &kept {
                None => kept = Some((value, &copy.source)),
                Some((k, from)) if *k != value => report.conflicts.push(Conflict {
                    character_id: id.to_string(),
                    field: field.to_string(),
                    kept: k.clone(),
                    kept_from: from.to_string(),
                    discarded: value,
                    discarded_from: copy.source.clone(),
                }),
                Some(_) => {}
            }
        }
        if let Some((v, _)) = kept {
            fields.insert(field, v);
        }
    }
    if !fields.contains_key("name") {
        report.unrecognized.push(Unrecognized {
            character_id: id.to_string(),
            source: copies[0].source.clone(),
            field: "name".into(),
            value: Value::Null,
            reason: "no usable name in any copy; the character id is used".into(),
        });
        let fallback = validate::name("name", id).unwrap_or_else(|_| "Unnamed".into());
        fields.insert("name", fallback);
    }
    let profile = copies.iter().find(|c| c.campaign.is_none());
    let base_level = profile
        .and_then(|p| p.obj.get("base_level").or_else(|| p.obj.get("level")))
        .into_iter()
        .chain(copies.iter().filter_map(|c| c.obj.get("level")))
        .filter_map(integer)
        .find(|l| validate::level("level", *l).is_ok())
        .unwrap_or(1);
    let get = |f: &str| fields.get(f).cloned();
    let new = NewCharacter {
        name: get("name").unwrap_or_default(),
        character_type: get("character_type"),
        race: get("race"),
        character_class: get("character_class"),
        base_level: Some(base_level),
        voice_id: get("voice_id"),
        voice_settings: profile
            .and_then(|p| p.obj.get("voice_settings"))
            .filter(|v| validate::json("voice_settings", v, true).is_ok())
            .cloned(),
        voice_archetype: get("voice_archetype"),
        gender: get("gender"),
        age_category: get("age_category"),
        build: get("build"),
        height_description: get("height_description"),
        facial_expression: get("facial_expression"),
        facial_features: get("facial_features"),
        attire: get("attire"),
        primary_weapon: get("primary_weapon"),
        distinguishing_feature: get("distinguishing_feature"),
        background_setting: get("background_setting"),
        pose: get("pose"),
        // The legacy layout predates pinned networks.
        loras: Vec::new(),
        embeddings: Vec::new(),
        backstory: get("backstory"),
        description: get("description"),
        appearance: get("appearance"),
        visual_description: get("visual_description"),
        owner_id: None,
        campaign_id: None,
    };
    let portraits = portraits(report, dir, id, copies);
    plan.characters.push(PlannedCharacter {
        legacy_id: id.to_string(),
        new,
        created_at: profile
            .and_then(|p| p.obj.get("first_created"))
            .and_then(timestamp),
        total_interactions: profile
            .and_then(|p| p.obj.get("total_interactions"))
            .and_then(integer)
            .unwrap_or(0)
            .max(0),
        portraits,
    });
    base_level
}

/// Portrait files named by any copy (`portrait_path`, a `file://` `portrait_url`,
/// `additional_images`), each once. Whether a file is missing is decided when the plan is applied:
/// one imported by an earlier run is already in the media store.
fn portraits(
    report: &mut LegacyImportReport,
    dir: &Path,
    id: &str,
    copies: &[Copy],
) -> Vec<PlannedPortrait> {
    let mut out: Vec<PlannedPortrait> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut named = Vec::new();
    for copy in copies {
        let prompt = copy
            .obj
            .get("portrait_prompt")
            .and_then(as_text)
            .unwrap_or_default();
        let url = copy.obj.get("portrait_url").and_then(as_text);
        let local_url = url
            .as_deref()
            .and_then(|u| u.strip_prefix("file://"))
            .map(str::to_string);
        match copy.obj.get("portrait_path").and_then(as_text) {
            Some(p) if !p.trim().is_empty() => named.push((p, prompt, true)),
            _ => match (local_url, url) {
                (Some(p), _) if !p.trim().is_empty() => named.push((p, prompt, true)),
                (_, Some(url)) if !url.trim().is_empty() => {
                    report.files_skipped.push(FileProblem {
                        path: url,
                        reason: format!(
                            "portrait_url of {id} is not a local file and there is no portrait_path"
                        ),
                    })
                }
                _ => {}
            },
        }
        if let Some(Value::Array(extra)) = copy.obj.get("additional_images") {
            named.extend(
                extra
                    .iter()
                    .filter_map(as_text)
                    .map(|p| (p, String::new(), false)),
            );
        }
    }
    // Canonical, so the same file named two ways (or by a later run) is one portrait.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for (raw, prompt, main) in named {
        let Some(resolved) = resolve(&dir, raw.trim()) else {
            continue;
        };
        let found = resolved.is_file();
        if !seen.insert(resolved.clone()) {
            continue;
        }
        let main = main && !out.iter().any(|p| p.main);
        out.push(PlannedPortrait {
            file_path: resolved.display().to_string(),
            named_as: raw.clone(),
            prompt,
            main,
            found,
        });
    }
    out
}

/// Where a portrait path of the legacy data points. The portrait-creator spec writes paths such
/// as `/campaigns/<id>/media/portraits/<file>.png` that are absolute in form but relative to the
/// storage folder: an absolute path that does not exist is also tried under `dir`.
fn resolve(dir: &Path, raw: &str) -> Option<std::path::PathBuf> {
    if raw.is_empty() {
        return None;
    }
    let path = Path::new(raw);
    let candidates = if path.is_absolute() {
        let under_dir = path
            .strip_prefix("/")
            .ok()
            .filter(|rest| !rest.as_os_str().is_empty())
            .map(|rest| dir.join(rest));
        vec![Some(path.to_path_buf()), under_dir]
    } else {
        vec![Some(dir.join(path))]
    };
    let candidates: Vec<_> = candidates.into_iter().flatten().collect();
    let existing = candidates.iter().find(|c| c.is_file()).cloned();
    let chosen = existing.unwrap_or_else(|| candidates[0].clone());
    Some(chosen.canonicalize().unwrap_or(chosen))
}

/// Splits the campaign state off one campaign copy; bad values keep their default and are listed.
fn campaign_state(
    report: &mut LegacyImportReport,
    id: &str,
    copy: &Copy,
    base_level: i64,
) -> CharacterInfo {
    let mut state = default_state("", id);
    let mut extra = Map::new();
    for (key, raw) in &copy.obj {
        if is_profile_key(key) {
            continue;
        }
        let int = || integer(raw).ok_or_else(|| "expected an integer".to_string());
        let mut patch = CampaignStatePatch::default();
        let parsed: Result<(), String> = match key.as_str() {
            // A level equal to the base level is no override.
            "level" => int().map(|l| patch.level = Some((l != base_level).then_some(l))),
            "hit_points_current" => int().map(|v| patch.hit_points_current = Some(v)),
            "hit_points_max" => int().map(|v| patch.hit_points_max = Some(v)),
            "armor_class" => int().map(|v| patch.armor_class = Some(v)),
            "status" => as_text(raw)
                .map(|s| s.rsplit('.').next().unwrap_or(&s).to_lowercase())
                .map(|s| patch.status = Some(s))
                .ok_or_else(|| "expected text".into()),
            "location" => {
                patch.location = Some(as_text(raw));
                Ok(())
            }
            "inventory" => {
                patch.inventory = Some(raw.clone());
                Ok(())
            }
            "quests" => {
                patch.quests = Some(raw.clone());
                Ok(())
            }
            _ => {
                extra.insert(key.clone(), raw.clone());
                continue;
            }
        };
        let result = parsed
            .and_then(|_| validate::apply_state_patch(&mut state, &patch).map_err(|e| e.message));
        if let Err(reason) = result {
            report.unrecognized.push(Unrecognized {
                character_id: id.to_string(),
                source: copy.source.clone(),
                field: key.clone(),
                value: raw.clone(),
                reason,
            });
        }
    }
    let extra = Value::Object(extra);
    match validate::json("extra", &extra, true) {
        Ok(extra) => state.extra = extra,
        Err(e) => report.unrecognized.push(Unrecognized {
            character_id: id.to_string(),
            source: copy.source.clone(),
            field: "extra".into(),
            value: Value::Null,
            reason: e.message,
        }),
    }
    state
}
