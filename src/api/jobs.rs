//! `/api/jobs/{id}`: status with queue position and step i/N, Server-Sent Events of the job's
//! progress, and DELETE to cancel that one job. A job is visible to whoever submitted it (and
//! admins); to anyone else it does not exist.

use std::convert::Infallible;

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};

use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::auth::Principal;
use crate::jobs::JobStatus;

fn visible(state: &AppState, caller: &Principal, id: &str) -> ApiResult<JobStatus> {
    let status = state
        .jobs
        .status(id)
        .ok_or_else(|| ApiError::not_found("job"))?;
    if caller.is_admin() || status.owner.as_deref() == Some(caller.user.as_str()) {
        Ok(status)
    } else {
        Err(ApiError::not_found("job"))
    }
}

pub async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobStatus>> {
    Ok(Json(visible(&state, &caller, &id)?))
}

pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<JobStatus>> {
    visible(&state, &caller, &id)?;
    if !state.jobs.cancel(&id) {
        return Err(ApiError::conflict("the job has already finished"));
    }
    Ok(Json(visible(&state, &caller, &id)?))
}

/// `queued` (with position), `started`, `progress` (step, total, elapsed_ms), then one of
/// `done` (with the portrait), `failed` or `cancelled`; the stream ends after that.
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    visible(&state, &caller, &id)?;
    let stream = state
        .jobs
        .subscribe(&id)
        .ok_or_else(|| ApiError::not_found("job"))?;
    let events = stream.map(|ev| {
        let event = Event::default().event(ev.name());
        Ok(event
            .json_data(&ev)
            .unwrap_or_else(|_| Event::default().event("error").data("unserializable event")))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// 202 body of an asynchronous submission.
pub(crate) fn accepted(id: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "job_id": id,
            "status": "queued",
            "status_url": format!("/api/jobs/{id}"),
            "events_url": format!("/api/jobs/{id}/events"),
        })),
    )
}
