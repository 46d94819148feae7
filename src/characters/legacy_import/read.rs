//! Reads the portrait-creator spec's legacy JSON layout into a [`LegacyPlan`] without touching the database:
//! `character_profiles/{id}.json` and `campaigns/{id}/characters.json` (an array of CharacterInfo
//! objects or an object keyed by character id). Identity and visual fields of every copy are
//! normalized and merged (the profile file wins; disagreements become conflicts; values that
//! cannot be normalized are listed, never silently dropped); campaign state is split off.
//! This file reads the folder; `merge.rs` merges the copies, into the types of `plan.rs`.

use super::merge;
use super::plan::{as_text, CampaignCopies, Copy, LegacyPlan, Object};
use super::report::{FileProblem, LegacyImportError, LegacyImportReport};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads and plans the whole folder. Any unreadable or malformed file is an error (nothing will
/// be written) unless `skip_malformed`, which lists it as skipped instead.
pub(crate) fn read_legacy(
    dir: &Path,
    skip_malformed: bool,
) -> Result<LegacyPlan, LegacyImportError> {
    let mut plan = LegacyPlan::default();
    plan.report.source = dir.display().to_string();
    let mut reader = Reader {
        dir,
        skip_malformed,
        report: &mut plan.report,
    };
    let (profiles, campaigns) = reader.read_all();
    if !plan.report.errors.is_empty() {
        return Err(LegacyImportError::Input(Box::new(plan.report)));
    }
    merge::merge(&mut plan, dir, profiles, campaigns);
    Ok(plan)
}

struct Reader<'a> {
    dir: &'a Path,
    skip_malformed: bool,
    report: &'a mut LegacyImportReport,
}

impl Reader<'_> {
    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(self.dir).unwrap_or(p).display().to_string()
    }

    fn problem(&mut self, path: &Path, reason: String) {
        let p = FileProblem {
            path: self.rel(path),
            reason,
        };
        if self.skip_malformed {
            self.report.files_skipped.push(p);
        } else {
            self.report.errors.push(p);
        }
    }

    fn skip(&mut self, path: &Path, reason: &str) {
        let path = self.rel(path);
        self.report.files_skipped.push(FileProblem {
            path,
            reason: reason.to_string(),
        });
    }

    fn entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                v.sort();
                v
            }
            Err(e) => {
                self.report.errors.push(FileProblem {
                    path: self.rel(dir),
                    reason: format!("cannot read folder: {e}"),
                });
                Vec::new()
            }
        }
    }

    fn json(&mut self, path: &Path) -> Option<Value> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.problem(path, format!("cannot read: {e}"));
                return None;
            }
        };
        match serde_json::from_str(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(path, format!("malformed JSON: {e}"));
                None
            }
        }
    }

    /// (profiles by id, campaigns by id with their metadata and character copies).
    fn read_all(&mut self) -> (BTreeMap<String, Copy>, CampaignCopies) {
        let mut profiles = BTreeMap::new();
        let mut campaigns = BTreeMap::new();
        let (pdir, cdir) = (
            self.dir.join("character_profiles"),
            self.dir.join("campaigns"),
        );
        if !self.dir.is_dir() || (!pdir.is_dir() && !cdir.is_dir()) {
            self.report.errors.push(FileProblem {
                path: self.dir.display().to_string(),
                reason: "not a legacy folder: needs character_profiles/ or campaigns/".into(),
            });
            return (profiles, campaigns);
        }
        if pdir.is_dir() {
            for path in self.entries(&pdir) {
                if !path.is_file() || path.extension().is_none_or(|e| e != "json") {
                    self.skip(&path, "not a .json file");
                    continue;
                }
                let Some(v) = self.json(&path) else { continue };
                let Value::Object(obj) = v else {
                    self.problem(&path, "expected a JSON object".into());
                    continue;
                };
                let stem = path.file_stem().map(|s| s.to_string_lossy().to_string());
                let id = obj
                    .get("character_id")
                    .and_then(as_text)
                    .or(stem)
                    .unwrap_or_default();
                let source = self.rel(&path);
                if profiles.contains_key(&id) {
                    self.problem(&path, format!("second profile for character {id:?}"));
                    continue;
                }
                let copy = Copy {
                    source,
                    campaign: None,
                    obj,
                };
                profiles.insert(id, copy);
            }
        }
        if cdir.is_dir() {
            for path in self.entries(&cdir) {
                if !path.is_dir() {
                    self.skip(&path, "not a campaign folder");
                    continue;
                }
                let id = path.file_name().map(|s| s.to_string_lossy().to_string());
                let file = path.join("characters.json");
                if !file.is_file() {
                    self.skip(&path, "campaign folder without characters.json");
                    continue;
                }
                let meta = ["campaign.json", "metadata.json"]
                    .iter()
                    .map(|m| path.join(m))
                    .find(|m| m.is_file())
                    .and_then(|m| self.json(&m))
                    .and_then(|v| v.as_object().cloned())
                    .unwrap_or_default();
                let Some(v) = self.json(&file) else { continue };
                let Some(entries) = self.campaign_entries(&file, v) else {
                    continue;
                };
                campaigns.insert(id.unwrap_or_default(), (meta, entries));
            }
        }
        (profiles, campaigns)
    }

    fn campaign_entries(&mut self, file: &Path, v: Value) -> Option<Vec<(String, Object)>> {
        let pairs: Vec<(Option<String>, Value)> = match v {
            Value::Array(items) => items.into_iter().map(|i| (None, i)).collect(),
            Value::Object(map) => map.into_iter().map(|(k, i)| (Some(k), i)).collect(),
            _ => {
                self.problem(file, "expected an array or an object of characters".into());
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, (key, item)) in pairs.into_iter().enumerate() {
            let Value::Object(obj) = item else {
                self.problem(file, format!("character entry {i} is not an object"));
                return None;
            };
            let id = obj
                .get("character_id")
                .or_else(|| obj.get("profile_id"))
                .or_else(|| obj.get("id"))
                .and_then(as_text)
                .or(key);
            let Some(id) = id.filter(|s| !s.trim().is_empty()) else {
                self.problem(file, format!("character entry {i} has no character_id"));
                return None;
            };
            out.push((id, obj));
        }
        Some(out)
    }
}
