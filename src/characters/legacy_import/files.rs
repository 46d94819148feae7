//! The portrait files of a migration: each legacy file is copied into the media store (with a
//! thumbnail) under a key of its own, so a migrated portrait is served like any generated one
//! and no longer depends on the legacy folder. The media store sits behind [`PortraitFiles`], a
//! seam the portraits layer implements over its `ImageStore`, so this layer never sees images.
//!
//! A portrait is identified across runs by its resolved legacy path (kept in the record's
//! `parameters.legacy_file`): a second run finds it and copies nothing, even when the legacy file
//! has been deleted since. Records written by an older limner, which pointed at the legacy path
//! itself, get their copy now.

use super::plan::{PlannedCharacter, PlannedPortrait};
use super::report::{FileProblem, LegacyImportReport};
use crate::characters::error::{StoreError, StoreResult};
use crate::characters::portraits;
use crate::characters::types::{CharacterProfile, NewPortrait};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use std::path::Path;

/// A legacy portrait read, checked and ready to be stored: its keys and bytes.
#[derive(Debug, Clone)]
pub struct PreparedFile {
    pub key: String,
    pub thumbnail_key: String,
    pub bytes: Vec<u8>,
    pub thumbnail: Vec<u8>,
}

/// Where migrated portraits go: the media store.
pub trait PortraitFiles {
    /// Reads a legacy file, checks it is an image and makes its thumbnail; writes nothing. The
    /// keys depend only on `character_id` and `identity`. `Err` says why the file cannot be used.
    fn prepare(
        &self,
        character_id: &str,
        identity: &str,
        path: &Path,
    ) -> Result<PreparedFile, String>;
    /// Whether `key` is a media key whose file exists.
    fn is_stored(&self, key: &str) -> bool;
    /// Stores the file and its thumbnail, each atomically (both, or an error and neither).
    fn write(&self, file: &PreparedFile) -> Result<(), String>;
    /// Copies one stored file to another key.
    fn copy(&self, from: &str, to: &str) -> Result<(), String>;
    /// Removes a key (best effort: used to undo a migration that did not commit).
    fn delete(&self, key: &str);
}

/// A media-store failure: the migration stops and is rolled back.
#[derive(Debug)]
pub(crate) enum FileError {
    Store(StoreError),
    Media(String),
}

impl From<StoreError> for FileError {
    fn from(e: StoreError) -> Self {
        FileError::Store(e)
    }
}

impl From<rusqlite::Error> for FileError {
    fn from(e: rusqlite::Error) -> Self {
        FileError::Store(e.into())
    }
}

/// What one run did to the media store; undone (`written` deleted) if the run does not commit,
/// `superseded` deleted once it has.
#[derive(Debug, Default)]
pub(crate) struct FileLog {
    pub written: Vec<String>,
    pub superseded: Vec<String>,
}

