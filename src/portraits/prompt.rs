//! The raw portrait prompt, built from a character profile in the portrait-creator spec's order (name, expression,
//! gender, race, age, class, "<expression> expression", facial features, "wearing <attire>",
//! distinguishing feature, pose, custom additions) plus the fields the portrait-creator spec forgot and a portrait
//! needs: build and height (after the age), the weapon (after the attire) and the background
//! (after the pose). Empty fields are skipped; commas and whitespace are normalised so the result
//! is always a clean comma-separated list.

use crate::characters::{Build, CharacterProfile};

/// Collapses runs of whitespace (newlines included) into one space and trims.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Splits free text on commas into clean, non-empty parts.
pub(crate) fn clean_parts(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',').map(squash).filter(|p| !p.is_empty())
}

/// Joins parts into `a, b, c`, dropping empty ones and normalising commas inside them.
pub(crate) fn join_parts<I, S>(parts: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        out.extend(clean_parts(p.as_ref()));
    }
    out.join(", ")
}

fn text(field: &Option<String>) -> Option<String> {
    field.as_deref().map(squash).filter(|s| !s.is_empty())
}

/// Prefixes `word ` unless the text already starts with it ("wielding a sword" stays as is).
fn with_prefix(word: &str, text: String) -> String {
    if text.to_lowercase().starts_with(&format!("{word} ")) {
        text
    } else {
        format!("{word} {text}")
    }
}

/// The raw prompt for `profile`, with `custom_additions` last.
pub fn build_prompt(profile: &CharacterProfile, custom_additions: Option<&str>) -> String {
    let expression = profile.facial_expression.as_str().to_lowercase();
    let mut parts: Vec<String> = Vec::new();
    parts.push(squash(&profile.name));
    parts.push(expression.clone());
    parts.push(profile.gender.as_str().to_lowercase());
    if let Some(race) = profile.race {
        parts.push(race.as_str().to_string());
    }
    if let Some(age) = profile.age_category {
        parts.push(age.as_str().to_lowercase());
    }
    // "Average" is the schema's default, not something the user chose: it adds nothing.
    if profile.build != Build::Average {
        parts.push(format!("{} build", profile.build.as_str().to_lowercase()));
    }
    parts.extend(text(&profile.height_description));
    if let Some(class) = profile.character_class {
        parts.push(class.as_str().to_string());
    }
    parts.push(format!("{expression} expression"));
    parts.extend(text(&profile.facial_features));
    parts.extend(text(&profile.attire).map(|a| with_prefix("wearing", a)));
    parts.extend(text(&profile.primary_weapon).map(|w| with_prefix("wielding", w)));
    parts.extend(text(&profile.distinguishing_feature));
    if let Some(pose) = profile.pose {
        parts.push(pose.as_str().to_lowercase());
    }
    parts.extend(text(&profile.background_setting).map(|b| {
        if b.to_lowercase().ends_with("background") {
            b
        } else {
            format!("{b} background")
        }
    }));
    if let Some(extra) = custom_additions {
        parts.push(extra.to_string());
    }
    join_parts(parts)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::characters::{
        AgeCategory, CharacterClass, CharacterType, FacialExpression, Gender, Pose, Race,
    };

    /// A profile with only a name (every other field at its default).
    pub(crate) fn sparse(name: &str) -> CharacterProfile {
        let now = chrono::Utc::now();
        CharacterProfile {
            id: "c1".into(),
            name: name.into(),
            character_type: CharacterType::Player,
            race: None,
            character_class: None,
            base_level: 1,
            voice_id: None,
            voice_settings: serde_json::json!({}),
            voice_archetype: None,
            gender: Gender::default(),
            age_category: None,
            build: Build::default(),
            height_description: None,
            facial_expression: FacialExpression::default(),
            facial_features: None,
            attire: None,
            primary_weapon: None,
            distinguishing_feature: None,
            background_setting: None,
            pose: None,
            loras: Vec::new(),
            embeddings: Vec::new(),
            backstory: String::new(),
            description: String::new(),
            appearance: String::new(),
            visual_description: String::new(),
            current_portrait_id: None,
            owner_id: None,
            total_interactions: 0,
            import_key: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn full() -> CharacterProfile {
        CharacterProfile {
            race: Some(Race::Human),
            character_class: Some(CharacterClass::Fighter),
            gender: Gender::Male,
            age_category: Some(AgeCategory::Adult),
            build: Build::Muscular,
            height_description: Some("tall".into()),
            facial_expression: FacialExpression::Stern,
            facial_features: Some("scar across the left cheek,  short beard".into()),
            attire: Some("steel breastplate".into()),
            primary_weapon: Some("longsword".into()),
            distinguishing_feature: Some("glowing blue eyes".into()),
            background_setting: Some("castle courtyard".into()),
            pose: Some(Pose::WeaponReady),
            ..sparse("Garrick")
        }
    }

    #[test]
    fn full_profile_in_seed_order() {
        let p = build_prompt(&full(), Some(" dramatic lighting ,, rain "));
        let parts: Vec<&str> = p.split(", ").collect();
        assert_eq!(
            parts,
            vec![
                "Garrick",
                "stern",
                "male",
                "Human",
                "adult",
                "muscular build",
                "tall",
                "Fighter",
                "stern expression",
                "scar across the left cheek",
                "short beard",
                "wearing steel breastplate",
                "wielding longsword",
                "glowing blue eyes",
                "weapon ready",
                "castle courtyard background",
                "dramatic lighting",
                "rain",
            ]
        );
    }

    #[test]
    fn sparse_profile_skips_empty_fields() {
        let mut p = sparse("  Nim\n the   Quiet ");
        p.attire = Some("   ".into());
        p.background_setting = Some("misty forest background".into());
        p.primary_weapon = Some("Wielding a staff".into());
        let prompt = build_prompt(&p, None);
        assert_eq!(
            prompt,
            "Nim the Quiet, determined, non-binary, determined expression, Wielding a staff, \
             misty forest background"
        );
        assert!(!prompt.contains(",,"));
        assert!(!prompt.contains("wearing"));
        assert!(!prompt.contains("build"));
        assert_eq!(build_prompt(&p, Some(" , ")), prompt);
    }
}
