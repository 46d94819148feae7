//! Pinned LoRAs and embeddings in the character store: stored and read back (create, patch,
//! reopen), validated with errors naming the entry, and the schema v4 -> v5 migration giving
//! existing characters empty lists.

#[path = "common/store.rs"]
mod common_store;
use common_store::{named, store};

use limner::characters::{CharacterPatch, CharacterStore, NewCharacter, Store, StoreError};
use limner::engine::LoraRef;

fn lora(name: &str, weight: f64) -> LoraRef {
    LoraRef {
        name: name.into(),
        weight,
    }
}

fn field(err: StoreError) -> (String, String) {
    match err {
        StoreError::Validation(v) => (v.field, v.message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn pinned_networks_are_stored_patched_and_kept_across_reopen() {
    let (dir, store) = store();
    let plain = store.create_character(&named("Plain")).unwrap();
    assert!(plain.loras.is_empty() && plain.embeddings.is_empty());
    let pinned = store
        .create_character(&NewCharacter {
            loras: vec![lora(" elf-ranger ", 0.6), lora("Hero", -1.5)],
            embeddings: vec!["bad-hands".into()],
            ..named("Lirael")
        })
        .unwrap();
    // Names are trimmed like every other text field.
    assert_eq!(pinned.loras, [lora("elf-ranger", 0.6), lora("Hero", -1.5)]);
    let patch: CharacterPatch =
        serde_json::from_str(r#"{"attire": "green cloak", "embeddings": ["a", "b"]}"#).unwrap();
    let patched = store.update_character(&pinned.id, &patch).unwrap();
    assert_eq!(patched.loras, pinned.loras, "an absent field is left alone");
    assert_eq!(patched.embeddings, ["a", "b"]);
    drop(store);

    let store = Store::open_in_data_dir(dir.path()).unwrap();
    let again = store.get_character(&pinned.id).unwrap();
    assert_eq!(again.loras, pinned.loras);
    assert_eq!(again.embeddings, ["a", "b"]);
    assert_eq!(again.attire.as_deref(), Some("green cloak"));
    let cleared: CharacterPatch = serde_json::from_str(r#"{"loras": null}"#).unwrap();
    assert!(store
        .update_character(&pinned.id, &cleared)
        .unwrap()
        .loras
        .is_empty());
    assert!(store.get_character(&plain.id).unwrap().loras.is_empty());
}

#[test]
fn bad_pins_name_the_entry_and_change_nothing() {
    let (_dir, store) = store();
    let c = store.create_character(&named("Ada")).unwrap();
    let cases: Vec<(Vec<LoraRef>, &str)> = vec![
        (vec![lora("a", 1.0), lora("b", 10.5)], "loras[1].weight"),
        (vec![lora("", 1.0)], "loras[0].name"),
        (vec![lora("dir/file", 1.0)], "loras[0].name"),
        (vec![lora("a", 1.0), lora("A", 0.5)], "loras[1].name"),
        (
            (0..17).map(|i| lora(&format!("l{i}"), 1.0)).collect(),
            "loras",
        ),
    ];
    for (loras, want) in cases {
        let err = store
            .create_character(&NewCharacter {
                loras: loras.clone(),
                ..named("Bad")
            })
            .unwrap_err();
        assert_eq!(field(err).0, want, "{loras:?}");
        let patch = CharacterPatch {
            loras: Some(Some(loras)),
            ..Default::default()
        };
        assert_eq!(
            field(store.update_character(&c.id, &patch).unwrap_err()).0,
            want
        );
    }
    let patch = CharacterPatch {
        embeddings: Some(Some(vec!["ok".into(), "tab\tname".into()])),
        ..Default::default()
    };
    let (f, msg) = field(store.update_character(&c.id, &patch).unwrap_err());
    assert_eq!(f, "embeddings[1]");
    assert!(msg.contains("control"), "{msg}");
    assert!(store.get_character(&c.id).unwrap().embeddings.is_empty());
}

/// A database written by the previous release (schema v4, applied from the repository's own
/// migration files) opens as v5 with its characters pinning nothing.
#[test]
fn a_version_4_database_migrates_with_empty_pins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limner.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        for sql in [
            include_str!("../migrations/0001_initial.sql"),
            include_str!("../migrations/0002_api_tokens.sql"),
            include_str!("../migrations/0003_visibility_and_invites.sql"),
            include_str!("../migrations/0004_jobs.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute(
            "INSERT INTO characters (id, name, character_type, gender, build, facial_expression, \
             created_at, updated_at) VALUES ('old-1', 'Old Timer', 'player', 'Male', 'Average', \
             'Stern', '2025-01-01T00:00:00.000000Z', '2025-01-01T00:00:00.000000Z')",
            [],
        )
        .unwrap();
    }
    let store = Store::open_in_data_dir(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 5);
    let old = store.get_character("old-1").unwrap();
    assert_eq!(old.name, "Old Timer");
    assert!(old.loras.is_empty() && old.embeddings.is_empty());
    let patch = CharacterPatch {
        loras: Some(Some(vec![lora("elf-ranger", 0.8)])),
        ..Default::default()
    };
    assert_eq!(
        store.update_character("old-1", &patch).unwrap().loras,
        [lora("elf-ranger", 0.8)]
    );
}
