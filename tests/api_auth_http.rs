//! Who may do what, through the real router with authentication on: players, DMs, admins, and
//! signed media URLs.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use limner::auth::{Role, UrlSigner};
use serde_json::json;

use tower::ServiceExt;

#[path = "common/app.rs"]
mod common;
#[path = "common/api_harness.rs"]
mod harness;

use harness::{assert_error, harness, Opts};

#[tokio::test]
async fn auth_players_dms_and_signed_media() {
    let h = harness(Opts {
        auth: true,
        ..Default::default()
    });
    let tokens = h.tokens.clone().unwrap();
    let (alice, _) = tokens.create("alice", Role::Player).unwrap();
    let (bob, _) = tokens.create("bob", Role::Player).unwrap();
    let (dm, _) = tokens.create("dungeon-master", Role::Player).unwrap();
    let (admin, _) = tokens.create("root", Role::Admin).unwrap();

    let r = h.get("/api/characters").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized", None);
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_error(
        &h.call(Method::GET, "/api/characters", None, Some("lmn_forged"))
            .await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );

    let a = h.character(Some(&alice)).await;
    let g = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({})),
            Some(&alice),
        )
        .await
        .json();
    let url = g["portrait_url"].as_str().unwrap().to_string();

    // Bob cannot see, change or fetch Alice's character, and cannot tell it exists.
    assert_error(
        &h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/characters/{a}"),
            Some(json!({"attire": "rags"})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({"regenerate": true})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(
        h.call(Method::GET, "/api/characters", None, Some(&bob))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let unsigned = url.split('?').next().unwrap();
    assert!(h.call(Method::GET, unsigned, None, Some(&bob)).await.status == StatusCode::NOT_FOUND);
    assert_eq!(
        h.call(Method::GET, unsigned, None, Some(&alice))
            .await
            .status,
        StatusCode::OK
    );
    // The signed URL works without any header (for <img src>); a tampered one does not.
    assert_eq!(h.get(&url).await.status, StatusCode::OK);
    assert_eq!(
        h.get(&url.replace("sig=", "sig=00")).await.status,
        StatusCode::FORBIDDEN
    );

    // The DM's campaign: Alice's character joins; the DM sees it and manages its state.
    let camp = h
        .call(
            Method::POST,
            "/api/campaigns",
            Some(json!({"name": "Tomb"})),
            Some(&dm),
        )
        .await
        .json();
    let camp = camp["id"].as_str().unwrap().to_string();
    assert!(!camp.is_empty());
    // The DM cannot pull in a character the DM cannot see (404: no leak).
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&dm),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Bob cannot put Alice's character into it either.
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Knowing the campaign's id is not enough: Alice needs the DM's invite code.
    assert_error(
        &h.call(
            Method::POST,
            &format!("/api/campaigns/{camp}/characters"),
            Some(json!({"character_id": a})),
            Some(&alice),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let invite = h
        .call(
            Method::POST,
            &format!("/api/campaigns/{camp}/invites"),
            None,
            Some(&dm),
        )
        .await;
    assert_eq!(invite.status, StatusCode::CREATED);
    let r = h
        .call(
            Method::POST,
            "/api/campaigns/join",
            Some(json!({"character_id": a, "code": invite.json()["code"]})),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // The admin sees everything.
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&admin)
        )
        .await
        .status,
        StatusCode::OK
    );
    let roster = h
        .call(
            Method::GET,
            &format!("/api/campaigns/{camp}/characters"),
            None,
            Some(&dm),
        )
        .await
        .json();
    assert_eq!(roster[0]["id"], a.as_str());
    assert!(roster[0]["portrait_url"].is_string());
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/characters/{a}"),
            None,
            Some(&dm)
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 3})),
            Some(&dm),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The DM may not edit Alice's profile, and Alice may not edit campaign state.
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/characters/{a}"),
            Some(json!({"attire": "rags"})),
            Some(&dm),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    assert_error(
        &h.call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 99})),
            Some(&alice),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    );
    // Alice now plays in the campaign and sees it; Bob does not.
    assert_eq!(
        h.call(
            Method::GET,
            &format!("/api/campaigns/{camp}"),
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_error(
        &h.call(
            Method::GET,
            &format!("/api/campaigns/{camp}"),
            None,
            Some(&bob),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // Jobs belong to their submitter.
    let r = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate?async=true"),
            Some(json!({"regenerate": true})),
            Some(&alice),
        )
        .await;
    let job = r.json()["job_id"].as_str().unwrap().to_string();
    assert_error(
        &h.call(Method::GET, &format!("/api/jobs/{job}"), None, Some(&bob))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_eq!(
        h.call(Method::GET, &format!("/api/jobs/{job}"), None, Some(&alice))
            .await
            .status,
        StatusCode::OK
    );
    // HTTP Basic with the token as password (A1111 --api-auth style) works too.
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("alice:{alice}"),
    );
    let req = Request::builder()
        .uri("/api/characters")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.router.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[test]
fn signed_media_urls_expire() {
    let signer = UrlSigner::new(vec![9; 32], 60);
    let url = signer.sign("/api/media/images/portraits/x/y.png", 1_000);
    let q = url.split_once('?').unwrap().1;
    let expires: u64 = q
        .split('&')
        .find_map(|kv| kv.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = q.split('&').find_map(|kv| kv.strip_prefix("sig=")).unwrap();
    assert!(signer.verify("/api/media/images/portraits/x/y.png", expires, sig, 1_030));
    assert!(!signer.verify("/api/media/images/portraits/x/y.png", expires, sig, 1_061));
}

#[tokio::test]
async fn expired_signed_url_is_refused_by_the_server() {
    let h = harness(Opts {
        auth: true,
        ..Default::default()
    });
    let (alice, _) = h
        .tokens
        .clone()
        .unwrap()
        .create("alice", Role::Player)
        .unwrap();
    let a = h.character(Some(&alice)).await;
    let g = h
        .call(
            Method::POST,
            &format!("/api/characters/{a}/portrait/generate"),
            Some(json!({})),
            Some(&alice),
        )
        .await
        .json();
    let path = format!("/api/media/images/{}", g["portrait_path"].as_str().unwrap());
    // Same key as the server, signed long ago.
    let old = UrlSigner::new(vec![3; 32], 60).sign(&path, 1_000);
    assert_eq!(h.get(&old).await.status, StatusCode::FORBIDDEN);
}
