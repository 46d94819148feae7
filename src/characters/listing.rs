//! Reads as one viewer sees them: visibility, filters and pagination decided inside one SQL
//! query each, so a page is always a page of rows the viewer may see, and its cost follows the
//! rows the viewer can reach, never the size of the whole database.
//!
//! Who sees what: an admin everything; a user their own characters, the campaigns they run
//! (`dm_id`) or play in (own a character taking part), and every character of those campaigns.
//! Every list is ordered by name (case-insensitive), then id; that pair is the keyset cursor.

use super::campaigns::{self, assemble, campaign_from_row, with_members, CAMPAIGN_COLUMNS};
use super::error::{OrNotFound, StoreResult};
use super::profiles;
use super::rows::{
    find_one, from_row, json_col, state_from_row, COLUMNS, COLUMN_COUNT, STATE_COLUMNS,
    STATE_COLUMN_COUNT,
};
use super::types::{
    Campaign, CampaignFilter, CharacterFilter, CharacterProfile, EnrichedCharacter, Page, PageKey,
    Viewer,
};
use rusqlite::types::Value;
use rusqlite::{Connection, Row};

/// Default and maximum page sizes of list operations.
pub const PAGE_DEFAULT: u32 = 100;
pub const PAGE_MAX: u32 = 1000;

pub(crate) fn page(limit: Option<u32>, offset: Option<u32>) -> (i64, i64) {
    let limit = limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    (i64::from(limit), i64::from(offset.unwrap_or(0)))
}

/// Campaigns `:viewer` runs or plays in (`campaign_players` is kept by triggers, see
/// migration 0003).
const MY_CAMPAIGNS: &str = "my_campaigns(id) AS (\
    SELECT k.id FROM campaigns k WHERE k.dm_id = :viewer \
    UNION SELECT cp.campaign_id FROM campaign_players cp WHERE cp.user_id = :viewer)";

/// Does `:viewer` play in campaign `{k}`?
macro_rules! plays_in {
    ($k:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM campaign_players cp WHERE cp.user_id = :viewer \
             AND cp.campaign_id = ",
            $k,
            ")"
        )
    };
}

/// May `:viewer` see character `c`? Looks at that character's few campaigns only.
const CHARACTER_VISIBLE: &str = concat!(
    "(c.owner_id = :viewer OR EXISTS (\
    SELECT 1 FROM campaign_characters cc CROSS JOIN campaigns k ON k.id = cc.campaign_id \
    WHERE cc.character_id = c.id AND (k.dm_id = :viewer OR ",
    plays_in!("k.id"),
    ")))"
);

/// May `:viewer` see campaign `k`?
const CAMPAIGN_VISIBLE: &str = concat!("(k.dm_id = :viewer OR ", plays_in!("k.id"), ")");

/// A query assembled from the filters that apply, so that SQLite plans each shape with the
/// indexes it can use (an `:x IS NULL OR ...` condition would defeat them).
#[derive(Default)]
struct Query {
    with: Vec<&'static str>,
    from: &'static str,
    conditions: Vec<String>,
    params: Vec<(&'static str, Value)>,
}

impl Query {
    fn bind(&mut self, name: &'static str, value: impl Into<Value>) {
        if !self.params.iter().any(|(n, _)| *n == name) {
            self.params.push((name, value.into()));
        }
    }

    fn and(&mut self, condition: impl Into<String>) {
        self.conditions.push(condition.into());
    }

    /// Rows sorting strictly after `key` in (name COLLATE NOCASE, id) order, on table `t`.
    fn after(&mut self, t: &str, key: &Option<PageKey>) {
        if let Some(key) = key {
            self.and(format!(
                "{t}.name >= :after_name COLLATE NOCASE AND \
                 ({t}.name > :after_name COLLATE NOCASE OR {t}.id > :after_id)"
            ));
            self.bind(":after_name", key.name.clone());
            self.bind(":after_id", key.id.clone());
        }
    }

    fn with_clause(&self, extra: &str) -> String {
        let mut parts: Vec<&str> = self.with.clone();
        parts.push(extra);
        format!("WITH {}", parts.join(", "))
    }

    fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn run<T>(
        &self,
        conn: &Connection,
        sql: &str,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> StoreResult<Vec<T>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let params: Vec<(&str, &dyn rusqlite::ToSql)> = self
            .params
            .iter()
            .map(|(n, v)| (*n, v as &dyn rusqlite::ToSql))
            .collect();
        let rows = stmt.query_map(params.as_slice(), f)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A LIKE pattern matching `s` as a plain substring.
fn substring_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Cuts the one extra row fetched to learn whether another page follows.
fn into_page<T>(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> PageKey) -> Page<T> {
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more { items.last().map(key) } else { None };
    Page { items, next }
}

/// One page of characters as merged views (with the campaign's state when filtered by one).
pub(crate) fn character_page(
    conn: &Connection,
    f: &CharacterFilter,
) -> StoreResult<Page<EnrichedCharacter>> {
    let (limit, offset) = page(f.limit, f.offset);
    let viewer = f.visible_to.user();
    let mut q = Query::default();
    let mut split = false;
    match (&f.campaign_id, viewer) {
        (Some(campaign), _) => {
            // A campaign's members are visible to exactly those who may see the campaign.
            q.from = "campaign_characters s CROSS JOIN characters c ON c.id = s.character_id";
            q.and("s.campaign_id = :campaign");
            if let Some(v) = viewer {
                q.and(format!(
                    "EXISTS (SELECT 1 FROM campaigns k WHERE k.id = :campaign AND {CAMPAIGN_VISIBLE})"
                ));
                q.bind(":viewer", v.to_string());
            }
            q.bind(":campaign", campaign.clone());
        }
        // One's own characters: all visible, already in order in the owner index.
        (None, Some(v)) if f.owner_id.as_deref() == Some(v) => q.from = "characters c",
        (None, Some(v)) => {
            q.with = vec![MY_CAMPAIGNS];
            q.bind(":viewer", v.to_string());
            split = true;
        }
        (None, None) => q.from = "characters c",
    }
    if let Some(owner) = &f.owner_id {
        q.and("c.owner_id = :owner");
        q.bind(":owner", owner.clone());
    }
    if let Some(name) = &f.name {
        q.and("c.name LIKE :name ESCAPE '\\'");
        q.bind(":name", substring_pattern(name));
    }
    q.after("c", &f.after);
    q.bind(":limit", limit + 1);
    q.bind(":offset", offset);
    let order = "ORDER BY c.name COLLATE NOCASE, c.id";
    let cut = if split {
        // What a user sees is their own characters (in order in the owner index) and the other
        // players' characters of their campaigns. Each part is cut to the page's reach first,
        // so a user with thousands of characters never sorts them all.
        q.bind(":reach", limit + 1 + offset);
        let filters: String = q.conditions.iter().map(|c| format!(" AND {c}")).collect();
        let mut parts = vec![format!(
            "SELECT * FROM (SELECT c.id, c.name FROM my_campaigns mc \
             JOIN campaign_characters m ON m.campaign_id = mc.id \
             CROSS JOIN characters c INDEXED BY characters_id_name_owner ON c.id = m.character_id \
             WHERE c.owner_id IS NOT :viewer{filters} {order} LIMIT :reach)"
        )];
        if f.owner_id.is_none() {
            parts.push(format!(
                "SELECT * FROM (SELECT c.id, c.name FROM characters c \
                 WHERE c.owner_id = :viewer{filters} {order} LIMIT :reach)"
            ));
        }
        format!(
            "SELECT id FROM ({}) ORDER BY name COLLATE NOCASE, id LIMIT :limit OFFSET :offset",
            parts.join(" UNION ")
        )
    } else {
        format!(
            "SELECT c.id FROM {} {} {order} LIMIT :limit OFFSET :offset",
            q.from,
            q.where_clause()
        )
    };
    // The page is cut on ids alone; only its rows are then read in full (with state and
    // portrait), so the sort never carries whole profiles.
    let page_cte = format!("pg(id) AS MATERIALIZED ({cut})");
    q.bind(":state_campaign", f.campaign_id.clone());
    let sql = format!(
        "{} SELECT {COLUMNS}, {STATE_COLUMNS}, p.file_path, p.thumbnail_path, p.prompt \
         FROM pg CROSS JOIN characters c ON c.id = pg.id \
         LEFT JOIN campaign_characters s ON s.campaign_id = :state_campaign \
              AND s.character_id = c.id \
         LEFT JOIN portraits p ON p.id = c.current_portrait_id \
         ORDER BY c.name COLLATE NOCASE, c.id",
        q.with_clause(&page_cte)
    );
    let state_at = COLUMN_COUNT;
    let portrait_at = COLUMN_COUNT + STATE_COLUMN_COUNT;
    let items = q.run(conn, &sql, |r| {
        let profile = from_row(r)?;
        let state = match r.get::<_, Option<String>>(state_at)? {
            Some(_) => Some(state_from_row(r, state_at)?),
            None => None,
        };
        let portrait = match r.get::<_, Option<String>>(portrait_at)? {
            Some(file) => Some((file, r.get(portrait_at + 1)?, r.get(portrait_at + 2)?)),
            None => None,
        };
        Ok(assemble(profile, state, portrait))
    })?;
    Ok(into_page(items, limit, |e| PageKey {
        name: e.profile.name.clone(),
        id: e.profile.id.clone(),
    }))
}

/// One page of campaigns, each with its member ids.
pub(crate) fn campaign_page(conn: &Connection, f: &CampaignFilter) -> StoreResult<Page<Campaign>> {
    let (limit, offset) = page(f.limit, f.offset);
    let viewer = f.visible_to.user();
    let mut q = Query::default();
    match viewer {
        // The campaigns one runs: all visible, in order in the DM index.
        Some(v) if f.dm_id.as_deref() == Some(v) => q.from = "campaigns k",
        Some(v) => {
            q.with = vec![MY_CAMPAIGNS];
            q.from = "my_campaigns mc CROSS JOIN campaigns k ON k.id = mc.id";
            q.bind(":viewer", v.to_string());
        }
        None => q.from = "campaigns k",
    }
    if let Some(dm) = &f.dm_id {
        q.and("k.dm_id = :dm");
        q.bind(":dm", dm.clone());
    }
    if let Some(character) = &f.character_id {
        q.and(
            "k.id IN (SELECT cc.campaign_id FROM campaign_characters cc \
             WHERE cc.character_id = :character)",
        );
        q.bind(":character", character.clone());
    }
    q.after("k", &f.after);
    q.bind(":limit", limit + 1);
    q.bind(":offset", offset);
    let page_cte = format!(
        "pg(id) AS MATERIALIZED (SELECT k.id FROM {} {} \
         ORDER BY k.name COLLATE NOCASE, k.id LIMIT :limit OFFSET :offset)",
        q.from,
        q.where_clause()
    );
    let sql = format!(
        "{} SELECT {CAMPAIGN_COLUMNS}, (SELECT json_group_array(m.character_id \
              ORDER BY m.joined_at, m.character_id) \
              FROM campaign_characters m WHERE m.campaign_id = k.id) \
         FROM pg CROSS JOIN campaigns k ON k.id = pg.id \
         ORDER BY k.name COLLATE NOCASE, k.id",
        q.with_clause(&page_cte)
    );
    let items = q.run(conn, &sql, |r| {
        let mut c = campaign_from_row(r)?;
        c.character_ids = match json_col(r, 7)? {
            serde_json::Value::Array(ids) => ids
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        Ok(c)
    })?;
    Ok(into_page(items, limit, |c| PageKey {
        name: c.name.clone(),
        id: c.id.clone(),
    }))
}

/// The character if `viewer` may see it; NotFound otherwise (its existence does not leak).
pub(crate) fn visible_character(
    conn: &Connection,
    viewer: &Viewer,
    id: &str,
) -> StoreResult<CharacterProfile> {
    let Some(v) = viewer.user() else {
        return profiles::get(conn, id);
    };
    find_one(
        conn,
        &format!("SELECT {COLUMNS} FROM characters c WHERE c.id = :id AND {CHARACTER_VISIBLE}"),
        rusqlite::named_params! {":id": id, ":viewer": v},
        from_row,
    )?
    .or_not_found("character", id)
}

/// The campaign if `viewer` may see it; NotFound otherwise.
pub(crate) fn visible_campaign(
    conn: &Connection,
    viewer: &Viewer,
    id: &str,
) -> StoreResult<Campaign> {
    let Some(v) = viewer.user() else {
        return campaigns::get(conn, id);
    };
    let c = find_one(
        conn,
        &format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns k WHERE k.id = :id AND {CAMPAIGN_VISIBLE}"
        ),
        rusqlite::named_params! {":id": id, ":viewer": v},
        campaign_from_row,
    )?
    .or_not_found("campaign", id)?;
    with_members(conn, c)
}
