//! `limner migrate`: imports the legacy JSON layout (read and planned by `legacy.rs`) into the
//! store in one transaction, and reports what it did as one JSON document.
//!
//! Idempotent: characters and campaigns are remembered by `legacy:<id>` import keys, campaign
//! states by (campaign, character), portraits by (character, file). A second run creates nothing;
//! an existing profile only gets fields it still lacks, so edits made in limner since are kept.

use super::campaigns;
use super::error::StoreError;
use super::legacy::{read_legacy, LegacyPlan, PlannedCharacter};
use super::portraits;
use super::profiles::{self, new_id, now};
use super::store::SqliteStore;
use super::types::{CharacterProfile, NewCampaign, NewPortrait};
use super::validate;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Two copies of a character disagreed; the first (the profile file, else the first campaign by
/// id) was kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub character_id: String,
    pub field: String,
    pub kept: String,
    pub kept_from: String,
    pub discarded: String,
    pub discarded_from: String,
}

/// A value that could not be normalized: the field was left empty (or at its default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unrecognized {
    pub character_id: String,
    pub source: String,
    pub field: String,
    pub value: Value,
    pub reason: String,
}

/// A file skipped (or, in `errors`, one that stopped the migration) and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProblem {
    pub path: String,
    pub reason: String,
}

/// Where one legacy character went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigratedCharacter {
    pub legacy_id: String,
    pub id: String,
    pub name: String,
    /// "created", "updated" or "unchanged".
    pub action: String,
}

/// The JSON report `limner migrate` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationReport {
    pub source: String,
    pub dry_run: bool,
    pub profiles_created: usize,
    pub profiles_updated: usize,
    pub profiles_unchanged: usize,
    pub campaigns_created: usize,
    pub campaigns_existing: usize,
    pub campaign_states_created: usize,
    pub campaign_states_existing: usize,
    pub portraits_recorded: usize,
    pub portraits_existing: usize,
    pub characters: Vec<MigratedCharacter>,
    pub conflicts: Vec<Conflict>,
    pub unrecognized: Vec<Unrecognized>,
    pub files_skipped: Vec<FileProblem>,
    /// Unreadable or malformed input; when not empty nothing was written.
    pub errors: Vec<FileProblem>,
}

/// Why a migration wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The legacy folder could not be read; the report lists every problem.
    #[error("unreadable legacy input ({} problem(s)); nothing was written", .0.errors.len())]
    Input(Box<MigrationReport>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options of a migration run.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Do everything in a transaction that is rolled back; the report says what would happen.
    pub dry_run: bool,
    /// List unreadable / malformed files as skipped instead of refusing to migrate.
    pub skip_malformed: bool,
}

/// Reads `dir` completely, then applies it to `store` in one transaction.
pub fn migrate_legacy(
    store: &SqliteStore,
    dir: &Path,
    opts: MigrateOptions,
) -> Result<MigrationReport, MigrateError> {
    let plan = read_legacy(dir, opts.skip_malformed)?;
    Ok(apply_legacy(store, plan, opts.dry_run)?)
}

/// Reads and plans `dir` without touching any database (the first half of a migration).
pub fn plan_legacy(dir: &Path, skip_malformed: bool) -> Result<LegacyPlan, MigrateError> {
    read_legacy(dir, skip_malformed)
}

/// Writes a plan in one transaction (rolled back when `dry_run`).
pub fn apply_legacy(
    store: &SqliteStore,
    plan: LegacyPlan,
    dry_run: bool,
) -> Result<MigrationReport, StoreError> {
    let run = |conn: &Connection| {
        let mut report = plan.report.clone();
        report.dry_run = dry_run;
        apply(conn, &plan, &mut report)?;
        Ok(report)
    };
    if dry_run {
        store.rehearse(|tx| run(tx))
    } else {
        store.write(|tx| run(tx))
    }
}

