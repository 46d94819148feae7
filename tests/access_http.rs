//! Who may see and change what, through the real router with authentication on: the whole
//! visibility matrix (admin, DM, player in the campaign, outsider), joining only with the DM's
//! consent (directly by the DM, or with an invite code), and lists whose pages hold exactly the
//! rows the caller may see.

#[path = "common/app.rs"]
mod common;

use std::collections::BTreeSet;

use axum::http::Method;
use common::App;
use limner::auth::Role;
use serde_json::{json, Value};

fn ids(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

struct Table {
    app: App,
    admin: String,
    dm: String,
    alice: String,
    bob: String,
    camp: String,
    /// Alice's character, in the campaign.
    hero: String,
    /// Alice's second character, in no campaign.
    spare: String,
    /// Bob's character, in no campaign.
    stranger: String,
}

/// The DM's campaign with Alice's hero in it (joined with an invite, or added by the admin);
/// Bob is an outsider.
async fn table_joined(by_invite: bool) -> Table {
    let app = App::new();
    let admin = app.user("root", Role::Admin);
    let dm = app.user("dm", Role::Player);
    let alice = app.user("alice", Role::Player);
    let bob = app.user("bob", Role::Player);
    let camp = app.campaign("Tomb of Horrors", &dm).await;
    let hero = app.character("Hero", &alice).await;
    let spare = app.character("Spare", &alice).await;
    let stranger = app.character("Stranger", &bob).await;
    if by_invite {
        let code = app.invite(&camp, json!({}), &dm).await;
        app.post(
            "/api/campaigns/join",
            json!({"code": code, "character_id": hero}),
            &alice,
        )
        .await
        .expect(201);
    } else {
        app.post(
            &format!("/api/campaigns/{camp}/characters"),
            json!({"character_id": hero}),
            &admin,
        )
        .await
        .expect(201);
    }
    Table {
        app,
        admin,
        dm,
        alice,
        bob,
        camp,
        hero,
        spare,
        stranger,
    }
}

async fn table() -> Table {
    table_joined(true).await
}

#[tokio::test]
async fn a_player_cannot_join_a_campaign_without_the_dms_consent() {
    let t = table_joined(false).await;
    let roster = format!("/api/campaigns/{}/characters", t.camp);
    // Bob knows the campaign's id, but cannot see it: 404, and he is not in it afterwards.
    t.app
        .post(&roster, json!({"character_id": t.stranger}), &t.bob)
        .await
        .error(404, "not_found", None);
    // Alice plays in it, but adding another character is still the DM's call: 403.
    t.app
        .post(&roster, json!({"character_id": t.spare}), &t.alice)
        .await
        .error(403, "forbidden", None);
    // Nothing changed: Bob sees none of it, the roster is the hero alone.
    t.app
        .get(&format!("/api/characters/{}", t.hero), &t.bob)
        .await
        .error(404, "not_found", None);
    assert!(t.app.get("/api/characters", &t.bob).await.json()[0]["id"] == t.stranger.as_str());
    assert_eq!(
        ids(&t.app.get(&roster, &t.dm).await.expect(200).json()),
        BTreeSet::from([t.hero.clone()])
    );
    // Creating a character straight into the campaign is the DM's call too.
    let into = |name: &str| json!({"name": name, "campaign_id": t.camp});
    t.app
        .post("/api/characters", into("Sneak"), &t.bob)
        .await
        .error(404, "not_found", None);
    t.app
        .post("/api/characters", into("Twin"), &t.alice)
        .await
        .error(403, "forbidden", None);
    t.app
        .post("/api/characters", into("Npc"), &t.dm)
        .await
        .expect(201);
}

#[tokio::test]
async fn the_visibility_matrix_after_joining_by_invite() {
    let t = table().await;
    let (a, c) = (&t.app, &t.camp);
    let hero_url = format!("/api/characters/{}", t.hero);
    let state_url = format!("/api/campaigns/{c}/characters/{}", t.hero);
    // (token, sees the hero and the campaign, manages the campaign)
    let who = [
        ("admin", &t.admin, true, true),
        ("dm", &t.dm, true, true),
        ("alice", &t.alice, true, false),
        ("bob", &t.bob, false, false),
    ];
    for (name, token, sees, manages) in who {
        let seen = if sees { 200 } else { 404 };
        a.get(&hero_url, token).await.expect(seen);
        a.get(&format!("/api/campaigns/{c}"), token)
            .await
            .expect(seen);
        let roster = a
            .get(&format!("/api/campaigns/{c}/characters"), token)
            .await;
        assert_eq!(roster.status.as_u16(), seen, "{name} roster");
        a.get(&state_url, token).await.expect(seen);
        let listed = ids(&a.get("/api/characters", token).await.expect(200).json());
        assert_eq!(listed.contains(&t.hero), sees, "{name} list");
        let by_campaign = a
            .get(&format!("/api/characters?campaign_id={c}"), token)
            .await;
        assert_eq!(by_campaign.status.as_u16(), seen, "{name} list by campaign");
        let campaigns = ids(&a.get("/api/campaigns", token).await.expect(200).json());
        assert_eq!(campaigns.contains(c), sees, "{name} campaign list");
        let patched = a
            .call(
                Method::PATCH,
                &state_url,
                Some(json!({"hit_points_current": 7})),
                token,
            )
            .await;
        let want = match (sees, manages) {
            (_, true) => 200,
            (true, false) => 403,
            _ => 404,
        };
        assert_eq!(patched.status.as_u16(), want, "{name} state patch");
        // Bob's own character is visible to Bob and the admin only.
        let stranger = a
            .get(&format!("/api/characters/{}", t.stranger), token)
            .await;
        let bob_or_admin = name == "bob" || name == "admin";
        assert_eq!(
            stranger.status.is_success(),
            bob_or_admin,
            "{name} stranger"
        );
    }
    // Direct joins: the DM adds a character the DM can see (the DM's own), the admin anyone's.
    let dm_own = a.character("Npc", &t.dm).await;
    let roster = format!("/api/campaigns/{c}/characters");
    a.post(&roster, json!({"character_id": dm_own, "level": 3}), &t.dm)
        .await
        .expect(201);
    // The DM cannot pull in a stranger's character (its owner has not agreed): 404.
    a.post(&roster, json!({"character_id": t.stranger}), &t.dm)
        .await
        .error(404, "not_found", None);
    a.post(&roster, json!({"character_id": t.stranger}), &t.admin)
        .await
        .expect(201);
    // Now Bob plays in it: he sees the campaign and the hero.
    a.get(&hero_url, &t.bob).await.expect(200);
    // Leaving: the owner or the DM; another player may not remove the hero.
    a.delete(&state_url, &t.bob)
        .await
        .error(403, "forbidden", None);
    a.delete(&state_url, &t.alice).await.expect(204);
    a.delete(&format!("{roster}/{}", t.stranger), &t.dm)
        .await
        .expect(204);
    // Out of the campaign, Bob sees neither again.
    a.get(&hero_url, &t.bob).await.error(404, "not_found", None);
    a.get(&format!("/api/campaigns/{c}"), &t.bob)
        .await
        .error(404, "not_found", None);
}

#[tokio::test]
async fn invite_codes_are_the_dms_to_issue_and_expire_or_run_out() {
    let t = table().await;
    let (a, c) = (&t.app, &t.camp);
    let invites = format!("/api/campaigns/{c}/invites");
    a.post(&invites, json!({}), &t.alice)
        .await
        .error(403, "forbidden", None);
    a.post(&invites, json!({}), &t.bob)
        .await
        .error(404, "not_found", None);
    a.get(&invites, &t.alice)
        .await
        .error(403, "forbidden", None);
    for (body, field) in [
        (json!({"expires_in_seconds": 0}), "expires_in_seconds"),
        (
            json!({"expires_in_seconds": 40_000_000}),
            "expires_in_seconds",
        ),
        (json!({"max_uses": 0}), "max_uses"),
        (json!({"max_uses": 1001}), "max_uses"),
        (json!({"uses": 5}), "uses"),
    ] {
        let r = a.post(&invites, body, &t.dm).await;
        let v = r.json();
        assert_eq!(r.status.as_u16(), 422, "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{v}");
    }
    let once = a
        .post(&invites, json!({"max_uses": 1}), &t.dm)
        .await
        .expect(201)
        .json();
    assert_eq!(once["campaign_id"], c.as_str());
    assert_eq!(once["uses"], 0);
    assert!(once["expires_at"].is_string());
    let code = once["code"].as_str().unwrap();
    let listed = a.get(&invites, &t.dm).await.expect(200).json();
    assert!(
        listed.as_array().unwrap().iter().any(|i| i["code"] == code),
        "{listed}"
    );
    let join = |code: &str, character: &str| json!({"code": code, "character_id": character});
    // Only one's own characters: Bob's is not even visible to Alice (404).
    a.post("/api/campaigns/join", join(code, &t.stranger), &t.alice)
        .await
        .error(404, "not_found", None);
    // Unknown fields and campaign state are refused: the state is the DM's to set.
    a.post(
        "/api/campaigns/join",
        json!({"code": code, "character_id": t.stranger, "level": 20}),
        &t.bob,
    )
    .await
    .error(422, "validation_error", Some("level"));
    a.post(
        &format!("/api/campaigns/{c}/characters"),
        json!({"code": code, "character_id": t.stranger, "hit_points_max": 999}),
        &t.bob,
    )
    .await
    .error(403, "forbidden", None);
    // The code on the roster endpoint works as well; then it is used up.
    let info = a
        .post(
            &format!("/api/campaigns/{c}/characters"),
            json!({"code": code, "character_id": t.stranger}),
            &t.bob,
        )
        .await
        .expect(201)
        .json();
    assert_eq!(info["campaign_id"], c.as_str());
    assert_eq!(info["hit_points_max"], 10, "default state");
    a.post("/api/campaigns/join", join(code, &t.spare), &t.alice)
        .await
        .error(410, "gone", None);
    // A second code: the hero is already in (409); it cannot open another campaign (404);
    // revoked, it is unknown (404).
    let code2 = a
        .invite(c, json!({"expires_in_seconds": 3600}), &t.dm)
        .await;
    a.post("/api/campaigns/join", join(&code2, &t.hero), &t.alice)
        .await
        .error(409, "conflict", None);
    let other = a.campaign("Other", &t.bob).await;
    a.post(
        &format!("/api/campaigns/{other}/characters"),
        json!({"code": code2, "character_id": t.spare}),
        &t.alice,
    )
    .await
    .error(404, "not_found", None);
    a.delete(&format!("{invites}/{code2}"), &t.alice)
        .await
        .error(403, "forbidden", None);
    a.delete(&format!("{invites}/{code2}"), &t.dm)
        .await
        .expect(204);
    a.post("/api/campaigns/join", join(&code2, &t.spare), &t.alice)
        .await
        .error(404, "not_found", None);
    a.post("/api/campaigns/join", join("inv_guess", &t.spare), &t.alice)
        .await
        .error(404, "not_found", None);
    // An expired code is refused with 410 and says so.
    let short = a.invite(c, json!({"expires_in_seconds": 1}), &t.dm).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = a
        .post("/api/campaigns/join", join(&short, &t.spare), &t.alice)
        .await;
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));
    r.error(410, "gone", None);
    let listed = a.get(&invites, &t.dm).await.expect(200).json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["code"] != short.as_str()));
}

