//! The web UI: the character creator (`/`), the player character sheet (`/characters/{id}`), the
//! DM roster (`/campaigns/{id}`) and their assets (`/static/*`). The pages are plain HTML, CSS
//! and ES modules embedded in the binary (no build step); they talk to `/api` like any client.
//!
//! These routes need no credentials: the pages themselves carry no data, and they sign in with a
//! token kept in the browser (see `assets/auth.js`).

// Path rejections in the API's JSON shape.
use crate::api::extract::ApiPath as Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file: its URL name, content type and bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $ty:expr) => {
        Asset {
            name: $name,
            content_type: $ty,
            body: include_bytes!(concat!("assets/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Everything under `/static/`.
const ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("api.js", JS),
    asset!("auth.js", JS),
    asset!("schema.js", JS),
    asset!("jobs.js", JS),
    asset!("creator.js", JS),
    asset!("sheet.js", JS),
    asset!("roster.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

const CREATOR: &str = include_str!("assets/index.html");
const SHEET: &str = include_str!("assets/sheet.html");
const ROSTER: &str = include_str!("assets/roster.html");

/// Content Security Policy of every page: only our own scripts, styles, images and API.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// The UI's routes, merged into the API router by `api::app`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { page(CREATOR) }))
        .route(
            "/characters/{id}",
            get(|_: Path<String>| async { page(SHEET) }),
        )
        .route(
            "/campaigns/{id}",
            get(|_: Path<String>| async { page(ROSTER) }),
        )
        .route("/static/{*path}", get(static_file))
}

/// Headers shared by pages and assets. `no-cache` because the files change with the binary;
/// `no-referrer` so a `?token=` sign-in link never leaks through a Referer header.
fn common_headers(resp: &mut Response, content_type: &'static str) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn page(html: &'static str) -> Response {
    let mut resp = html.into_response();
    common_headers(&mut resp, "text/html; charset=utf-8");
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

fn find_asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == path)
}

async fn static_file(Path(path): Path<String>) -> Response {
    match find_asset(&path) {
        Some(a) => {
            let mut resp = a.body.into_response();
            common_headers(&mut resp, a.content_type);
            resp
        }
        None => crate::api::error::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no static file {path:?}"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_a_page_imports_is_embedded() {
        // A page or module that imports a file we forgot to embed would 404 in the browser.
        let mut sources: Vec<&str> = vec![CREATOR, SHEET, ROSTER];
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            sources.push(std::str::from_utf8(a.body).expect("assets are UTF-8"));
        }
        let re = regex::Regex::new(r#"(?:from\s+|src=|href=)["'](?:\./|/static/)([\w.-]+)["']"#)
            .expect("valid regex");
        let mut seen = 0;
        for src in sources {
            for cap in re.captures_iter(src) {
                seen += 1;
                assert!(find_asset(&cap[1]).is_some(), "{} is not embedded", &cap[1]);
            }
        }
        assert!(
            seen > 5,
            "found only {seen} references; is the regex still right?"
        );
    }

    async fn get(path: &str) -> (StatusCode, String, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = routes::<()>().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let ty = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, ty, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn pages_and_assets_are_served_with_their_types() {
        let (status, ty, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ty.starts_with("text/html"), "{ty}");
        assert!(body.contains("/static/creator.js"));
        let (_, _, sheet) = get("/characters/some-id").await;
        assert!(sheet.contains("/static/sheet.js"));
        let (_, _, roster) = get("/campaigns/some-id").await;
        assert!(roster.contains("/static/roster.js"));
        let (status, ty, _) = get("/static/creator.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(ty.starts_with("text/javascript"), "{ty}");
        let (status, ty, body) = get("/static/missing.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(ty.starts_with("application/json"), "{ty}");
        assert!(body.contains("not_found"), "{body}");
    }

    #[test]
    fn unknown_static_files_are_not_found() {
        assert!(find_asset("style.css").is_some());
        assert!(find_asset("../Cargo.toml").is_none());
        assert!(find_asset("").is_none());
    }
}
