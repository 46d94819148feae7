//! `limner migrate` end to end through the real binary, on a legacy folder the test writes: two
//! campaigns sharing a character, a character without a profile file, a conflict, unknown enum
//! values, missing portrait files, a malformed JSON file; the report is checked field by field and
//! a second run must change nothing. Also: legacy ids that cannot be kept (unsafe, or taken).

use limner::characters::{CharacterFilter, CharacterStore, NewCharacter, NewPortrait, Store};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn write(path: &Path, value: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, value).unwrap();
}

fn write_json(path: &Path, value: Value) {
    write(path, &serde_json::to_string_pretty(&value).unwrap());
}

/// A real PNG of `w` x `h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 40]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn write_png(path: &Path, w: u32, h: u32) -> Vec<u8> {
    let bytes = png(w, h);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// The portrait-creator spec's legacy layout.
fn legacy_folder(root: &Path) {
    write_png(&root.join("media/aria.png"), 40, 60);
    write_png(&root.join("media/aria_old.png"), 30, 30);
    write_json(
        &root.join("character_profiles/char_a.json"),
        json!({
            "character_id": "char_a", "name": "Aria", "character_type": "player",
            "race": "wood-elf", "character_class": "RANGER", "voice_id": "voice-7",
            "voice_settings": {"pitch": 1.1}, "voice_archetype": "hero",
            "portrait_path": "media/aria.png", "portrait_prompt": "an elf ranger",
            "additional_images": ["media/aria_old.png", "media/missing.png"],
            "first_created": "2024-03-01T10:00:00.123456", "total_interactions": 7
        }),
    );
    write_json(
        &root.join("character_profiles/char_b.json"),
        json!({"character_id": "char_b", "name": "Borin", "race": "dwarf",
               "character_class": "adventurer", "character_type": "CharacterType.NPC"}),
    );
    write(&root.join("character_profiles/notes.txt"), "not a profile");
    // Campaign one: an array of CharacterInfo objects still carrying visual fields.
    write_json(
        &root.join("campaigns/camp1/characters.json"),
        json!([
            {"character_id": "char_a", "name": "Aria", "race": "High Elf", "gender": "female",
             "age_category": "young", "attire": "green cloak", "level": 3,
             "hit_points_current": 20, "hit_points_max": 25, "armor_class": 14,
             "status": "CharacterStatus.HEALTHY", "inventory": {"rope": 1},
             "location": "Tavern", "abilities": {"dex": 16}},
            {"character_id": "char_c", "name": "Cora", "race": "Tiefling",
             "character_class": "warlock", "gender": "non binary", "build": "lanky",
             "pose": "casting_spell", "level": 2, "hit_points_current": 9,
             "hit_points_max": 12, "armor_class": 11, "quests": ["find the relic"]}
        ]),
    );
    // Campaign two: an object keyed by character id.
    write_json(
        &root.join("campaigns/camp2/characters.json"),
        json!({
            "char_a": {"name": "Aria", "level": 5, "hit_points_current": 40,
                       "hit_points_max": 44, "armor_class": 15, "location": "Keep"},
            "char_b": {"name": "Borin", "level": 2, "armor_class": "sixteen"}
        }),
    );
    std::fs::create_dir_all(root.join("campaigns/empty_campaign")).unwrap();
}

fn migrate(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_limner"))
        .arg("migrate")
        .args(args)
        .env_remove("LIMNER_DATA_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON report ({e}): {stdout}\n{stderr}"));
    (out.status.success(), report, stderr)
}

fn counts(db: &Path) -> [i64; 4] {
    let conn = rusqlite::Connection::open(db).unwrap();
    [
        "characters",
        "campaigns",
        "campaign_characters",
        "portraits",
    ]
    .map(|t| {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    })
}

fn sorted(v: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| keys.iter().map(|k| o[*k].to_string()).collect())
        .collect();
    rows.sort();
    rows
}

