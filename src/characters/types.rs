//! The character data types, which are also the JSON of the HTTP API: the global
//! [`CharacterProfile`], per-campaign [`CharacterInfo`], the merged [`EnrichedCharacter`],
//! [`Campaign`], [`PortraitRecord`], and the raw inputs ([`NewCharacter`], [`CharacterPatch`], ...)
//! that `validate` turns into them.

use super::enums::{
    AgeCategory, Build, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
};
use crate::engine::LoraRef;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Global identity and appearance of one character, shared by every campaign it takes part in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharacterProfile {
    /// UUID.
    pub id: String,
    pub name: String,
    pub character_type: CharacterType,
    pub race: Option<Race>,
    pub character_class: Option<CharacterClass>,
    pub base_level: i64,
    pub voice_id: Option<String>,
    pub voice_settings: Value,
    pub voice_archetype: Option<String>,
    pub gender: Gender,
    pub age_category: Option<AgeCategory>,
    pub build: Build,
    pub height_description: Option<String>,
    pub facial_expression: FacialExpression,
    pub facial_features: Option<String>,
    pub attire: Option<String>,
    pub primary_weapon: Option<String>,
    pub distinguishing_feature: Option<String>,
    pub background_setting: Option<String>,
    pub pose: Option<Pose>,
    /// LoRAs every portrait of this character is painted with; a request's own `loras` add to
    /// them (the request's weight wins for a name in both).
    #[serde(default)]
    pub loras: Vec<LoraRef>,
    /// Embeddings every portrait of this character requires (by file name, e.g. a negative
    /// embedding its prompts use); a request's own `embeddings` add to them.
    #[serde(default)]
    pub embeddings: Vec<String>,
    pub backstory: String,
    pub description: String,
    pub appearance: String,
    pub visual_description: String,
    pub current_portrait_id: Option<String>,
    pub owner_id: Option<String>,
    pub total_interactions: i64,
    /// Stable key of an imported character (`pregen:<id>`, `legacy:<id>`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Input of "create a character". Enum fields are raw strings here so that a bad value becomes a
/// [`super::ValidationError`] naming the field rather than a generic JSON error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewCharacter {
    pub name: String,
    pub character_type: Option<String>,
    pub race: Option<String>,
    #[serde(alias = "class")]
    pub character_class: Option<String>,
    pub base_level: Option<i64>,
    pub voice_id: Option<String>,
    pub voice_settings: Option<Value>,
    pub voice_archetype: Option<String>,
    pub gender: Option<String>,
    pub age_category: Option<String>,
    pub build: Option<String>,
    pub height_description: Option<String>,
    pub facial_expression: Option<String>,
    pub facial_features: Option<String>,
    pub attire: Option<String>,
    pub primary_weapon: Option<String>,
    pub distinguishing_feature: Option<String>,
    pub background_setting: Option<String>,
    pub pose: Option<String>,
    /// Pinned LoRAs (`[{name, weight}]`, weight default 1).
    pub loras: Vec<LoraRef>,
    /// Pinned embeddings (file names).
    pub embeddings: Vec<String>,
    pub backstory: Option<String>,
    pub description: Option<String>,
    pub appearance: Option<String>,
    pub visual_description: Option<String>,
    /// Set by the caller from the authenticated user, not trusted from a request body.
    pub owner_id: Option<String>,
    /// When given, the new character also joins this campaign (one transaction).
    pub campaign_id: Option<String>,
}

/// Partial update of a profile: an absent field is left alone; `null` clears an optional field
/// (or restores the default of gender, build and facial expression).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CharacterPatch {
    pub name: Option<String>,
    #[serde(deserialize_with = "double_option")]
    pub character_type: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub race: Option<Option<String>>,
    #[serde(alias = "class", deserialize_with = "double_option")]
    pub character_class: Option<Option<String>>,
    pub base_level: Option<i64>,
    #[serde(deserialize_with = "double_option")]
    pub voice_id: Option<Option<String>>,
    pub voice_settings: Option<Value>,
    #[serde(deserialize_with = "double_option")]
    pub voice_archetype: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub gender: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub age_category: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub build: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub height_description: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub facial_expression: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub facial_features: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub attire: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub primary_weapon: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub distinguishing_feature: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub background_setting: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub pose: Option<Option<String>>,
    /// Replaces the pinned LoRAs; `null` or `[]` unpins them all.
    #[serde(deserialize_with = "double_option")]
    pub loras: Option<Option<Vec<LoraRef>>>,
    /// Replaces the pinned embeddings; `null` or `[]` unpins them all.
    #[serde(deserialize_with = "double_option")]
    pub embeddings: Option<Option<Vec<String>>>,
    #[serde(deserialize_with = "double_option")]
    pub backstory: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub appearance: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub visual_description: Option<Option<String>>,
    #[serde(deserialize_with = "double_option")]
    pub owner_id: Option<Option<String>>,
}

/// Distinguishes an absent field (`None`, via `#[serde(default)]`) from an explicit `null`
/// (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Declares a list filter: its own fields, then the ones every list shares (page size, offset,
/// keyset cursor, viewer), written once so that every list pages and sees alike.
macro_rules! list_filter {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Page size; default 100, at most 1000.
            pub limit: Option<u32>,
            pub offset: Option<u32>,
            /// Keyset pagination: only rows sorting after this key (the `next` of a previous page).
            #[serde(skip)]
            pub after: Option<PageKey>,
            /// Whose list this is; decided in SQL, before the page is cut.
            #[serde(skip)]
            pub visible_to: Viewer,
        }

        impl $name {
            /// The filter cut to `window` (its page and viewer).
            pub fn in_window(self, window: ListWindow) -> Self {
                Self {
                    limit: window.limit,
                    offset: window.offset,
                    after: window.after,
                    visible_to: window.visible_to,
                    ..self
                }
            }
        }
    };
}

