//! The HTTP side of access (tokens themselves live in `crate::auth`): who is calling (the `Caller` extractor: bearer token, or HTTP Basic with the token as the
//! password as A1111's `--api-auth` clients send it) and what they may do. Visibility itself is
//! decided by the store, in SQL (see `characters::listing`). A character the caller may not see
//! answers 404, never 403, so its existence does not leak.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine as _;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::Principal;
use crate::characters::{Campaign, CharacterProfile, Viewer};

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

/// The store's view of a caller: admins see everything, players what their campaigns show them.
pub fn viewer_of(p: &Principal) -> Viewer {
    if p.is_admin() {
        Viewer::Admin
    } else {
        Viewer::User(p.user.clone())
    }
}

impl AppState {
    /// Loads a character the caller may see, else 404 (one indexed query).
    pub fn visible_character(&self, p: &Principal, id: &str) -> ApiResult<CharacterProfile> {
        Ok(self.store.visible_character(&viewer_of(p), id)?)
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
        Ok(self.store.visible_campaign(&viewer_of(p), id)?)
    }

    /// The campaign if `p` is its DM or an admin (manages roster, invites and campaign state):
    /// 404 when invisible, 403 when `p` only plays in it.
    pub fn managed_campaign(&self, p: &Principal, id: &str) -> ApiResult<Campaign> {
        let camp = self.visible_campaign(p, id)?;
        if p.is_admin() || camp.dm_id.as_deref() == Some(p.user.as_str()) {
            Ok(camp)
        } else {
            Err(ApiError::forbidden("only the campaign's DM may do this"))
        }
    }
}
