//! The plan of a legacy import: everything the legacy folder says, normalized
//! ([`LegacyPlan`] and its planned characters, campaigns and portraits), and the raw copies the
//! reader hands to the merge. Built by `read` and `merge`, written by the import; holds no logic
//! of either.

use super::report::LegacyImportReport;
use crate::characters::types::{CharacterInfo, NewCharacter};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(super) type Object = Map<String, Value>;

/// One portrait file a character's copies name.
#[derive(Debug, Clone)]
pub(crate) struct PlannedPortrait {
    /// The resolved (canonical when the file exists) path: the portrait's identity across runs.
    pub file_path: String,
    /// The path as the legacy JSON wrote it (what the report shows).
    pub named_as: String,
    pub prompt: String,
    /// The profile's (or first copy's) own portrait: made current if none is.
    pub main: bool,
    /// Whether the file existed when the folder was read.
    pub found: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedCharacter {
    pub legacy_id: String,
    pub new: NewCharacter,
    pub created_at: Option<DateTime<Utc>>,
    pub total_interactions: i64,
    pub portraits: Vec<PlannedPortrait>,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedCampaign {
    pub legacy_id: String,
    pub name: String,
    pub dm_id: Option<String>,
    /// Campaign state per legacy character id (campaign/character ids are placeholders).
    pub states: Vec<(String, CharacterInfo)>,
}

/// Everything the legacy folder says, normalized, plus what the report lists about it.
#[derive(Debug, Clone, Default)]
pub struct LegacyPlan {
    pub(crate) characters: Vec<PlannedCharacter>,
    pub(crate) campaigns: Vec<PlannedCampaign>,
    pub(crate) report: LegacyImportReport,
}

/// One copy of a character: where it came from and its JSON object.
pub(super) struct Copy {
    pub source: String,
    pub campaign: Option<String>,
    pub obj: Object,
}

pub(super) fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Each campaign folder by id: its metadata object and its character copies by legacy id.
pub(super) type CampaignCopies = BTreeMap<String, (Object, Vec<(String, Object)>)>;
