//! Who is calling (the `Caller` extractor: bearer token, or HTTP Basic with the token as the
//! password as A1111's `--api-auth` clients send it) and what they may do. A character the caller
//! may not see answers 404, never 403, so its existence does not leak.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::Principal;
use crate::characters::{Campaign, CampaignFilter, CharacterFilter, CharacterProfile};

/// The authenticated caller of a request.
pub struct Caller(pub Principal);

fn bearer_or_basic(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_string());
    }
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    // user:token — the token alone identifies the user.
    text.split_once(':').map(|(_, t)| t.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(tokens) = &state.tokens else {
            return Ok(Caller(Principal::local_admin()));
        };
        let token = bearer_or_basic(parts).ok_or_else(|| {
            ApiError::unauthorized("missing credentials: send Authorization: Bearer <token>")
        })?;
        // A token verified moments ago needs no database read, so no trip to the blocking pool.
        let principal = match tokens.cached(&token) {
            Some(p) => Some(p),
            None => {
                let tokens = tokens.clone();
                tokio::task::spawn_blocking(move || tokens.authenticate(&token))
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .map_err(ApiError::internal)?
            }
        };
        principal
            .map(Caller)
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))
    }
}

impl AppState {
    /// Campaigns `user` runs or plays in (owns a character taking part).
    fn campaigns_of_user(&self, user: &str) -> ApiResult<Vec<Campaign>> {
        let mut out = self.store.list_campaigns(&CampaignFilter {
            dm_id: Some(user.to_string()),
            limit: Some(1000),
            ..Default::default()
        })?;
        let own = self.store.list_characters(&CharacterFilter {
            owner_id: Some(user.to_string()),
            limit: Some(1000),
            ..Default::default()
        })?;
        for c in own {
            for camp in self.store.list_campaigns(&CampaignFilter {
                character_id: Some(c.id.clone()),
                limit: Some(1000),
                ..Default::default()
            })? {
                if !out.iter().any(|x| x.id == camp.id) {
                    out.push(camp);
                }
            }
        }
        Ok(out)
    }

    /// May `p` see this character? Admin, owner, or someone who runs or plays in a campaign
    /// the character takes part in.
    pub fn can_see(&self, p: &Principal, c: &CharacterProfile) -> ApiResult<bool> {
        if p.is_admin() || c.owner_id.as_deref() == Some(p.user.as_str()) {
            return Ok(true);
        }
        let theirs = self.campaigns_of_user(&p.user)?;
        Ok(theirs.iter().any(|camp| camp.character_ids.contains(&c.id)))
    }

    /// Loads a character the caller may see, else 404.
    pub fn visible_character(&self, p: &Principal, id: &str) -> ApiResult<CharacterProfile> {
        let c = self.store.get_character(id)?;
        if self.can_see(p, &c)? {
            Ok(c)
        } else {
            Err(ApiError::not_found("character"))
        }
    }

    /// Loads a character the caller may change (admin or owner): 404 when invisible, 403 when
    /// visible but someone else's.
    pub fn editable_character(&self, p: &Principal, id: &str) -> ApiResult<CharacterProfile> {
        let c = self.visible_character(p, id)?;
        if p.is_admin() || c.owner_id.as_deref() == Some(p.user.as_str()) {
            Ok(c)
        } else {
            Err(ApiError::forbidden(
                "only the character's owner may change it",
            ))
        }
    }

    /// May `p` see this campaign (admin, its DM, or a player with a character in it)?
    pub fn visible_campaign(&self, p: &Principal, id: &str) -> ApiResult<Campaign> {
        let camp = self.store.get_campaign(id)?;
        if p.is_admin() || camp.dm_id.as_deref() == Some(p.user.as_str()) {
            return Ok(camp);
        }
        let own = self.store.list_characters(&CharacterFilter {
            owner_id: Some(p.user.clone()),
            campaign_id: Some(camp.id.clone()),
            limit: Some(1),
            ..Default::default()
        })?;
        if own.is_empty() {
            Err(ApiError::not_found("campaign"))
        } else {
            Ok(camp)
        }
    }

    /// The campaign if `p` is its DM or an admin (manages roster and campaign state).
    pub fn managed_campaign(&self, p: &Principal, id: &str) -> ApiResult<Campaign> {
        let camp = self.visible_campaign(p, id)?;
        if p.is_admin() || camp.dm_id.as_deref() == Some(p.user.as_str()) {
            Ok(camp)
        } else {
            Err(ApiError::forbidden("only the campaign's DM may do this"))
        }
    }
}
