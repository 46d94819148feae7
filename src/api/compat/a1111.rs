//! AUTOMATIC1111's `POST /sdapi/v1/txt2img` and `/img2img`: A1111's request in, A1111's reply
//! out — `{images: [bare base64 PNG], parameters: {the request with defaults}, info: "<JSON>"}`,
//! where `info` is the JSON text of A1111's `Processed.js()` with the same keys, plus
//! `limner_unsupported` (the fields that were accepted but not applied) and `limner_interrupted`.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::a1111_request::{crop_and_resize, Common, Img2ImgBody, Txt2ImgBody};
use super::errors::A1111Error;
use super::run::{self, CompatJob, CompatOutput};
use super::{from_body, image_bytes, resolve_model, resolve_vae, to_base64, CompatState};
use crate::api::blocking;
use crate::api::caller::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::ApiJson;
use crate::api::AppState;
use crate::engine::infotext::{limner_version, InfoText, VERSION_KEY};
use crate::engine::{decode_image, EngineError, GenerationRequest, VaeChoice, ValidRequest};

/// The model a compat request runs on: `override_settings.sd_model_checkpoint` if given (it
/// must be served), else the `sd_model_checkpoint` option, else the backend's default.
pub(crate) fn pick_model(
    state: &AppState,
    compat: &CompatState,
    user: &str,
    wanted: Option<&str>,
    field: &str,
) -> ApiResult<String> {
    match wanted {
        None => Ok(compat.default_model(&*state.backend, user)),
        Some(w) => resolve_model(&*state.backend, w).ok_or_else(|| {
            ApiError::validation(
                field,
                format!(
                    "unknown model {w:?}; models served here: {}",
                    state.backend.model_names().join(", ")
                ),
            )
        }),
    }
}

/// Validates against the model's limits; the engine's field names are A1111's already, except
/// for the init image.
pub(crate) fn validate(
    state: &AppState,
    model: &str,
    mut req: GenerationRequest,
) -> ApiResult<ValidRequest> {
    req.model = Some(model.to_string());
    let defaults = state.backend.defaults(Some(model))?;
    req.validate(&defaults).map_err(|e| match e {
        EngineError::InvalidInput {
            field: "init_image",
            message,
        } => ApiError::validation("init_images", message),
        other => other.into(),
    })
}

/// What the info JSON reports about the job, taken before the request moves into the queue.
struct Summary {
    prompt: String,
    negative_prompt: String,
    steps: usize,
    cfg_scale: f64,
    sampler: String,
    width: usize,
    height: usize,
    batch_size: usize,
    clip_skip: usize,
    /// The VAE file picked by name (`sd_vae_name`), if any.
    vae: Option<String>,
}

impl Summary {
    fn of(v: &ValidRequest) -> Self {
        Summary {
            prompt: v.prompt().to_string(),
            negative_prompt: v.negative_prompt().to_string(),
            steps: v.steps(),
            cfg_scale: v.cfg_scale(),
            sampler: v.sampler_name(),
            width: v.width(),
            height: v.height(),
            batch_size: v.batch_size(),
            clip_skip: v.clip_skip(),
            vae: match v.vae() {
                VaeChoice::Named(n) => Some(n.clone()),
                _ => None,
            },
        }
    }
}

