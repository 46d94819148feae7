//! Median latency of every character / campaign list and single read, per kind of caller, with
//! 100,000 characters (many owners, 2,000 campaigns) in a real SQLite file, through the real
//! router with authentication on. `cargo bench --bench access` (`--profile dev` skips a release
//! build of every dependency). `LIMNER_BENCH_CHARACTERS` changes the size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use http_body_util::BodyExt;
use limner::api::{app, AppState, Inner};
use limner::auth::{Role, TokenStore, UrlSigner};
use limner::characters::{CharacterStore, NewCampaign, NewCharacter, SqliteStore};
use limner::jobs::{JobQueue, QueueConfig};
use limner::portraits::{
    FakeBackend, ImageBackend, LocalImageStore, PortraitService, PortraitTemplates, StyleModels,
};
use tower::ServiceExt;

const PLAYERS: usize = 1000;
const CAMPAIGNS: usize = 2000;
const DMS: usize = 200;
/// The heavy owner's share: every 50th character.
const HEAVY_EVERY: usize = 50;
const RUNS: usize = 41;

struct Seeded {
    store: Arc<SqliteStore>,
    /// A character of p1 (in a campaign), one of p2 (in none), a campaign p1 plays in, one dm0 runs.
    p1_character: String,
    p2_character: String,
    p1_campaign: String,
    dm0_campaign: String,
}

fn seed(dir: &std::path::Path, n: usize) -> Seeded {
    let store = Arc::new(SqliteStore::open_in_data_dir(dir).unwrap());
    let t = Instant::now();
    let campaigns: Vec<String> = (0..CAMPAIGNS)
        .map(|k| {
            store
                .create_campaign(&NewCampaign {
                    name: format!("Campaign {k}"),
                    dm_id: Some(format!("dm{}", k % DMS)),
                    description: None,
                })
                .unwrap()
                .id
        })
        .collect();
    let (mut p1_character, mut p2_character, mut p1_campaign) = (None, None, None);
    for i in 0..n {
        let owner = if i % HEAVY_EVERY == 0 {
            "heavy".to_string()
        } else {
            format!("p{}", (i * 7919) % PLAYERS)
        };
        let id = store
            .create_character(&NewCharacter {
                name: format!("Hero {i}"),
                owner_id: Some(owner.clone()),
                ..Default::default()
            })
            .unwrap()
            .id;
        // Three in ten play in a campaign (15 members a campaign on average).
        let joins = (i / 7) % 10 < 3;
        if joins {
            let k = &campaigns[(i * 31) % CAMPAIGNS];
            store.join_campaign(k, &id, &Default::default()).unwrap();
            if owner == "p1" && p1_campaign.is_none() {
                p1_campaign = Some(k.clone());
                p1_character = Some(id.clone());
            }
        } else if owner == "p2" && p2_character.is_none() {
            p2_character = Some(id.clone());
        }
    }
    eprintln!("  seeded {n} characters in {:.0?}", t.elapsed());
    Seeded {
        store,
        p1_character: p1_character.expect("p1 plays somewhere"),
        p2_character: p2_character.expect("p2 has a character outside campaigns"),
        p1_campaign: p1_campaign.unwrap(),
        dm0_campaign: campaigns[0].clone(),
    }
}

fn router(dir: &std::path::Path, store: Arc<SqliteStore>, tokens: TokenStore) -> Router {
    let store: Arc<dyn CharacterStore> = store;
    let backend: Arc<dyn ImageBackend> = Arc::new(FakeBackend::new());
    let templates = PortraitTemplates::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/prompts"
    )))
    .unwrap();
    let portraits = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(dir.join("media"))),
        backend.clone(),
        templates,
        StyleModels::new(),
    );
    app(AppState::new(Inner {
        store,
        portraits,
        backend,
        jobs: JobQueue::new(QueueConfig::default()).unwrap(),
        tokens: Some(tokens),
        signer: UrlSigner::new(vec![1; 32], 3600),
        request_timeout: Duration::from_secs(30),
    }))
}

/// One request: (status, X-Next-Cursor, rows in a JSON array body).
async fn call(r: &Router, uri: &str, token: &str) -> (u16, Option<String>, usize) {
    let req = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let cursor = resp
        .headers()
        .get("x-next-cursor")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let rows = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    (status, cursor, rows)
}

async fn median(r: &Router, uri: &str, token: &str) -> (Duration, u16, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let (status, _, rows) = call(r, uri, token).await;
        times.push(t.elapsed());
        last = (status, rows);
    }
    times.sort();
    (times[RUNS / 2], last.0, last.1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("LIMNER_BENCH_CHARACTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // tmpfs when there is one: seeding commits 130,000 transactions, each with an fsync.
    let base = ["/dev/shm"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    eprintln!(
        "seeding {n} characters, {CAMPAIGNS} campaigns into {}",
        dir.path().display()
    );
    let s = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || seed(&d, n)
    })
    .await
    .unwrap();
    let tokens = TokenStore::open_in_memory().unwrap();
    let token = |u: &str, role| tokens.create(u, role).unwrap().0;
    let roles = [
        ("admin", token("root", Role::Admin)),
        ("owner p1", token("p1", Role::Player)),
        ("heavy owner", token("heavy", Role::Player)),
        ("dm0", token("dm0", Role::Player)),
        ("outsider", token("nobody", Role::Player)),
    ];
    let r = router(dir.path(), s.store.clone(), tokens.clone());
    println!("| caller | request | median | status | rows |");
    println!("|---|---|---|---|---|");
    for (role, tok) in &roles {
        let (_, cursor, _) = call(&r, "/api/characters", tok).await;
        let mut uris = vec![
            "/api/characters".to_string(),
            "/api/characters?limit=1000".to_string(),
            "/api/characters?name=hero%204242".to_string(),
            "/api/characters?owner_id=p1".to_string(),
            format!("/api/characters?campaign_id={}", s.p1_campaign),
            format!("/api/characters/{}", s.p1_character),
            format!("/api/characters/{}", s.p2_character),
            "/api/campaigns".to_string(),
            format!("/api/campaigns/{}", s.dm0_campaign),
            format!("/api/campaigns/{}/characters", s.p1_campaign),
        ];
        if let Some(c) = cursor {
            uris.insert(1, format!("/api/characters?cursor={c}"));
        }
        for uri in uris {
            let (t, status, rows) = median(&r, &uri, tok).await;
            let shown = if uri.len() > 60 {
                format!("{}…", &uri[..60])
            } else {
                uri.clone()
            };
            println!(
                "| {role} | `{shown}` | {:.2} ms | {status} | {rows} |",
                t.as_secs_f64() * 1e3
            );
        }
    }
}
