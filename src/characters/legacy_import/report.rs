//! What a legacy import reports: the one JSON document `limner migrate` prints
//! ([`LegacyImportReport`]) with its parts, and the error that says why nothing was written.
//! Every other part of the import fills these in; this file depends on none of them.

use crate::characters::error::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A file skipped (or, in `errors`, one that stopped the import) and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileProblem {
    pub path: String,
    pub reason: String,
}

/// Where one legacy character went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportedCharacter {
    pub legacy_id: String,
    pub id: String,
    pub name: String,
    /// "created", "updated" or "unchanged".
    pub action: String,
}

/// A legacy id that is not the limner id, and why (the record has the id in `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdChange {
    /// "character" or "campaign".
    pub kind: String,
    pub legacy_id: String,
    pub id: String,
    pub reason: String,
}

/// The JSON report `limner migrate` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LegacyImportReport {
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
    /// Portrait files copied into the media store by this run (with their thumbnails).
    pub portraits_copied: usize,
    pub characters: Vec<ImportedCharacter>,
    /// Legacy ids that could not be kept as ids (listed on every run, so the report always says
    /// where such a character went).
    pub ids_changed: Vec<IdChange>,
    pub conflicts: Vec<Conflict>,
    pub unrecognized: Vec<Unrecognized>,
    pub files_skipped: Vec<FileProblem>,
    /// Unreadable or malformed input; when not empty nothing was written.
    pub errors: Vec<FileProblem>,
}

/// Why a legacy import wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum LegacyImportError {
    /// The legacy folder could not be read; the report lists every problem.
    #[error("unreadable legacy input ({} problem(s)); nothing was written", .0.errors.len())]
    Input(Box<LegacyImportReport>),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A portrait file could not be written to the media store; nothing was kept.
    #[error("media store: {0}; nothing was written")]
    Media(String),
}