/// A1111's `Processed.js()`, field for field, for what was painted.
fn info_json(
    common: &Common,
    s: &Summary,
    out: &CompatOutput,
    denoising_strength: Option<f64>,
    notes: &[String],
) -> Value {
    let n = out.all_seeds.len();
    let first = out.images.first().map(|i| InfoText::parse(&i.infotext));
    let mut extra = serde_json::Map::new();
    if let Some(info) = &first {
        if let Some(s) = &info.schedule_type {
            extra.insert("Schedule type".into(), json!(s));
        }
        if let Some(u) = info.hires_upscale {
            extra.insert("Hires upscale".into(), json!(u));
        }
        if let Some(st) = info.hires_steps {
            extra.insert("Hires steps".into(), json!(st));
        }
        if let Some(u) = &info.hires_upscaler {
            extra.insert("Hires upscaler".into(), json!(u));
        }
        for (k, v) in &info.extra {
            if k != VERSION_KEY && k != "Clip skip" {
                extra.insert(k.clone(), json!(v));
            }
        }
    }
    let subseed = common.subseed.unwrap_or(-1);
    json!({
        "prompt": s.prompt,
        "all_prompts": vec![&s.prompt; n],
        "negative_prompt": s.negative_prompt,
        "all_negative_prompts": vec![&s.negative_prompt; n],
        "seed": out.all_seeds.first(),
        "all_seeds": out.all_seeds,
        "subseed": subseed,
        "all_subseeds": vec![subseed; n],
        "subseed_strength": common.subseed_strength.unwrap_or(0.0),
        "width": s.width,
        "height": s.height,
        "sampler_name": s.sampler,
        "cfg_scale": s.cfg_scale,
        "steps": s.steps,
        "batch_size": s.batch_size,
        "restore_faces": common.restore_faces.unwrap_or(false),
        "face_restoration_model": null,
        "sd_model_name": out.model,
        "sd_model_hash": first.as_ref().and_then(|i| i.model_hash.clone()),
        "sd_vae_name": s.vae,
        "sd_vae_hash": null,
        "seed_resize_from_w": common.seed_resize_from_w.unwrap_or(-1),
        "seed_resize_from_h": common.seed_resize_from_h.unwrap_or(-1),
        "denoising_strength": denoising_strength,
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": out.images.iter().map(|i| i.infotext.as_str()).collect::<Vec<_>>(),
        "styles": common.styles.clone().unwrap_or_default(),
        "job_timestamp": out.timestamp,
        "clip_skip": s.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": limner_version(),
        "limner_unsupported": notes,
        "limner_interrupted": out.interrupted,
        "limner_skipped_batches": out.skipped_batches,
    })
}

fn reply(common: &Common, echo: Value, out: &CompatOutput, info: Value) -> Json<Value> {
    let images: Vec<String> = if common.send_images.unwrap_or(true) {
        out.images.iter().map(|i| to_base64(&i.bytes)).collect()
    } else {
        Vec::new()
    };
    Json(json!({"images": images, "parameters": echo, "info": info.to_string()}))
}

/// What a txt2img or img2img reply needs besides the images.
struct Generation<'a> {
    kind: &'static str,
    common: &'a Common,
    /// The request as A1111 echoes it in `parameters`.
    echo: Value,
    denoising: Option<f64>,
    notes: &'a [String],
}

/// Queues a validated request (through the shared job queue) and wraps what it painted in
/// A1111's `{images, parameters, info}` reply.
async fn run_and_reply(
    state: &AppState,
    compat: &Arc<CompatState>,
    user: &str,
    valid: ValidRequest,
    g: Generation<'_>,
) -> Result<Json<Value>, A1111Error> {
    let summary = Summary::of(&valid);
    let job = CompatJob {
        kind: g.kind,
        request: valid,
        n_iter: g.common.n_iter.unwrap_or(1),
    };
    let out = run::run(state, compat, user, job).await?;
    let info = info_json(g.common, &summary, &out, g.denoising, g.notes);
    Ok(reply(g.common, g.echo, &out, info))
}

/// What txt2img and img2img bodies share for [`open`].
trait Body: serde::de::DeserializeOwned {
    fn fill_defaults(&mut self);
    fn to_request(&self) -> Result<(GenerationRequest, Vec<String>), ApiError>;
    fn common(&self) -> &Common;
}

impl Body for Txt2ImgBody {
    fn fill_defaults(&mut self) {
        Txt2ImgBody::fill_defaults(self)
    }
    fn to_request(&self) -> Result<(GenerationRequest, Vec<String>), ApiError> {
        Txt2ImgBody::to_request(self)
    }
    fn common(&self) -> &Common {
        &self.common
    }
}

