//! AUTOMATIC1111's other `/sdapi/v1/*` endpoints: progress of the running compat job,
//! interrupt and skip, the sampler / scheduler / model / upscaler lists, options (the
//! `sd_model_checkpoint` default), png-info, and the empty lists A1111 clients probe for
//! (scripts, hypernetworks, ...) so they start up without errors.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::a1111::pick_model;
use super::errors::A1111Error;
use super::run::visible_jobs;
use super::{from_body, image_bytes, model_title, resolve_vae, CompatState};
use crate::api::blocking;
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiQuery};
use crate::api::AppState;
use crate::engine::infotext::InfoText;
use crate::engine::output::read_parameters;
use crate::engine::samplers::{known_samplers, known_schedulers};
use crate::engine::{encode_image, ImageFormat};
use crate::jobs::{JobState, JobStatus};
use base64::Engine as _;

type A1111Result = Result<Json<Value>, A1111Error>;

/// A1111's progress numbers for a job `step` steps into `total` over `n_iter` batches:
/// (batch index, step within the batch, steps per batch).
fn batch_position(step: usize, total: usize, n_iter: usize) -> (usize, usize, usize) {
    let n_iter = n_iter.max(1);
    let per = total / n_iter;
    if per == 0 {
        return (0, 0, 0);
    }
    let job_no = (step.saturating_sub(1) / per).min(n_iter - 1);
    (job_no, step - job_no * per, per)
}

fn idle() -> Value {
    json!({
        "progress": 0.0,
        "eta_relative": 0.0,
        "state": {
            "skipped": false, "interrupted": false, "stopping_generation": false,
            "job": "", "job_count": 0, "job_timestamp": "0", "job_no": 0,
            "sampling_step": 0, "sampling_steps": 0,
        },
        "current_image": null,
        "textinfo": null,
        "current_task": null,
    })
}

/// A1111's `ProgressRequest` query.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ProgressQuery {
    skip_current_image: bool,
}

/// The live preview as A1111 sends `current_image`: bare base64 of a PNG. It is the engine's
/// latent preview (one pixel per latent cell, 1/8 of the output's size), not a VAE decode.
fn current_image(job: &super::run::ActiveJob) -> Option<String> {
    let img = job.preview()?;
    let png = encode_image(&img, ImageFormat::Png, None, 90).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(png))
}

