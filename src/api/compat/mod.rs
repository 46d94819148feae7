//! Drop-in compatibility APIs, so clients written for other servers work unchanged:
//! AUTOMATIC1111's web API under `/sdapi/v1/` and OpenAI's `POST /v1/images/generations`.
//!
//! Both are thin translations onto the same engine, job queue and auth as the rest of the API:
//! a request becomes a validated [`crate::engine::ValidRequest`], runs as a queue job
//! (429 when full, cancelled when the client goes away), and the result is reshaped into the
//! other server's reply. Each API answers errors in its own shape (see `errors`).
//!
//! Per-router state (the A1111 `sd_model_checkpoint` option and the compat jobs in flight, which
//! `/sdapi/v1/progress` and `/interrupt` look at) lives in a [`CompatState`] extension created
//! with the router, so two apps in one process (as in the tests) never share it.

mod a1111;
mod a1111_meta;
mod a1111_networks;
mod a1111_request;
mod errors;
mod openai;
mod run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::AppState;
use crate::engine::{match_vae_name, VaeChoice};
use crate::portraits::ImageBackend;
use run::ActiveJob;

/// State of the compatibility APIs, shared by their handlers through an `Extension`.
#[derive(Default)]
pub(crate) struct CompatState {
    /// A1111's `sd_model_checkpoint` option, per user (one player's client switching models
    /// must not switch everyone's): the model their later compat requests use when they name
    /// none. Absent = the backend's default model.
    checkpoint: PerUser,
    /// A1111's `sd_vae` option, per user like the checkpoint: "Automatic", "None" or a VAE
    /// file name the backend lists. Absent = "Automatic".
    vae: PerUser,
    /// Compat jobs submitted and not yet answered, oldest first.
    active: Mutex<Vec<Arc<ActiveJob>>>,
}

/// One A1111 option's value per user.
#[derive(Default)]
struct PerUser(RwLock<HashMap<String, String>>);

impl PerUser {
    fn get(&self, user: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
    }

    fn set(&self, user: &str, value: String) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(user.to_string(), value);
    }
}

impl CompatState {
    fn active(&self) -> MutexGuard<'_, Vec<Arc<ActiveJob>>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model `user`'s compat requests use by default: their `sd_model_checkpoint` option
    /// if it is still served, else the backend's default.
    pub(crate) fn default_model(&self, backend: &dyn ImageBackend, user: &str) -> String {
        self.checkpoint
            .get(user)
            .filter(|m| backend.model_names().contains(m))
            .unwrap_or_else(|| backend.default_model())
    }

    pub(crate) fn set_checkpoint(&self, user: &str, model: String) {
        self.checkpoint.set(user, model);
    }

    /// `user`'s `sd_vae` option: the VAE they chose if it is still listed, else "Automatic".
    pub(crate) fn vae(&self, backend: &dyn ImageBackend, user: &str) -> String {
        self.vae
            .get(user)
            .filter(|v| match VaeChoice::parse(v) {
                VaeChoice::Named(n) => backend.vae_names().contains(&n),
                _ => true,
            })
            .unwrap_or_else(|| VaeChoice::Automatic.as_option().to_string())
    }

    pub(crate) fn set_vae(&self, user: &str, vae: String) {
        self.vae.set(user, vae);
    }
}

