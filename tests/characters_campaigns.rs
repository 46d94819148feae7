//! Campaigns, campaign state, the enriched (merged) view, rosters and portrait history on
//! temporary databases.

#[path = "common/store.rs"]
mod common_store;
use common_store::store;

use limner::characters::{
    CampaignFilter, CampaignStatePatch, CharacterPatch, CharacterStore, NewCampaign, NewCharacter,
    NewPortrait, Store, StoreError,
};
use serde_json::json;

fn character(store: &Store, name: &str, level: i64) -> String {
    let new = NewCharacter {
        name: name.into(),
        base_level: Some(level),
        race: Some("halfling".into()),
        ..Default::default()
    };
    store.create_character(&new).unwrap().id
}

fn campaign(store: &Store, name: &str, dm: &str) -> String {
    let new = NewCampaign {
        name: name.into(),
        dm_id: Some(dm.into()),
        description: Some("a test".into()),
    };
    store.create_campaign(&new).unwrap().id
}

fn portrait(character_id: &str, file: &str, seed: u64) -> NewPortrait {
    NewPortrait {
        character_id: character_id.into(),
        file_path: file.into(),
        thumbnail_path: Some(format!("{file}.thumb")),
        prompt: format!("prompt for {file}"),
        negative_prompt: "blurry".into(),
        parameters: Some(json!({"steps": 25, "cfg_scale": 8.0})),
        seed: Some(seed),
        model: Some("tiny".into()),
        art_style: Some("fantasy".into()),
        parent_portrait_id: None,
    }
}

#[test]
fn campaigns_create_get_list_and_delete() {
    let (_dir, store) = store();
    let a = campaign(&store, "Zeta", "dm1");
    let b = campaign(&store, "Alpha", "dm2");
    let got = store.get_campaign(&a).unwrap();
    assert_eq!(got.name, "Zeta");
    assert_eq!(got.dm_id.as_deref(), Some("dm1"));
    assert_eq!(got.description, "a test");
    assert!(got.character_ids.is_empty());
    let names: Vec<_> = store
        .list_campaigns(&Default::default())
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["Alpha", "Zeta"]);
    let by_dm = CampaignFilter {
        dm_id: Some("dm2".into()),
        ..Default::default()
    };
    let listed = store.list_campaigns(&by_dm).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, b);
    let bad = NewCampaign {
        name: " ".into(),
        ..Default::default()
    };
    assert!(matches!(
        store.create_campaign(&bad),
        Err(StoreError::Validation(v)) if v.field == "name"
    ));

    let hero = character(&store, "Hero", 1);
    store.join_campaign(&a, &hero, &Default::default()).unwrap();
    let by_member = CampaignFilter {
        character_id: Some(hero.clone()),
        ..Default::default()
    };
    assert_eq!(store.list_campaigns(&by_member).unwrap()[0].id, a);
    store.delete_campaign(&a).unwrap();
    assert!(matches!(
        store.get_campaign(&a),
        Err(StoreError::NotFound { .. })
    ));
    // The profile outlives the campaign; only its state there is gone.
    assert!(store.get_character(&hero).is_ok());
    assert!(store.campaign_state(&a, &hero).is_err());
}

