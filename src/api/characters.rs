//! `/api/characters`: create, list, get (optionally with one campaign's state), PATCH of visual
//! metadata, delete. Every reply is an EnrichedCharacter (the portrait-creator spec's contract).

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::paging::{respond, Listing};
use super::{blocking, AppState};
use crate::characters::{CharacterFilter, CharacterPatch, EnrichedCharacter, NewCharacter, Page};

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
            // Creating straight into a campaign is the DM's (or an admin's) call; players join
            // with an invite code afterwards (POST /api/campaigns/join).
            s.managed_campaign(&c2, cid)?;
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
}

/// A page of the characters the caller may see; the next page's cursor is in `X-Next-Cursor`.
pub async fn list(
    State(state): State<AppState>,
    Listing {
        caller,
        query: q,
        window,
        uri,
    }: Listing<ListQuery>,
) -> ApiResult<Response> {
    let s = state.clone();
    let page = blocking(move || {
        if let Some(cid) = &q.campaign_id {
            // A campaign the caller cannot see is a 404, not an empty list.
            s.visible_campaign(&caller, cid)?;
        }
        let filter = CharacterFilter {
            owner_id: q.owner_id,
            campaign_id: q.campaign_id,
            name: q.name,
            ..Default::default()
        };
        Ok(s.store.character_page(&filter.in_window(window))?)
    })
    .await?;
    let page = Page {
        items: page
            .items
            .into_iter()
            .map(|e| with_urls(&state, e))
            .collect(),
        next: page.next,
    };
    Ok(respond(&uri, page))
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
    // The merged view is an indexed read or two on a pooled reader that never waits for the
    // writer: short enough to run right here, without a trip to the blocking pool. Admins and
    // owners need nothing more; anyone else (and any error, answered by the authoritative path
    // so it reveals nothing) goes through the visibility check on the blocking pool.
    if let Ok(e) = state
        .store
        .enriched_character(&id, q.campaign_id.as_deref())
    {
        if caller.is_admin() || e.profile.owner_id.as_deref() == Some(caller.user.as_str()) {
            return Ok(Json(with_urls(&state, e)));
        }
    }
    let s = state.clone();
    let e = blocking(move || {
        s.visible_character(&caller, &id)?;
        Ok(s.store.enriched_character(&id, q.campaign_id.as_deref())?)
    })
    .await?;
    Ok(Json(with_urls(&state, e)))
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