impl Body for Img2ImgBody {
    fn fill_defaults(&mut self) {
        Img2ImgBody::fill_defaults(self)
    }
    fn to_request(&self) -> Result<(GenerationRequest, Vec<String>), ApiError> {
        Img2ImgBody::to_request(self)
    }
    fn common(&self) -> &Common {
        &self.common
    }
}

/// A txt2img or img2img request read as far as both read it alike.
struct Opened<B> {
    user: String,
    /// With A1111's defaults filled in.
    body: B,
    /// The engine request, not yet validated.
    req: GenerationRequest,
    /// What the request asks for that is not applied.
    notes: Vec<String>,
    model: String,
}

/// The opening of both generation endpoints: the caller, the body with A1111's defaults, the
/// engine request and the model it runs on.
fn open<B: Body>(
    state: &AppState,
    compat: &CompatState,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Opened<B>, A1111Error> {
    let Caller(caller) = caller?;
    let ApiJson(body) = body?;
    let mut body: B = from_body(body)?;
    body.fill_defaults();
    let (mut req, notes) = body.to_request()?;
    let model = pick_model(
        state,
        compat,
        &caller.user,
        body.common().checkpoint(),
        "override_settings.sd_model_checkpoint",
    )?;
    // `override_settings.sd_vae`, else the caller's `sd_vae` option.
    req.vae = Some(match body.common().vae_override()? {
        Some(v) => resolve_vae(&*state.backend, v, "override_settings.sd_vae")?,
        None => compat.vae(&*state.backend, &caller.user),
    });
    Ok(Opened {
        user: caller.user,
        body,
        req,
        notes,
        model,
    })
}

pub(crate) async fn txt2img(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, A1111Error> {
    let o = open::<Txt2ImgBody>(&state, &compat, caller, body)?;
    let (body, notes) = (&o.body, &o.notes);
    let valid = validate(&state, &o.model, o.req)?;
    let denoising = valid
        .hires()
        .map(|h| h.denoising_strength)
        .or(body.common.denoising_strength);
    let echo = serde_json::to_value(body).map_err(|e| ApiError::internal(e.to_string()))?;
    let done = Generation {
        kind: "txt2img",
        common: &body.common,
        echo,
        denoising,
        notes,
    };
    run_and_reply(&state, &compat, &o.user, valid, done).await
}

pub(crate) async fn img2img(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, A1111Error> {
    let Opened {
        user,
        body,
        req,
        notes,
        model,
    } = open::<Img2ImgBody>(&state, &compat, caller, body)?;
    // Decoding and resizing the init image is CPU work: off the async threads.
    let first = body
        .init_images
        .as_ref()
        .and_then(|i| i.first())
        .cloned()
        .unwrap_or_default();
    let crop = body.resize_mode == Some(1);
    let s = state.clone();
    let valid = blocking(move || {
        let bytes = image_bytes("init_images[0]", &first)?;
        let mut img = decode_image(&bytes)
            .map_err(|e| ApiError::validation("init_images[0]", e.to_string()))?;
        if crop {
            let (w, h) = (req.width.unwrap_or(512), req.height.unwrap_or(512));
            img = crop_and_resize(&img, w as u32, h as u32);
        }
        validate(
            &s,
            &model,
            GenerationRequest {
                init_image: Some(img),
                ..req
            },
        )
    })
    .await?;
    let denoising = valid.denoising_strength();
    let mut echo = serde_json::to_value(&body).map_err(|e| ApiError::internal(e.to_string()))?;
    // A1111 echoes the init images (and mask) only when asked to.
    if body.include_init_images != Some(true) {
        echo["init_images"] = Value::Null;
        echo["mask"] = Value::Null;
    }
    let done = Generation {
        kind: "img2img",
        common: &body.common,
        echo,
        denoising,
        notes: &notes,
    };
    run_and_reply(&state, &compat, &user, valid, done).await
}
