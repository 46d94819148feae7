//! OpenAI's images API: `POST /v1/images/generations` (and `GET /v1/models`), so the `openai`
//! SDKs and tools built on them paint with limner by pointing their base URL at `<server>/v1`.
//!
//! `model` names a served model (any name `/sdapi/v1/sd-models` lists); OpenAI's own names
//! (`dall-e-*`, `gpt-image-*`) mean the default model. `size` is any `WxH` the engine accepts
//! (multiples of 8, 64..=2048) or `auto`; steps, CFG scale and sampler come from the model's
//! `weights.toml` defaults. `quality`, `style` and `user` are accepted and ignored. Images come
//! back as `b64_json`, or as `url`: a signed, expiring `/api/media/images/generations/...` URL.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::a1111::validate;
use super::errors::OpenAiError;
use super::run::{self, CompatJob};
use super::{from_body, resolve_model, to_base64, CompatState};
use crate::api::blocking;
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::extract::ApiJson;
use crate::api::AppState;
use crate::engine::request::{GenerationRequest, MAX_BATCH};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct GenerationsBody {
    prompt: Option<String>,
    model: Option<String>,
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<String>,
    /// Accepted and ignored (OpenAI-only knobs): `quality`, `style`, `user`.
    #[allow(dead_code)]
    quality: Option<String>,
    #[allow(dead_code)]
    style: Option<String>,
    #[allow(dead_code)]
    user: Option<String>,
    output_format: Option<String>,
    stream: Option<bool>,
    /// limner extensions (OpenAI has neither).
    negative_prompt: Option<String>,
    seed: Option<i64>,
    /// background, moderation, output_compression, ...: accepted and ignored.
    #[serde(flatten)]
    _extra: Map<String, Value>,
}

/// `auto` / absent -> the model's default size; otherwise `WxH`.
fn parse_size(size: Option<&str>) -> Result<Option<(usize, usize)>, ApiError> {
    let Some(s) = size
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "auto")
    else {
        return Ok(None);
    };
    let bad = || {
        ApiError::validation(
            "size",
            format!("expected WIDTHxHEIGHT such as 512x768 (multiples of 8), got {s:?}"),
        )
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let w = w.trim().parse().map_err(|_| bad())?;
    let h = h.trim().parse().map_err(|_| bad())?;
    Ok(Some((w, h)))
}

/// OpenAI's own model names, which mean "the default model" here.
fn is_openai_model(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("dall-e") || n.starts_with("gpt-image")
}

#[derive(Debug, PartialEq)]
enum Format {
    Url,
    B64,
}

/// `https://host` from the request, so `url` replies work for clients (OpenAI's are absolute);
/// without a Host header the URL stays relative.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ']));
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    host.map(|h| format!("{proto}://{h}")).unwrap_or_default()
}

