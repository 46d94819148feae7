//! `/api/media/images/{key}`: the image files themselves. A valid signature (`?expires&sig`, as
//! the URLs in every reply carry) is enough, so `<img src>` works; otherwise the caller must be
//! authenticated and allowed to see the character the file belongs to.

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::blocking;
use super::caller::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::AppState;
use crate::auth::signing_now;
use crate::portraits::validate_key;

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct SignedQuery {
    expires: Option<u64>,
    sig: Option<String>,
}

fn content_type(key: &str) -> &'static str {
    match key
        .rsplit('.')
        .next()
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg") | Some("jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "application/octet-stream",
    }
}

/// `portraits/<character_id>/...` -> the character id.
fn character_of(key: &str) -> Option<&str> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next()) {
        (Some("portraits"), Some(id)) if !id.is_empty() => Some(id),
        _ => None,
    }
}

pub async fn image(
    State(state): State<AppState>,
    Path(key): Path<String>,
    ApiQuery(q): ApiQuery<SignedQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // A key no file can have (a control character, `..`, a hidden name) is the caller's error,
    // answered before any credential or file is looked at.
    validate_key(&key).map_err(|e| ApiError {
        field: Some("key".into()),
        ..ApiError::bad_request(e.to_string())
    })?;
    let path = format!("/api/media/images/{key}");
    let signed = match (q.expires, &q.sig) {
        (Some(expires), Some(sig)) => state.signer.verify(&path, expires, sig, signing_now()),
        _ => false,
    };
    if !signed {
        if q.sig.is_some() && state.tokens.is_some() && !headers.contains_key(header::AUTHORIZATION)
        {
            return Err(ApiError::forbidden(
                "the signed URL is invalid or has expired",
            ));
        }
        // Fall back to the caller's own credentials.
        let mut parts = axum::http::Request::builder()
            .uri(path.as_str())
            .body(())
            .map_err(|e| ApiError::internal(e.to_string()))?
            .into_parts()
            .0;
        parts.headers = headers;
        let Caller(caller) =
            <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                &mut parts, &state,
            )
            .await?;
        let character = character_of(&key)
            .ok_or_else(|| ApiError::not_found("image"))?
            .to_string();
        let s = state.clone();
        blocking(move || s.visible_character(&caller, &character).map(|_| ()))
            .await
            .map_err(|_| ApiError::not_found("image"))?;
    }
    let s = state.clone();
    let k = key.clone();
    let bytes = blocking(move || {
        s.portraits
            .image_bytes(&k)
            .map_err(|_| ApiError::not_found("image"))
    })
    .await?;
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&key)),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_characters_and_types() {
        assert_eq!(character_of("portraits/abc/p1.png"), Some("abc"));
        assert_eq!(character_of("other/abc/p1.png"), None);
        assert_eq!(character_of("portraits//x.png"), None);
        assert_eq!(content_type("a/b.thumb.png"), "image/png");
        assert_eq!(content_type("a/b.JPG"), "image/jpeg");
    }
}
