//! Per-family prompt templates: the same character painted by an SD 1.5 model, a Pony model
//! and an Illustrious model gets each family's prompt (prompts/families/), through the real
//! portrait service, a real SQLite store and the fake backend.

use std::path::Path;
use std::sync::Arc;

use limner::characters::{CharacterStore, NewCharacter, SqliteStore};
use limner::engine::Defaults;
use limner::portraits::{
    FakeBackend, GenerateOptions, LocalImageStore, PortraitService, PortraitTemplates,
    PreparedPortrait, StyleModels,
};
use limner::registry::{Family, Registry};

fn small() -> Defaults {
    Defaults {
        steps: 4,
        width: 64,
        height: 96,
        ..Defaults::default()
    }
}

struct Setup {
    service: PortraitService,
    store: Arc<SqliteStore>,
    character: String,
    _dir: tempfile::TempDir,
}

/// Models `sd15` (family sd1), `pony`, `illu` (illustrious) and `xl` (plain sdxl).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let character = store
        .create_character(&NewCharacter {
            name: "Garrick".into(),
            race: Some("Human".into()),
            gender: Some("Male".into()),
            attire: Some("steel breastplate".into()),
            ..Default::default()
        })
        .unwrap()
        .id;
    let mut backend = FakeBackend::new().with_defaults(small());
    for m in ["sd15", "pony", "illu", "xl"] {
        backend = backend.with_model(m, small());
    }
    let styles = StyleModels::new()
        .with_family("sd15", Family::Sd1)
        .with_family("pony", Family::Pony)
        .with_family("illu", Family::Illustrious)
        .with_family("xl", Family::Sdxl);
    let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
    let service = PortraitService::new(
        store.clone(),
        Arc::new(LocalImageStore::new(dir.path().join("media"))),
        Arc::new(backend),
        PortraitTemplates::load_dir(&prompts).unwrap(),
        styles,
    );
    Setup {
        service,
        store,
        character,
        _dir: dir,
    }
}

fn prepare(s: &Setup, model: &str, style: &str) -> PreparedPortrait {
    let profile = s.store.get_character(&s.character).unwrap();
    s.service
        .prepare_generate(
            &profile,
            GenerateOptions {
                model: Some(model.into()),
                art_style: Some(style.into()),
                ..Default::default()
            },
        )
        .unwrap()
}

fn tags(text: &str) -> Vec<&str> {
    text.split(", ").collect()
}

#[test]
fn one_character_three_families_three_prompts() {
    let s = setup();
    let templates = s.service.templates();
    let anime = templates.get("anime").unwrap();

    // SD 1.5: the style template exactly as before (A1111 quality tags, no family tags).
    let sd15 = prepare(&s, "sd15", "anime");
    assert!(
        sd15.prompt().starts_with(&anime.quality),
        "{}",
        sd15.prompt()
    );
    assert!(sd15
        .prompt()
        .contains("anime style, character portrait of Garrick"));
    assert!(!sd15.prompt().contains("score_9"), "{}", sd15.prompt());
    assert_eq!(sd15.negative_prompt(), anime.negative_prompt);
    // Plain SDXL has no family file: the same prompt as SD 1.5.
    let xl = prepare(&s, "xl", "anime");
    assert_eq!(
        (xl.prompt(), xl.negative_prompt()),
        (sd15.prompt(), sd15.negative_prompt())
    );

    // Pony: the score ladder and the style's source tag replace the quality tags.
    let pony = prepare(&s, "pony", "anime");
    let p = tags(pony.prompt());
    assert_eq!(
        p[..7],
        [
            "score_9",
            "score_8_up",
            "score_7_up",
            "score_6_up",
            "score_5_up",
            "score_4_up",
            "source_anime"
        ],
        "{}",
        pony.prompt()
    );
    assert!(pony
        .prompt()
        .contains("anime style, character portrait of Garrick"));
    assert!(!pony.prompt().contains("masterpiece"), "{}", pony.prompt());
    let n = tags(pony.negative_prompt());
    assert_eq!(
        n[..5],
        [
            "score_4",
            "score_5",
            "score_6",
            "source_pony",
            "source_furry"
        ]
    );
    assert!(
        n.contains(&"bad hands"),
        "the style's negatives follow: {n:?}"
    );

    // Illustrious: its quality tags, danbooru's 1boy for a male character, then the framing.
    let illu = prepare(&s, "illu", "anime");
    let i = tags(illu.prompt());
    assert_eq!(
        i[..8],
        [
            "masterpiece",
            "best quality",
            "amazing quality",
            "very aesthetic",
            "absurdres",
            "newest",
            "1boy",
            "anime coloring"
        ],
        "{}",
        illu.prompt()
    );
    assert!(illu.prompt().contains("character portrait of Garrick"));
    assert!(!illu.prompt().contains("score_9"));
    let n = tags(illu.negative_prompt());
    assert_eq!(n[..3], ["worst quality", "low quality", "lowres"]);
    // The style's negatives repeat some family tags: each appears once.
    for tag in &n {
        let count = n.iter().filter(|t| t.eq_ignore_ascii_case(tag)).count();
        assert_eq!(count, 1, "{tag} repeated in {n:?}");
    }

    // Every family paints the same character from the same profile prompt.
    for prepared in [&sd15, &pony, &illu] {
        assert!(prepared.prompt().contains("wearing steel breastplate"));
    }
}

#[test]
fn a_style_without_family_tags_still_gets_the_family_quality_tags() {
    let s = setup();
    // "default" has no [styles] entry in pony.toml: just the score ladder.
    let pony = prepare(&s, "pony", "default");
    assert!(
        pony.prompt().starts_with("score_9, score_8_up"),
        "{}",
        pony.prompt()
    );
    assert!(!pony.prompt().contains("source_"), "{}", pony.prompt());
    let realistic = prepare(&s, "illu", "realistic");
    assert!(
        realistic
            .prompt()
            .contains("newest, 1boy, realistic, photorealistic"),
        "{}",
        realistic.prompt()
    );
}

#[test]
fn the_registry_family_picks_the_template() {
    // weights.toml's `family` reaches the service through the style map.
    let reg = Registry::from_str(
        r#"
        [models.ponyxl]
        architecture = "sdxl"
        family = "pony"
        source = { path = "x" }
        [models.plain]
        architecture = "sd1"
        source = { path = "y" }
        "#,
    )
    .unwrap();
    let served = vec!["ponyxl".to_string(), "plain".to_string()];
    let styles = StyleModels::from_registry(&reg, &served, limner::registry::Architecture::Sd1);
    assert_eq!(styles.family("ponyxl"), Some(Family::Pony));
    assert_eq!(styles.family("plain"), Some(Family::Sd1));
    assert_eq!(styles.family("not-served"), None);
}
