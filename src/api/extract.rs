//! Request extractors whose rejections use the API's error shape: JSON bodies whose type errors
//! name the offending field (via serde_path_to_error), and query strings likewise.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like `axum::Json`, but a bad body becomes `{error, error_type, field}`.
pub struct ApiJson<T>(pub T);

fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    let s = path.to_string();
    (s != "." && !s.is_empty()).then_some(s)
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.starts_with("application/json") || v.contains("+json"))
            .unwrap_or(true);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a JSON body (Content-Type: application/json)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body too large: {e}"),
                )
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            b"{}"
        } else {
            &bytes
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        match serde_path_to_error::deserialize(&mut de) {
            Ok(v) => Ok(ApiJson(v)),
            Err(e) => {
                let field = field_of(e.path());
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    Err(ApiError::bad_request(format!("malformed JSON: {inner}")))
                } else {
                    match field {
                        Some(f) => Err(ApiError::validation(f, inner.to_string())),
                        None => Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "validation_error",
                            inner.to_string(),
                        )),
                    }
                }
            }
        }
    }
}

/// Like `axum::extract::Query`, with field-naming errors.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let field = field_of(e.path()).unwrap_or_else(|| "query".into());
                ApiError::validation(field, e.into_inner().to_string())
            })
    }
}

/// Like `axum::extract::Path` (handlers import it under that name), but every rejection is the
/// API's JSON error: a segment whose percent-encoding decodes to invalid UTF-8 (`%c0%ae`) or to
/// a control character (`%00`) is a 400 `bad_request` naming the parameter, never axum's plain
/// text and never a 500 further down.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Decoded values are checked first: a NUL in an id or a media key would otherwise
        // travel on to SQLite, the file system or a URI builder.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            if let Some((key, _)) = raw.iter().find(|(_, v)| v.chars().any(char::is_control)) {
                return Err(ApiError {
                    field: Some(key.to_string()),
                    ..ApiError::bad_request(format!(
                        "path parameter `{key}` contains a control character (such as %00); ids and keys never do"
                    ))
                });
            }
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: axum::extract::rejection::PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    match rejection {
        PathRejection::FailedToDeserializePathParams(e) => {
            let field = match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key }
                | ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::DeserializeError { key, .. } => key.clone(),
                _ => "path".to_string(),
            };
            let message = match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => {
                    format!("path parameter `{key}` is not valid UTF-8 once percent-decoded")
                }
                _ => e.body_text(),
            };
            ApiError {
                field: Some(field),
                ..ApiError::bad_request(message)
            }
        }
        // A route declared without the parameters its handler reads: our bug, not the caller's.
        other => ApiError::internal(other.body_text()),
    }
}
