//! The legacy import behind `limner migrate` (not the SQL schema migrations, which are
//! `store.rs`'s): brings the old files-based JSON layout into the store in one transaction and
//! reports what it did as one JSON document.
//!
//! The files form a chain: `report` (what is reported) <- `plan` (what was read) <- `merge` <-
//! `read` (the folder) <- this file (the writes), with `files` (portrait files) and `ids`
//! beside it. Legacy ids stay the ids (`ids.rs` says when they cannot), and portrait files are
//! copied into the media store (`files.rs`). Idempotent: characters and campaigns are
//! remembered by `legacy:<id>` import keys, campaign states by (campaign, character), portraits by
//! (character, legacy file). A second run creates nothing; an existing profile only gets fields it
//! still lacks, so edits made in limner since are kept.

mod files;
mod ids;
mod merge;
mod plan;
mod read;
mod report;

pub use files::{PortraitFiles, PreparedFile};
pub use plan::LegacyPlan;
pub use report::{
    Conflict, FileProblem, IdChange, ImportedCharacter, LegacyImportError, LegacyImportReport,
    Unrecognized,
};

use crate::characters::campaigns;
use crate::characters::error::StoreError;
use crate::characters::profiles;
use crate::characters::rows::now;
use crate::characters::store::SqliteStore;
use crate::characters::types::{Campaign, CharacterProfile, NewCampaign};
use crate::characters::validate;
use files::{FileError, FileLog, Importer};
use ids::Table;
use plan::{PlannedCampaign, PlannedCharacter};
use read::read_legacy;
use rusqlite::Connection;
use std::path::Path;

/// Options of a legacy import run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegacyImportOptions {
    /// Do everything in a transaction that is rolled back; the report says what would happen.
    pub dry_run: bool,
    /// List unreadable / malformed files as skipped instead of refusing to migrate.
    pub skip_malformed: bool,
}

/// Reads `dir` completely, then applies it to `store` (portrait files to `files`).
pub fn import_legacy(
    store: &SqliteStore,
    files: &dyn PortraitFiles,
    dir: &Path,
    opts: LegacyImportOptions,
) -> Result<LegacyImportReport, LegacyImportError> {
    let plan = read_legacy(dir, opts.skip_malformed)?;
    apply_legacy(store, files, plan, opts.dry_run)
}

/// Reads and plans `dir` without touching any database (the first half of an import).
pub fn plan_legacy(dir: &Path, skip_malformed: bool) -> Result<LegacyPlan, LegacyImportError> {
    read_legacy(dir, skip_malformed)
}

/// Writes a plan in one transaction (rolled back when `dry_run`, which writes no file either).
/// Portrait files are stored before the commit; if it does not happen they are removed again.
pub fn apply_legacy(
    store: &SqliteStore,
    files: &dyn PortraitFiles,
    plan: LegacyPlan,
    dry_run: bool,
) -> Result<LegacyImportReport, LegacyImportError> {
    let mut log = FileLog::default();
    let mut media_error = None;
    let mut run = |conn: &Connection| {
        let mut report = plan.report.clone();
        report.dry_run = dry_run;
        let mut importer = Importer {
            files,
            dry_run,
            log: &mut log,
        };
        match apply(conn, &mut importer, &plan, &mut report) {
            Ok(()) => Ok(report),
            Err(FileError::Store(e)) => Err(e),
            Err(FileError::Media(m)) => {
                media_error = Some(m);
                Err(StoreError::Database("media store write failed".into()))
            }
        }
    };
    let result = if dry_run {
        store.rehearse(|tx| run(tx))
    } else {
        store.write(|tx| run(tx))
    };
    match result {
        Ok(report) => {
            for key in &log.superseded {
                files.delete(key);
            }
            Ok(report)
        }
        Err(e) => {
            for key in &log.written {
                files.delete(key);
            }
            Err(media_error.map_or(LegacyImportError::Store(e), LegacyImportError::Media))
        }
    }
}