/// A1111's `sd_vae` value made canonical: "Automatic", "None" (the checkpoint's own VAE) or the
/// name of a VAE file the backend lists (matched as [`match_vae_name`] does); anything else
/// is a 422 naming `field`.
pub(crate) fn resolve_vae(
    backend: &dyn ImageBackend,
    wanted: &str,
    field: &str,
) -> Result<String, ApiError> {
    match VaeChoice::parse(wanted) {
        VaeChoice::Named(name) => {
            let known = backend.vae_names();
            match_vae_name(known.iter().map(String::as_str), &name)
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::validation(
                        field,
                        format!(
                            "unknown VAE {name:?}; use Automatic, None or a VAE file of the \
                             models folder's vae/ (listed by /sdapi/v1/sd-vae): {}",
                            if known.is_empty() {
                                "none there".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })
        }
        other => Ok(other.as_option().to_string()),
    }
}

/// Every compat route; merged into the main router by `api::app`.
pub(crate) fn routes() -> Router<AppState> {
    let compat = Arc::new(CompatState::default());
    Router::new()
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/progress", get(a1111_meta::progress))
        .route("/sdapi/v1/interrupt", post(a1111_meta::interrupt))
        .route("/sdapi/v1/skip", post(a1111_meta::skip))
        .route("/sdapi/v1/samplers", get(a1111_meta::samplers))
        .route("/sdapi/v1/schedulers", get(a1111_meta::schedulers))
        .route("/sdapi/v1/sd-models", get(a1111_meta::sd_models))
        .route(
            "/sdapi/v1/options",
            get(a1111_meta::get_options).post(a1111_meta::set_options),
        )
        .route("/sdapi/v1/png-info", post(a1111_meta::png_info))
        .route("/sdapi/v1/upscalers", get(a1111_meta::upscalers))
        .route(
            "/sdapi/v1/latent-upscale-modes",
            get(a1111_meta::latent_upscale_modes),
        )
        .route("/sdapi/v1/scripts", get(a1111_meta::scripts))
        .route("/sdapi/v1/cmd-flags", get(a1111_meta::cmd_flags))
        .route(
            "/sdapi/v1/refresh-checkpoints",
            post(a1111_meta::refresh_checkpoints),
        )
        .route("/sdapi/v1/sd-vae", get(a1111_meta::sd_vae))
        .route("/sdapi/v1/loras", get(a1111_networks::loras))
        .route("/sdapi/v1/refresh-loras", post(a1111_networks::refresh))
        .route("/sdapi/v1/hypernetworks", get(a1111_meta::empty_list))
        .route("/sdapi/v1/face-restorers", get(a1111_meta::empty_list))
        .route("/sdapi/v1/prompt-styles", get(a1111_meta::empty_list))
        .route("/sdapi/v1/embeddings", get(a1111_networks::embeddings))
        .route(
            "/sdapi/v1/refresh-embeddings",
            post(a1111_networks::refresh),
        )
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/models", get(openai::models))
        .layer(Extension(compat))
}

/// A1111's title of a served model: `name [shorthash]` once its file is hashed (the hash is
/// computed in the background; until then the title is the bare name).
pub(crate) fn model_title(backend: &dyn ImageBackend, name: &str) -> String {
    match backend.model_hash(name) {
        Some(h) => format!("{name} [{}]", h.short()),
        None => name.to_string(),
    }
}

/// Finds a served model by any name a client may use for it, as A1111's
/// `get_closet_checkpoint_match` does: its name, any case, an A1111 title (`name [hash]`), a
/// file name (`name.safetensors`), or its hash (the 10-digit short hash or the full sha256).
pub(crate) fn resolve_model(backend: &dyn ImageBackend, wanted: &str) -> Option<String> {
    let known = backend.model_names();
    let mut name = wanted.trim();
    // "model.safetensors [879db523c3]" -> "model.safetensors"
    let mut bracketed = None;
    if let Some((head, tail)) = name.rsplit_once(" [") {
        if let Some(hash) = tail.strip_suffix(']') {
            name = head.trim();
            bracketed = Some(hash.trim());
        }
    }
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let stem = [".safetensors", ".ckpt", ".bin"]
        .iter()
        .find_map(|ext| base.strip_suffix(ext))
        .unwrap_or(base);
    let by_name = [name, base, stem].iter().find_map(|candidate| {
        known
            .iter()
            .find(|k| k.as_str() == *candidate)
            .or_else(|| known.iter().find(|k| k.eq_ignore_ascii_case(candidate)))
            .cloned()
    });
    by_name.or_else(|| {
        // A bare hash, or a title whose name part is not ours but whose hash is.
        let hash = bracketed.unwrap_or(name).to_ascii_lowercase();
        let is_hash = matches!(hash.len(), 10 | 64) && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hash {
            return None;
        }
        known.into_iter().find(|k| {
            backend
                .model_hash(k)
                .is_some_and(|h| h.short() == hash || h.sha256 == hash)
        })
    })
}

/// Decodes an image given as bare base64 or a `data:` URL into its bytes. Remote URLs are
/// refused: the server never fetches anything on a client's behalf.
pub(crate) fn image_bytes(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    let s = value.trim();
    let lower: String = s.chars().take(8).collect::<String>().to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::validation(
            field,
            "remote image URLs are not fetched; send the image as base64 or a data: URL",
        ));
    }
    let payload = match s.strip_prefix("data:") {
        Some(rest) => {
            let (meta, data) = rest.split_once(',').ok_or_else(|| {
                ApiError::validation(field, "data URL has no ',' before its payload")
            })?;
            if !meta.ends_with(";base64") {
                return Err(ApiError::validation(
                    field,
                    "data URL is not base64-encoded (expected ';base64,')",
                ));
            }
            data
        }
        None => s,
    };
    if payload.is_empty() {
        return Err(ApiError::validation(field, "the image is empty"));
    }
    let cleaned: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes()))
        .map_err(|e| ApiError::validation(field, format!("invalid base64: {e}")))
}

