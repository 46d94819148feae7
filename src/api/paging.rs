//! Pagination of the list endpoints. `limit` (default 100, at most 1000) and either `offset` or
//! the opaque `cursor` of the previous page. The body stays the JSON array clients already read;
//! the next page is announced in headers: `X-Next-Cursor: <cursor>` and
//! `Link: <same query with cursor=...>; rel="next"`, both absent on the last page.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::caller::{viewer_of, Caller};
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;
use super::AppState;
use crate::auth::Principal;
use crate::characters::{ListWindow, Page, PageKey, Viewer, PAGE_MAX};

/// Longest cursor accepted (a name and an id, base64-encoded).
const CURSOR_MAX_CHARS: usize = 4096;
/// The header carrying the next page's cursor.
pub const NEXT_CURSOR: &str = "x-next-cursor";

/// The query parameters every list takes.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PageQuery {
    limit: Option<u32>,
    offset: Option<u32>,
    cursor: Option<String>,
}

/// A list request: who asks, the list's own query parameters `Q`, the validated page window
/// (for the caller's view) and the URI the next page's link is built from.
pub struct Listing<Q> {
    pub caller: Principal,
    pub query: Q,
    pub window: ListWindow,
    pub uri: Uri,
}

impl<Q: DeserializeOwned + Send> FromRequestParts<AppState> for Listing<Q> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Caller(caller) = Caller::from_request_parts(parts, state).await?;
        let ApiQuery(query) = ApiQuery::<Q>::from_request_parts(parts, state).await?;
        let ApiQuery(page) = ApiQuery::<PageQuery>::from_request_parts(parts, state).await?;
        let window = paging(
            page.limit,
            page.offset,
            page.cursor.as_deref(),
            viewer_of(&caller),
        )?;
        Ok(Listing {
            caller,
            query,
            window,
            uri: parts.uri.clone(),
        })
    }
}

/// Checks a page request: `limit` in range, and either an offset or a cursor this server made.
pub fn paging(
    limit: Option<u32>,
    offset: Option<u32>,
    cursor: Option<&str>,
    visible_to: Viewer,
) -> ApiResult<ListWindow> {
    if let Some(limit) = limit {
        if !(1..=PAGE_MAX).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("must be between 1 and {PAGE_MAX}, got {limit}"),
            ));
        }
    }
    let after = match cursor.map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            if offset.is_some() {
                return Err(ApiError::validation(
                    "offset",
                    "offset cannot be combined with cursor: a cursor already says where the page starts",
                ));
            }
            Some(decode_cursor(c)?)
        }
    };
    Ok(ListWindow {
        limit,
        offset,
        after,
        visible_to,
    })
}

pub fn encode_cursor(key: &PageKey) -> String {
    let json = serde_json::to_vec(&(&key.name, &key.id)).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(raw: &str) -> ApiResult<PageKey> {
    let bad = || {
        ApiError::validation(
            "cursor",
            "not a cursor this server returned (take it from the X-Next-Cursor header)",
        )
    };
    if raw.len() > CURSOR_MAX_CHARS {
        return Err(ApiError::validation(
            "cursor",
            format!("longer than {CURSOR_MAX_CHARS} characters"),
        ));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| bad())?;
    let (name, id): (String, String) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok(PageKey { name, id })
}

/// The page as a JSON array, with the next-page headers when another page follows.
pub fn respond<T: Serialize>(uri: &Uri, page: Page<T>) -> Response {
    let mut resp = Json(page.items).into_response();
    if let Some(next) = page.next {
        let cursor = encode_cursor(&next);
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
            if k != "cursor" && k != "offset" {
                query.append_pair(&k, &v);
            }
        }
        query.append_pair("cursor", &cursor);
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.finish());
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&cursor) {
            headers.insert(NEXT_CURSOR, v);
        }
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
    }
    resp
}