/// The record of a portrait an earlier run imported from `legacy_file`.
fn imported(
    conn: &Connection,
    character_id: &str,
    legacy_file: &str,
) -> StoreResult<Option<(String, String)>> {
    Ok(conn
        .query_row(
            "SELECT id, file_path FROM portraits WHERE character_id = ?1 AND (file_path = ?2 \
             OR json_extract(parameters, '$.legacy_file') = ?2) ORDER BY rowid LIMIT 1",
            params![character_id, legacy_file],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Everything one run needs to bring a character's portraits into the media store.
pub(crate) struct Importer<'a> {
    pub files: &'a dyn PortraitFiles,
    pub dry_run: bool,
    pub log: &'a mut FileLog,
}

impl Importer<'_> {
    fn store(&mut self, prepared: &PreparedFile) -> Result<(), FileError> {
        if self.dry_run {
            return Ok(());
        }
        self.files.write(prepared).map_err(FileError::Media)?;
        self.log.written.push(prepared.key.clone());
        self.log.written.push(prepared.thumbnail_key.clone());
        Ok(())
    }

    /// Records and copies every portrait of one character; the first portrait marked `main`
    /// becomes current unless the character already has one.
    pub(crate) fn import(
        &mut self,
        conn: &Connection,
        profile: &CharacterProfile,
        planned: &PlannedCharacter,
        report: &mut LegacyImportReport,
    ) -> Result<(), FileError> {
        let mut current = profile.current_portrait_id.clone();
        for p in &planned.portraits {
            if let Some((id, file_path)) = imported(conn, &profile.id, &p.file_path)? {
                report.portraits_existing += 1;
                if !self.files.is_stored(&file_path) {
                    self.repair(conn, &profile.id, &id, p, report)?;
                }
                continue;
            }
            if !p.found {
                report.files_skipped.push(FileProblem {
                    path: p.named_as.clone(),
                    reason: format!("portrait file of {} not found", planned.legacy_id),
                });
                continue;
            }
            let prepared = match self.prepare(&profile.id, p) {
                Ok(prepared) => prepared,
                Err(problem) => {
                    report.files_skipped.push(problem);
                    continue;
                }
            };
            self.store(&prepared)?;
            let new = NewPortrait {
                character_id: profile.id.clone(),
                file_path: prepared.key.clone(),
                thumbnail_path: Some(prepared.thumbnail_key.clone()),
                prompt: p.prompt.clone(),
                parameters: Some(json!({"legacy_file": p.file_path})),
                model: Some("legacy".into()),
                ..Default::default()
            };
            let make_current = p.main && current.is_none();
            let record = portraits::add(conn, &new, make_current)?;
            if make_current {
                current = Some(record.id);
            }
            report.portraits_recorded += 1;
            report.portraits_copied += 1;
        }
        Ok(())
    }

    fn prepare(
        &self,
        character_id: &str,
        p: &PlannedPortrait,
    ) -> Result<PreparedFile, FileProblem> {
        self.files
            .prepare(character_id, &p.file_path, Path::new(&p.file_path))
            .map_err(|reason| FileProblem {
                path: p.named_as.clone(),
                reason: format!("portrait file {}: {reason}", p.file_path),
            })
    }

    /// A recorded portrait whose media copy is missing (an older limner recorded the legacy
    /// path itself, or the copy was deleted): copied again from the legacy file if it is there.
    fn repair(
        &mut self,
        conn: &Connection,
        character_id: &str,
        portrait_id: &str,
        p: &PlannedPortrait,
        report: &mut LegacyImportReport,
    ) -> Result<(), FileError> {
        if !p.found {
            report.files_skipped.push(FileProblem {
                path: p.named_as.clone(),
                reason: "portrait file not found, and its media copy is missing too".into(),
            });
            return Ok(());
        }
        let prepared = match self.prepare(character_id, p) {
            Ok(prepared) => prepared,
            Err(problem) => {
                report.files_skipped.push(problem);
                return Ok(());
            }
        };
        self.store(&prepared)?;
        conn.execute(
            "UPDATE portraits SET file_path = ?2, thumbnail_path = ?3, \
             parameters = json_set(parameters, '$.legacy_file', ?4) WHERE id = ?1",
            params![
                portrait_id,
                prepared.key,
                prepared.thumbnail_key,
                p.file_path
            ],
        )?;
        report.portraits_copied += 1;
        Ok(())
    }

    /// After a character was renamed from `old` to its legacy id: portrait files stored under
    /// `portraits/<old>/` move to the new id's folder (keys name their character).
    pub(crate) fn follow_rename(
        &mut self,
        conn: &Connection,
        old: &str,
        new: &str,
    ) -> Result<(), FileError> {
        let prefix = format!("portraits/{old}/");
        let mut stmt = conn.prepare(
            "SELECT id, file_path, thumbnail_path FROM portraits WHERE character_id = ?1",
        )?;
        let rows = stmt
            .query_map([new], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (id, file, thumb) in rows {
            let moved = |key: &str| {
                key.strip_prefix(&prefix)
                    .map(|rest| format!("portraits/{new}/{rest}"))
            };
            let mut keys = vec![(file.clone(), moved(&file))];
            if let Some(t) = &thumb {
                keys.push((t.clone(), moved(t)));
            }
            for (from, to) in &keys {
                let Some(to) = to else { continue };
                if !self.dry_run && self.files.is_stored(from) {
                    self.files.copy(from, to).map_err(FileError::Media)?;
                    self.log.written.push(to.clone());
                    self.log.superseded.push(from.clone());
                }
            }
            conn.execute(
                "UPDATE portraits SET file_path = ?2, thumbnail_path = ?3 WHERE id = ?1",
                params![
                    id,
                    moved(&file).unwrap_or(file.clone()),
                    thumb.as_deref().map(|t| moved(t).unwrap_or(t.to_string()))
                ],
            )?;
        }
        Ok(())
    }
}
