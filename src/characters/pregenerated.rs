//! The pregenerated characters shipped with limner (`pregenerated.json`, embedded at build time):
//! a loader, and an idempotent import into the store keyed by each character's stable id.

use super::error::ValidationError;
use super::error::{StoreError, StoreResult};
use super::store::CharacterStore;
use super::types::NewCharacter;
use super::validate;
use serde::{Deserialize, Serialize};

const PREGENERATED_JSON: &str = include_str!("pregenerated.json");

/// One shipped character: a stable id (never changes between releases) and its profile input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PregenCharacter {
    pub id: String,
    #[serde(flatten)]
    pub character: NewCharacter,
}

impl PregenCharacter {
    /// The import key under which the store remembers this character.
    pub fn import_key(&self) -> String {
        format!("pregen:{}", self.id)
    }
}

/// Parses and validates the shipped characters.
pub fn pregenerated() -> Result<Vec<PregenCharacter>, ValidationError> {
    parse(PREGENERATED_JSON)
}

fn parse(json: &str) -> Result<Vec<PregenCharacter>, ValidationError> {
    let list: Vec<PregenCharacter> = serde_json::from_str(json)
        .map_err(|e| ValidationError::new("pregenerated", format!("malformed JSON: {e}")))?;
    for c in &list {
        validate::id("pregenerated.id", &c.id)?;
        // Validating builds a throwaway profile, so every enum and limit is checked here.
        validate::build_profile(&c.character, String::new(), chrono::Utc::now()).map_err(|e| {
            ValidationError::new(format!("pregenerated[{}].{}", c.id, e.field), e.message)
        })?;
    }
    Ok(list)
}

/// What `import_pregenerated` did: profile ids created now and those already there.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PregenReport {
    pub created: Vec<String>,
    pub existing: Vec<String>,
}

/// Imports every shipped character not imported before (by its stable id); `owner` owns the ones
/// created now. Running it again creates nothing.
pub fn import_pregenerated(
    store: &dyn CharacterStore,
    owner: Option<&str>,
) -> StoreResult<PregenReport> {
    let mut report = PregenReport::default();
    for pregen in pregenerated()? {
        let mut new = pregen.character.clone();
        new.owner_id = owner.map(str::to_string);
        new.campaign_id = None;
        match store.import_character(&pregen.import_key(), &new) {
            Ok((profile, true)) => report.created.push(profile.id),
            Ok((profile, false)) => report.existing.push(profile.id),
            // Another process imported it between our check and insert: it exists.
            Err(StoreError::Conflict(_)) => match store.find_by_import_key(&pregen.import_key())? {
                Some(profile) => report.existing.push(profile.id),
                None => return Err(StoreError::Conflict(pregen.import_key())),
            },
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_or_invalid_lists_are_rejected() {
        assert_eq!(parse("[{").unwrap_err().field, "pregenerated");
        let err = parse(r#"[{"id": "x", "name": "X", "race": "Goblin"}]"#).unwrap_err();
        assert_eq!(err.field, "pregenerated[x].race");
    }
}
