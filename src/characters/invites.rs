//! SQL for campaign invitations: a DM's code that lets a player join the campaign with one of
//! their own characters. Redeeming checks expiry and uses and joins in one transaction, so a
//! code with `max_uses` can never be used once too often.

use super::campaigns;
use super::error::ValidationError;
use super::error::{StoreError, StoreResult};
use super::rows::{time_col, time_text};
use super::types::{CampaignInvite, CampaignStatePatch, CharacterInfo, NewInvite};
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Lifetime of a code when none is asked for: a week.
pub const INVITE_DEFAULT_SECONDS: i64 = 7 * 24 * 3600;
/// The longest lifetime a code may have: a year.
pub const INVITE_MAX_SECONDS: i64 = 365 * 24 * 3600;
/// The most joins one code may allow.
pub const INVITE_MAX_USES: i64 = 1000;

const COLUMNS: &str = "code, campaign_id, created_by, created_at, expires_at, max_uses, uses";

fn from_row(r: &Row<'_>) -> rusqlite::Result<CampaignInvite> {
    Ok(CampaignInvite {
        code: r.get(0)?,
        campaign_id: r.get(1)?,
        created_by: r.get(2)?,
        created_at: time_col(r, 3)?,
        expires_at: time_col(r, 4)?,
        max_uses: r.get(5)?,
        uses: r.get(6)?,
    })
}

fn invalid(field: &str, message: String) -> StoreError {
    StoreError::Validation(ValidationError::new(field, message))
}

/// 80 random bits: not guessable, short enough to paste into a chat.
fn new_code() -> String {
    let mut raw = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("inv_{hex}")
}

pub(crate) fn create(
    conn: &Connection,
    campaign_id: &str,
    created_by: Option<&str>,
    new: &NewInvite,
    now: DateTime<Utc>,
) -> StoreResult<CampaignInvite> {
    campaigns::get(conn, campaign_id)?;
    let seconds = new.expires_in_seconds.unwrap_or(INVITE_DEFAULT_SECONDS);
    if !(1..=INVITE_MAX_SECONDS).contains(&seconds) {
        return Err(invalid(
            "expires_in_seconds",
            format!("must be between 1 and {INVITE_MAX_SECONDS} (365 days), got {seconds}"),
        ));
    }
    if let Some(n) = new.max_uses {
        if !(1..=INVITE_MAX_USES).contains(&n) {
            return Err(invalid(
                "max_uses",
                format!("must be between 1 and {INVITE_MAX_USES}, got {n}"),
            ));
        }
    }
    let invite = CampaignInvite {
        code: new_code(),
        campaign_id: campaign_id.to_string(),
        created_by: created_by.map(str::to_string),
        created_at: now,
        expires_at: now + Duration::seconds(seconds),
        max_uses: new.max_uses,
        uses: 0,
    };
    conn.execute(
        &format!("INSERT INTO campaign_invites ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            invite.code,
            invite.campaign_id,
            invite.created_by,
            time_text(&invite.created_at),
            time_text(&invite.expires_at),
            invite.max_uses,
            invite.uses,
        ],
    )?;
    Ok(invite)
}

/// Every code of a campaign that can still be used, newest first.
pub(crate) fn list(
    conn: &Connection,
    campaign_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<Vec<CampaignInvite>> {
    campaigns::get(conn, campaign_id)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM campaign_invites WHERE campaign_id = ?1 AND expires_at > ?2 \
         AND (max_uses IS NULL OR uses < max_uses) ORDER BY created_at DESC, code"
    ))?;
    let rows = stmt.query_map(params![campaign_id, time_text(&now)], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn revoke(conn: &Connection, campaign_id: &str, code: &str) -> StoreResult<()> {
    let n = conn.execute(
        "DELETE FROM campaign_invites WHERE campaign_id = ?1 AND code = ?2",
        [campaign_id, code],
    )?;
    if n == 0 {
        return Err(StoreError::not_found("invite", code));
    }
    Ok(())
}

/// The invite behind a code, whatever its state (NotFound for an unknown or revoked code).
pub(crate) fn find(conn: &Connection, code: &str) -> StoreResult<CampaignInvite> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM campaign_invites WHERE code = ?1"),
        [code.trim()],
        from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("invite", code))
}

/// Joins `character_id` to the code's campaign with the default state, counting one use.
pub(crate) fn redeem(
    conn: &Connection,
    code: &str,
    character_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<CharacterInfo> {
    let invite = find(conn, code)?;
    if invite.expires_at <= now {
        return Err(StoreError::Gone(format!(
            "invite code expired at {}; ask the DM for a new one",
            time_text(&invite.expires_at)
        )));
    }
    if invite.max_uses.is_some_and(|m| invite.uses >= m) {
        return Err(StoreError::Gone(format!(
            "invite code was already used {} time(s), its limit; ask the DM for a new one",
            invite.uses
        )));
    }
    let info = campaigns::join(
        conn,
        &invite.campaign_id,
        character_id,
        &CampaignStatePatch::default(),
    )?;
    conn.execute(
        "UPDATE campaign_invites SET uses = uses + 1 WHERE code = ?1",
        [&invite.code],
    )?;
    Ok(info)
}