/// The part of a list request every list shares: which page, and for whom.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListWindow {
    pub limit: Option<u32>,
    pub offset: Option<u32>,
    pub after: Option<PageKey>,
    pub visible_to: Viewer,
}

list_filter! {
    /// Filters of `list_characters`; every filter is optional and they combine with AND.
    pub struct CharacterFilter {
        pub owner_id: Option<String>,
        pub campaign_id: Option<String>,
        /// Case-insensitive substring of the name.
        pub name: Option<String>,
    }
}

/// Who a read is for. Visibility is part of the query, so a page is always a page of rows the
/// viewer may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Viewer {
    /// Everything (admins; limner's own maintenance such as migration and health checks).
    #[default]
    Admin,
    /// A user: their own characters, and every character of a campaign they run (`dm_id`) or
    /// play in (own a character taking part).
    User(String),
}

impl Viewer {
    /// The user whose visibility applies; `None` for an admin.
    pub fn user(&self) -> Option<&str> {
        match self {
            Viewer::Admin => None,
            Viewer::User(u) => Some(u),
        }
    }
}

/// The sort key of a listed row (case-insensitive name, then id): where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageKey {
    pub name: String,
    pub id: String,
}

/// One page of a list, and the key the next page starts after (`None` on the last page).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<PageKey>,
}

/// Per-(campaign, character) state. Never identity or appearance: those live in the profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CharacterInfo {
    pub campaign_id: String,
    pub character_id: String,
    /// Campaign override of the profile's base level.
    pub level: Option<i64>,
    pub hit_points_current: i64,
    pub hit_points_max: i64,
    pub armor_class: i64,
    pub status: String,
    pub inventory: Value,
    pub location: Option<String>,
    pub quests: Value,
    /// Other game-specific state (e.g. fields carried over from the legacy layout).
    pub extra: Value,
    pub joined_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Partial update of campaign state (also the initial state when joining); `null` clears the
/// level override and the location.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CampaignStatePatch {
    #[serde(deserialize_with = "double_option")]
    pub level: Option<Option<i64>>,
    pub hit_points_current: Option<i64>,
    pub hit_points_max: Option<i64>,
    pub armor_class: Option<i64>,
    pub status: Option<String>,
    pub inventory: Option<Value>,
    #[serde(deserialize_with = "double_option")]
    pub location: Option<Option<String>>,
    pub quests: Option<Value>,
    /// Replaces the whole `extra` object.
    pub extra: Option<Value>,
}

/// The merged view every API response returns: the profile, the campaign state when a campaign
/// is given (`level` = override or base level) and the current portrait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedCharacter {
    #[serde(flatten)]
    pub profile: CharacterProfile,
    /// Same as `id`; the name the portrait-creator spec's clients read.
    pub character_id: String,
    pub campaign_id: Option<String>,
    pub level: i64,
    pub hit_points_current: Option<i64>,
    pub hit_points_max: Option<i64>,
    pub armor_class: Option<i64>,
    pub status: Option<String>,
    pub inventory: Option<Value>,
    pub location: Option<String>,
    pub quests: Option<Value>,
    pub extra: Option<Value>,
    pub portrait_path: Option<String>,
    pub portrait_thumbnail_path: Option<String>,
    pub portrait_prompt: Option<String>,
    /// Left empty by the store; the HTTP layer fills it with a (signed) URL.
    pub portrait_url: Option<String>,
}

/// A campaign: its name, its DM and the characters taking part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    pub dm_id: Option<String>,
    pub description: String,
    pub character_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Input of "create a campaign".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewCampaign {
    pub name: String,
    pub dm_id: Option<String>,
    pub description: Option<String>,
}

list_filter! {
    /// Filters of `list_campaigns`.
    pub struct CampaignFilter {
        pub dm_id: Option<String>,
        /// Only campaigns this character takes part in.
        pub character_id: Option<String>,
    }
}

/// A code a campaign's DM hands out; a player redeems it to join with one of their own
/// characters (the DM's consent, given in advance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignInvite {
    pub code: String,
    pub campaign_id: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// How many joins the code allows; `None` = any number until it expires.
    pub max_uses: Option<i64>,
    pub uses: i64,
}

/// Input of "create an invite"; both optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewInvite {
    /// Lifetime in seconds; default 7 days, at most 365 days.
    pub expires_in_seconds: Option<i64>,
    /// 1..=1000; absent = unlimited until expiry.
    pub max_uses: Option<i64>,
}

/// One portrait a character had; none is ever deleted by a regeneration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortraitRecord {
    pub id: String,
    pub character_id: String,
    pub file_path: String,
    pub thumbnail_path: Option<String>,
    pub prompt: String,
    pub negative_prompt: String,
    pub parameters: Value,
    pub seed: Option<u64>,
    pub model: Option<String>,
    pub art_style: Option<String>,
    /// The portrait an img2img variation started from.
    pub parent_portrait_id: Option<String>,
    /// Whether this is the character's current portrait (computed when read).
    pub is_current: bool,
    pub created_at: DateTime<Utc>,
}

/// Input of "record a portrait".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NewPortrait {
    pub character_id: String,
    pub file_path: String,
    pub thumbnail_path: Option<String>,
    pub prompt: String,
    pub negative_prompt: String,
    pub parameters: Option<Value>,
    pub seed: Option<u64>,
    pub model: Option<String>,
    pub art_style: Option<String>,
    pub parent_portrait_id: Option<String>,
}
