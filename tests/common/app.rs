//! The real router with authentication on, a real SQLite store and a fast fake image backend,
//! driven in-process (`tower::ServiceExt::oneshot`): for tests about who may do what.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use limner::api::{app, AppState, Inner};
use limner::auth::{Role, TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::Defaults;
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    FakeBackend, ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};
use serde_json::Value;
use tower::ServiceExt;

pub struct App {
    router: Router,
    pub tokens: TokenStore,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The reply, after checking its status (the body is shown when it differs).
    pub fn expect(self, want: u16) -> Reply {
        assert_eq!(
            self.status.as_u16(),
            want,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Checks an error reply: status, error_type and (when given) the field it names.
    pub fn error(self, want: u16, error_type: &str, field: Option<&str>) {
        let v = self.json();
        assert_eq!(self.status.as_u16(), want, "{v}");
        assert_eq!(v["error_type"], error_type, "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

impl App {
    /// A fresh server on a fresh database (SQLite file in a temporary folder).
    pub fn new() -> App {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_in_data_dir(dir.path()).unwrap());
        App::over(dir, store)
    }

    /// The server over a store already filled (its files live in `dir`).
    pub fn over(dir: tempfile::TempDir, store: Arc<SqliteStore>) -> App {
        let store: Arc<dyn CharacterStore> = store;
        let backend: Arc<dyn ImageBackend> = Arc::new(FakeBackend::new().with_defaults(Defaults {
            sampler: "Euler a".into(),
            steps: 2,
            cfg_scale: 7.0,
            guidance_rescale: 0.0,
            width: 64,
            height: 64,
        }));
        let templates = PortraitTemplates::load_dir(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prompts"
        )))
        .unwrap();
        let portraits = PortraitService::new(
            store.clone(),
            Arc::new(LocalImageStore::new(dir.path().join("media"))),
            backend.clone(),
            templates,
            StyleModels::new(),
        );
        let tokens = TokenStore::open_in_memory().unwrap();
        let state = AppState::new(Inner {
            store,
            portraits,
            backend,
            jobs: JobQueue::new(QueueConfig::default()).unwrap(),
            tokens: Some(tokens.clone()),
            signer: UrlSigner::new(vec![7; 32], 3600),
            request_timeout: Duration::from_secs(30),
        });
        App {
            router: app(state),
            tokens,
            _dir: dir,
        }
    }

    /// A token for a new user.
    pub fn user(&self, name: &str, role: Role) -> String {
        self.tokens.create(name, role).unwrap().0
    }

    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>, token: &str) -> Reply {
        send(&self.router, method, uri, body, Some(token)).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, None, token).await
    }

    pub async fn post(&self, uri: &str, body: Value, token: &str) -> Reply {
        self.call(Method::POST, uri, Some(body), token).await
    }

    pub async fn delete(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::DELETE, uri, None, token).await
    }

    /// Creates a character owned by the token's user; returns its id.
    pub async fn character(&self, name: &str, token: &str) -> String {
        let r = self
            .post("/api/characters", serde_json::json!({"name": name}), token)
            .await
            .expect(201);
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Creates a campaign run by the token's user; returns its id.
    pub async fn campaign(&self, name: &str, token: &str) -> String {
        let r = self
            .post("/api/campaigns", serde_json::json!({"name": name}), token)
            .await
            .expect(201);
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// A new invite code of the campaign (the token must be its DM's).
    pub async fn invite(&self, campaign: &str, body: Value, token: &str) -> String {
        let r = self
            .post(&format!("/api/campaigns/{campaign}/invites"), body, token)
            .await
            .expect(201);
        r.json()["code"].as_str().unwrap().to_string()
    }
}

/// One request through `router` in-process (JSON body and bearer token when given).
pub async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}
