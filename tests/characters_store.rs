//! Character profiles on temporary databases: schema, enum normalization and errors, defaults,
//! limits, list filters and paging, patches, delete, concurrency and pregenerated characters.

#[path = "common/store.rs"]
mod common_store;
use common_store::{named, store};

use limner::characters::{
    import_pregenerated, pregenerated, CharacterFilter, CharacterPatch, CharacterStore,
    NewCampaign, NewCharacter, NewPortrait, Store, StoreError, SCHEMA_VERSION,
};
use std::collections::BTreeSet;

fn validation_field(err: StoreError) -> (String, String) {
    match err {
        StoreError::Validation(v) => (v.field, v.message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn open_applies_schema_with_wal_and_foreign_keys() {
    let (dir, store) = store();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let created = store.create_character(&named("Ada")).unwrap();
    drop(store);
    // Reopening runs no migration twice and keeps the data.
    let store = Store::open_in_data_dir(dir.path()).unwrap();
    assert_eq!(store.get_character(&created.id).unwrap().name, "Ada");
    let raw = rusqlite::Connection::open(dir.path().join("limner.db")).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Foreign keys (ON DELETE CASCADE) are exercised by the delete test below.
}

#[test]
fn loose_enum_spellings_are_stored_canonically() {
    let (_dir, store) = store();
    let mut new = named("Vex");
    new.race = Some("DARK_ELF".into());
    new.gender = Some("non binary".into());
    new.character_class = Some("warlock".into());
    new.age_category = Some("middle aged".into());
    new.build = Some("  muscular ".into());
    new.facial_expression = Some("BROODING".into());
    new.pose = Some("arms-crossed".into());
    new.character_type = Some("NPC".into());
    let p = store.create_character(&new).unwrap();
    let back = store.get_character(&p.id).unwrap();
    assert_eq!(back, p);
    let json = serde_json::to_value(&back).unwrap();
    assert_eq!(json["race"], "Dark Elf");
    assert_eq!(json["gender"], "Non-binary");
    assert_eq!(json["character_class"], "Warlock");
    assert_eq!(json["age_category"], "Middle-aged");
    assert_eq!(json["build"], "Muscular");
    assert_eq!(json["facial_expression"], "Brooding");
    assert_eq!(json["pose"], "Arms Crossed");
    assert_eq!(json["character_type"], "npc");
    assert!(uuid::Uuid::parse_str(&back.id).is_ok());
}

#[test]
fn defaults_are_applied_when_fields_are_missing() {
    let (_dir, store) = store();
    let new: NewCharacter = serde_json::from_str(r#"{"name": "Plain"}"#).unwrap();
    let p = store.create_character(&new).unwrap();
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["gender"], "Non-binary");
    assert_eq!(json["build"], "Average");
    assert_eq!(json["facial_expression"], "Determined");
    assert_eq!(json["base_level"], 1);
    assert!(json["race"].is_null());
    assert!(json["current_portrait_id"].is_null());
}

#[test]
fn unknown_enum_values_name_field_and_allowed_values() {
    let (_dir, store) = store();
    let mut new = named("Bad");
    new.race = Some("Goblin".into());
    let (field, message) = validation_field(store.create_character(&new).unwrap_err());
    assert_eq!(field, "race");
    for allowed in ["Human", "Dark Elf", "Half-Orc", "Rock Gnome"] {
        assert!(message.contains(allowed), "{message}");
    }
    let mut new = named("Bad");
    new.pose = Some("dancing".into());
    assert_eq!(
        validation_field(store.create_character(&new).unwrap_err()).0,
        "pose"
    );
    let mut new = named("Bad");
    new.gender = Some("robot".into());
    assert_eq!(
        validation_field(store.create_character(&new).unwrap_err()).0,
        "gender"
    );
    // Nothing half-created.
    assert!(store
        .list_characters(&Default::default())
        .unwrap()
        .is_empty());
}

#[test]
fn length_limits_name_field_and_limit() {
    let (_dir, store) = store();
    let (field, message) = validation_field(store.create_character(&named("")).unwrap_err());
    assert_eq!(field, "name");
    assert!(message.contains("100"), "{message}");
    let mut new = named("Long");
    new.backstory = Some("b".repeat(4001));
    let (field, message) = validation_field(store.create_character(&new).unwrap_err());
    assert_eq!(field, "backstory");
    assert!(message.contains("4000"), "{message}");
    let mut new = named("Long");
    new.facial_features = Some("f".repeat(201));
    let (field, message) = validation_field(store.create_character(&new).unwrap_err());
    assert_eq!(field, "facial_features");
    assert!(message.contains("200"), "{message}");
    // Exactly at the limit is fine.
    let mut new = named(&"n".repeat(100));
    new.backstory = Some("b".repeat(4000));
    assert!(store.create_character(&new).is_ok());
}

#[test]
fn get_unknown_character_is_not_found() {
    let (_dir, store) = store();
    assert!(matches!(
        store.get_character("nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn list_filters_by_owner_campaign_and_name_with_paging() {
    let (_dir, store) = store();
    let mut ids = Vec::new();
    for (name, owner) in [
        ("Alpha", "u1"),
        ("beta", "u1"),
        ("Gamma 100%", "u2"),
        ("Delta", "u2"),
    ] {
        let mut n = named(name);
        n.owner_id = Some(owner.into());
        ids.push(store.create_character(&n).unwrap().id);
    }
    let campaign = store
        .create_campaign(&NewCampaign {
            name: "Camp".into(),
            ..Default::default()
        })
        .unwrap();
    store
        .join_campaign(&campaign.id, &ids[1], &Default::default())
        .unwrap();
    store
        .join_campaign(&campaign.id, &ids[2], &Default::default())
        .unwrap();

    let names = |f: CharacterFilter| -> Vec<String> {
        store
            .list_characters(&f)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect()
    };
    assert_eq!(
        names(Default::default()),
        ["Alpha", "beta", "Delta", "Gamma 100%"]
    );
    let by_owner = CharacterFilter {
        owner_id: Some("u2".into()),
        ..Default::default()
    };
    assert_eq!(names(by_owner), ["Delta", "Gamma 100%"]);
    let by_campaign = CharacterFilter {
        campaign_id: Some(campaign.id.clone()),
        ..Default::default()
    };
    assert_eq!(names(by_campaign), ["beta", "Gamma 100%"]);
    let by_name = CharacterFilter {
        name: Some("ALP".into()),
        ..Default::default()
    };
    assert_eq!(names(by_name), ["Alpha"]);
    // '%' is a literal, not a wildcard.
    let percent = CharacterFilter {
        name: Some("0%".into()),
        ..Default::default()
    };
    assert_eq!(names(percent), ["Gamma 100%"]);
    let combined = CharacterFilter {
        owner_id: Some("u1".into()),
        campaign_id: Some(campaign.id),
        ..Default::default()
    };
    assert_eq!(names(combined), ["beta"]);
    let page2 = CharacterFilter {
        limit: Some(2),
        offset: Some(2),
        ..Default::default()
    };
    assert_eq!(names(page2), ["Delta", "Gamma 100%"]);
}

#[test]
fn patch_changes_only_given_fields_and_null_clears() {
    let (_dir, store) = store();
    let mut new = named("Mira");
    new.attire = Some("robes".into());
    new.gender = Some("female".into());
    new.race = Some("human".into());
    let p = store.create_character(&new).unwrap();
    let patch: CharacterPatch = serde_json::from_str(
        r#"{"attire": null, "gender": null, "facial_expression": "wise", "base_level": 4}"#,
    )
    .unwrap();
    let updated = store.update_character(&p.id, &patch).unwrap();
    assert_eq!(updated.attire, None);
    assert_eq!(updated.gender.as_str(), "Non-binary");
    assert_eq!(updated.facial_expression.as_str(), "Wise");
    assert_eq!(updated.base_level, 4);
    assert_eq!(updated.race.map(|r| r.as_str()), Some("Human"));
    assert_eq!(updated.name, "Mira");
    assert!(updated.updated_at >= p.updated_at);
    assert_eq!(store.get_character(&p.id).unwrap(), updated);

    // A bad value anywhere in the patch changes nothing at all.
    let bad: CharacterPatch =
        serde_json::from_str(r#"{"name": "Renamed", "build": "gigantic"}"#).unwrap();
    let (field, _) = validation_field(store.update_character(&p.id, &bad).unwrap_err());
    assert_eq!(field, "build");
    assert_eq!(store.get_character(&p.id).unwrap().name, "Mira");
    assert!(matches!(
        store.update_character("nope", &CharacterPatch::default()),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn delete_removes_states_and_portraits_and_returns_files() {
    let (_dir, store) = store();
    let p = store.create_character(&named("Gone")).unwrap();
    let keep = store.create_character(&named("Stays")).unwrap();
    let campaign = store
        .create_campaign(&NewCampaign {
            name: "C".into(),
            ..Default::default()
        })
        .unwrap();
    store
        .join_campaign(&campaign.id, &p.id, &Default::default())
        .unwrap();
    store
        .join_campaign(&campaign.id, &keep.id, &Default::default())
        .unwrap();
    let first = NewPortrait {
        character_id: p.id.clone(),
        file_path: "media/portraits/a.png".into(),
        thumbnail_path: Some("media/portraits/a.thumb.webp".into()),
        ..Default::default()
    };
    let first = store.add_portrait(&first, true).unwrap();
    let second = NewPortrait {
        character_id: p.id.clone(),
        file_path: "media/portraits/b.png".into(),
        parent_portrait_id: Some(first.id.clone()),
        ..Default::default()
    };
    store.add_portrait(&second, true).unwrap();

    let files: BTreeSet<String> = store.delete_character(&p.id).unwrap().into_iter().collect();
    let expected: BTreeSet<String> = [
        "media/portraits/a.png",
        "media/portraits/a.thumb.webp",
        "media/portraits/b.png",
    ]
    .map(String::from)
    .into();
    assert_eq!(files, expected);
    assert!(matches!(
        store.get_character(&p.id),
        Err(StoreError::NotFound { .. })
    ));
    // Gone through ON DELETE CASCADE, which only works with foreign_keys on.
    assert!(matches!(
        store.get_portrait(&first.id),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store.get_campaign(&campaign.id).unwrap().character_ids,
        vec![keep.id.clone()]
    );
    assert!(matches!(
        store.delete_character(&p.id),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn clones_share_one_database_across_threads() {
    let (_dir, store) = store();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    store
                        .create_character(&named(&format!("t{t}-{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let all = store
        .list_characters(&CharacterFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 80);
}

#[test]
fn backup_is_a_consistent_copy_while_writes_continue() {
    let (dir, store) = store();
    for i in 0..20 {
        store
            .create_character(&named(&format!("before {i}")))
            .unwrap();
    }
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                store
                    .create_character(&named(&format!("during {i}")))
                    .unwrap();
            }
        })
    };
    let dest = dir.path().join("backups/copy.db");
    store.backup_to(&dest).unwrap();
    writer.join().unwrap();
    let copy = Store::open_existing(&dest).unwrap();
    assert_eq!(copy.integrity_check().unwrap(), "ok");
    let listed = copy
        .list_characters(&CharacterFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    // Every write committed before the backup began is in it.
    let before = listed
        .iter()
        .filter(|p| p.name.starts_with("before"))
        .count();
    assert_eq!(before, 20);
    assert!(listed.len() <= 70);
}

#[test]
fn pregenerated_characters_are_complete_and_varied() {
    let all = pregenerated().unwrap();
    assert!(all.len() >= 12, "only {}", all.len());
    let ids: BTreeSet<_> = all.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), all.len(), "duplicate pregen ids");
    let (mut races, mut classes, mut genders, mut ages) = (
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
        BTreeSet::new(),
    );
    for c in &all {
        let n = &c.character;
        let required = [
            ("race", &n.race),
            ("gender", &n.gender),
            ("character_class", &n.character_class),
            ("age_category", &n.age_category),
            ("build", &n.build),
            ("height_description", &n.height_description),
            ("facial_expression", &n.facial_expression),
            ("facial_features", &n.facial_features),
            ("attire", &n.attire),
            ("primary_weapon", &n.primary_weapon),
            ("distinguishing_feature", &n.distinguishing_feature),
            ("background_setting", &n.background_setting),
            ("pose", &n.pose),
            ("backstory", &n.backstory),
            ("description", &n.description),
            ("appearance", &n.appearance),
            ("visual_description", &n.visual_description),
        ];
        for (field, value) in required {
            let filled = value.as_deref().is_some_and(|v| !v.trim().is_empty());
            assert!(filled, "{} lacks {field}", c.id);
        }
        assert!(!n.name.trim().is_empty());
        races.insert(n.race.clone());
        classes.insert(n.character_class.clone());
        genders.insert(n.gender.clone());
        ages.insert(n.age_category.clone());
    }
    assert!(races.len() >= 8, "{races:?}");
    assert!(classes.len() >= 8, "{classes:?}");
    assert_eq!(genders.len(), 3, "{genders:?}");
    assert_eq!(ages.len(), 4, "{ages:?}");
}

#[test]
fn pregenerated_import_is_idempotent() {
    let (_dir, store) = store();
    let expected = pregenerated().unwrap().len();
    let first = import_pregenerated(&store, Some("admin")).unwrap();
    assert_eq!(first.created.len(), expected);
    assert!(first.existing.is_empty());
    let second = import_pregenerated(&store, Some("someone else")).unwrap();
    assert!(second.created.is_empty());
    let a: BTreeSet<_> = first.created.into_iter().collect();
    let b: BTreeSet<_> = second.existing.into_iter().collect();
    assert_eq!(a, b);
    let all = store
        .list_characters(&CharacterFilter {
            owner_id: Some("admin".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), expected);
    assert!(all.iter().all(|p| p
        .import_key
        .as_deref()
        .is_some_and(|k| k.starts_with("pregen:"))));
}
