//! The closed vocabularies of the visual schema (SPEC.md section 2, the portrait-creator spec): race, gender, class,
//! age, build, expression, pose and character type.
//!
//! Each value is parsed case- and separator-insensitively ("non binary", "DARK_ELF", "wood-elf"),
//! plus a few loose legacy spellings, and is always stored and serialized in its canonical spelling.
//! An unknown value is a [`ValidationError`] naming the field and listing the allowed values.

use super::error::ValidationError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The comparison key: lowercase letters and digits only, so case, spaces, hyphens and
/// underscores never matter.
pub(crate) fn normalize_key(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, field = $field:literal,
        values = [$($variant:ident => $canon:literal),+ $(,)?],
        aliases = [$($alias:literal => $avariant:ident),* $(,)?]
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(#[doc = $canon] $variant),+
        }

        impl $name {
            /// Every value, in the order the schema lists them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The canonical spellings, in the order the schema lists them.
            pub const NAMES: &'static [&'static str] = &[$($canon),+];
            /// The profile field this vocabulary fills (used in error messages).
            pub const FIELD: &'static str = $field;

            /// The canonical spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $canon),+
                }
            }

            /// Parses any casing / separator spelling of a value or one of its aliases; the
            /// error names the field and lists the allowed values.
            pub fn parse(raw: &str) -> Result<Self, ValidationError> {
                let key = normalize_key(raw);
                $(if key == normalize_key($canon) {
                    return Ok($name::$variant);
                })+
                $(if key == normalize_key($alias) {
                    return Ok($name::$avariant);
                })*
                Err(ValidationError::unknown_value($field, raw, Self::NAMES))
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

vocabulary! {
    /// Whether a person plays the character or the DM does.
    CharacterType, field = "character_type",
    values = [Player => "player", Npc => "npc"],
    aliases = ["pc" => Player, "player character" => Player, "non player character" => Npc]
}

vocabulary! {
    /// Species / lineage.
    Race, field = "race",
    values = [
        Human => "Human", Orc => "Orc", DarkElf => "Dark Elf", WoodElf => "Wood Elf",
        HighElf => "High Elf", Dragonborn => "Dragonborn", Tiefling => "Tiefling",
        RockGnome => "Rock Gnome", ForestGnome => "Forest Gnome", Halfling => "Halfling",
        Dwarf => "Dwarf", HalfElf => "Half-Elf", HalfOrc => "Half-Orc",
    ],
    aliases = ["humans" => Human, "drow" => DarkElf, "dwarven" => Dwarf, "dwarves" => Dwarf]
}

vocabulary! {
    /// Gender presentation; defaults to Non-binary.
    Gender, field = "gender",
    values = [Male => "Male", Female => "Female", NonBinary => "Non-binary"],
    aliases = [
        "m" => Male, "man" => Male, "f" => Female, "woman" => Female, "nb" => NonBinary,
        "enby" => NonBinary,
    ]
}

vocabulary! {
    /// Primary profession / archetype.
    CharacterClass, field = "character_class",
    values = [
        Barbarian => "Barbarian", Rogue => "Rogue", Wizard => "Wizard", Cleric => "Cleric",
        Monk => "Monk", Warlock => "Warlock", Ranger => "Ranger", Fighter => "Fighter",
        Bard => "Bard", Paladin => "Paladin", Druid => "Druid", Sorcerer => "Sorcerer",
        Artificer => "Artificer",
    ],
    aliases = ["thief" => Rogue, "mage" => Wizard, "priest" => Cleric, "warrior" => Fighter]
}

vocabulary! {
    /// Visual age: Young (18-25), Adult (26-40), Middle-aged (41-60), Elderly (60+).
    AgeCategory, field = "age_category",
    values = [Young => "Young", Adult => "Adult", MiddleAged => "Middle-aged", Elderly => "Elderly"],
    aliases = ["old" => Elderly, "elder" => Elderly, "middle age" => MiddleAged]
}

vocabulary! {
    /// Body type; defaults to Average.
    Build, field = "build",
    values = [
        Slender => "Slender", Athletic => "Athletic", Muscular => "Muscular",
        Stocky => "Stocky", Heavyset => "Heavyset", Average => "Average",
    ],
    aliases = ["thin" => Slender, "slim" => Slender, "medium" => Average]
}

vocabulary! {
    /// Default demeanour; defaults to Determined.
    FacialExpression, field = "facial_expression",
    values = [
        Confident => "Confident", Serene => "Serene", Determined => "Determined",
        Friendly => "Friendly", Stern => "Stern", Mysterious => "Mysterious",
        Joyful => "Joyful", Brooding => "Brooding", Wise => "Wise", Fierce => "Fierce",
    ],
    aliases = []
}

vocabulary! {
    /// The pose in the portrait.
    Pose, field = "pose",
    values = [
        StandingConfident => "Standing Confident", ArmsCrossed => "Arms Crossed",
        WeaponReady => "Weapon Ready", CastingSpell => "Casting Spell",
        SeatedThoughtful => "Seated Thoughtful", LookingOverShoulder => "Looking Over Shoulder",
    ],
    aliases = []
}

// The enums are declared by `vocabulary!`, where a `#[default]` variant attribute cannot be
// placed on one variant of the repetition; hence hand-written impls.
#[allow(clippy::derivable_impls)]
impl Default for CharacterType {
    fn default() -> Self {
        CharacterType::Player
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Gender {
    fn default() -> Self {
        Gender::NonBinary
    }
}

#[allow(clippy::derivable_impls)]
impl Default for Build {
    fn default() -> Self {
        Build::Average
    }
}

#[allow(clippy::derivable_impls)]
impl Default for FacialExpression {
    fn default() -> Self {
        FacialExpression::Determined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_spellings_parse_to_canonical() {
        assert_eq!(Gender::parse("non binary").unwrap(), Gender::NonBinary);
        assert_eq!(Gender::parse("NON_BINARY").unwrap().as_str(), "Non-binary");
        assert_eq!(Race::parse("DARK_ELF").unwrap(), Race::DarkElf);
        assert_eq!(Race::parse("wood-elf").unwrap().as_str(), "Wood Elf");
        assert_eq!(Race::parse("half elf").unwrap().as_str(), "Half-Elf");
        assert_eq!(
            AgeCategory::parse("middle aged").unwrap().as_str(),
            "Middle-aged"
        );
        assert_eq!(
            Pose::parse("casting_spell").unwrap().as_str(),
            "Casting Spell"
        );
        assert_eq!(CharacterType::parse("NPC").unwrap(), CharacterType::Npc);
    }

    #[test]
    fn every_canonical_name_round_trips() {
        for v in Race::ALL {
            assert_eq!(Race::parse(v.as_str()).unwrap(), *v);
            assert_eq!(Race::parse(&v.as_str().to_uppercase()).unwrap(), *v);
        }
        for v in Pose::ALL {
            assert_eq!(Pose::parse(&v.as_str().replace(' ', "_")).unwrap(), *v);
        }
        assert_eq!(Build::NAMES.len(), Build::ALL.len());
    }

    #[test]
    fn unknown_value_names_field_and_allowed_values() {
        let err = CharacterClass::parse("adventurer").unwrap_err();
        assert_eq!(err.field, "character_class");
        assert!(err.message.contains("adventurer"), "{}", err.message);
        for name in CharacterClass::NAMES {
            assert!(
                err.message.contains(name),
                "missing {name}: {}",
                err.message
            );
        }
    }

    #[test]
    fn serde_uses_canonical_spelling() {
        let g: Gender = serde_json::from_str("\"non binary\"").unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), "\"Non-binary\"");
        let bad = serde_json::from_str::<Race>("\"Elf\"")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("race") && bad.contains("High Elf"), "{bad}");
    }
}
