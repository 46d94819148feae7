//! Median latency of every character / campaign list and single read, per kind of caller, with
//! 100,000 characters (many owners, 2,000 campaigns) in a real SQLite file, through the real
//! router with authentication on. `cargo bench --bench access` (`--profile dev` skips a release
//! build of every dependency). `LIMNER_BENCH_CHARACTERS` changes the size.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/app.rs"]
mod app;

use app::App;
use limner::auth::Role;
use limner::characters::{CharacterStore, NewCampaign, NewCharacter, SqliteStore};

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

/// One request: (status, X-Next-Cursor, rows in a JSON array body).
async fn call(a: &App, uri: &str, token: &str) -> (u16, Option<String>, usize) {
    let r = a.get(uri, token).await;
    let rows = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    (r.status.as_u16(), r.header("x-next-cursor"), rows)
}

async fn median(a: &App, uri: &str, token: &str) -> (Duration, u16, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        let (status, _, rows) = call(a, uri, token).await;
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
    let r = App::over(dir, s.store.clone());
    let token = |u: &str, role| r.user(u, role);
    let roles = [
        ("admin", token("root", Role::Admin)),
        ("owner p1", token("p1", Role::Player)),
        ("heavy owner", token("heavy", Role::Player)),
        ("dm0", token("dm0", Role::Player)),
        ("outsider", token("nobody", Role::Player)),
    ];
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