/// `GET /sdapi/v1/progress`: the caller's running compat job (admins: anyone's), else the first
/// waiting one, else idle. `current_image` is the running batch's latest latent preview
/// (refreshed every few steps) unless `?skip_current_image=true`.
pub(crate) async fn progress(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
    query: Result<ApiQuery<ProgressQuery>, ApiError>,
) -> A1111Result {
    let Caller(caller) = caller?;
    let ApiQuery(query) = query?;
    let jobs = visible_jobs(&state, &compat, &caller);
    let pick = jobs
        .iter()
        .find(|(_, s)| s.state == JobState::Running)
        .or_else(|| jobs.iter().find(|(_, s)| s.state == JobState::Queued));
    let Some((job, status)) = pick else {
        return Ok(Json(idle()));
    };
    let JobStatus {
        step,
        total,
        elapsed_ms,
        position,
        ..
    } = status;
    let (job_no, sampling_step, sampling_steps) = batch_position(*step, *total, job.n_iter);
    let progress = if *total > 0 {
        (*step as f64 / *total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let elapsed = *elapsed_ms as f64 / 1000.0;
    let eta = if progress > 0.0 {
        elapsed / progress - elapsed
    } else {
        0.0
    };
    let textinfo = match status.state {
        JobState::Queued => format!(
            "Waiting in the queue (position {})",
            position.unwrap_or_default()
        ),
        _ => format!(
            "Batch {} of {}, step {sampling_step}/{sampling_steps}",
            job_no + 1,
            job.n_iter
        ),
    };
    Ok(Json(json!({
        "progress": progress,
        "eta_relative": eta,
        "state": {
            "skipped": false,
            "interrupted": job.is_interrupted(),
            "stopping_generation": false,
            "job": job.kind,
            "job_count": job.n_iter,
            "job_timestamp": job.timestamp,
            "job_no": job_no,
            "sampling_step": sampling_step,
            "sampling_steps": sampling_steps,
        },
        "current_image": if query.skip_current_image { None } else { current_image(job) },
        "textinfo": textinfo,
        "current_task": job.id().map(|i| i.to_string()),
    })))
}

/// Applies `f` to the caller's running compat jobs (admins: all running compat jobs).
fn for_running(
    state: &AppState,
    compat: &CompatState,
    caller: &crate::auth::Principal,
    f: impl Fn(&super::run::ActiveJob),
) {
    for (job, status) in visible_jobs(state, compat, caller) {
        if status.state == JobState::Running {
            f(&job);
        }
    }
}

/// `POST /sdapi/v1/interrupt`: the running job stops after its current step and answers with
/// the images finished so far, as A1111 does.
pub(crate) async fn interrupt(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    let Caller(caller) = caller?;
    for_running(&state, &compat, &caller, |j| j.interrupt());
    Ok(Json(json!({})))
}

/// `POST /sdapi/v1/skip`: the running job drops its current batch and goes on with the next.
pub(crate) async fn skip(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    let Caller(caller) = caller?;
    for_running(&state, &compat, &caller, |j| j.skip());
    Ok(Json(json!({})))
}

/// `GET /sdapi/v1/samplers`: A1111's `SamplerItem`s (`options` values are strings there).
pub(crate) async fn samplers(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    let list: Vec<Value> = known_samplers()
        .into_iter()
        .map(|s| {
            let options: Map<String, Value> = s
                .options
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            json!({"name": s.name, "aliases": s.aliases, "options": options})
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /sdapi/v1/schedulers`: A1111's `SchedulerItem`s; `default_rho` is -1 where a schedule
/// has no rho.
pub(crate) async fn schedulers(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    let list: Vec<Value> = known_schedulers()
        .into_iter()
        .map(|s| {
            json!({"name": s.name, "label": s.label, "aliases": s.aliases,
                   "default_rho": s.default_rho, "need_inner_model": s.need_inner_model})
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// Our models under A1111's keys. `hash` (A1111's 10-digit `shorthash`) and `sha256` are those
/// of the model's weight file, hashed once in the background and cached in the data directory:
/// until that is done they are null and `title` is the bare name, afterwards `name [hash]`.
pub(crate) async fn sd_models(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    caller?;
    let backend = &*state.backend;
    let list: Vec<Value> = backend
        .model_names()
        .into_iter()
        .map(|name| {
            let hash = backend.model_hash(&name);
            json!({
                "title": model_title(backend, &name),
                "model_name": name,
                "hash": hash.as_ref().map(|h| h.short()),
                "sha256": hash.as_ref().map(|h| h.sha256.as_str()),
                "filename": name,
                "config": null,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `sd_model_checkpoint` is the caller's default model's title, as `sd-models` lists it, and
/// `sd_checkpoint_hash` its full sha256 (null until hashed).
pub(crate) async fn get_options(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    let Caller(caller) = caller?;
    let backend = &*state.backend;
    let model = compat.default_model(backend, &caller.user);
    Ok(Json(json!({
        "sd_model_checkpoint": model_title(backend, &model),
        "sd_checkpoint_hash": backend.model_hash(&model).map(|h| h.sha256),
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
        "eta_noise_seed_delta": 0,
        "return_grid": false,
        "enable_pnginfo": true,
        "img2img_fix_steps": false,
        "sd_vae": compat.vae(backend, &caller.user),
    })))
}

/// `GET /sdapi/v1/sd-vae`: the VAE files of the models folder's `vae/` (A1111's `models/VAE`),
/// the names `sd_vae` accepts besides "Automatic" and "None".
pub(crate) async fn sd_vae(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    caller?;
    let list: Vec<Value> = state
        .backend
        .vae_names()
        .into_iter()
        .map(|name| json!({"model_name": name, "filename": name}))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `POST /sdapi/v1/options`: `sd_model_checkpoint` (a title or name `sd-models` lists, a file
/// name, or a model hash) becomes the caller's default model and `sd_vae` ("Automatic", "None"
/// or a name `sd-vae` lists) their VAE; both are checked before either is set. Other options
/// are accepted and ignored.
pub(crate) async fn set_options(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Map<String, Value>>, ApiError>,
) -> A1111Result {
    let Caller(caller) = caller?;
    let ApiJson(options) = body?;
    let mut checkpoint = None;
    if let Some(value) = options.get("sd_model_checkpoint") {
        let wanted = value
            .as_str()
            .ok_or_else(|| ApiError::validation("sd_model_checkpoint", "must be a string"))?;
        let model = pick_model(
            &state,
            &compat,
            &caller.user,
            Some(wanted),
            "sd_model_checkpoint",
        )?;
        checkpoint = Some(model);
    }
    let vae = match options.get("sd_vae") {
        None => None,
        Some(Value::String(v)) => Some(resolve_vae(&*state.backend, v, "sd_vae")?),
        Some(_) => {
            return Err(ApiError::validation(
                "sd_vae",
                "must be a string: Automatic, None or a VAE file name",
            )
            .into())
        }
    };
    if let Some(model) = checkpoint {
        compat.set_checkpoint(&caller.user, model);
    }
    if let Some(vae) = vae {
        compat.set_vae(&caller.user, vae);
    }
    Ok(Json(Value::Null))
}

#[derive(Deserialize)]
pub(crate) struct PngInfoBody {
    image: String,
}

/// A1111's `parse_generation_parameters` result: every key as written, `Size` split into
/// `Size-1` / `Size-2`, and the prompts under `Prompt` / `Negative prompt`.
fn parsed_parameters(text: &str) -> Value {
    let info = InfoText::parse(text);
    let mut out = Map::new();
    out.insert("Prompt".into(), json!(info.prompt));
    out.insert("Negative prompt".into(), json!(info.negative_prompt));
    for (k, v) in info.pairs() {
        if k == "Size" {
            out.insert("Size-1".into(), json!(info.width.to_string()));
            out.insert("Size-2".into(), json!(info.height.to_string()));
        } else {
            out.insert(k, json!(v));
        }
    }
    Value::Object(out)
}

/// `POST /sdapi/v1/png-info`: the generation parameters of an image (ours or A1111's).
pub(crate) async fn png_info(
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> A1111Result {
    caller?;
    let ApiJson(body) = body?;
    let body: PngInfoBody = from_body(body)?;
    let text = blocking(move || Ok(read_parameters(&image_bytes("image", &body.image)?))).await?;
    Ok(Json(match text {
        Some(t) => json!({
            "info": t,
            "items": {"parameters": t},
            "parameters": parsed_parameters(&t),
        }),
        None => json!({"info": "", "items": {}, "parameters": {}}),
    }))
}

/// Pixel-space upscalers: none (hires fix runs in latent space only, see latent-upscale-modes).
pub(crate) async fn upscalers(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(json!([
        {"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 4}
    ])))
}

pub(crate) async fn latent_upscale_modes(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(json!([{"name": "Latent"}])))
}

pub(crate) async fn scripts(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(json!({"txt2img": [], "img2img": []})))
}

pub(crate) async fn cmd_flags(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    caller?;
    Ok(Json(
        json!({"api": true, "nowebui": true, "api_auth": state.tokens.is_some()}),
    ))
}

pub(crate) async fn refresh_checkpoints(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(Value::Null))
}

pub(crate) async fn empty_list(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(json!([])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_splits_steps_into_batches() {
        // 3 batches of 10 steps.
        assert_eq!(batch_position(0, 30, 3), (0, 0, 10));
        assert_eq!(batch_position(10, 30, 3), (0, 10, 10));
        assert_eq!(batch_position(11, 30, 3), (1, 1, 10));
        assert_eq!(batch_position(30, 30, 3), (2, 10, 10));
        assert_eq!(batch_position(0, 0, 1), (0, 0, 0));
    }

    #[test]
    fn png_info_parameters_follow_a1111_keys() {
        let p = parsed_parameters(
            "a knight\nNegative prompt: blurry\nSteps: 25, Sampler: Euler a, CFG scale: 8, Seed: 42, Size: 512x768, Model: dreamshaper",
        );
        assert_eq!(p["Prompt"], "a knight");
        assert_eq!(p["Negative prompt"], "blurry");
        assert_eq!(p["Steps"], "25");
        assert_eq!(p["Sampler"], "Euler a");
        assert_eq!(p["CFG scale"], "8");
        assert_eq!(p["Seed"], "42");
        assert_eq!(p["Size-1"], "512");
        assert_eq!(p["Size-2"], "768");
        assert_eq!(p["Model"], "dreamshaper");
        assert!(p.get("Size").is_none());
    }
}