#[test]
fn join_leave_and_state_updates() {
    let (_dir, store) = store();
    let camp = campaign(&store, "C", "dm");
    let hero = character(&store, "Hero", 3);
    let initial = CampaignStatePatch {
        hit_points_max: Some(30),
        hit_points_current: Some(30),
        location: Some(Some("Tavern".into())),
        ..Default::default()
    };
    let state = store.join_campaign(&camp, &hero, &initial).unwrap();
    assert_eq!(state.hit_points_max, 30);
    assert_eq!(state.armor_class, 10);
    assert_eq!(state.status, "healthy");
    assert_eq!(state.level, None);
    assert_eq!(
        store.get_campaign(&camp).unwrap().character_ids,
        std::slice::from_ref(&hero)
    );
    assert!(matches!(
        store.join_campaign(&camp, &hero, &Default::default()),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.join_campaign("nope", &hero, &Default::default()),
        Err(StoreError::NotFound { .. })
    ));

    let patch: CampaignStatePatch = serde_json::from_value(json!({
        "hit_points_current": 12, "status": "poisoned", "location": null,
        "inventory": {"rope": {"quantity": 1}}, "quests": ["find the cat"], "level": 5
    }))
    .unwrap();
    let updated = store.update_campaign_state(&camp, &hero, &patch).unwrap();
    assert_eq!(updated.hit_points_current, 12);
    assert_eq!(updated.hit_points_max, 30);
    assert_eq!(updated.location, None);
    assert_eq!(updated.level, Some(5));
    assert_eq!(updated.inventory, json!({"rope": {"quantity": 1}}));
    assert_eq!(store.campaign_state(&camp, &hero).unwrap(), updated);

    let bad = CampaignStatePatch {
        armor_class: Some(500),
        hit_points_current: Some(1),
        ..Default::default()
    };
    let err = store.update_campaign_state(&camp, &hero, &bad).unwrap_err();
    assert!(
        matches!(&err, StoreError::Validation(v) if v.field == "armor_class" && v.message.contains("100")),
        "{err:?}"
    );
    assert_eq!(
        store
            .campaign_state(&camp, &hero)
            .unwrap()
            .hit_points_current,
        12
    );

    store.leave_campaign(&camp, &hero).unwrap();
    assert!(store.get_campaign(&camp).unwrap().character_ids.is_empty());
    assert!(matches!(
        store.leave_campaign(&camp, &hero),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn create_with_campaign_joins_in_the_same_transaction() {
    let (_dir, store) = store();
    let camp = campaign(&store, "C", "dm");
    let new = NewCharacter {
        name: "Joiner".into(),
        campaign_id: Some(camp.clone()),
        ..Default::default()
    };
    let p = store.create_character(&new).unwrap();
    assert_eq!(store.get_campaign(&camp).unwrap().character_ids, [p.id]);
    let orphan = NewCharacter {
        name: "Orphan".into(),
        campaign_id: Some("missing".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.create_character(&orphan),
        Err(StoreError::NotFound { .. })
    ));
    // The failed join rolled the profile back too.
    let all = store.list_characters(&Default::default()).unwrap();
    assert_eq!(all.len(), 1);
}

#[test]
fn enriched_view_merges_profile_state_and_level_override() {
    let (_dir, store) = store();
    let one = campaign(&store, "One", "dm");
    let two = campaign(&store, "Two", "dm");
    let hero = character(&store, "Hero", 4);
    store
        .join_campaign(&one, &hero, &Default::default())
        .unwrap();
    let override_level = CampaignStatePatch {
        level: Some(Some(9)),
        armor_class: Some(17),
        ..Default::default()
    };
    store.join_campaign(&two, &hero, &override_level).unwrap();

    let plain = store.enriched_character(&hero, None).unwrap();
    assert_eq!(plain.level, 4);
    assert_eq!(plain.campaign_id, None);
    assert_eq!(plain.hit_points_current, None);
    let in_one = store.enriched_character(&hero, Some(&one)).unwrap();
    assert_eq!(in_one.level, 4);
    assert_eq!(in_one.armor_class, Some(10));
    let in_two = store.enriched_character(&hero, Some(&two)).unwrap();
    assert_eq!(in_two.level, 9);
    assert_eq!(in_two.armor_class, Some(17));
    assert_eq!(in_two.campaign_id.as_deref(), Some(two.as_str()));

    // One profile shared by both campaigns: an appearance change shows in both.
    let patch = CharacterPatch {
        attire: Some(Some("red cloak".into())),
        ..Default::default()
    };
    store.update_character(&hero, &patch).unwrap();
    for camp in [&one, &two] {
        let e = store.enriched_character(&hero, Some(camp)).unwrap();
        assert_eq!(e.profile.attire.as_deref(), Some("red cloak"));
    }
    let json = serde_json::to_value(&in_two).unwrap();
    assert_eq!(json["character_id"], hero.as_str());
    assert_eq!(json["id"], hero.as_str());
    assert_eq!(json["race"], "Halfling");
    assert_eq!(json["level"], 9);
    assert_eq!(json["base_level"], 4);

    let stranger = campaign(&store, "Three", "dm");
    assert!(matches!(
        store.enriched_character(&hero, Some(&stranger)),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn roster_lists_every_member_as_enriched() {
    let (_dir, store) = store();
    let camp = campaign(&store, "C", "dm");
    let b = character(&store, "Bryn", 2);
    let a = character(&store, "Ash", 5);
    let outsider = character(&store, "Outsider", 1);
    store.join_campaign(&camp, &b, &Default::default()).unwrap();
    let lvl = CampaignStatePatch {
        level: Some(Some(7)),
        ..Default::default()
    };
    store.join_campaign(&camp, &a, &lvl).unwrap();
    store
        .add_portrait(&portrait(&a, "ash.png", 1), true)
        .unwrap();
    let roster = store.campaign_roster(&camp).unwrap();
    let summary: Vec<_> = roster
        .iter()
        .map(|e| (e.profile.name.as_str(), e.level, e.portrait_path.as_deref()))
        .collect();
    assert_eq!(summary, [("Ash", 7, Some("ash.png")), ("Bryn", 2, None)]);
    assert!(roster.iter().all(|e| e.character_id != outsider));
    assert!(roster
        .iter()
        .all(|e| e.campaign_id.as_deref() == Some(camp.as_str())));
    assert!(matches!(
        store.campaign_roster("nope"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn regenerations_keep_history_and_any_portrait_can_be_current_again() {
    let (_dir, store) = store();
    let hero = character(&store, "Hero", 1);
    let first = store
        .add_portrait(&portrait(&hero, "v1.png", 11), true)
        .unwrap();
    assert!(first.is_current);
    let mut variation = portrait(&hero, "v2.png", u64::MAX);
    variation.parent_portrait_id = Some(first.id.clone());
    let second = store.add_portrait(&variation, true).unwrap();
    // Recorded but not made current.
    let third = store
        .add_portrait(&portrait(&hero, "v3.png", 33), false)
        .unwrap();

    let history = store.portrait_history(&hero).unwrap();
    let files: Vec<_> = history.iter().map(|p| p.file_path.as_str()).collect();
    assert_eq!(files, ["v3.png", "v2.png", "v1.png"]);
    let current: Vec<_> = history
        .iter()
        .filter(|p| p.is_current)
        .map(|p| &p.id)
        .collect();
    assert_eq!(current, [&second.id]);
    let v2 = &history[1];
    assert_eq!(v2.seed, Some(u64::MAX));
    assert_eq!(v2.parent_portrait_id.as_deref(), Some(first.id.as_str()));
    assert_eq!(v2.parameters, json!({"steps": 25, "cfg_scale": 8.0}));
    assert_eq!(v2.negative_prompt, "blurry");
    assert_eq!(v2.thumbnail_path.as_deref(), Some("v2.png.thumb"));
    assert_eq!(
        store
            .enriched_character(&hero, None)
            .unwrap()
            .portrait_path
            .as_deref(),
        Some("v2.png")
    );

    let profile = store.set_current_portrait(&hero, &first.id).unwrap();
    assert_eq!(
        profile.current_portrait_id.as_deref(),
        Some(first.id.as_str())
    );
    let e = store.enriched_character(&hero, None).unwrap();
    assert_eq!(e.portrait_path.as_deref(), Some("v1.png"));
    assert_eq!(e.portrait_prompt.as_deref(), Some("prompt for v1.png"));
    assert_eq!(store.portrait_history(&hero).unwrap().len(), 3);
    assert!(!store.get_portrait(&third.id).unwrap().is_current);

    // Another character's portrait can be neither current nor a parent here.
    let other = character(&store, "Other", 1);
    let theirs = store
        .add_portrait(&portrait(&other, "o.png", 5), true)
        .unwrap();
    assert!(matches!(
        store.set_current_portrait(&hero, &theirs.id),
        Err(StoreError::NotFound { .. })
    ));
    let mut stolen = portrait(&hero, "x.png", 1);
    stolen.parent_portrait_id = Some(theirs.id);
    assert!(matches!(
        store.add_portrait(&stolen, true),
        Err(StoreError::Validation(v)) if v.field == "parent_portrait_id"
    ));
    let empty = NewPortrait {
        character_id: hero.clone(),
        ..Default::default()
    };
    assert!(matches!(
        store.add_portrait(&empty, true),
        Err(StoreError::Validation(v)) if v.field == "file_path"
    ));
    assert_eq!(store.portrait_history(&hero).unwrap().len(), 3);
}