/// Deserializes a JSON body into `T`, naming the offending top-level key on a type error.
/// (Our A1111 bodies share fields through `#[serde(flatten)]`, which loses serde's error path,
/// so the key is found by trying the keys one at a time — only on the error path.)
pub(crate) fn from_body<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    // By reference: a body may carry megabytes of base64 that should not be copied twice.
    let error = match T::deserialize(&value) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let field = value.as_object().and_then(|object| {
        object.iter().find_map(|(key, v)| {
            let single = Value::Object(Map::from_iter([(key.clone(), v.clone())]));
            T::deserialize(&single).err().map(|_| key.clone())
        })
    });
    Err(match field {
        Some(f) => ApiError::validation(f, error.to_string()),
        None => ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            error.to_string(),
        ),
    })
}

/// Bare base64 of some bytes, as A1111 returns images.
pub(crate) fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::request::Defaults;
    use crate::portraits::FakeBackend;

    #[test]
    fn body_type_errors_name_the_key() {
        #[derive(serde::Deserialize, Debug)]
        struct Inner {
            #[allow(dead_code)]
            steps: Option<usize>,
        }
        #[derive(serde::Deserialize, Debug)]
        struct Outer {
            #[serde(flatten)]
            #[allow(dead_code)]
            inner: Inner,
        }
        let e = from_body::<Outer>(serde_json::json!({"a": 1, "steps": "x"})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("steps"));
        assert_eq!(e.status, 422);
        let e = from_body::<Outer>(serde_json::json!([1])).unwrap_err();
        assert_eq!((e.field, e.status.as_u16()), (None, 422));
        assert!(from_body::<Outer>(serde_json::json!({"steps": 3})).is_ok());
    }

    #[test]
    fn models_resolve_by_any_client_name() {
        let b = FakeBackend::new().with_model("Dream-8", Defaults::default());
        assert_eq!(
            resolve_model(&b, "fake-model").as_deref(),
            Some("fake-model")
        );
        assert_eq!(resolve_model(&b, "dream-8").as_deref(), Some("Dream-8"));
        assert_eq!(
            resolve_model(&b, "Dream-8.safetensors [879db523c3]").as_deref(),
            Some("Dream-8")
        );
        assert_eq!(
            resolve_model(&b, "models/Dream-8.ckpt").as_deref(),
            Some("Dream-8")
        );
        assert_eq!(resolve_model(&b, "sdxl"), None);
    }

    #[test]
    fn models_resolve_by_hash_and_titles_carry_it() {
        let sha = "879db523c30d3b9017143d56705015e15a2cb5628762c11d086fed9538abd7fd";
        let b = FakeBackend::new()
            .with_model("dream", Defaults::default())
            .with_model_hash("dream", sha);
        assert_eq!(model_title(&b, "dream"), "dream [879db523c3]");
        // Not hashed yet: the bare name.
        assert_eq!(model_title(&b, "fake-model"), "fake-model");
        for wanted in [
            "879db523c3",
            "879DB523C3",
            sha,
            "dream [879db523c3]",
            "renamed.safetensors [879db523c3]",
        ] {
            assert_eq!(
                resolve_model(&b, wanted).as_deref(),
                Some("dream"),
                "{wanted}"
            );
        }
        for wanted in ["879db523c4", "879db523", "renamed [0000000000]"] {
            assert_eq!(resolve_model(&b, wanted), None, "{wanted}");
        }
    }

    #[test]
    fn images_decode_from_base64_or_data_urls_but_never_remote() {
        assert_eq!(image_bytes("f", "aGk=").unwrap(), b"hi");
        assert_eq!(image_bytes("f", "aGk").unwrap(), b"hi");
        assert_eq!(
            image_bytes("f", "data:image/png;base64,aGk=").unwrap(),
            b"hi"
        );
        for bad in [
            "https://example.com/a.png",
            "HTTP://x/y",
            "data:image/png,raw",
            "data:image/png;base64",
            "",
            "!!!",
        ] {
            let e = image_bytes("init_images", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("init_images"), "{bad}");
        }
        let e = image_bytes("init_images", "https://example.com/a.png").unwrap_err();
        assert!(e.message.contains("remote"), "{}", e.message);
    }

    #[test]
    fn the_checkpoint_option_is_per_user_and_must_still_be_served() {
        let compat = CompatState::default();
        let b = FakeBackend::new().with_model("other", Defaults::default());
        assert_eq!(compat.default_model(&b, "ann"), "fake-model");
        compat.set_checkpoint("ann", "other".into());
        assert_eq!(compat.default_model(&b, "ann"), "other");
        assert_eq!(compat.default_model(&b, "bob"), "fake-model");
        compat.set_checkpoint("bob", "gone".into());
        assert_eq!(compat.default_model(&b, "bob"), "fake-model");
    }
}
