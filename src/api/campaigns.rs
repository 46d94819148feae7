//! `/api/campaigns`: campaigns, joining (by the DM, or with an invite code: see `invites.rs`) and
//! leaving, campaign state (the DM manages it), and the DM roster as EnrichedCharacters.

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::blocking;
use super::caller::{viewer_of, Caller};
use super::characters::with_urls;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::paging::{paging, respond};
use super::AppState;
use crate::characters::{
    Campaign, CampaignFilter, CampaignStatePatch, CharacterInfo, EnrichedCharacter, NewCampaign,
};

pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(mut new): ApiJson<NewCampaign>,
) -> ApiResult<(StatusCode, Json<Campaign>)> {
    // The creator runs the campaign unless an admin names another DM.
    if !caller.is_admin() || new.dm_id.is_none() {
        new.dm_id = Some(caller.user.clone());
    }
    let c = blocking(move || Ok(state.store.create_campaign(&new)?)).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    dm_id: Option<String>,
    character_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
    cursor: Option<String>,
}

/// A page of the campaigns the caller runs or plays in (all of them for an admin).
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    uri: Uri,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let paging = paging(q.limit, q.offset, q.cursor.as_deref())?;
    let page = blocking(move || {
        Ok(state.store.campaign_page(&CampaignFilter {
            dm_id: q.dm_id,
            character_id: q.character_id,
            limit: paging.limit,
            offset: paging.offset,
            after: paging.after,
            visible_to: viewer_of(&caller),
        })?)
    })
    .await?;
    Ok(respond(&uri, page))
}

pub async fn get_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Campaign>> {
    Ok(Json(
        blocking(move || state.visible_campaign(&caller, &id)).await?,
    ))
}

pub async fn delete_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        state.managed_campaign(&caller, &id)?;
        Ok(state.store.delete_campaign(&id)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The DM roster: every character of the campaign, merged with its campaign state.
pub async fn roster(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<EnrichedCharacter>>> {
    let s = state.clone();
    let list = blocking(move || {
        s.visible_campaign(&caller, &id)?;
        Ok(s.store.campaign_roster(&id)?)
    })
    .await?;
    Ok(Json(
        list.into_iter().map(|e| with_urls(&state, e)).collect(),
    ))
}

#[derive(Deserialize)]
pub struct JoinBody {
    character_id: String,
    /// An invite code of this campaign: lets a player join with their own character.
    #[serde(default)]
    code: Option<String>,
    #[serde(flatten)]
    initial: CampaignStatePatch,
}

/// A character joins: added by the campaign's DM (or an admin), who may set its initial state,
/// or by its owner with an invite code of this campaign. Anyone else: 403 when they can see the
/// campaign, 404 when they cannot.
pub async fn join(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<JoinBody>,
) -> ApiResult<(StatusCode, Json<CharacterInfo>)> {
    let info = blocking(move || {
        if let Some(code) = body.code.as_deref() {
            if body.initial != CampaignStatePatch::default() {
                return Err(ApiError::forbidden(
                    "campaign state is the DM's to set; join with an invite code sends only \
                     character_id and code",
                ));
            }
            return state.join_with_invite(&caller, code, Some(&id), &body.character_id);
        }
        state.managed_campaign(&caller, &id)?;
        // The DM adds only characters the DM can already see: a stranger's character needs
        // its owner's consent, i.e. an invite.
        state.visible_character(&caller, &body.character_id)?;
        Ok(state
            .store
            .join_campaign(&id, &body.character_id, &body.initial)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub async fn leave(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, character_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        let camp = state.visible_campaign(&caller, &id)?;
        let is_dm = caller.is_admin() || camp.dm_id.as_deref() == Some(caller.user.as_str());
        let character = state.visible_character(&caller, &character_id)?;
        if !is_dm && character.owner_id.as_deref() != Some(caller.user.as_str()) {
            return Err(ApiError::forbidden(
                "only the campaign's DM or the character's owner may remove it",
            ));
        }
        Ok(state.store.leave_campaign(&id, &character_id)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NoQuery {}

pub async fn get_state(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, character_id)): Path<(String, String)>,
    ApiQuery(_): ApiQuery<NoQuery>,
) -> ApiResult<Json<EnrichedCharacter>> {
    let s = state.clone();
    let e = blocking(move || {
        s.visible_campaign(&caller, &id)?;
        s.visible_character(&caller, &character_id)?;
        Ok(s.store.enriched_character(&character_id, Some(&id))?)
    })
    .await?;
    Ok(Json(with_urls(&state, e)))
}

/// Campaign state is the DM's to manage.
pub async fn update_state(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, character_id)): Path<(String, String)>,
    ApiJson(patch): ApiJson<CampaignStatePatch>,
) -> ApiResult<Json<EnrichedCharacter>> {
    let s = state.clone();
    let e = blocking(move || {
        s.managed_campaign(&caller, &id)?;
        s.store.update_campaign_state(&id, &character_id, &patch)?;
        Ok(s.store.enriched_character(&character_id, Some(&id))?)
    })
    .await?;
    Ok(Json(with_urls(&state, e)))
}
