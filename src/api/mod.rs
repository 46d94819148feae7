//! The HTTP API (axum): one `app(state)` router used by `limner serve` and by the tests, one
//! error shape, and one file per resource. Handlers never touch tensors: generation goes through
//! the portrait service and the job queue.

pub mod caller;
mod campaigns;
mod characters;
mod compat;
pub mod disk;
pub mod error;
pub mod extract;
mod invites;
mod jobs;
pub mod live;
mod media;
mod meta;
pub mod paging;
mod portrait_jobs;
mod portraits;
mod shown_cache;
pub mod trace;
mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::auth::{TokenStore, UrlSigner};
use crate::characters::CharacterStore;
use crate::jobs::JobQueue;
use crate::portraits::{ImageBackend, PortraitService};

/// Everything a handler may use; cheap to clone. The second part watches the data
/// directory's disk (see [`disk`]); the last is every how many steps jobs ask for a live
/// preview (`None`: never; see [`live`]).
#[derive(Clone)]
pub struct AppState(
    Arc<Inner>,
    Arc<disk::DiskGuard>,
    Arc<shown_cache::ShownCache>,
    Option<usize>,
);

pub struct Inner {
    pub store: Arc<dyn CharacterStore>,
    pub portraits: PortraitService,
    pub backend: Arc<dyn ImageBackend>,
    pub jobs: JobQueue,
    /// None = no authentication (loopback `--no-auth`): every caller is the local admin.
    pub tokens: Option<TokenStore>,
    pub signer: UrlSigner,
    /// How long a synchronous generation waits before its job is cancelled (the portrait-creator spec: 60 s).
    pub request_timeout: Duration,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// A state whose disk guard only measures the image store's folder (no floor, no reserve
    /// file); `limner serve` installs its own with [`Self::with_disk_guard`].
    pub fn new(inner: Inner) -> Self {
        let root = inner.portraits.images().local_root().map(Into::into);
        let shown = Arc::new(shown_cache::ShownCache::new(inner.signer.ttl_secs));
        AppState(
            Arc::new(inner),
            Arc::new(disk::DiskGuard::measuring(root, 0)),
            shown,
            Some(live::DEFAULT_PREVIEW_EVERY),
        )
    }

    pub fn with_disk_guard(self, guard: disk::DiskGuard) -> Self {
        AppState(self.0, Arc::new(guard), self.2, self.3)
    }

    /// Jobs ask for a live preview every `n` steps; 0 turns previews off (`--preview-every`).
    pub fn with_preview_every(self, n: usize) -> Self {
        AppState(self.0, self.1, self.2, (n > 0).then_some(n))
    }

    /// Every how many steps jobs ask the engine for a live preview (`None`: never).
    pub fn preview_every(&self) -> Option<usize> {
        self.3
    }

    /// Finished jobs' status replies, serialized, for pollers.
    pub(crate) fn shown_jobs(&self) -> &shown_cache::ShownCache {
        &self.2
    }

    pub fn disk(&self) -> &Arc<disk::DiskGuard> {
        &self.1
    }

    /// A signed, expiring URL for a media key (a path under the image store).
    pub fn media_url(&self, key: &str) -> String {
        self.signer.sign(
            &format!("/api/media/images/{key}"),
            crate::auth::signing_now(),
        )
    }
}

/// Runs blocking work (SQLite, image decoding, file I/O) on tokio's blocking pool, so handlers
/// never stall the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> error::ApiResult<T> + Send + 'static,
) -> error::ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error::ApiError::internal(e.to_string()))?
}

/// Largest request body: img2img init images arrive base64-encoded in JSON.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(meta::health))
        .route("/api/models", get(meta::models))
        .route("/api/loras", get(meta::loras))
        .route("/api/embeddings", get(meta::embeddings))
        .route("/api/openapi.json", get(meta::openapi))
        .route("/api/pregenerated", get(meta::list_pregenerated))
        .route(
            "/api/pregenerated/{id}/create",
            post(meta::create_from_pregenerated),
        )
        .route(
            "/api/characters",
            get(characters::list).post(characters::create),
        )
        .route(
            "/api/characters/{id}",
            get(characters::get_one)
                .patch(characters::patch)
                .delete(characters::delete_one),
        )
        .route(
            "/api/characters/{id}/portrait/generate",
            post(portraits::generate),
        )
        .route("/api/characters/{id}/portrait", get(portraits::current))
        .route("/api/portraits/estimate", post(portraits::estimate))
        .route(
            "/api/characters/{id}/regenerate-image",
            post(portraits::regenerate),
        )
        .route("/api/characters/{id}/portraits", get(portraits::history))
        .route(
            "/api/characters/{id}/portraits/{portrait_id}/current",
            post(portraits::make_current),
        )
        .route("/api/media/images/{*key}", get(media::image))
        .route(
            "/api/campaigns",
            get(campaigns::list).post(campaigns::create),
        )
        .route("/api/campaigns/join", post(invites::join))
        .route(
            "/api/campaigns/{id}",
            get(campaigns::get_one).delete(campaigns::delete_one),
        )
        .route(
            "/api/campaigns/{id}/invites",
            get(invites::list).post(invites::create),
        )
        .route(
            "/api/campaigns/{id}/invites/{code}",
            delete(invites::revoke),
        )
        .route(
            "/api/campaigns/{id}/characters",
            get(campaigns::roster).post(campaigns::join),
        )
        .route(
            "/api/campaigns/{id}/characters/{character_id}",
            delete(campaigns::leave)
                .get(campaigns::get_state)
                .patch(campaigns::update_state),
        )
        .route("/api/jobs/{id}", get(jobs::status).delete(jobs::cancel))
        .route("/api/jobs/{id}/events", get(jobs::events))
        .merge(compat::routes())
        .merge(ui::routes())
        .fallback(meta::not_found)
        .method_not_allowed_fallback(meta::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            disk::guard,
        ))
        .with_state(state)
}
