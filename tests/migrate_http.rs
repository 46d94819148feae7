//! `limner migrate` followed by the real `limner serve` on the same data directory: the legacy
//! ids (`thorin_01`, `camp_a`) resolve through the HTTP API, the migrated portrait is served from
//! the media store (signed URL, thumbnail) even after the legacy file is deleted, and a second
//! run changes neither the database nor the media files.

#[path = "common/server.rs"]
mod server;

use serde_json::{json, Value};
use server::{limner_command, Client, Server};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn write_json(path: &Path, value: Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// A real PNG (a small gradient), so the server can make a thumbnail of it.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The portrait-creator spec's layout: a profile file with an absolute portrait path, and a
/// campaign (with its metadata) whose roster holds that character and one without a profile
/// (whose id has a dot, and whose JPEG portrait lies in the campaign's media folder).
fn legacy_folder(root: &Path, portrait: &Path) {
    write_json(
        &root.join("character_profiles/thorin_01.json"),
        json!({
            "character_id": "thorin_01", "name": "Thorin Oakenshield", "character_type": "player",
            "race": "dwarf", "character_class": "fighter", "gender": "male",
            "voice_id": "voice-dwarf-3", "attire": "battered plate",
            "portrait_path": portrait.to_str().unwrap(), "portrait_prompt": "a dwarf king",
        }),
    );
    write_json(
        &root.join("campaigns/camp_a/campaign.json"),
        json!({"name": "The Lonely Mountain", "dm_id": "gandalf"}),
    );
    write_json(
        &root.join("campaigns/camp_a/characters.json"),
        json!([
            {"character_id": "thorin_01", "name": "Thorin Oakenshield", "level": 4,
             "hit_points_current": 30, "hit_points_max": 38, "armor_class": 17},
            // Absolute in form, relative to the storage folder (as the spec's server wrote it).
            {"character_id": "npc.mira-2", "name": "Mira", "race": "halfling",
             "character_class": "rogue", "level": 2,
             "portrait_path": "/campaigns/camp_a/media/portraits/mira.jpg"}
        ]),
    );
}

fn migrate(legacy: &Path, data: &Path) -> Value {
    let out = limner_command()
        .arg("migrate")
        .arg("--from")
        .arg(legacy)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "migrate failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON report ({e}): {stdout}"))
}

/// Every file under the media folder with its bytes.
fn media_files(data: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    let media = data.join("media");
    if media.is_dir() {
        walk(&media, &mut out);
    }
    out
}

fn counts(db: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    [
        "characters",
        "campaigns",
        "campaign_characters",
        "portraits",
    ]
    .iter()
    .map(|t| {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    })
    .collect()
}

/// GETs a media URL from a reply (absolute or a path) without credentials: the signature alone
/// must be enough, as for an `<img src>`.
fn fetch_media(server: &Server, url: &str) -> (u16, Option<String>, Vec<u8>) {
    let path = url.strip_prefix(&server.base).unwrap_or(url);
    server.client().get_bytes(path)
}

/// Checks through HTTP that the legacy ids resolve and the portrait is served; returns the
/// portrait's bytes as served.
fn check_served(server: &Server, admin: &Client, want_png: &[u8]) {
    let thorin = admin.get("/api/characters/thorin_01").expect(200);
    assert_eq!(thorin.json["id"], "thorin_01");
    assert_eq!(thorin.json["name"], "Thorin Oakenshield");
    assert_eq!(thorin.json["race"], "Dwarf");
    assert_eq!(thorin.json["character_class"], "Fighter");
    assert_eq!(thorin.json["voice_id"], "voice-dwarf-3");
    assert_eq!(thorin.json["attire"], "battered plate");
    let mira = admin.get("/api/characters/npc.mira-2").expect(200);
    assert_eq!(mira.json["name"], "Mira");
    let mira_portrait = admin.get("/api/characters/npc.mira-2/portrait").expect(200);
    let (status, ct, jpeg) = fetch_media(server, &mira_portrait.str("portrait_url"));
    assert_eq!((status, ct.as_deref()), (200, Some("image/jpeg")));
    assert_eq!(image::load_from_memory(&jpeg).unwrap().width(), 40);

    let camp = admin.get("/api/campaigns/camp_a").expect(200);
    assert_eq!(camp.json["id"], "camp_a");
    assert_eq!(camp.json["name"], "The Lonely Mountain");
    let mut members: Vec<String> = camp.json["character_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    members.sort();
    assert_eq!(members, ["npc.mira-2", "thorin_01"]);
    let roster = admin.get("/api/campaigns/camp_a/characters").expect(200);
    let in_roster = roster
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "thorin_01")
        .unwrap_or_else(|| panic!("thorin_01 not in the roster: {}", roster.text))
        .clone();
    assert_eq!(in_roster["level"], 4);
    assert_eq!(in_roster["armor_class"], 17);
    let state = admin
        .get("/api/campaigns/camp_a/characters/thorin_01")
        .expect(200);
    assert_eq!(state.json["hit_points_max"], 38);

    let history = admin.get("/api/characters/thorin_01/portraits").expect(200);
    let list = history.json.as_array().unwrap();
    let entry = list
        .iter()
        .find(|p| p["model"] == "legacy")
        .unwrap_or_else(|| panic!("no migrated portrait in {}", history.text));
    let url = entry["portrait_url"].as_str().unwrap();
    assert!(url.contains("/api/media/images/portraits/"), "{url}");
    let (status, ct, bytes) = fetch_media(server, url);
    assert_eq!(status, 200, "{url}");
    assert_eq!(ct.as_deref(), Some("image/png"));
    assert_eq!(
        bytes, want_png,
        "the served portrait is not the legacy file"
    );
    let thumb = entry["thumbnail_url"].as_str().unwrap_or_else(|| {
        panic!("no thumbnail_url: {entry}");
    });
    let (status, ct, thumb) = fetch_media(server, thumb);
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("image/png"));
    let thumb = image::load_from_memory(&thumb).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (256, 192));

    let current = admin.get("/api/characters/thorin_01/portrait").expect(200);
    assert_eq!(current.json["has_portrait"], true, "{}", current.text);
}

