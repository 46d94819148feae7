//! Portrait jobs' results: what the job record keeps ([`PortraitRef`]: the new portrait's
//! history row, the one it replaced, and the few values the reply needs that those rows do not
//! hold) and how a reply is built from it, on the async side: the synchronous handler from the
//! typed outcome, `/api/jobs/{id}` and its events from the recorded rows. Only the media URLs
//! are made anew (they are signed and expire, so a stored reply would go stale); building the
//! reply reads no database, so polling a finished job costs no blocking-pool trip.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::AppState;
use crate::characters::PortraitRecord;
use crate::jobs::JobOutput;
use crate::portraits::PortraitOutcome;

/// Job kinds of the portrait endpoints (the record's `kind`).
pub(crate) const GENERATE_KIND: &str = "portrait.generate";
pub(crate) const REGENERATE_KIND: &str = "portrait.regenerate";

/// Which reply a portrait job answers with: the portrait-creator spec's or the regeneration
/// guide's, with what only the request knew.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum ReplyKind {
    Generate,
    Regenerate {
        name: String,
        new_prompt: String,
        denoising_strength: f64,
    },
}

impl ReplyKind {
    pub(crate) fn job_kind(&self) -> &'static str {
        match self {
            ReplyKind::Generate => GENERATE_KIND,
            ReplyKind::Regenerate { .. } => REGENERATE_KIND,
        }
    }
}

/// A portrait job's recorded result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PortraitRef {
    #[serde(flatten)]
    pub reply: ReplyKind,
    pub character_id: String,
    pub portrait_id: String,
    pub previous_portrait_id: Option<String>,
    /// The history rows as they were written (what the reply shows).
    pub record: PortraitRecord,
    pub previous: Option<PortraitRecord>,
    pub generation_time_ms: u64,
    pub art_style: String,
    pub seed: u64,
    pub prompt_used: String,
}

/// A finished portrait job: the service's outcome and the reply it answers with.
pub(crate) struct PortraitJob {
    pub outcome: PortraitOutcome,
    pub reply: ReplyKind,
}

impl PortraitJob {
    pub(crate) fn reference(&self) -> PortraitRef {
        let o = &self.outcome;
        PortraitRef {
            reply: self.reply.clone(),
            character_id: o.record.character_id.clone(),
            portrait_id: o.record.id.clone(),
            previous_portrait_id: o.previous.as_ref().map(|p| p.id.clone()),
            record: o.record.clone(),
            previous: o.previous.clone(),
            generation_time_ms: o.generation_time_ms,
            art_style: o.art_style.clone(),
            seed: o.seed,
            prompt_used: o.prompt_used.clone(),
        }
    }

    /// The synchronous reply, straight from the outcome.
    pub(crate) fn reply(&self, state: &AppState) -> Value {
        reply(state, &self.reference())
    }
}

impl JobOutput for PortraitJob {
    fn record(&self) -> Value {
        serde_json::to_value(self.reference()).unwrap_or(Value::Null)
    }
}

/// The portrait-creator spec's generate reply for a portrait record; `generation_time_ms` only
/// when it was painted now.
pub(crate) fn generate_reply(
    state: &AppState,
    r: &PortraitRecord,
    generation_time_ms: Option<u64>,
) -> Value {
    let mut v = json!({
        "success": true,
        "character_id": r.character_id,
        "portrait_id": r.id,
        "portrait_url": state.media_url(&r.file_path),
        "portrait_path": r.file_path,
        "thumbnail_url": r.thumbnail_path.as_deref().map(|t| state.media_url(t)),
        "prompt_used": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": r.seed,
        "model": r.model,
        "art_style": r.art_style,
        "parameters": r.parameters,
        "created_at": r.created_at,
        "generated": generation_time_ms.is_some(),
    });
    if let Some(ms) = generation_time_ms {
        v["generation_time_ms"] = json!(ms);
    }
    v
}

/// The reply of a finished portrait job.
fn reply(state: &AppState, r: &PortraitRef) -> Value {
    let (record, previous) = (&r.record, r.previous.as_ref());
    let (name, new_prompt, strength) = match &r.reply {
        ReplyKind::Generate => return generate_reply(state, record, Some(r.generation_time_ms)),
        ReplyKind::Regenerate {
            name,
            new_prompt,
            denoising_strength,
        } => (name, new_prompt, denoising_strength),
    };
    // The regeneration guide's regenerate reply.
    let previous = previous.map(|p| state.media_url(&p.file_path));
    json!({
        "success": true,
        "message": "Character image regenerated successfully!",
        "character": {
            "id": record.character_id,
            "name": name,
            "avatar": state.media_url(&record.file_path),
            "previousImage": previous,
        },
        "generationData": {
            "originalImageUrl": previous,
            "newPrompt": new_prompt,
            "denoisingStrength": strength,
            "artStyle": r.art_style,
            "generationTime": record.created_at,
            "generationTimeMs": r.generation_time_ms,
            "method": "img2img_consistency",
            "portraitId": record.id,
            "seed": r.seed,
            "promptUsed": r.prompt_used,
        },
    })
}

/// The client-facing result of a finished job of `kind` from its recorded `result`: portrait
/// jobs get their endpoint's reply again, with fresh media URLs (no database read, so callers
/// stay on the async side); other jobs' results are shown as recorded.
pub(crate) fn render_result(state: &AppState, kind: &str, job_id: &str, result: &Value) -> Value {
    if kind != GENERATE_KIND && kind != REGENERATE_KIND {
        return result.clone();
    }
    // Read straight from the borrowed JSON: no copy of the recorded rows.
    let Ok(r) = PortraitRef::deserialize(result) else {
        return result.clone();
    };
    let mut v = reply(state, &r);
    v["job_id"] = json!(job_id);
    v
}