fn apply(
    conn: &Connection,
    plan: &LegacyPlan,
    report: &mut MigrationReport,
) -> Result<(), StoreError> {
    let mut ids = std::collections::BTreeMap::new();
    for planned in &plan.characters {
        let (profile, action) = upsert_character(conn, planned)?;
        match action {
            "created" => report.profiles_created += 1,
            "updated" => report.profiles_updated += 1,
            _ => report.profiles_unchanged += 1,
        }
        let mut current = profile.current_portrait_id.clone();
        for p in &planned.portraits {
            if portraits::find_by_file(conn, &profile.id, &p.file_path)?.is_some() {
                report.portraits_existing += 1;
                continue;
            }
            let new = NewPortrait {
                character_id: profile.id.clone(),
                file_path: p.file_path.clone(),
                prompt: p.prompt.clone(),
                model: Some("legacy".into()),
                ..Default::default()
            };
            let make_current = p.main && current.is_none();
            let record = portraits::add(conn, &new, make_current)?;
            if make_current {
                current = Some(record.id);
            }
            report.portraits_recorded += 1;
        }
        report.characters.push(MigratedCharacter {
            legacy_id: planned.legacy_id.clone(),
            id: profile.id.clone(),
            name: profile.name.clone(),
            action: action.to_string(),
        });
        ids.insert(planned.legacy_id.clone(), profile.id);
    }
    for planned in &plan.campaigns {
        let key = format!("legacy:{}", planned.legacy_id);
        let campaign = match campaigns::by_import_key(conn, &key)? {
            Some(c) => {
                report.campaigns_existing += 1;
                c
            }
            None => {
                report.campaigns_created += 1;
                let new = NewCampaign {
                    name: planned.name.clone(),
                    dm_id: planned.dm_id.clone(),
                    description: None,
                };
                campaigns::create(conn, &new, Some(&key))?
            }
        };
        for (legacy_id, state) in &planned.states {
            let Some(character_id) = ids.get(legacy_id) else {
                continue;
            };
            if campaigns::find_state(conn, &campaign.id, character_id)?.is_some() {
                report.campaign_states_existing += 1;
                continue;
            }
            let mut state = state.clone();
            state.campaign_id = campaign.id.clone();
            state.character_id = character_id.clone();
            campaigns::insert_state(conn, &state)?;
            report.campaign_states_created += 1;
        }
    }
    Ok(())
}

/// Creates the profile of a legacy character, or fills the fields an existing one lacks.
fn upsert_character(
    conn: &Connection,
    planned: &PlannedCharacter,
) -> Result<(CharacterProfile, &'static str), StoreError> {
    let key = format!("legacy:{}", planned.legacy_id);
    let t = now();
    let fresh = validate::build_profile(&planned.new, new_id(), t)?;
    let Some(mut existing) = profiles::by_import_key(conn, &key)? else {
        let mut p = fresh;
        p.import_key = Some(key);
        p.created_at = planned.created_at.unwrap_or(t);
        p.total_interactions = planned.total_interactions;
        profiles::insert(conn, &p)?;
        return Ok((p, "created"));
    };
    let before = existing.clone();
    fill(&mut existing, fresh);
    if existing == before {
        return Ok((existing, "unchanged"));
    }
    existing.updated_at = t;
    profiles::save(conn, &existing)?;
    Ok((existing, "updated"))
}

/// Copies into `p` each optional / empty field that `from` has. Fields with defaults (gender,
/// build, expression) and the name are never overwritten: they may have been edited since.
fn fill(p: &mut CharacterProfile, from: CharacterProfile) {
    fn opt<T>(slot: &mut Option<T>, v: Option<T>) {
        if slot.is_none() {
            *slot = v;
        }
    }
    fn text(slot: &mut String, v: String) {
        if slot.is_empty() {
            *slot = v;
        }
    }
    opt(&mut p.race, from.race);
    opt(&mut p.character_class, from.character_class);
    opt(&mut p.voice_id, from.voice_id);
    opt(&mut p.voice_archetype, from.voice_archetype);
    opt(&mut p.age_category, from.age_category);
    opt(&mut p.height_description, from.height_description);
    opt(&mut p.facial_features, from.facial_features);
    opt(&mut p.attire, from.attire);
    opt(&mut p.primary_weapon, from.primary_weapon);
    opt(&mut p.distinguishing_feature, from.distinguishing_feature);
    opt(&mut p.background_setting, from.background_setting);
    opt(&mut p.pose, from.pose);
    text(&mut p.backstory, from.backstory);
    text(&mut p.description, from.description);
    text(&mut p.appearance, from.appearance);
    text(&mut p.visual_description, from.visual_description);
    if p.voice_settings.as_object().is_some_and(|o| o.is_empty()) {
        p.voice_settings = from.voice_settings;
    }
}
