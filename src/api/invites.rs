//! Campaign invitations: the DM creates, lists and revokes codes
//! (`/api/campaigns/{id}/invites`); a player redeems one to join with their own character
//! (`POST /api/campaigns/join`). The code is the DM's consent; the player's is joining.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::blocking;
use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::AppState;
use crate::auth::Principal;
use crate::characters::{CampaignInvite, CharacterInfo, NewInvite};

impl AppState {
    /// Redeems `code` for the caller's own character (any character for an admin). With
    /// `campaign_id`, the code must belong to that campaign.
    pub(crate) fn join_with_invite(
        &self,
        caller: &Principal,
        code: &str,
        campaign_id: Option<&str>,
        character_id: &str,
    ) -> ApiResult<CharacterInfo> {
        let invite = self.store.find_invite(code)?;
        if campaign_id.is_some_and(|id| id != invite.campaign_id) {
            return Err(ApiError::not_found("invite"));
        }
        let character = self.visible_character(caller, character_id)?;
        if !caller.is_admin() && character.owner_id.as_deref() != Some(caller.user.as_str()) {
            return Err(ApiError::forbidden(
                "an invite code joins only your own characters",
            ));
        }
        Ok(self.store.redeem_invite(&invite.code, character_id)?)
    }
}

/// The DM's new code: `{expires_in_seconds?, max_uses?}` -> 201 invite.
pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(new): ApiJson<NewInvite>,
) -> ApiResult<(StatusCode, Json<CampaignInvite>)> {
    let invite = blocking(move || {
        state.managed_campaign(&caller, &id)?;
        Ok(state.store.create_invite(&id, Some(&caller.user), &new)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(invite)))
}

/// The campaign's codes that can still be used (DM only).
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<CampaignInvite>>> {
    let list = blocking(move || {
        state.managed_campaign(&caller, &id)?;
        Ok(state.store.list_invites(&id)?)
    })
    .await?;
    Ok(Json(list))
}

/// Revokes a code at once (DM only).
pub async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, code)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        state.managed_campaign(&caller, &id)?;
        Ok(state.store.revoke_invite(&id, &code)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinWithCode {
    code: String,
    character_id: String,
}

/// `{code, character_id}` -> 201 the character's (default) state in the code's campaign.
pub async fn join(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(body): ApiJson<JoinWithCode>,
) -> ApiResult<(StatusCode, Json<CharacterInfo>)> {
    let info =
        blocking(move || state.join_with_invite(&caller, &body.code, None, &body.character_id))
            .await?;
    Ok((StatusCode::CREATED, Json(info)))
}
