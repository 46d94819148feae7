//! Shared by the compat API tests: an app on a fake backend, driven through `oneshot`.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use limner::api::{app, AppState, Inner};
use limner::auth::{Role, TokenStore, UrlSigner};
use limner::characters::{CharacterStore, SqliteStore};
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    FakeBackend, ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};

pub struct TestApp {
    pub app: Router,
    pub state: AppState,
    pub backend: Arc<FakeBackend>,
    /// Tokens of an admin and a player when built with auth.
    pub admin_token: Option<String>,
    pub player_token: Option<String>,
    _dir: tempfile::TempDir,
}

pub struct Setup {
    pub backend: FakeBackend,
    pub queue: QueueConfig,
    pub auth: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            backend: FakeBackend::new(),
            queue: QueueConfig::default(),
            auth: false,
        }
    }
}

pub fn build(setup: Setup) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Arc::new(setup.backend);
    let dyn_backend: Arc<dyn ImageBackend> = backend.clone();
    let store: Arc<dyn CharacterStore> = Arc::new(SqliteStore::open_in_memory().expect("store"));
    let images = Arc::new(LocalImageStore::new(dir.path().join("media")));
    let templates = PortraitTemplates::load_dir(std::path::Path::new("prompts")).expect("prompts");
    let portraits = PortraitService::new(
        store.clone(),
        images,
        dyn_backend.clone(),
        templates,
        StyleModels::new(),
    );
    let (tokens, admin_token, player_token) = if setup.auth {
        let t = TokenStore::open_in_memory().expect("tokens");
        let (admin, _) = t.create("admin", Role::Admin).expect("admin token");
        let (player, _) = t.create("player", Role::Player).expect("player token");
        (Some(t), Some(admin), Some(player))
    } else {
        (None, None, None)
    };
    let state = AppState::new(Inner {
        store,
        portraits,
        backend: dyn_backend,
        jobs: JobQueue::new(setup.queue).expect("queue"),
        tokens,
        signer: UrlSigner::new(vec![1; 32], 3600),
        request_timeout: Duration::from_secs(60),
    });
    TestApp {
        app: app(state.clone()),
        state,
        backend,
        admin_token,
        player_token,
        _dir: dir,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(500)])
            )
        })
    }
}

/// Sends one request through a router.
pub async fn send_to(app: Router, req: Request<Body>) -> Reply {
    let resp = app.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        bytes,
    }
}

fn json_post(uri: &str, body: &Value, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", "application/json")
        .header("host", "limner.test");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    b.body(Body::from(body.to_string())).expect("request")
}

/// POSTs JSON through a router (for requests run on another task).
pub async fn post_to(app: Router, uri: &str, body: Value) -> Reply {
    send_to(app, json_post(uri, &body, None)).await
}

impl TestApp {
    pub async fn send(&self, req: Request<Body>) -> Reply {
        send_to(self.app.clone(), req).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.post_as(uri, body, None).await
    }

    /// POST with an `Authorization` header value.
    pub async fn post_as(&self, uri: &str, body: Value, auth: Option<&str>) -> Reply {
        self.send(json_post(uri, &body, auth)).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.get_as(uri, None).await
    }

    pub async fn get_as(&self, uri: &str, auth: Option<&str>) -> Reply {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        self.send(b.body(Body::empty()).expect("request")).await
    }

    /// Polls `/sdapi/v1/progress` until a compat job is running (bounded number of polls, so a
    /// broken server fails the test instead of hanging it).
    pub async fn wait_running(&self) -> Value {
        for _ in 0..2000 {
            let p = self.get("/sdapi/v1/progress").await.json();
            if p["state"]["sampling_step"].as_u64().unwrap_or(0) > 0 {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no compat job started running");
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", b64(format!("{user}:{password}").as_bytes()))
}

/// A PNG of `w x h` with a gradient.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}
