//! The HTTP API through the real router (`tower::ServiceExt::oneshot`) with a fast fake image
//! backend: characters, campaigns, the error shape and the metadata endpoints. Portraits and
//! jobs are in `api_jobs_http.rs`, auth in `api_auth_http.rs`; the real engine end to end in
//! `serve_e2e.rs`.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::{json, Value};

use http_body_util::BodyExt;
use tower::ServiceExt;

#[path = "common/app.rs"]
mod common;
#[path = "common/api_harness.rs"]
mod harness;

use harness::{assert_error, harness, Opts};

#[tokio::test]
async fn characters_crud_with_canonical_enums_and_field_named_errors() {
    let h = harness(Opts::default());
    let r = h
        .post("/api/characters", json!({"name": "Élan", "race": "dark_elf", "gender": "non binary",
            "character_class": "WARLOCK", "age_category": "middle aged", "build": "slender", "pose": "casting spell"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let c = r.json();
    assert_eq!(c["race"], "Dark Elf");
    assert_eq!(c["gender"], "Non-binary");
    assert_eq!(c["character_class"], "Warlock");
    assert_eq!(c["age_category"], "Middle-aged");
    assert_eq!(c["pose"], "Casting Spell");
    assert_eq!(c["facial_expression"], "Determined", "default applied");
    assert_eq!(c["level"], 1);
    assert_eq!(c["character_id"], c["id"]);
    let id = c["id"].as_str().unwrap();

    let list = h.get("/api/characters").await.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.json()["name"],
        "Élan"
    );

    let r = h
        .call(
            Method::PATCH,
            &format!("/api/characters/{id}"),
            Some(json!({"facial_expression": "stern", "attire": "robes"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["facial_expression"], "Stern");
    assert_eq!(r.json()["race"], "Dark Elf", "untouched fields stay");

    // Bad input: each a 4xx naming the field, and nothing changes.
    assert_error(
        &h.post("/api/characters", json!({"name": "x", "race": "Gnome"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("race"),
    );
    let r = h
        .post("/api/characters", json!({"name": "x", "race": "Gnome"}))
        .await;
    assert!(
        r.json()["error"].as_str().unwrap().contains("Rock Gnome"),
        "lists allowed values"
    );
    assert_error(
        &h.post(
            "/api/characters",
            json!({"name": "x", "base_level": "high"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("base_level"),
    );
    assert_error(
        &h.post("/api/characters", json!({"name": "y".repeat(5000)}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("name"),
    );
    assert_error(
        &h.post("/api/characters", json!({"name": ""})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("name"),
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/characters/{id}"),
            Some(json!({"pose": "flying"})),
            None,
        )
        .await;
    assert_error(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("pose"),
    );
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.json()["pose"],
        "Casting Spell"
    );
    let raw = Request::builder()
        .method(Method::POST)
        .uri("/api/characters")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    let resp = h.router.clone().oneshot(raw).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_error(
        &h.get("/api/characters/nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.get("/api/nothing-here").await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &h.get("/api/characters?limit=0").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("limit"),
    );
    assert_error(
        &h.get("/api/characters?limit=abc").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_error",
        Some("limit"),
    );
    assert_eq!(
        h.get("/api/characters")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "no half-written characters"
    );

    let r = h
        .call(Method::DELETE, &format!("/api/characters/{id}"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&format!("/api/characters/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413_in_our_shape() {
    let h = harness(Opts::default());
    let big = "x".repeat(limner::api::MAX_BODY_BYTES + 10);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/characters")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!("{{\"name\":\"{big}\"}}")))
        .unwrap();
    let resp = h.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error_type"], "payload_too_large");
}

#[tokio::test]
async fn campaigns_rosters_and_campaign_state() {
    let h = harness(Opts::default());
    let c = h
        .post("/api/campaigns", json!({"name": "Curse of Strahd"}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED);
    let camp = c.json()["id"].as_str().unwrap().to_string();
    let a = h.character(None).await;
    let r = h
        .post(
            &format!("/api/campaigns/{camp}/characters"),
            json!({"character_id": a, "hit_points_max": 30, "hit_points_current": 30, "level": 5}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_error(
        &h.post(
            &format!("/api/campaigns/{camp}/characters"),
            json!({"character_id": a}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
        None,
    );
    let roster = h
        .get(&format!("/api/campaigns/{camp}/characters"))
        .await
        .json();
    assert_eq!(roster.as_array().unwrap().len(), 1);
    assert_eq!(roster[0]["level"], 5, "campaign override");
    assert_eq!(
        roster[0]["race"], "Human",
        "identity comes from the profile"
    );
    let r = h
        .call(
            Method::PATCH,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            Some(json!({"hit_points_current": 12, "status": "wounded"})),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["hit_points_current"], 12);
    let one = h
        .get(&format!("/api/characters/{a}?campaign_id={camp}"))
        .await
        .json();
    assert_eq!(one["status"], "wounded");
    assert_eq!(one["campaign_id"], camp.as_str());
    assert_eq!(
        h.get(&format!("/api/characters/{a}")).await.json()["level"],
        1,
        "base level outside the campaign"
    );
    // Created straight into a campaign.
    let r = h
        .post(
            "/api/characters",
            json!({"name": "Ireena", "campaign_id": camp}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        h.get(&format!("/api/campaigns/{camp}/characters"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_error(
        &h.post(
            "/api/characters",
            json!({"name": "Nobody", "campaign_id": "missing"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/campaigns/{camp}/characters/{a}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&format!("/api/campaigns/{camp}/characters"))
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn health_models_openapi_and_pregenerated() {
    let h = harness(Opts::default());
    let health = h.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);
    let v = health.json();
    assert_eq!(v["engine"]["state"], "ready");
    assert_eq!(v["database"], "ok");
    let models = h.get("/api/models").await.json();
    assert_eq!(models["default"], "fake-model");
    assert!(models["styles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "fantasy"));
    let api = h.get("/api/openapi.json").await.json();
    assert_eq!(api["openapi"], "3.0.3");
    for path in [
        "/api/characters",
        "/api/characters/{id}/portrait/generate",
        "/api/characters/{id}/portrait",
        "/api/characters/{id}/regenerate-image",
        "/api/jobs/{id}/events",
    ] {
        assert!(api["paths"][path].is_object(), "{path}");
    }
    let pre = h.get("/api/pregenerated").await.json();
    let list = pre.as_array().unwrap();
    assert!(list.len() >= 12);
    let pid = list[0]["id"].as_str().unwrap();
    let r = h
        .post(&format!("/api/pregenerated/{pid}/create"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["name"], list[0]["name"]);
    assert_error(
        &h.post("/api/pregenerated/nope/create", json!({})).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
}
