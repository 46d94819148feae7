//! Characters: profiles, campaign state, the enriched view and their SQLite store.
//!
//! Following the portrait-creator spec's separation of concerns, a [`CharacterProfile`] holds a character's global
//! identity and appearance (one per character), a [`CharacterInfo`] holds its state in one
//! campaign, and an [`EnrichedCharacter`] merges both for API responses. Everything is kept in one
//! SQLite database behind the [`CharacterStore`] trait; [`validate`] is the one place raw input
//! becomes trusted data; [`migrate`] imports the legacy JSON layout and [`pregenerated`] the
//! characters shipped with limner.

mod campaigns;
pub mod enums;
mod error;
mod invites;
mod legacy;
mod legacy_files;
mod legacy_ids;
mod legacy_merge;
mod listing;
pub mod migrate;
mod pool;
mod portraits;
pub mod pregenerated;
mod profiles;
mod store;
mod types;
pub mod validate;

pub use enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
pub use error::{StoreError, StoreResult};
pub use invites::{INVITE_DEFAULT_SECONDS, INVITE_MAX_SECONDS, INVITE_MAX_USES};
pub use legacy::LegacyPlan;
pub use legacy_files::{PortraitFiles, PreparedFile};
pub use migrate::{migrate_legacy, MigrateError, MigrateOptions, MigrationReport};
pub use pregenerated::{import_pregenerated, pregenerated, PregenCharacter, PregenReport};
pub use profiles::{PAGE_DEFAULT, PAGE_MAX};
pub use store::{CharacterStore, SqliteStore, Store, DB_FILE_NAME, SCHEMA_VERSION};
pub use types::{
    Campaign, CampaignFilter, CampaignInvite, CampaignStatePatch, CharacterFilter, CharacterInfo,
    CharacterPatch, CharacterProfile, EnrichedCharacter, NewCampaign, NewCharacter, NewInvite,
    NewPortrait, Page, PageKey, PortraitRecord, Viewer,
};
pub use validate::ValidationError;
