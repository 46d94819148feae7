//! The API test harness: the real router over a real SQLite store (in a temp dir) and the fast
//! fake image backend, with or without authentication, driven in-process
//! (`tower::ServiceExt::oneshot`). Shared by the api_*_http tests.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::Router;
use limner::api::{app, AppState, Inner};
use limner::auth::{TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::engine::Defaults;
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    FakeBackend, ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};
use serde_json::{json, Value};

use super::common::{send, Reply};

pub struct Harness {
    pub router: Router,
    pub backend: Arc<FakeBackend>,
    pub tokens: Option<TokenStore>,
    pub _dir: tempfile::TempDir,
}

pub struct Opts {
    pub auth: bool,
    pub step_delay: Duration,
    pub queue: usize,
    pub timeout: Duration,
    /// The server's `--preview-every` (0: off).
    pub preview_every: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            auth: false,
            step_delay: Duration::ZERO,
            queue: 8,
            timeout: Duration::from_secs(30),
            preview_every: limner::api::live::DEFAULT_PREVIEW_EVERY,
        }
    }
}

pub fn small() -> Defaults {
    Defaults {
        sampler: "Euler a".into(),
        steps: 4,
        cfg_scale: 7.0,
        guidance_rescale: 0.0,
        width: 64,
        height: 96,
    }
}

pub fn harness(o: Opts) -> Harness {
    harness_with(o, FakeBackend::new())
}

/// [`harness`] over `fake` (e.g. one given LoRAs), with the small defaults and `o`'s delay.
pub fn harness_with(o: Opts, fake: FakeBackend) -> Harness {
    let backend = Arc::new(fake.with_defaults(small()).with_step_delay(o.step_delay));
    let dyn_backend: Arc<dyn ImageBackend> = backend.clone();
    harness_over(o, backend, dyn_backend)
}

/// [`harness`] with `backend` painting (e.g. the real engine); `fake` is only kept in the
/// harness for tests that read it.
pub fn harness_over(
    o: Opts,
    fake: Arc<FakeBackend>,
    dyn_backend: Arc<dyn ImageBackend>,
) -> Harness {
    let backend = fake;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn CharacterStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let templates = PortraitTemplates::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts"
    )))
    .unwrap();
    let portraits = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(dir.path().join("media"))),
        dyn_backend.clone(),
        templates,
        StyleModels::new(),
    );
    let tokens = o.auth.then(|| TokenStore::open_in_memory().unwrap());
    let state = AppState::new(Inner {
        store,
        portraits,
        backend: dyn_backend,
        jobs: JobQueue::new(QueueConfig {
            max_queued: o.queue,
            concurrency: 1,
            ..Default::default()
        })
        .unwrap(),
        tokens: tokens.clone(),
        signer: UrlSigner::new(vec![3; 32], 3600),
        request_timeout: o.timeout,
    })
    .with_preview_every(o.preview_every);
    Harness {
        router: app(state),
        backend,
        tokens,
        _dir: dir,
    }
}

impl Harness {
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> Reply {
        send(&self.router, method, uri, body, token).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, None, None).await
    }
    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, Some(body), None).await
    }

    pub async fn character(&self, token: Option<&str>) -> String {
        let r = self
            .call(
                Method::POST,
                "/api/characters",
                Some(json!({"name": "Garrick", "race": "human", "gender": "MALE", "character_class": "fighter",
                            "age_category": "adult", "facial_expression": "Confident", "attire": "plate armor"})),
                token,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["id"].as_str().unwrap().to_string()
    }
}

pub fn assert_error(r: &Reply, status: StatusCode, error_type: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["error_type"], error_type, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    if let Some(f) = field {
        assert_eq!(v["field"], f, "{v}");
    }
}
