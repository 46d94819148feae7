//! Characters: profiles, campaign state, the enriched view and their SQLite store.
//!
//! Following the portrait-creator spec's separation of concerns, a [`CharacterProfile`] holds a character's global
//! identity and appearance (one per character), a [`CharacterInfo`] holds its state in one
//! campaign, and an [`EnrichedCharacter`] merges both for API responses. Everything is kept in one
//! SQLite database behind the [`CharacterStore`] trait; [`validate`] is the one place raw input
//! becomes trusted data; [`legacy_import`] imports the legacy JSON layout (behind `limner migrate`) and [`pregenerated`] the
//! characters shipped with limner.

mod campaigns;
pub mod enums;
mod error;
mod invites;
pub mod legacy_import;
mod listing;
mod pool;
mod portraits;
pub mod pregenerated;
mod profiles;
mod rows;
mod store;
mod types;
pub mod validate;

pub use enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
pub use error::{StoreError, StoreResult, ValidationError};
pub use invites::{INVITE_DEFAULT_SECONDS, INVITE_MAX_SECONDS, INVITE_MAX_USES};
pub use legacy_import::{
    import_legacy, LegacyImportError, LegacyImportOptions, LegacyImportReport, LegacyPlan,
    PortraitFiles, PreparedFile,
};
pub use listing::{PAGE_DEFAULT, PAGE_MAX};
pub use pregenerated::{import_pregenerated, pregenerated, PregenCharacter, PregenReport};
pub use store::{CharacterStore, SqliteStore, Store, DB_FILE_NAME, SCHEMA_VERSION};
pub use types::{
    Campaign, CampaignFilter, CampaignInvite, CampaignStatePatch, CharacterFilter, CharacterInfo,
    CharacterPatch, CharacterProfile, EnrichedCharacter, ListWindow, NewCampaign, NewCharacter,
    NewInvite, NewPortrait, Page, PageKey, PortraitRecord, Viewer,
};