pub(crate) async fn generations(
    State(state): State<AppState>,
    Extension(compat): Extension<Arc<CompatState>>,
    headers: HeaderMap,
    caller: Result<Caller, ApiError>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, OpenAiError> {
    let Caller(caller) = caller?;
    let ApiJson(body) = body?;
    let body: GenerationsBody = from_body(body)?;
    if body.stream == Some(true) {
        return Err(ApiError::validation("stream", "streaming is not supported").into());
    }
    let prompt = body.prompt.clone().unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(ApiError::validation("prompt", "a prompt is required").into());
    }
    let n = body.n.unwrap_or(1);
    if !(1..=MAX_BATCH).contains(&n) {
        return Err(ApiError::validation("n", format!("must be between 1 and {MAX_BATCH}")).into());
    }
    let model = match body
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        None => compat.default_model(&*state.backend, &caller.user),
        Some(m) => match resolve_model(&*state.backend, m) {
            Some(found) => found,
            None if is_openai_model(m) => compat.default_model(&*state.backend, &caller.user),
            None => {
                return Err(OpenAiError::unknown_model(m, &state.backend.model_names()));
            }
        },
    };
    let format = match body.response_format.as_deref() {
        Some("url") => Format::Url,
        Some("b64_json") => Format::B64,
        // gpt-image models only ever answer in base64; DALL-E's default is a URL.
        None if body
            .model
            .as_deref()
            .is_some_and(|m| m.starts_with("gpt-image")) =>
        {
            Format::B64
        }
        None => Format::Url,
        Some(other) => {
            return Err(ApiError::validation(
                "response_format",
                format!("must be 'url' or 'b64_json', got {other:?}"),
            )
            .into())
        }
    };
    let size = parse_size(body.size.as_deref())?;
    let req = GenerationRequest {
        prompt: prompt.clone(),
        negative_prompt: body.negative_prompt.clone().unwrap_or_default(),
        seed: body.seed,
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        batch_size: Some(n),
        format: Some(body.output_format.clone().unwrap_or_else(|| "png".into())),
        // The caller's A1111 `sd_vae` option applies here too, like their checkpoint.
        vae: Some(compat.vae(&*state.backend, &caller.user)),
        ..Default::default()
    };
    let valid = validate(&state, &model, req).map_err(|e| match e.field.as_deref() {
        Some("format") => ApiError::validation("output_format", e.message),
        _ => e,
    })?;
    let ext = valid.format().extension();
    let job = CompatJob {
        kind: "openai",
        request: valid,
        n_iter: 1,
    };
    if matches!(format, Format::Url) {
        // URLs mean files: refuse before painting when the disk cannot take them.
        let disk = state.disk().clone();
        blocking(move || disk.check_write()).await?;
    }
    let out = run::run(&state, &compat, &caller.user, job).await?;
    let data: Vec<Value> = match format {
        Format::B64 => out
            .images
            .iter()
            .map(|i| json!({"b64_json": to_base64(&i.bytes), "revised_prompt": prompt}))
            .collect(),
        Format::Url => {
            let s = state.clone();
            let images: Vec<Vec<u8>> = out.images.into_iter().map(|i| i.bytes).collect();
            let keys = blocking(move || {
                let store = s.portraits.images();
                images
                    .iter()
                    .map(|bytes| {
                        let key = format!("generations/{}.{ext}", uuid::Uuid::new_v4());
                        store.put(&key, bytes).map_err(ApiError::from)?;
                        Ok(key)
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await?;
            let origin = origin(&headers);
            keys.iter()
                .map(|k| {
                    json!({"url": format!("{origin}{}", state.media_url(k)), "revised_prompt": prompt})
                })
                .collect()
        }
    };
    Ok(Json(
        json!({"created": chrono::Utc::now().timestamp(), "data": data}),
    ))
}

/// `GET /v1/models`: the served models in OpenAI's list shape.
pub(crate) async fn models(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> Result<Json<Value>, OpenAiError> {
    caller?;
    let data: Vec<Value> = state
        .backend
        .model_names()
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "limner"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_or_name_the_field() {
        assert_eq!(parse_size(None).unwrap(), None);
        assert_eq!(parse_size(Some("auto")).unwrap(), None);
        assert_eq!(parse_size(Some("512x768")).unwrap(), Some((512, 768)));
        assert_eq!(parse_size(Some("1024X1024")).unwrap(), Some((1024, 1024)));
        for bad in ["512", "axb", "512x", "-8x8"] {
            let e = parse_size(Some(bad)).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("size"), "{bad}");
        }
    }

    #[test]
    fn origin_comes_from_host_and_forwarded_proto() {
        let mut h = HeaderMap::new();
        assert_eq!(origin(&h), "");
        h.insert(header::HOST, "example.org:8000".parse().unwrap());
        assert_eq!(origin(&h), "http://example.org:8000");
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert_eq!(origin(&h), "https://example.org:8000");
        assert!(is_openai_model("dall-e-3") && is_openai_model("gpt-image-1"));
        assert!(!is_openai_model("dreamshaper-8"));
    }
}
