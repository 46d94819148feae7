//! Portrait endpoints: generate (the portrait-creator spec), regenerate-image (the regeneration guide), the current portrait,
//! history and "make current". Generation is a job in the queue: synchronous by default (waits
//! up to the request timeout, then the job is cancelled and the reply is 504), or `?async=true`
//! for 202 + a job id to follow over Server-Sent Events. A synchronous request whose estimate
//! (from this machine's measured speed) is over twice the timeout is refused at once with 422
//! `too_slow_for_sync` naming `?async=true`, instead of running into the 504. `POST
//! /api/portraits/estimate` says what a portrait with given options will cost.

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::blocking;
use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiQuery};
use super::jobs::accepted;
use super::portrait_jobs::{generate_reply, PortraitJob, ReplyKind};
use super::AppState;
use crate::characters::PortraitRecord;
use crate::jobs::{JobSpec, WaitError};
use crate::portraits::{GenerateOptions, PortraitError, PreparedPortrait};

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AsyncQuery {
    #[serde(rename = "async")]
    pub is_async: bool,
}

/// The portrait-creator spec's request, plus our per-request overrides.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct GenerateBody {
    /// Accepted for the portrait-creator spec's clients; the path names the character.
    pub character_id: Option<String>,
    /// false (default): return the existing portrait when there is one.
    pub regenerate: bool,
    pub custom_prompt_additions: Option<String>,
    #[serde(flatten)]
    pub options: GenerateOptions,
}

/// The regeneration guide's request.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegenerateBody {
    pub new_prompt: String,
    pub denoising_strength: Option<f64>,
    #[serde(flatten, default)]
    pub options: GenerateOptions,
}

/// A synchronous request estimated at more than this many times the timeout is refused before
/// it starts: clearly too slow, not a borderline case that a noisy estimate could misjudge.
const SYNC_REFUSAL_MARGIN: f64 = 2.0;

/// The estimate's "about N s" wording, shared by the errors and the web UI's reading of it.
fn about(seconds: f64) -> String {
    format!("about {} s", seconds.round().max(1.0))
}

/// Refuses a synchronous job that would clearly outlast the timeout.
fn check_sync_budget(state: &AppState, prepared: &PreparedPortrait) -> ApiResult<()> {
    let Some(seconds) = state.portraits.estimate(prepared).seconds else {
        return Ok(());
    };
    let limit = state.request_timeout.as_secs_f64();
    if seconds <= limit * SYNC_REFUSAL_MARGIN {
        return Ok(());
    }
    Err(ApiError {
        field: Some("async".into()),
        ..ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_slow_for_sync",
            format!(
                "this portrait would take {} on this machine (measured), more than the {} s a \
                 synchronous request may wait: retry with ?async=true and follow the job, or \
                 ask for fewer steps or a smaller size",
                about(seconds),
                limit.round()
            ),
        )
    })
}

