//! Row <-> type helpers every SQL module of the store shares: ids, timestamps and their text form,
//! how each column type is read, and the column lists with their row readers (profile and
//! campaign state), each written once as a field list. Depends on nothing above the types.

use super::enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
use super::error::StoreResult;
use super::types::{CharacterInfo, CharacterProfile};
use crate::engine::LoraRef;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Params, Row};
use serde_json::Value;

/// Now, at the microsecond precision the database keeps, so what a write returns equals what
/// a later read returns.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Timestamps are stored as fixed-width RFC 3339 so that text order is time order.
pub(crate) fn time_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn conversion(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e))
}

pub(crate) fn time_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| conversion(idx, e))
}

pub(crate) fn json_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s).map_err(|e| conversion(idx, e))
}

/// The one row `sql` selects, if any. The statement is cached: these are the point reads every
/// request makes, parsed once per connection.
pub(crate) fn find_one<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Option<T>> {
    Ok(conn
        .prepare_cached(sql)?
        .query_row(params, read)
        .optional()?)
}

/// A value read from column `idx` of a row, as the store writes it.
pub(crate) trait Column: Sized {
    fn read(row: &Row<'_>, idx: usize) -> rusqlite::Result<Self>;
}

impl Column for Value {
    fn read(row: &Row<'_>, idx: usize) -> rusqlite::Result<Self> {
        json_col(row, idx)
    }
}

/// Pinned networks are JSON arrays in a TEXT column (`'[]'` when none).
macro_rules! json_columns {
    ($($t:ty),+) => {
        $(impl Column for $t {
            fn read(row: &Row<'_>, idx: usize) -> rusqlite::Result<Self> {
                serde_json::from_value(json_col(row, idx)?).map_err(|e| conversion(idx, e))
            }
        })+
    };
}
json_columns!(Vec<LoraRef>, Vec<String>);

impl Column for DateTime<Utc> {
    fn read(row: &Row<'_>, idx: usize) -> rusqlite::Result<Self> {
        time_col(row, idx)
    }
}

/// Types SQLite hands back as they are.
macro_rules! plain_columns {
    ($($t:ty),+) => {
        $(impl Column for $t {
            fn read(row: &Row<'_>, idx: usize) -> rusqlite::Result<Self> {
                row.get(idx)
            }
        })+
    };
}

/// Vocabulary columns hold the canonical spelling; anything else is a corrupt row.
macro_rules! vocabulary_columns {
    ($($t:ident),+) => {
        $(impl FromSql for $t {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                $t::parse(v.as_str()?).map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        })+
        plain_columns!($($t, Option<$t>),+);
    };
}

plain_columns!(String, Option<String>, i64, Option<i64>);
vocabulary_columns!(
    AgeCategory,
    Build,
    CharacterClass,
    CharacterType,
    FacialExpression,
    Gender,
    Pose,
    Race
);

/// Declares a column list (`alias.field, ...`), its length and the reader of a row that holds
/// those columns from index `start` on, all from one field list in struct order, so the SELECT
/// and the reader cannot drift apart.
macro_rules! row_codec {
    ($ty:ident, $alias:literal, $columns:ident, $count:ident, $from_row:ident,
     [$first:ident $(, $field:ident)* $(,)?]) => {
        pub(crate) const $columns: &str =
            concat!($alias, ".", stringify!($first) $(, ", ", $alias, ".", stringify!($field))*);
        pub(crate) const $count: usize = [stringify!($first) $(, stringify!($field))*].len();
        pub(crate) fn $from_row(r: &Row<'_>, start: usize) -> rusqlite::Result<$ty> {
            let mut at = start;
            let mut next = || {
                at += 1;
                at - 1
            };
            Ok($ty {
                $first: Column::read(r, next())?,
                $($field: Column::read(r, next())?,)*
            })
        }
    };
}

row_codec!(
    CharacterProfile,
    "c",
    COLUMNS,
    COLUMN_COUNT,
    read_profile,
    [
        id,
        name,
        character_type,
        race,
        character_class,
        base_level,
        voice_id,
        voice_settings,
        voice_archetype,
        gender,
        age_category,
        build,
        height_description,
        facial_expression,
        facial_features,
        attire,
        primary_weapon,
        distinguishing_feature,
        background_setting,
        pose,
        loras,
        embeddings,
        backstory,
        description,
        appearance,
        visual_description,
        current_portrait_id,
        owner_id,
        total_interactions,
        import_key,
        created_at,
        updated_at,
    ]
);

row_codec!(
    CharacterInfo,
    "s",
    STATE_COLUMNS,
    STATE_COLUMN_COUNT,
    state_from_row,
    [
        campaign_id,
        character_id,
        level,
        hit_points_current,
        hit_points_max,
        armor_class,
        status,
        inventory,
        location,
        quests,
        extra,
        joined_at,
        updated_at,
    ]
);

/// A profile read from a row that starts with [`COLUMNS`].
pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<CharacterProfile> {
    read_profile(r, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_lists_follow_the_field_lists() {
        assert_eq!(COLUMN_COUNT, 32);
        assert!(COLUMNS.starts_with("c.id, c.name, c.character_type, "));
        assert!(COLUMNS.ends_with(", c.created_at, c.updated_at"));
        assert_eq!(STATE_COLUMN_COUNT, 13);
        assert_eq!(STATE_COLUMNS.split(", ").count(), STATE_COLUMN_COUNT);
        assert!(STATE_COLUMNS.starts_with("s.campaign_id, s.character_id, s.level"));
    }

    #[test]
    fn a_stored_value_outside_its_vocabulary_is_a_conversion_error() {
        let conn = Connection::open_in_memory().unwrap();
        let err = conn
            .query_row("SELECT 'not-a-race'", [], |r| r.get::<_, Race>(0))
            .unwrap_err();
        assert!(
            matches!(err, rusqlite::Error::FromSqlConversionFailure(..)),
            "{err:?}"
        );
        let ok: Option<Race> = conn.query_row("SELECT NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, None);
    }
}