fn apply(
    conn: &Connection,
    importer: &mut Importer<'_>,
    plan: &LegacyPlan,
    report: &mut LegacyImportReport,
) -> Result<(), FileError> {
    let mut ids = std::collections::BTreeMap::new();
    for planned in &plan.characters {
        let (profile, action) = upsert_character(conn, importer, planned, report)?;
        match action {
            "created" => report.profiles_created += 1,
            "updated" => report.profiles_updated += 1,
            _ => report.profiles_unchanged += 1,
        }
        importer.import(conn, &profile, planned, report)?;
        report.characters.push(ImportedCharacter {
            legacy_id: planned.legacy_id.clone(),
            id: profile.id.clone(),
            name: profile.name.clone(),
            action: action.to_string(),
        });
        ids.insert(planned.legacy_id.clone(), profile.id);
    }
    for planned in &plan.campaigns {
        let campaign = upsert_campaign(conn, planned, report)?;
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

fn note_id(
    report: &mut LegacyImportReport,
    table: Table,
    legacy_id: &str,
    id: &str,
    why: Option<String>,
) {
    if let Some(reason) = why {
        report.ids_changed.push(IdChange {
            kind: table.kind().into(),
            legacy_id: legacy_id.to_string(),
            id: id.to_string(),
            reason,
        });
    }
}

/// The campaign of a legacy campaign folder: created under the legacy id, or found (and moved to
/// the legacy id if an older limner gave it a UUID).
fn upsert_campaign(
    conn: &Connection,
    planned: &PlannedCampaign,
    report: &mut LegacyImportReport,
) -> Result<Campaign, FileError> {
    let key = format!("legacy:{}", planned.legacy_id);
    let legacy_id = planned.legacy_id.as_str();
    if let Some(existing) = campaigns::by_import_key(conn, &key)? {
        report.campaigns_existing += 1;
        let (id, why) = ids::settle(conn, Table::Campaigns, &existing.id, legacy_id)?;
        note_id(report, Table::Campaigns, legacy_id, &id, why);
        return Ok(campaigns::get(conn, &id)?);
    }
    report.campaigns_created += 1;
    let (id, why) = ids::for_new(conn, Table::Campaigns, legacy_id)?;
    let new = NewCampaign {
        name: planned.name.clone(),
        dm_id: planned.dm_id.clone(),
        description: None,
    };
    let created = campaigns::create(conn, &new, Some(&key))?;
    // Nothing refers to the row yet, so taking the chosen id is a plain rename.
    conn.execute(
        "UPDATE campaigns SET id = ?2 WHERE id = ?1",
        [&created.id, &id],
    )?;
    note_id(report, Table::Campaigns, legacy_id, &id, why);
    Ok(campaigns::get(conn, &id)?)
}

/// Creates the profile of a legacy character, or fills the fields an existing one lacks.
fn upsert_character(
    conn: &Connection,
    importer: &mut Importer<'_>,
    planned: &PlannedCharacter,
    report: &mut LegacyImportReport,
) -> Result<(CharacterProfile, &'static str), FileError> {
    let key = format!("legacy:{}", planned.legacy_id);
    let legacy_id = planned.legacy_id.as_str();
    let t = now();
    let Some(existing) = profiles::by_import_key(conn, &key)? else {
        let (id, why) = ids::for_new(conn, Table::Characters, legacy_id)?;
        note_id(report, Table::Characters, legacy_id, &id, why);
        let mut p = validate::build_profile(&planned.new, id, t).map_err(StoreError::from)?;
        p.import_key = Some(key);
        p.created_at = planned.created_at.unwrap_or(t);
        p.total_interactions = planned.total_interactions;
        profiles::insert(conn, &p)?;
        return Ok((p, "created"));
    };
    let (id, why) = ids::settle(conn, Table::Characters, &existing.id, legacy_id)?;
    note_id(report, Table::Characters, legacy_id, &id, why);
    let renamed = id != existing.id;
    if renamed {
        importer.follow_rename(conn, &existing.id, &id)?;
    }
    let mut existing = profiles::get(conn, &id)?;
    let fresh = validate::build_profile(&planned.new, id, t).map_err(StoreError::from)?;
    let before = existing.clone();
    fill(&mut existing, fresh);
    if existing == before {
        return Ok((existing, if renamed { "updated" } else { "unchanged" }));
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