/// Queues a prepared portrait. The job returns the service's typed outcome; the reply is built
/// here (sync) or from the job's record (`/api/jobs/{id}`, async).
async fn run_job(
    state: &AppState,
    owner: &str,
    label: String,
    prepared: PreparedPortrait,
    is_async: bool,
    reply: ReplyKind,
) -> ApiResult<Response> {
    if !is_async {
        check_sync_budget(state, &prepared)?;
    }
    let estimate = state.portraits.estimate(&prepared).seconds;
    let spec = JobSpec::new(reply.job_kind(), label)
        .owner(owner)
        .request(json!({
            "character_id": prepared.character_id(),
            "parameters": prepared.parameters(),
        }));
    let s = state.clone();
    let prepared = prepared.with_preview_every(state.preview_every());
    let handle = state.jobs.submit(spec, move |ctx| {
        let progress = super::live::reporter(ctx.clone());
        let outcome = s
            .portraits
            .run(prepared, progress, &ctx.cancel_token())
            .inspect_err(|e| {
                // An async job has no reply for the disk layer to see; tell it here.
                if let PortraitError::StorageFull(m) = e {
                    s.disk().note_full(m);
                }
            })?;
        Ok::<_, PortraitError>(PortraitJob { outcome, reply })
    })?;
    let id = handle.id().clone();
    if is_async {
        return Ok(accepted(id.as_str()).into_response());
    }
    // A client that goes away drops this future, and the guard cancels its job.
    let guard = state.jobs.guard(&id);
    let result = handle.wait(state.request_timeout).await;
    guard.disarm();
    match result {
        Ok(job) => {
            let mut v = job.reply(state);
            // The job id lets a synchronous caller look the job up afterwards (timings, order).
            v["job_id"] = json!(id);
            Ok(Json(v).into_response())
        }
        Err(e @ WaitError::Timeout { .. }) => {
            let mut err = ApiError::from(e);
            if let Some(s) = estimate {
                err.message
                    .push_str(&format!("; this portrait is estimated at {}", about(s)));
            }
            Err(err)
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /api/portraits/estimate`: what a portrait with these options (the generate body's)
/// would cost here: the resolved model and settings, the estimated seconds (`null` until a job
/// of that model has been measured), and whether a synchronous request would be accepted.
pub async fn estimate(
    State(state): State<AppState>,
    Caller(_): Caller,
    ApiJson(body): ApiJson<GenerateBody>,
) -> ApiResult<Json<Value>> {
    let s = state.clone();
    let prepared = blocking(move || Ok(s.portraits.prepare_estimate(body.options)?)).await?;
    let e = state.portraits.estimate(&prepared);
    let limit = state.request_timeout.as_secs_f64();
    let mut v = prepared.parameters().clone();
    if let Value::Object(map) = &mut v {
        map.remove("seed");
        map.remove("method");
        for (k, val) in [
            ("device", json!(state.portraits.speed().device())),
            ("seconds", json!(e.seconds)),
            ("text", json!(e.seconds.map(about))),
            (
                "seconds_per_megapixel_step",
                json!(e.seconds_per_megapixel_step),
            ),
            ("megapixel_steps", json!(e.megapixel_steps)),
            ("measured_jobs", json!(e.measured_jobs)),
            ("sync_timeout_s", json!(limit)),
            (
                "sync_allowed",
                json!(e.seconds.is_none_or(|s| s <= limit * SYNC_REFUSAL_MARGIN)),
            ),
        ] {
            map.insert(k.into(), val);
        }
    }
    Ok(Json(v))
}

/// What a generate request turned out to need once its character was read.
enum Opening {
    /// The character has a portrait and no regeneration was asked for.
    Existing(Box<PortraitRecord>),
    Prepared(Box<PreparedPortrait>),
}

pub async fn generate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    ApiJson(body): ApiJson<GenerateBody>,
) -> ApiResult<Response> {
    if let Some(body_id) = &body.character_id {
        if body_id != &id {
            return Err(ApiError::validation(
                "character_id",
                format!("does not match the character in the path ({id})"),
            ));
        }
    }
    let mut options = body.options;
    options.custom_prompt_additions = body
        .custom_prompt_additions
        .or(options.custom_prompt_additions);
    // One trip to the blocking pool: access check, the existing portrait, and the whole
    // preparation, all from the one profile read.
    let s = state.clone();
    let c = caller.clone();
    let i = id.clone();
    let regenerate = body.regenerate;
    let opening = blocking(move || {
        let profile = s.editable_character(&c, &i)?;
        if let (Some(pid), false) = (&profile.current_portrait_id, regenerate) {
            return Ok(Opening::Existing(Box::new(s.store.get_portrait(pid)?)));
        }
        Ok(Opening::Prepared(Box::new(
            s.portraits.prepare_generate(&profile, options)?,
        )))
    })
    .await?;
    let prepared = match opening {
        Opening::Existing(record) => {
            return Ok(Json(generate_reply(&state, &record, None)).into_response())
        }
        Opening::Prepared(p) => *p,
    };
    run_job(
        &state,
        &caller.user,
        format!("portrait {id}"),
        prepared,
        q.is_async,
        ReplyKind::Generate,
    )
    .await
}

pub async fn regenerate(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AsyncQuery>,
    ApiJson(body): ApiJson<RegenerateBody>,
) -> ApiResult<Response> {
    let s = state.clone();
    let c = caller.clone();
    let i = id.clone();
    let new_prompt = body.new_prompt.clone();
    let strength = body.denoising_strength;
    let (name, prepared) = blocking(move || {
        let profile = s.editable_character(&c, &i)?;
        let prepared =
            s.portraits
                .prepare_regenerate(&profile, &new_prompt, strength, body.options)?;
        Ok((profile.name, prepared))
    })
    .await?;
    let strength = prepared
        .denoising_strength()
        .unwrap_or(crate::portraits::DEFAULT_REGENERATE_STRENGTH);
    run_job(
        &state,
        &caller.user,
        format!("variation {id}"),
        prepared,
        q.is_async,
        ReplyKind::Regenerate {
            name,
            new_prompt: body.new_prompt,
            denoising_strength: strength,
        },
    )
    .await
}

/// The portrait-creator spec: `{character_id, portrait_url, portrait_path, has_portrait}`.
pub async fn current(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let s = state.clone();
    let record = blocking(move || {
        let profile = s.visible_character(&caller, &id)?;
        match &profile.current_portrait_id {
            Some(pid) => Ok((id, Some(s.store.get_portrait(pid)?))),
            None => Ok((id, None)),
        }
    })
    .await?;
    Ok(Json(match record {
        (_, Some(r)) => json!({
            "character_id": r.character_id,
            "portrait_id": r.id,
            "portrait_url": state.media_url(&r.file_path),
            "portrait_path": r.file_path,
            "thumbnail_url": r.thumbnail_path.as_deref().map(|t| state.media_url(t)),
            "has_portrait": true,
        }),
        (id, None) => json!({
            "character_id": id,
            "portrait_url": null,
            "portrait_path": null,
            "has_portrait": false,
        }),
    }))
}

fn history_entry(state: &AppState, r: &PortraitRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["portrait_url"] = json!(state.media_url(&r.file_path));
    v["thumbnail_url"] = json!(r.thumbnail_path.as_deref().map(|t| state.media_url(t)));
    v
}

/// Every portrait the character ever had, newest first.
pub async fn history(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Value>>> {
    let s = state.clone();
    let list = blocking(move || {
        s.visible_character(&caller, &id)?;
        Ok(s.store.portrait_history(&id)?)
    })
    .await?;
    Ok(Json(
        list.iter().map(|r| history_entry(&state, r)).collect(),
    ))
}

/// Makes an earlier portrait current again.
pub async fn make_current(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, portrait_id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let s = state.clone();
    let record = blocking(move || {
        s.editable_character(&caller, &id)?;
        s.store.set_current_portrait(&id, &portrait_id)?;
        Ok(s.store.get_portrait(&portrait_id)?)
    })
    .await?;
    Ok(Json(generate_reply(&state, &record, None)))
}