/// Every page of `path` by following `Link: <...>; rel="next"`, checking `X-Next-Cursor`.
async fn all_pages(a: &App, path: &str, token: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(url) = next.take() {
        let r = a.get(&url, token).await.expect(200);
        let items = r.json();
        out.extend(
            items
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string()),
        );
        if let Some(link) = r.header("link") {
            let cursor = r.header("x-next-cursor").expect("a cursor beside the link");
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(u, _)| u.to_string())
                .unwrap_or_else(|| panic!("bad Link header {link}"));
            assert!(target.contains(&format!("cursor={cursor}")), "{target}");
            next = Some(target);
        }
    }
    out
}

#[tokio::test]
async fn lists_page_over_exactly_the_visible_rows() {
    // The admin adds the hero, so this test needs nothing but lists to be right.
    let t = table_joined(false).await;
    let a = &t.app;
    // Bob's many characters sort before Alice's; the old list cut the page before filtering.
    let mut bobs = BTreeSet::from([t.stranger.clone()]);
    for i in 0..150 {
        bobs.insert(a.character(&format!("Aaron {i:03}"), &t.bob).await);
    }
    let mut alices = BTreeSet::from([t.hero.clone(), t.spare.clone()]);
    for i in 0..60 {
        alices.insert(a.character(&format!("Zora {i:02}"), &t.alice).await);
    }
    let first = ids(&a.get("/api/characters", &t.alice).await.expect(200).json());
    assert_eq!(
        first, alices,
        "Alice's default page is all of hers, and only hers"
    );
    let first_bob = a.get("/api/characters", &t.bob).await.expect(200);
    assert_eq!(
        first_bob.json().as_array().unwrap().len(),
        100,
        "default page size"
    );
    assert!(first_bob.header("x-next-cursor").is_some());
    // Page by page, under filters: each visible row exactly once.
    let every = all_pages(a, "/api/characters?limit=7", &t.bob).await;
    assert_eq!(every.len(), bobs.len());
    assert_eq!(every.iter().cloned().collect::<BTreeSet<_>>(), bobs);
    let named = all_pages(a, "/api/characters?limit=4&name=aaron%2001", &t.bob).await;
    assert_eq!(named.len(), 10, "Aaron 010..019: {named:?}");
    let admin_zora = all_pages(
        a,
        "/api/characters?limit=9&owner_id=alice&name=zora",
        &t.admin,
    )
    .await;
    assert_eq!(admin_zora.len(), 60);
    let bob_sees_alice = all_pages(a, "/api/characters?limit=9&owner_id=alice", &t.bob).await;
    assert!(bob_sees_alice.is_empty());
    let dm_sees = all_pages(a, "/api/characters?limit=1", &t.dm).await;
    assert_eq!(dm_sees, vec![t.hero.clone()]);
    let admin_all = all_pages(a, "/api/characters?limit=1000", &t.admin).await;
    assert_eq!(admin_all.len(), bobs.len() + alices.len());
    // Offset paging agrees with the cursor.
    let mut by_offset = Vec::new();
    for offset in (0..).step_by(50) {
        let page = a
            .get(&format!("/api/characters?limit=50&offset={offset}"), &t.bob)
            .await
            .expect(200)
            .json();
        let n = page.as_array().unwrap().len();
        by_offset.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string()),
        );
        if n < 50 {
            break;
        }
    }
    assert_eq!(by_offset, every);
    // Campaign lists page the same way.
    for i in 0..5 {
        a.campaign(&format!("Bob's {i}"), &t.bob).await;
    }
    assert_eq!(
        all_pages(a, "/api/campaigns?limit=2", &t.bob).await.len(),
        5
    );
    assert_eq!(
        all_pages(a, "/api/campaigns?limit=2", &t.admin).await.len(),
        6
    );
    assert_eq!(
        all_pages(a, "/api/campaigns?limit=2", &t.alice).await,
        vec![t.camp.clone()]
    );
    // Bad paging input names the field.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=eyJhIjoxfQ&offset=3", "offset"),
    ] {
        a.get(&format!("/api/characters?{query}"), &t.bob)
            .await
            .error(422, "validation_error", Some(field));
        a.get(&format!("/api/campaigns?{query}"), &t.bob)
            .await
            .error(422, "validation_error", Some(field));
    }
}