#[test]
fn migrates_legacy_folder_and_second_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    legacy_folder(&legacy);
    let data = tmp.path().join("data");
    let (from, data_arg) = (legacy.to_str().unwrap(), data.to_str().unwrap());

    // A dry run reports the plan and creates no database.
    let (ok, dry, err) = migrate(&["--from", from, "--data-dir", data_arg, "--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["profiles_created"], 3);
    assert!(!data.join("limner.db").exists());
    assert_eq!(dry["portraits_copied"], 2);
    assert!(!data.join("media").exists(), "a dry run copies no file");

    let (ok, r, err) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(r["dry_run"], false);
    assert_eq!(r["profiles_created"], 3);
    assert_eq!(r["profiles_updated"], 0);
    assert_eq!(r["profiles_unchanged"], 0);
    assert_eq!(r["campaigns_created"], 2);
    assert_eq!(r["campaign_states_created"], 4);
    assert_eq!(r["portraits_recorded"], 2);
    assert_eq!(r["portraits_existing"], 0);
    assert_eq!(r["portraits_copied"], 2);
    assert_eq!(r["ids_changed"], json!([]));
    assert_eq!(r["errors"], json!([]));
    assert_eq!(
        sorted(
            &r["conflicts"],
            &[
                "character_id",
                "field",
                "kept",
                "kept_from",
                "discarded",
                "discarded_from"
            ]
        ),
        vec![vec![
            "\"char_a\"",
            "\"race\"",
            "\"Wood Elf\"",
            "\"character_profiles/char_a.json\"",
            "\"High Elf\"",
            "\"campaigns/camp1/characters.json\""
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()]
    );
    assert_eq!(
        sorted(
            &r["unrecognized"],
            &["character_id", "field", "value", "source"]
        ),
        vec![
            vec![
                "\"char_b\"",
                "\"armor_class\"",
                "\"sixteen\"",
                "\"campaigns/camp2/characters.json\""
            ],
            vec![
                "\"char_b\"",
                "\"character_class\"",
                "\"adventurer\"",
                "\"character_profiles/char_b.json\""
            ],
            vec![
                "\"char_c\"",
                "\"build\"",
                "\"lanky\"",
                "\"campaigns/camp1/characters.json\""
            ],
        ]
        .into_iter()
        .map(|r| r.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );
    let class_reason = r["unrecognized"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["field"] == "character_class")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(class_reason.contains("Artificer"), "{class_reason}");
    let skipped: Vec<String> = r["files_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "character_profiles/notes.txt",
        "campaigns/empty_campaign",
        "media/missing.png",
    ] {
        assert!(skipped.iter().any(|s| s == expected), "{skipped:?}");
    }
    assert_eq!(skipped.len(), 3, "{skipped:?}");

    // The database now holds one profile per character, states per campaign.
    let db = data.join("limner.db");
    assert_eq!(counts(&db), [3, 2, 4, 2]);
    let id_of = |legacy_id: &str| -> String {
        r["characters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["legacy_id"] == legacy_id)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The legacy ids are the ids.
    for legacy_id in ["char_a", "char_b", "char_c"] {
        assert_eq!(id_of(legacy_id), legacy_id);
    }
    let store = Store::open(&db).unwrap();
    let aria = store.get_character("char_a").unwrap();
    assert_eq!(aria.race.unwrap().as_str(), "Wood Elf");
    assert_eq!(aria.character_class.unwrap().as_str(), "Ranger");
    // Fields only the campaign copy had moved to the profile.
    assert_eq!(aria.gender.as_str(), "Female");
    assert_eq!(aria.age_category.unwrap().as_str(), "Young");
    assert_eq!(aria.attire.as_deref(), Some("green cloak"));
    assert_eq!(aria.voice_id.as_deref(), Some("voice-7"));
    assert_eq!(aria.voice_settings, json!({"pitch": 1.1}));
    assert_eq!(aria.total_interactions, 7);
    assert_eq!(
        aria.created_at.to_rfc3339(),
        "2024-03-01T10:00:00.123456+00:00"
    );
    assert_eq!(aria.base_level, 3);
    let history = store.portrait_history(&aria.id).unwrap();
    assert_eq!(history.len(), 2);
    let current = history.iter().find(|p| p.is_current).unwrap();
    // Copied into the media store, byte for byte, with a thumbnail.
    assert!(
        current.file_path.starts_with("portraits/char_a/legacy-"),
        "{}",
        current.file_path
    );
    assert_eq!(
        std::fs::read(data.join("media").join(&current.file_path)).unwrap(),
        std::fs::read(legacy.join("media/aria.png")).unwrap()
    );
    let thumb = current.thumbnail_path.as_deref().unwrap();
    assert!(data.join("media").join(thumb).is_file());
    assert_eq!(current.prompt, "an elf ranger");

    let borin = store.get_character(&id_of("char_b")).unwrap();
    assert_eq!(borin.character_class, None);
    assert_eq!(borin.character_type.as_str(), "npc");
    let cora = store.get_character(&id_of("char_c")).unwrap();
    assert_eq!(cora.name, "Cora");
    assert_eq!(cora.build.as_str(), "Average");
    assert_eq!(cora.gender.as_str(), "Non-binary");
    assert_eq!(cora.pose.unwrap().as_str(), "Casting Spell");

    // One profile, two campaign states; level override only where it differs.
    let campaigns = store.list_campaigns(&Default::default()).unwrap();
    let camp = |name: &str| {
        campaigns
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .id
            .clone()
    };
    assert_eq!(
        (camp("camp1"), camp("camp2")),
        ("camp1".into(), "camp2".into())
    );
    let in1 = store
        .enriched_character(&aria.id, Some(&camp("camp1")))
        .unwrap();
    let in2 = store
        .enriched_character(&aria.id, Some(&camp("camp2")))
        .unwrap();
    assert_eq!((in1.level, in2.level), (3, 5));
    assert_eq!(in1.hit_points_max, Some(25));
    assert_eq!(in1.armor_class, Some(14));
    assert_eq!(in1.status.as_deref(), Some("healthy"));
    assert_eq!(in1.location.as_deref(), Some("Tavern"));
    assert_eq!(in1.extra, Some(json!({"abilities": {"dex": 16}})));
    assert_eq!(in2.location.as_deref(), Some("Keep"));
    let b2 = store.campaign_state(&camp("camp2"), &borin.id).unwrap();
    assert_eq!(b2.armor_class, 10);
    assert_eq!(b2.level, None);
    let c1 = store.campaign_state(&camp("camp1"), &cora.id).unwrap();
    assert_eq!(c1.quests, json!(["find the relic"]));
    assert_eq!(c1.extra, json!({}));
    drop(store);

    // Second run: nothing new.
    let (ok, again, err) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(again["profiles_created"], 0);
    assert_eq!(again["profiles_updated"], 0);
    assert_eq!(again["profiles_unchanged"], 3);
    assert_eq!(again["campaigns_created"], 0);
    assert_eq!(again["campaigns_existing"], 2);
    assert_eq!(again["campaign_states_created"], 0);
    assert_eq!(again["campaign_states_existing"], 4);
    assert_eq!(again["portraits_recorded"], 0);
    assert_eq!(again["portraits_existing"], 2);
    assert_eq!(again["portraits_copied"], 0);
    assert_eq!(counts(&db), [3, 2, 4, 2]);
    let store = Store::open(&db).unwrap();
    assert_eq!(store.get_character(&aria.id).unwrap(), aria);
    let listed = store.list_characters(&CharacterFilter::default()).unwrap();
    assert_eq!(listed.len(), 3);
}

#[test]
fn malformed_input_writes_nothing_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    legacy_folder(&legacy);
    write(
        &legacy.join("campaigns/camp3/characters.json"),
        "{\"char_x\": {\"name\": ",
    );
    let data = tmp.path().join("data");
    let (from, data_arg) = (legacy.to_str().unwrap(), data.to_str().unwrap());

    let (ok, r, _) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(!ok);
    let errors = r["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["path"], "campaigns/camp3/characters.json");
    assert!(errors[0]["reason"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    assert!(!data.join("limner.db").exists(), "nothing may be written");

    // Into an existing database: still untouched.
    let store = Store::open_in_data_dir(&data).unwrap();
    drop(store);
    let before = counts(&data.join("limner.db"));
    let (ok, _, _) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(!ok);
    assert_eq!(counts(&data.join("limner.db")), before);

    // Unreadable source folder.
    let missing = tmp.path().join("nope");
    let (ok, r, _) = migrate(&["--from", missing.to_str().unwrap(), "--data-dir", data_arg]);
    assert!(!ok);
    assert_eq!(r["errors"].as_array().unwrap().len(), 1);

    // Asked to, it skips the bad file and migrates the rest.
    let (ok, r, err) = migrate(&["--from", from, "--data-dir", data_arg, "--skip-malformed"]);
    assert!(ok, "{err}");
    assert_eq!(r["profiles_created"], 3);
    assert!(r["files_skipped"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["path"] == "campaigns/camp3/characters.json"));
}

fn new_character(name: &str) -> NewCharacter {
    NewCharacter {
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn older_migrations_are_repaired_and_unsafe_or_taken_ids_get_new_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    let data = tmp.path().join("data");
    let legacy_png = write_png(&legacy.join("media/x.png"), 20, 20);
    let db = data.join("limner.db");

    // What an older limner left: UUID ids, the legacy path itself as the portrait file, and a
    // portrait generated since under the UUID's media folder.
    let store = Store::open(&db).unwrap();
    let other = store.create_character(&new_character("Other")).unwrap();
    let (old, _) = store
        .import_character("legacy:char_x", &new_character("Xan"))
        .unwrap();
    let legacy_path = legacy.join("media/x.png").canonicalize().unwrap();
    let portrait = |file: &str, thumb: Option<&str>| NewPortrait {
        character_id: old.id.clone(),
        file_path: file.into(),
        thumbnail_path: thumb.map(str::to_string),
        ..Default::default()
    };
    store
        .add_portrait(&portrait(legacy_path.to_str().unwrap(), None), true)
        .unwrap();
    let generated = format!("portraits/{}/gen.png", old.id);
    let generated_thumb = format!("portraits/{}/gen.thumb.png", old.id);
    store
        .add_portrait(&portrait(&generated, Some(&generated_thumb)), false)
        .unwrap();
    let generated_png = write_png(&data.join("media").join(&generated), 8, 8);
    write_png(&data.join("media").join(&generated_thumb), 4, 4);
    let campaign = store
        .create_campaign(&limner::characters::NewCampaign {
            name: "First".into(),
            dm_id: None,
            description: None,
        })
        .unwrap();
    store
        .join_campaign(&campaign.id, &old.id, &Default::default())
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE campaigns SET import_key = 'legacy:camp1'", [])
        .unwrap();
    drop(conn);

    write_json(
        &legacy.join("character_profiles/char_x.json"),
        json!({"character_id": "char_x", "name": "Xan", "portrait_path": "media/x.png"}),
    );
    write_json(
        &legacy.join("character_profiles/bad.json"),
        json!({"character_id": "bad id/1", "name": "Bad"}),
    );
    write_json(
        &legacy.join("character_profiles/taken.json"),
        json!({"character_id": other.id, "name": "Taken"}),
    );
    write_json(
        &legacy.join("campaigns/camp1/characters.json"),
        json!([{"character_id": "char_x", "name": "Xan", "level": 2}]),
    );
    let (from, data_arg) = (legacy.to_str().unwrap(), data.to_str().unwrap());

    let (ok, r, err) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(r["profiles_created"], 2, "{r}");
    assert_eq!(r["portraits_copied"], 1, "{r}");
    assert_eq!(r["portraits_existing"], 1, "{r}");
    let changes = r["ids_changed"].as_array().unwrap().clone();
    assert_eq!(changes.len(), 2, "{r}");
    let change = |legacy_id: &str| {
        changes
            .iter()
            .find(|c| c["legacy_id"] == legacy_id)
            .unwrap_or_else(|| panic!("{legacy_id} not in {changes:?}"))
            .clone()
    };
    let bad = change("bad id/1");
    assert_eq!(bad["kind"], "character");
    assert!(bad["reason"].as_str().unwrap().contains("' '"), "{bad}");
    let taken = change(&other.id);
    assert_ne!(taken["id"], other.id);
    assert!(
        taken["reason"]
            .as_str()
            .unwrap()
            .contains("already has this id"),
        "{taken}"
    );
    assert!(
        err.contains("bad id/1"),
        "the renaming is not on stderr: {err}"
    );

    let store = Store::open(&db).unwrap();
    // The UUID record moved to its legacy id, with its campaign and every portrait.
    assert!(store.get_character(&old.id).is_err());
    let xan = store.get_character("char_x").unwrap();
    assert_eq!(xan.name, "Xan");
    assert_eq!(xan.created_at, old.created_at);
    let camp = store.get_campaign("camp1").unwrap();
    assert_eq!(camp.character_ids, ["char_x"]);
    let history = store.portrait_history("char_x").unwrap();
    assert_eq!(history.len(), 2);
    let media = data.join("media");
    let copied = history.iter().find(|p| p.is_current).unwrap();
    assert!(
        copied.file_path.starts_with("portraits/char_x/legacy-"),
        "{copied:?}"
    );
    assert_eq!(
        std::fs::read(media.join(&copied.file_path)).unwrap(),
        legacy_png
    );
    let moved = history.iter().find(|p| !p.is_current).unwrap();
    assert_eq!(moved.file_path, "portraits/char_x/gen.png");
    assert_eq!(
        std::fs::read(media.join(&moved.file_path)).unwrap(),
        generated_png
    );
    assert!(media
        .join(moved.thumbnail_path.as_deref().unwrap())
        .is_file());
    assert!(
        !media.join(&generated).exists(),
        "the old file was left behind"
    );
    assert_eq!(store.get_character(&other.id).unwrap().name, "Other");
    assert_eq!(
        store
            .get_character(taken["id"].as_str().unwrap())
            .unwrap()
            .name,
        "Taken"
    );
    drop(store);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dangling: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0);
    drop(conn);

    // Again: nothing changes, and the report still says where the renamed ones went.
    let before = counts(&db);
    let (ok, again, err) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(again["profiles_created"], 0);
    assert_eq!(again["profiles_unchanged"], 3, "{again}");
    assert_eq!(again["portraits_copied"], 0);
    assert_eq!(again["ids_changed"], r["ids_changed"]);
    assert_eq!(counts(&db), before);
}

#[test]
fn unreadable_portrait_files_are_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join("legacy");
    write(&legacy.join("media/fake.png"), "not an image");
    write_json(
        &legacy.join("character_profiles/char_f.json"),
        json!({"character_id": "char_f", "name": "Fay", "portrait_path": "media/fake.png",
               "additional_images": ["/nowhere/gone.png"]}),
    );
    let data = tmp.path().join("data");
    let (from, data_arg) = (legacy.to_str().unwrap(), data.to_str().unwrap());
    let (ok, r, err) = migrate(&["--from", from, "--data-dir", data_arg]);
    assert!(ok, "{err}");
    assert_eq!(r["profiles_created"], 1);
    assert_eq!(r["portraits_recorded"], 0);
    let skipped = r["files_skipped"].as_array().unwrap();
    let reason = |path: &str| {
        skipped
            .iter()
            .find(|s| s["path"] == path)
            .unwrap_or_else(|| panic!("{path} not skipped: {skipped:?}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(reason("media/fake.png").contains("not a PNG, JPEG or WebP"));
    assert!(reason("/nowhere/gone.png").contains("not found"));
    assert!(!data.join("media").exists(), "nothing may be copied");
}
