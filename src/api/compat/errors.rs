//! The compat APIs' error shapes, rendered from the API's one [`ApiError`] so the status table
//! stays in one place (`api::error`) and only the body differs:
//!
//! - A1111: validation errors (422) are FastAPI's `{"detail": [{"loc", "msg", "type"}]}`, which is
//!   what A1111 really returns for a bad request body; every body also carries A1111's own
//!   exception-handler keys `{"error", "detail", "body", "errors"}` (for 422, `detail` stays the
//!   FastAPI list), so clients written against either shape find their fields.
//! - OpenAI: `{"error": {"message", "type", "param", "code"}}`; OpenAI answers bad parameters
//!   with 400, so our 422s become 400 here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::api::error::ApiError;

/// An [`ApiError`] answered in A1111's shape.
#[derive(Debug)]
pub(crate) struct A1111Error(pub ApiError);

impl From<ApiError> for A1111Error {
    fn from(e: ApiError) -> Self {
        A1111Error(e)
    }
}

/// Keeps the headers the API's own rendering sets (Retry-After on 429).
fn with_headers(e: &ApiError, mut resp: Response, auth_scheme: &'static str) -> Response {
    if let Some(secs) = e.retry_after {
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if e.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(auth_scheme),
        );
    }
    resp
}

/// The A1111 request field an engine field comes from: errors must name the field the client
/// sent (`sampler_name`, not our `sampler`). Fields A1111 spells as we do pass through.
fn a1111_field(field: &str) -> &str {
    // Qualified engine paths ("init_image (width)") keep only the A1111 key.
    let head = field.split(['.', '[', ' ']).next().unwrap_or(field);
    match head {
        "sampler" => "sampler_name",
        "init_image" => "init_images",
        "seeds" => "seed",
        "clip_skip" => "override_settings.CLIP_stop_at_last_layers",
        "model" => "override_settings.sd_model_checkpoint",
        _ => field,
    }
}

/// FastAPI's `loc` for a field path such as `override_settings.sd_model_checkpoint` or
/// `init_images[0]`.
fn loc(field: &str) -> Value {
    let mut parts = vec![json!("body")];
    let field = a1111_field(field);
    for segment in field.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<u64>().ok()),
            None => (segment, None),
        };
        // Our messages sometimes qualify a field ("hr_scale (width)"); FastAPI's loc is the key.
        let name = name.split(" (").next().unwrap_or(name);
        if !name.is_empty() {
            parts.push(json!(name));
        }
        if let Some(i) = index {
            parts.push(json!(i));
        }
    }
    Value::Array(parts)
}

pub(crate) fn a1111_body(e: &ApiError) -> Value {
    if e.status == StatusCode::UNPROCESSABLE_ENTITY {
        let field = e.field.as_deref().unwrap_or("");
        json!({
            "detail": [{"loc": loc(field), "msg": e.message, "type": "value_error"}],
            "error": e.error_type,
            "body": "",
            "errors": e.message,
        })
    } else {
        json!({
            "error": e.error_type,
            "detail": e.message,
            "body": "",
            "errors": e.message,
        })
    }
}

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            tracing::error!(status = %e.status, error_type = e.error_type, "{}", e.message);
        }
        let resp = (e.status, axum::Json(a1111_body(&e))).into_response();
        with_headers(&e, resp, "Basic realm=\"limner\"")
    }
}

/// An [`ApiError`] answered in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        OpenAiError(e)
    }
}

impl OpenAiError {
    /// OpenAI's answer to an unknown model: 404 `model_not_found`.
    pub(crate) fn unknown_model(model: &str, known: &[String]) -> Self {
        OpenAiError(ApiError {
            field: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "The model `{model}` does not exist; models served here: {}",
                    known.join(", ")
                ),
            )
        })
    }
}

pub(crate) fn openai_body(e: &ApiError) -> (StatusCode, Value) {
    let status = if e.status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        e.status
    };
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("permission_denied")),
        404 if e.error_type == "model_not_found" => {
            ("invalid_request_error", Some("model_not_found"))
        }
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        s if s >= 500 => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    let code = code.map(str::to_string).or_else(|| match e.error_type {
        "validation_error" | "bad_request" => None,
        other => Some(other.to_string()),
    });
    // Our field names are OpenAI's parameter names for the fields OpenAI has; engine fields
    // that come from `size` are reported as `size`.
    let param = e.field.as_deref().map(|f| match f {
        "width" | "height" => "size",
        "batch_size" => "n",
        other => other,
    });
    (
        status,
        json!({"error": {"message": e.message, "type": kind, "param": param, "code": code}}),
    )
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status.is_server_error() {
            tracing::error!(status = %e.status, error_type = e.error_type, "{}", e.message);
        }
        let (status, body) = openai_body(&e);
        let resp = (status, axum::Json(body)).into_response();
        with_headers(&e, resp, "Bearer realm=\"limner\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1111_validation_is_fastapi_shaped() {
        let e = ApiError::validation("init_images[0]", "remote URLs are not fetched");
        let b = a1111_body(&e);
        assert_eq!(b["detail"][0]["loc"], json!(["body", "init_images", 0]));
        assert!(b["detail"][0]["msg"].as_str().unwrap().contains("remote"));
        assert_eq!(b["detail"][0]["type"], "value_error");
        assert!(b["errors"].as_str().unwrap().contains("remote"));
        let e = ApiError::validation("hr_scale (width)", "too big");
        assert_eq!(
            a1111_body(&e)["detail"][0]["loc"],
            json!(["body", "hr_scale"])
        );
        // Engine field names become the A1111 request fields the client sent.
        for (engine, a1111) in [
            ("sampler", json!(["body", "sampler_name"])),
            ("init_image", json!(["body", "init_images"])),
            (
                "clip_skip",
                json!(["body", "override_settings", "CLIP_stop_at_last_layers"]),
            ),
            ("scheduler", json!(["body", "scheduler"])),
            ("steps", json!(["body", "steps"])),
        ] {
            let b = a1111_body(&ApiError::validation(engine, "bad"));
            assert_eq!(b["detail"][0]["loc"], a1111, "{engine}");
        }
        let e = ApiError::not_found("job");
        let b = a1111_body(&e);
        assert_eq!(b["detail"], "job not found");
        assert_eq!(b["error"], "not_found");
        assert_eq!(b["body"], "");
    }

    #[test]
    fn a_full_disk_is_507_in_both_compat_shapes() {
        let e = ApiError::from(crate::characters::StoreError::StorageFull(
            "database or disk is full".into(),
        ));
        let b = a1111_body(&e);
        assert_eq!(b["error"], "insufficient_storage");
        assert!(b["detail"].as_str().unwrap().contains("disk is full"));
        let (s, b) = openai_body(&e);
        assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(b["error"]["type"], "server_error");
        assert_eq!(b["error"]["code"], "insufficient_storage");
    }

    #[test]
    fn openai_errors_use_openai_codes() {
        let (s, b) = openai_body(&ApiError::validation("width", "must be a multiple of 8"));
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "size");
        assert_eq!(b["error"]["code"], Value::Null);
        let (s, b) = openai_body(&ApiError::unauthorized("no token"));
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(b["error"]["code"], "invalid_api_key");
        let (s, b) = openai_body(&OpenAiError::unknown_model("x", &["a".into()]).0);
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
    }
}
