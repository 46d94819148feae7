//! `/api/jobs/{id}`: status with queue position and step i/N, Server-Sent Events of the job's
//! progress, and DELETE to cancel that one job. A job is visible to whoever submitted it (and
//! admins); to anyone else it does not exist.

use std::convert::Infallible;

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use super::blocking;
use super::caller::Caller;
use super::error::{status_of, ApiError, ApiResult};
use super::portrait_jobs::render_result;
use super::AppState;
use crate::auth::Principal;
use crate::jobs::{JobEvent, JobState, JobStatus};

/// The job if `caller` may see it: from memory when it is live or recent (no blocking hop),
/// else from its record on the blocking pool.
async fn visible(state: &AppState, caller: &Principal, id: &str) -> ApiResult<JobStatus> {
    let status = match state.jobs.live_status(id) {
        Some(s) => Some(s),
        None => {
            let (s, i) = (state.clone(), id.to_string());
            blocking(move || Ok(s.jobs.status(&i))).await?
        }
    };
    match status {
        Some(s) if caller.is_admin() || s.owner.as_deref() == Some(caller.user.as_str()) => Ok(s),
        _ => Err(ApiError::not_found("job")),
    }
}

/// A status as clients see it: a finished job's `result` as its endpoint answers it (for a
/// portrait, the generate or regenerate reply, with fresh media URLs) and its `error` with the
/// HTTP `status` a synchronous request would have got; a running job's latest `preview` (the
/// `preview` event's fields), so a client that polls sees the picture form too.
fn shown(state: &AppState, mut status: JobStatus) -> ApiResult<Value> {
    // The result is rendered on its own, so it is not copied into the snapshot's JSON first.
    let result = status.result.take();
    let mut v = serde_json::to_value(&status).map_err(|e| ApiError::internal(e.to_string()))?;
    if status.state == JobState::Running {
        if let Some(p) = state.jobs.preview(status.id.as_str()) {
            v["preview"] = serde_json::to_value(&*p).unwrap_or(Value::Null);
        }
    }
    if let Some(result) = result {
        v["result"] = render_result(state, &status.kind, status.id.as_str(), &result);
    }
    if let Some(e) = &status.error {
        v["error"]["status"] = json!(status_of(e.kind).0.as_u16());
    }
    Ok(v)
}

/// The status of one job. A finished job's reply is kept serialized for a few seconds, so a
/// client polling it costs no more than a lookup (see `shown_cache`).
pub async fn status(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if let Some(body) = state.shown_jobs().get(&id, &caller) {
        return Ok(json_body(body));
    }
    let status = visible(&state, &caller, &id).await?;
    let (finished, owner) = (status.state.is_finished(), status.owner.clone());
    let v = shown(&state, status)?;
    let body = Bytes::from(serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))?);
    if finished {
        state.shown_jobs().put(&id, owner, body.clone());
    }
    Ok(json_body(body))
}

fn json_body(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    visible(&state, &caller, &id).await?;
    if !state.jobs.cancel(&id) {
        return Err(ApiError::conflict("the job has already finished"));
    }
    let status = visible(&state, &caller, &id).await?;
    Ok(Json(shown(&state, status)?))
}

/// An event as clients see it: `done` carries the endpoint's reply, a failure its HTTP status.
fn event_json(state: &AppState, kind: &str, id: &str, ev: &JobEvent) -> Value {
    let mut v = serde_json::to_value(ev).unwrap_or(Value::Null);
    match ev {
        JobEvent::Done { result } => v["result"] = render_result(state, kind, id, result),
        JobEvent::Failed { error } | JobEvent::Cancelled { error } => {
            v["error"]["status"] = json!(status_of(error.kind).0.as_u16());
        }
        _ => {}
    }
    v
}

/// `queued` (with position), `started`, `progress` (step, total, elapsed_ms) and `preview`
/// (step, total, width, height, image: a `data:` URL), then one of `done` (with the portrait),
/// `failed` or `cancelled`; the stream ends after that. Previews are not history: a subscriber
/// gets the latest one when it joins, then each newer one it has time to read (a slow reader
/// skips to the newest; the engine never waits for it). A job that finished before (also
/// before a restart) answers its terminal event at once.
pub async fn events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let kind = visible(&state, &caller, &id).await?.kind;
    let (s, i) = (state.clone(), id.clone());
    let stream = blocking(move || Ok(s.jobs.subscribe(&i)))
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let events = stream.map(move |ev| {
        let data = event_json(&state, &kind, &id, &ev);
        let event = Event::default().event(ev.name());
        Ok(event
            .json_data(&data)
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
