//! Service endpoints: `/health` (engine state, queue, database), the models, LoRA and embedding
//! lists, the OpenAPI document, pregenerated characters, and the JSON 404 for unknown paths.

use axum::extract::State;
// Path rejections in the API's JSON shape.
use super::extract::ApiPath as Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::blocking;
use super::caller::Caller;
use super::characters::enriched;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::characters::pregenerated;
use crate::engine::EngineState;

pub async fn health(State(state): State<AppState>) -> Response {
    let engine = match state.backend.state() {
        EngineState::Loading => json!({"state": "loading"}),
        EngineState::Ready => json!({"state": "ready"}),
        EngineState::Failed(why) => json!({"state": "failed", "reason": why}),
        // Characters, campaigns and the pages work; only painting waits for `limner pull`.
        EngineState::NoModel(hint) => json!({"state": "no_model", "reason": hint}),
    };
    // One trip to the blocking pool: a one-row read on a pooled connection, and the disk's
    // free space (space may have come back since the last write failed).
    let s = state.clone();
    let (db_ok, (disk, disk_degraded)) = tokio::task::spawn_blocking(move || {
        let db_ok = s.store.ping().is_ok();
        s.disk().recover();
        (db_ok, s.disk().report())
    })
    .await
    .unwrap_or((false, (Value::Null, false)));
    let ok = db_ok && engine["state"] != "failed";
    let body = json!({
        "status": if ok && !disk_degraded { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "engine": engine,
        "queue": state.jobs.metrics(),
        "database": if db_ok { "ok" } else { "error" },
        "auth": state.tokens.is_some(),
        "disk": disk,
    });
    // A full disk still serves reads and deletes (the way out of it), so it is not a 503 that
    // would take the server out of a load balancer.
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

pub async fn models(State(state): State<AppState>, Caller(_): Caller) -> ApiResult<Json<Value>> {
    let default = state.backend.default_model();
    let models: Vec<Value> = state
        .backend
        .model_names()
        .into_iter()
        .map(|name| {
            let defaults = state.backend.defaults(Some(&name)).ok();
            json!({"name": name, "default": name == default, "defaults": defaults})
        })
        .collect();
    Ok(Json(
        json!({ "default": default, "models": models, "styles": state.portraits.art_styles() }),
    ))
}

/// `GET /api/loras`: the LoRA names requests and characters may use (`loras[].name`,
/// `<lora:name:w>`), rescanned on every call.
pub async fn loras(State(state): State<AppState>, Caller(_): Caller) -> ApiResult<Json<Value>> {
    let files = blocking(move || Ok(state.backend.loras())).await?;
    let list: Vec<Value> = files.iter().map(|f| json!({"name": f.name})).collect();
    Ok(Json(json!({ "loras": list })))
}

/// `GET /api/embeddings`: the embedding names prompts and characters may use, with their
/// vector count and whether the served model's text encoder takes them.
pub async fn embeddings(
    State(state): State<AppState>,
    Caller(_): Caller,
) -> ApiResult<Json<Value>> {
    let list = blocking(move || Ok(state.backend.embeddings())).await?;
    let list: Vec<Value> = list
        .iter()
        .map(|e| json!({"name": e.name, "vectors": e.vectors, "shape": e.shape, "fits": e.fits, "error": e.error}))
        .collect();
    Ok(Json(json!({ "embeddings": list })))
}

pub async fn list_pregenerated(Caller(_): Caller) -> ApiResult<Json<Value>> {
    let list = pregenerated().map_err(ApiError::from)?;
    Ok(Json(json!(list)))
}

/// Creates a character for the caller from a pregenerated one (a starting point to edit).
pub async fn create_from_pregenerated(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let list = pregenerated().map_err(ApiError::from)?;
    let pregen = list
        .into_iter()
        .find(|p| p.id == id)
        .ok_or_else(|| ApiError::not_found("pregenerated character"))?;
    let mut new = pregen.character;
    new.owner_id = Some(caller.user.clone());
    new.campaign_id = None;
    let s = state.clone();
    let profile = blocking(move || Ok(s.store.create_character(&new)?)).await?;
    let e = enriched(&state, profile.id, None).await?;
    Ok((StatusCode::CREATED, Json(e)).into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("path")
}

/// A known path with a method it does not have: the JSON shape instead of axum's empty 405.
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this path"),
    )
}

fn op(summary: &str, tag: &str) -> Value {
    json!({"summary": summary, "tags": [tag], "responses": {
        "200": {"description": "OK"},
        "4XX": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    }})
}

/// The OpenAPI 3.0 description of the API.
pub async fn openapi() -> Json<Value> {
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let asyncq = json!({"name": "async", "in": "query", "schema": {"type": "boolean"}});
    let mut paths = serde_json::Map::new();
    let mut add = |path: &str, method: &str, summary: &str, tag: &str, params: Vec<Value>| {
        let mut o = op(summary, tag);
        if !params.is_empty() {
            o["parameters"] = json!(params);
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.insert(method.to_string(), o));
    };
    add(
        "/health",
        "get",
        "Engine, queue and database state",
        "service",
        vec![],
    );
    add(
        "/api/models",
        "get",
        "Loaded models and art styles",
        "service",
        vec![],
    );
    add(
        "/api/loras",
        "get",
        "LoRA names requests and characters may use",
        "service",
        vec![],
    );
    add(
        "/api/embeddings",
        "get",
        "Embedding names prompts and characters may use",
        "service",
        vec![],
    );
    add(
        "/api/characters",
        "get",
        "List characters the caller may see",
        "characters",
        vec![],
    );
    add(
        "/api/characters",
        "post",
        "Create a character (visual fields, optional campaign_id)",
        "characters",
        vec![],
    );
    add(
        "/api/characters/{id}",
        "get",
        "One character as an EnrichedCharacter (?campaign_id adds its state)",
        "characters",
        vec![id.clone()],
    );
    add(
        "/api/characters/{id}",
        "patch",
        "Partial update of visual metadata",
        "characters",
        vec![id.clone()],
    );
    add(
        "/api/characters/{id}",
        "delete",
        "Delete a character and its portraits",
        "characters",
        vec![id.clone()],
    );
    add(
        "/api/characters/{id}/portrait/generate",
        "post",
        "Generate a portrait (the portrait-creator spec)",
        "portraits",
        vec![id.clone(), asyncq.clone()],
    );
    add(
        "/api/portraits/estimate",
        "post",
        "What a portrait with these options would cost on this machine",
        "portraits",
        vec![],
    );
    add(
        "/api/characters/{id}/portrait",
        "get",
        "The current portrait",
        "portraits",
        vec![id.clone()],
    );
    add(
        "/api/characters/{id}/regenerate-image",
        "post",
        "img2img variation of the current portrait (the regeneration guide)",
        "portraits",
        vec![id.clone(), asyncq],
    );
    add(
        "/api/characters/{id}/portraits",
        "get",
        "Portrait history, newest first",
        "portraits",
        vec![id.clone()],
    );
    add(
        "/api/characters/{id}/portraits/{portrait_id}/current",
        "post",
        "Make an earlier portrait current",
        "portraits",
        vec![
            id.clone(),
            json!({"name": "portrait_id", "in": "path", "required": true, "schema": {"type": "string"}}),
        ],
    );
    add(
        "/api/media/images/{key}",
        "get",
        "An image file (signed URL or credentials)",
        "media",
        vec![json!({"name": "key", "in": "path", "required": true, "schema": {"type": "string"}})],
    );
    add(
        "/api/campaigns",
        "get",
        "Campaigns the caller runs or plays in",
        "campaigns",
        vec![],
    );
    add(
        "/api/campaigns",
        "post",
        "Create a campaign (the caller is its DM)",
        "campaigns",
        vec![],
    );
    add(
        "/api/campaigns/{id}",
        "get",
        "One campaign",
        "campaigns",
        vec![id.clone()],
    );
    add(
        "/api/campaigns/{id}/characters",
        "get",
        "The DM roster (EnrichedCharacters)",
        "campaigns",
        vec![id.clone()],
    );
    add(
        "/api/campaigns/{id}/characters",
        "post",
        "The DM adds a character (or its owner, with an invite `code`)",
        "campaigns",
        vec![id.clone()],
    );
    for (method, summary) in [
        ("post", "The DM creates an invite code"),
        ("get", "The campaign's invite codes still usable (DM)"),
    ] {
        add(
            "/api/campaigns/{id}/invites",
            method,
            summary,
            "campaigns",
            vec![id.clone()],
        );
    }
    add(
        "/api/campaigns/{id}/invites/{code}",
        "delete",
        "Revoke an invite code (DM)",
        "campaigns",
        vec![
            id.clone(),
            json!({"name": "code", "in": "path", "required": true, "schema": {"type": "string"}}),
        ],
    );
    add(
        "/api/campaigns/join",
        "post",
        "Join with an invite code: {code, character_id} (one's own character)",
        "campaigns",
        vec![],
    );
    add(
        "/api/campaigns/{id}",
        "delete",
        "Delete a campaign (its DM)",
        "campaigns",
        vec![id.clone()],
    );
    let member = json!({"name": "character_id", "in": "path", "required": true, "schema": {"type": "string"}});
    for (method, summary) in [
        ("get", "A character with its campaign state"),
        ("patch", "Update campaign state (the DM)"),
        ("delete", "A character leaves the campaign"),
    ] {
        add(
            "/api/campaigns/{id}/characters/{character_id}",
            method,
            summary,
            "campaigns",
            vec![id.clone(), member.clone()],
        );
    }
    add(
        "/api/pregenerated/{id}/create",
        "post",
        "Create a character from a pregenerated one",
        "characters",
        vec![id.clone()],
    );
    add(
        "/api/jobs/{id}",
        "get",
        "Job status: queue position, step i/N, the latest preview while running, result or error",
        "jobs",
        vec![id.clone()],
    );
    add(
        "/api/jobs/{id}",
        "delete",
        "Cancel a job",
        "jobs",
        vec![id.clone()],
    );
    add(
        "/api/jobs/{id}/events",
        "get",
        "Server-Sent Events of a job: queued, started, progress, preview (a small data: URL image), then done, failed or cancelled",
        "jobs",
        vec![id],
    );
    add(
        "/api/pregenerated",
        "get",
        "Pregenerated characters",
        "characters",
        vec![],
    );
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "limner", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Tabletop-RPG character portraits with in-process Stable Diffusion"},
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error", "error_type"], "properties": {
                "error": {"type": "string"}, "error_type": {"type": "string"}, "field": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    }))
}
