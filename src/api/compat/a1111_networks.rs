//! A1111's extra-network listings: `GET /sdapi/v1/loras` (its Lora extension's
//! `[{name, alias, path, metadata}]`, metadata being the safetensors header's `__metadata__`),
//! `GET /sdapi/v1/embeddings` (`{loaded, skipped}` keyed by name), and the two refresh calls.
//! The folders are rescanned on every listing, so a refresh has nothing to rebuild; it answers
//! `null` as A1111 does.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::errors::A1111Error;
use crate::api::blocking;
use crate::api::caller::Caller;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::engine::{safetensors_metadata, EmbeddingInfo};

type A1111Result = Result<Json<Value>, A1111Error>;

/// `GET /sdapi/v1/loras`. The alias is the kohya `ss_output_name` when the file has one, as
/// A1111 names it; JSON-looking metadata strings come back parsed, as A1111 returns them.
pub(crate) async fn loras(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    caller?;
    let list = blocking(move || {
        Ok(state
            .backend
            .loras()
            .into_iter()
            .map(|f| {
                let metadata = safetensors_metadata(&f.path);
                let alias = match metadata.get("ss_output_name") {
                    Some(Value::String(a)) if !a.is_empty() => a.clone(),
                    _ => f.name.clone(),
                };
                json!({
                    "name": f.name,
                    "alias": alias,
                    "path": f.path.display().to_string(),
                    "metadata": metadata,
                })
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(Value::Array(list)))
}

/// A1111's entry of one embedding: `shape` is the vector width, `step` and the checkpoint
/// fields are what training recorded (safetensors embeddings carry none).
fn embedding_entry(e: &EmbeddingInfo) -> Value {
    json!({
        "step": null,
        "sd_checkpoint": null,
        "sd_checkpoint_name": null,
        "shape": e.dim,
        "vectors": e.vectors,
    })
}

/// `GET /sdapi/v1/embeddings`: the embeddings the served model can use under `loaded`, those
/// of another text encoder's width under `skipped`.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
) -> A1111Result {
    caller?;
    let list = blocking(move || Ok(state.backend.embeddings())).await?;
    let (mut loaded, mut skipped) = (Map::new(), Map::new());
    // A file that is no embedding at all is neither (A1111 does not load it).
    for e in list.iter().filter(|e| e.error.is_none()) {
        let into = if e.fits { &mut loaded } else { &mut skipped };
        into.insert(e.name.clone(), embedding_entry(e));
    }
    Ok(Json(json!({"loaded": loaded, "skipped": skipped})))
}

/// `POST /sdapi/v1/refresh-loras` and `refresh-embeddings`: listings are always fresh.
pub(crate) async fn refresh(caller: Result<Caller, ApiError>) -> A1111Result {
    caller?;
    Ok(Json(Value::Null))
}
