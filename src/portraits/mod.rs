//! Portraits: turns a character profile into a prompt, frames it with a per-style template from
//! `prompts/`, paints it through an [`ImageBackend`] (the real engine or a fake), and keeps every
//! image in an [`ImageStore`] and every portrait in the character store's history.
//!
//! The HTTP layer talks to [`PortraitService`] only. Every operation is split in two: `prepare_*`
//! (cheap, validates everything, may fail with a 4xx-style [`PortraitError`]) and
//! [`PortraitService::run`] (blocking, runs on a job thread), so a bad request is refused before
//! anything is queued.

mod backend;
mod error;
mod estimate;
mod families;
mod image_store;
mod legacy_files;
mod options;
mod prompt;
mod service;
mod template_error;
mod templates;

pub use backend::{FakeBackend, ImageBackend, NoModelBackend};
pub use error::{engine_failure_kind, engine_field, PortraitError};
pub use estimate::{Estimate, SpeedBook};
pub use families::{FamilyTags, FAMILIES_DIR};
pub use image_store::{
    image_key, is_storage_full, thumbnail_key, validate_key, ImageStore, ImageStoreError,
    LocalImageStore, MAX_KEY_LEN,
};
pub use legacy_files::{MediaPortraitFiles, MAX_LEGACY_FILE_BYTES};
pub use options::{
    device_defaults, DeviceClass, GenerateOptions, Method, PortraitOutcome, PreparedPortrait,
    StyleModels, DEFAULT_REGENERATE_STRENGTH, MAX_ADDITIONS_CHARS, MAX_REGENERATE_STRENGTH,
    MIN_REGENERATE_STRENGTH,
};
pub use prompt::build_prompt;
pub use service::{PortraitService, THUMBNAIL_SIDE};
pub use templates::{PortraitTemplate, PortraitTemplates, TemplateError, DEFAULT_STYLE};