#[test]
fn legacy_ids_resolve_and_portraits_are_served_after_migrate() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    // Absolute, outside the legacy folder: where the old server wrote it.
    let portrait = tmp.path().join("old_media/portraits/thorin_01.png");
    std::fs::create_dir_all(portrait.parent().unwrap()).unwrap();
    let bytes = png(512, 384);
    std::fs::write(&portrait, &bytes).unwrap();
    legacy_folder(&legacy, &portrait);
    let mira = legacy.join("campaigns/camp_a/media/portraits/mira.jpg");
    std::fs::create_dir_all(mira.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(40, 50, image::Rgb([200, 120, 40]))
        .save(&mira)
        .unwrap();
    let data = tmp.path().join("data");

    let first = migrate(&legacy, &data);
    assert_eq!(first["profiles_created"], 2, "{first}");
    assert_eq!(first["portraits_recorded"], 2, "{first}");
    assert_eq!(first["portraits_copied"], 2, "{first}");
    assert_eq!(first["ids_changed"], json!([]), "{first}");
    let db = data.join("limner.db");
    let after_first = (counts(&db), media_files(&data));
    assert!(
        after_first.1.values().any(|b| *b == bytes),
        "the portrait was not copied into the media store"
    );

    // A second run changes nothing: same rows, same files.
    let second = migrate(&legacy, &data);
    assert_eq!(second["profiles_created"], 0, "{second}");
    assert_eq!(second["profiles_unchanged"], 2, "{second}");
    assert_eq!(second["campaigns_existing"], 1, "{second}");
    assert_eq!(second["portraits_recorded"], 0, "{second}");
    assert_eq!(second["portraits_copied"], 0, "{second}");
    assert_eq!(second["portraits_existing"], 2, "{second}");
    assert_eq!((counts(&db), media_files(&data)), after_first);

    let server = Server::start(&data, &[]);
    let token = server.admin_token.clone().expect("admin token");
    let admin = server.client_with(&token);
    check_served(&server, &admin, &bytes);
    // The regeneration guide's img2img starts from the migrated file like from any portrait.
    let regen = admin
        .post(
            "/api/characters/thorin_01/regenerate-image",
            &json!({"newPrompt": "smiling", "denoisingStrength": 0.5, "steps": 4}),
        )
        .expect(200);
    assert_eq!(regen.json["character"]["id"], "thorin_01");
    let history = admin.get("/api/characters/thorin_01/portraits").expect(200);
    assert_eq!(history.json.as_array().unwrap().len(), 2);
    assert_eq!(server.stop().code(), Some(0));

    // The legacy file is gone: the copy is still served, and migrating again is still a no-op
    // that does not call the imported portrait missing.
    std::fs::remove_file(&portrait).unwrap();
    let before_third = counts(&db);
    let third = migrate(&legacy, &data);
    assert_eq!(third["portraits_existing"], 2, "{third}");
    assert_eq!(third["portraits_copied"], 0, "{third}");
    assert_eq!(third["files_skipped"], json!([]), "{third}");
    assert_eq!(counts(&db), before_third);
    // The admin token lives in the database, so it still works after the restart.
    let server = Server::start(&data, &[]);
    let admin = server.client_with(&token);
    check_served(&server, &admin, &bytes);
}
