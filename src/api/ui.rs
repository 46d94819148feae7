//! The web UI's routes: the pages and static files `web` makes, behind the API's path extractor
//! (a malformed path is a JSON 400 naming it) and with a missing file answered by the API's error
//! table, so the UI module needs nothing from this layer.

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::error::ApiError;
use super::extract::ApiPath as Path;
use crate::web::{self, Page};

/// The UI's routes, merged into the API router by `api::app`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { web::page(Page::Creator) }))
        .route(
            "/characters/{id}",
            get(|_: Path<String>| async { web::page(Page::Sheet) }),
        )
        .route(
            "/campaigns/{id}",
            get(|_: Path<String>| async { web::page(Page::Roster) }),
        )
        .route("/static/{*path}", get(static_file))
}

async fn static_file(Path(path): Path<String>) -> Result<Response, ApiError> {
    web::static_file(&path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no static file {path:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

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
}
