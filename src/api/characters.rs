//! `/api/characters`: create, list, get (optionally with one campaign's state), PATCH of visual
//! metadata, delete. Every reply is an EnrichedCharacter (seed 000's contract).

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::{blocking, AppState};
use crate::characters::{CharacterFilter, CharacterPatch, EnrichedCharacter, NewCharacter};

/// Fills the media URL of a merged view (signed, so `<img src>` works).
pub(crate) fn with_urls(state: &AppState, mut e: EnrichedCharacter) -> EnrichedCharacter {
    e.portrait_url = e.portrait_path.as_deref().map(|k| state.media_url(k));
    e
}

/// The merged view of one character, blocking store work off the async threads.
pub(crate) async fn enriched(
    state: &AppState,
    id: String,
    campaign_id: Option<String>,
) -> ApiResult<EnrichedCharacter> {
    let s = state.clone();
    let e = tokio::task::spawn_blocking(move || {
        s.store.enriched_character(&id, campaign_id.as_deref())
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(with_urls(state, e))
}

pub async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiJson(mut new): ApiJson<NewCharacter>,
) -> ApiResult<(StatusCode, Json<EnrichedCharacter>)> {
    // Admins may create on behalf of a user; everyone else owns what they create.
    if !caller.is_admin() || new.owner_id.is_none() {
        new.owner_id = Some(caller.user.clone());
    }
    let s = state.clone();
    let c2 = caller.clone();
    let (profile, campaign) = blocking(move || {
        if let Some(cid) = &new.campaign_id {
            // Joining a campaign needs to be able to see it (its DM or a player in it, or admin).
            s.visible_campaign(&c2, cid)?;
        }
        let campaign = new.campaign_id.clone();
        Ok((s.store.create_character(&new)?, campaign))
    })
    .await?;
    let e = enriched(&state, profile.id, campaign).await?;
    Ok((StatusCode::CREATED, Json(e)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ListQuery {
    owner_id: Option<String>,
    campaign_id: Option<String>,
    name: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<EnrichedCharacter>>> {
    if let Some(limit) = q.limit {
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("must be between 1 and 1000, got {limit}"),
            ));
        }
    }
    let s = state.clone();
    let views = blocking(move || {
        if let Some(cid) = &q.campaign_id {
            s.visible_campaign(&caller, cid)?;
        }
        let profiles = s.store.list_characters(&CharacterFilter {
            owner_id: q.owner_id.clone(),
            campaign_id: q.campaign_id.clone(),
            name: q.name.clone(),
            limit: q.limit,
            offset: q.offset,
        })?;
        let mut out = Vec::with_capacity(profiles.len());
        for p in profiles {
            if q.campaign_id.is_some() || s.can_see(&caller, &p)? {
                out.push(
                    s.store
                        .enriched_character(&p.id, q.campaign_id.as_deref())?,
                );
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(
        views.into_iter().map(|e| with_urls(&state, e)).collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct CampaignQuery {
    pub campaign_id: Option<String>,
}

pub async fn get_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CampaignQuery>,
) -> ApiResult<Json<EnrichedCharacter>> {
    let s = state.clone();
    let i = id.clone();
    blocking(move || s.visible_character(&caller, &i).map(|_| ())).await?;
    Ok(Json(enriched(&state, id, q.campaign_id).await?))
}

pub async fn patch(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<CharacterPatch>,
) -> ApiResult<Json<EnrichedCharacter>> {
    let s = state.clone();
    let i = id.clone();
    blocking(move || {
        s.editable_character(&caller, &i)?;
        Ok(s.store.update_character(&i, &patch)?)
    })
    .await?;
    Ok(Json(enriched(&state, id, None).await?))
}

pub async fn delete_one(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let s = state.clone();
    blocking(move || {
        s.editable_character(&caller, &id)?;
        let files = s.store.delete_character(&id)?;
        // Rows are gone (committed); now the files. A file that cannot be removed is logged,
        // never resurrected into the database.
        if let Err(e) = s.portraits.delete_character_files(&files) {
            tracing::warn!(error = %e, "could not delete some portrait files");
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
