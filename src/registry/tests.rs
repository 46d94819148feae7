//! Tests of the registry: the repository's own weights.toml, resolution and error messages.

use super::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_registry() -> Registry {
    Registry::load(&repo_root().join("weights.toml")).expect("weights.toml parses")
}

const MINIMAL_HUB: &str = r#"
    [models.m]
    architecture = "sd1"
    source = { hub = "owner/repo", revision = "main", files = ["model_index.json", "unet/config.json"] }
"#;

fn err_of(text: &str) -> String {
    Registry::from_str(text).unwrap_err().to_string()
}

#[test]
fn repo_weights_toml_is_valid() {
    let reg = repo_registry();
    for name in [
        "dreamshaper-8",
        "realistic-vision-5",
        "sd-turbo",
        "tiny-fixture",
        "illustrious-xl",
        "realvis-xl-5",
        "sdxl-turbo",
    ] {
        assert!(reg.get(name).is_some(), "{name} missing");
    }
    let turbo = reg.get("sd-turbo").unwrap();
    assert_eq!(turbo.architecture, Architecture::SdTurbo);
    assert_eq!(turbo.defaults.cfg_scale, Some(0.0));
    assert!(turbo.defaults.steps.is_some_and(|s| (1..=4).contains(&s)));
    for (name, entry) in reg.models() {
        if let ModelSource::Hub { files, .. } = &entry.source {
            if !files.iter().any(|f| f == "model_index.json") {
                // A single-file entry: one checkpoint, nothing else to load.
                assert_eq!(files.len(), 1, "{name}: {files:?}");
                assert!(files[0].ends_with(".safetensors"), "{name}");
                continue;
            }
            // Every diffusers hub entry lists what a pipeline needs to load.
            for needed in [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "unet/config.json",
                "vae/config.json",
            ] {
                assert!(files.iter().any(|f| f == needed), "{name} lacks {needed}");
            }
            for component in ["text_encoder/", "unet/", "vae/"] {
                assert!(
                    files
                        .iter()
                        .any(|f| f.starts_with(component) && f.ends_with(".safetensors")),
                    "{name} lacks {component} weights"
                );
            }
        }
    }
}

#[test]
fn styles_map_to_models() {
    let reg = repo_registry();
    assert_eq!(
        reg.model_for_style("Fantasy").map(|m| m.0),
        Some("dreamshaper-8")
    );
    assert_eq!(
        reg.model_for_style("realistic").map(|m| m.0),
        Some("realistic-vision-5")
    );
    assert!(reg.model_for_style("cubism").is_none());
}

#[test]
fn tiny_fixture_resolves_offline() {
    let reg = repo_registry();
    let models = tempfile::tempdir().unwrap();
    let r = reg.resolve("tiny-fixture", models.path()).unwrap();
    assert_eq!(r.name, "tiny-fixture");
    let ModelLocation::Diffusers(dir) = &r.location else {
        panic!("{r:?}")
    };
    assert!(dir.join("model_index.json").is_file());
    assert_eq!(
        r.entry.as_ref().map(|e| e.architecture),
        Some(Architecture::Sd1)
    );
}

#[test]
fn resolves_paths() {
    let reg = Registry::default();
    let fixtures = repo_root().join("tests/fixtures/tiny-sd15");
    let folder = fixtures.join("model");
    let r = reg
        .resolve(folder.to_str().unwrap(), Path::new("models"))
        .unwrap();
    assert_eq!(r.location, ModelLocation::Diffusers(folder.clone()));
    assert!(r.entry.is_none());
    let file = fixtures.join("single-file/tiny-sd15.safetensors");
    let r = reg
        .resolve(file.to_str().unwrap(), Path::new("models"))
        .unwrap();
    assert_eq!(
        r.location,
        ModelLocation::SingleFile {
            file: file.clone(),
            config: None
        }
    );
    assert_eq!(r.name, "tiny-sd15");
    // A folder holding one checkpoint is that checkpoint.
    let r = reg
        .resolve(
            fixtures.join("single-file").to_str().unwrap(),
            Path::new("models"),
        )
        .unwrap();
    assert_eq!(r.location, ModelLocation::SingleFile { file, config: None });
}

#[test]
fn refuses_pickles_and_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("old.ckpt");
    std::fs::write(&ckpt, b"pickle").unwrap();
    let err = Registry::default()
        .resolve(ckpt.to_str().unwrap(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pickled") && err.contains(".safetensors"),
        "{err}"
    );
    let missing = dir.path().join("nope.safetensors");
    let err = Registry::default()
        .resolve(missing.to_str().unwrap(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = Registry::default()
        .resolve(dir.path().to_str().unwrap(), dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json"), "{err}");
}

#[test]
fn unknown_names_list_the_known_ones() {
    let reg = repo_registry();
    let err = reg
        .resolve("dreamshaper-9", Path::new("models"))
        .unwrap_err();
    assert!(matches!(err, RegistryError::UnknownModel { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("dreamshaper-9") && msg.contains("sd-turbo") && msg.contains("tiny-fixture"),
        "{msg}"
    );
    assert!(reg.entry("nope").is_err());
    assert!(
        matches!(EngineError::from(reg.entry("nope").unwrap_err()), EngineError::UnknownModel(n) if n == "nope")
    );
}

#[test]
fn hub_model_not_pulled_says_how_to_pull() {
    let reg = repo_registry();
    let models = tempfile::tempdir().unwrap();
    let msg = reg
        .resolve("sd-turbo", models.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("run: limner pull sd-turbo"), "{msg}");
    // A partial copy is still "not pulled", naming what is missing.
    let dir = reg.local_dir("sd-turbo", models.path());
    assert_eq!(dir, models.path().join("sd-turbo"));
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::write(dir.join("model_index.json"), "{}").unwrap();
    let msg = reg
        .resolve("sd-turbo", models.path())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unet/diffusion_pytorch_model.fp16.safetensors")
            && msg.contains("limner pull"),
        "{msg}"
    );
}

#[test]
fn pulled_hub_model_resolves_to_its_folder() {
    let reg = Registry::from_str(MINIMAL_HUB).unwrap();
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("m");
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::write(dir.join("model_index.json"), "{}").unwrap();
    std::fs::write(dir.join("unet/config.json"), "{}").unwrap();
    let r = reg.resolve("m", models.path()).unwrap();
    assert_eq!(r.location, ModelLocation::Diffusers(dir));
}

#[test]
fn single_file_sources_resolve_against_the_weights_folder() {
    let text = r#"
        [models.rv]
        architecture = "sd1"
        source = { file = "ckpt/rv.safetensors", config = "cfg" }
        [models.hubfile]
        architecture = "sd1"
        source = { hub = "a/b", revision = "v1", files = ["rv.safetensors"] }
    "#;
    let root = tempfile::tempdir().unwrap();
    let reg = Registry::from_str(text).unwrap().with_base_dir(root.path());
    let msg = reg
        .resolve("rv", Path::new("models"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rv.safetensors") && msg.contains("not there"),
        "{msg}"
    );
    std::fs::create_dir_all(root.path().join("ckpt")).unwrap();
    std::fs::create_dir_all(root.path().join("cfg")).unwrap();
    std::fs::write(root.path().join("ckpt/rv.safetensors"), b"x").unwrap();
    let r = reg.resolve("rv", Path::new("models")).unwrap();
    assert_eq!(
        r.location,
        ModelLocation::SingleFile {
            file: root.path().join("ckpt/rv.safetensors"),
            config: Some(root.path().join("cfg")),
        }
    );
    let models = root.path().join("models");
    std::fs::create_dir_all(models.join("hubfile")).unwrap();
    std::fs::write(models.join("hubfile/rv.safetensors"), b"x").unwrap();
    let r = reg.resolve("hubfile", &models).unwrap();
    assert_eq!(
        r.location,
        ModelLocation::SingleFile {
            file: models.join("hubfile/rv.safetensors"),
            config: None
        }
    );
}

/// `[models.a]` with `architecture` and the rest of its table.
fn model_a(architecture: &str, rest: &str) -> String {
    format!("[models.a]\narchitecture = \"{architecture}\"\n{rest}")
}

/// Model `a` from folder `x` with one line of defaults.
fn with_default(architecture: &str, line: &str) -> String {
    model_a(
        architecture,
        &format!("source = {{ path = \"x\" }}\n[models.a.defaults]\n{line}"),
    )
}

/// Model `a` from hub repo `a/b` with `files` (a TOML list) and more lines.
fn from_hub(files: &str, more: &str) -> String {
    model_a(
        "sd1",
        &format!("source = {{ hub = \"a/b\", revision = \"main\", files = {files} }}\n{more}"),
    )
}

#[test]
fn errors_name_the_model_and_field() {
    let cases: Vec<(String, &str)> = vec![
        (
            model_a("sd3", r#"source = { path = "x" }"#),
            "model 'a': invalid architecture",
        ),
        (
            model_a("sd1", "colour = \"red\"\nsource = { path = \"x\" }"),
            "invalid colour: unknown key",
        ),
        (
            with_default("sd1", "steps = 0"),
            "invalid defaults.steps: 0 is outside 1..=150",
        ),
        (
            with_default("sd1", "width = 500"),
            "invalid defaults.width: 500 is not a multiple of 8",
        ),
        (
            with_default("sd1", "sampler = 3"),
            "invalid defaults.sampler: expected a string",
        ),
        (
            with_default("sd-turbo", "steps = 20"),
            "model 'a': invalid defaults.steps: 20 is outside 1..=4",
        ),
        (
            with_default("sd-turbo", "cfg_scale = 7"),
            "invalid defaults.cfg_scale",
        ),
        (
            model_a("sd1", r#"source = { path = "x", file = "y.safetensors" }"#),
            "invalid source: give exactly one",
        ),
        (
            model_a(
                "sd1",
                r#"source = { hub = "a/b", files = ["model_index.json"] }"#,
            ),
            "invalid source.revision: required",
        ),
        (
            from_hub(r#"["../etc/passwd", "model_index.json"]"#, ""),
            "invalid source.files",
        ),
        (from_hub(r#"["model.ckpt"]"#, ""), "pickled"),
        (from_hub(r#"["unet/config.json"]"#, ""), "model_index.json"),
        (
            model_a(
                "sd1",
                r#"source = { hub = "not a repo", revision = "main", files = ["model_index.json"] }"#,
            ),
            "invalid source.hub",
        ),
        (
            model_a("sd1", r#"source = { file = "x.ckpt" }"#),
            "invalid source.file: pickled",
        ),
        (
            "[models.\"../up\"]\narchitecture = \"sd1\"\nsource = { path = \"x\" }".into(),
            "invalid name",
        ),
        (
            r#"[models.a]
            architecture = "sd1"
            styles = ["fantasy"]
            source = { path = "x" }
            [models.b]
            architecture = "sd1"
            styles = ["Fantasy"]
            source = { path = "y" }"#
                .into(),
            "style 'fantasy' is already served by the sd1 model 'a'",
        ),
        (
            model_a("sdxl", "family = \"ponyy\"\nsource = { path = \"x\" }"),
            "model 'a': invalid family: 'ponyy' is not one of sd1, sd2, sdxl, pony",
        ),
        (
            model_a("sd1", "family = \"pony\"\nsource = { path = \"x\" }"),
            "invalid family: a sd1 model cannot be of the pony family",
        ),
        (
            model_a("sdxl", "vae = \"vae.pt\"\nsource = { path = \"x\" }"),
            "invalid vae: pickled",
        ),
        (
            model_a("sdxl", "vae = \"vae.onnx\"\nsource = { path = \"x\" }"),
            "invalid vae: 'vae.onnx' must be a .safetensors file",
        ),
        (
            model_a(
                "sdxl",
                "source = { path = \"x\" }\n[models.a.scheduler]\nprediction_type = \"v-pred\"",
            ),
            "invalid scheduler.prediction_type: 'v-pred' is not one of epsilon, v_prediction",
        ),
        (
            model_a(
                "sdxl",
                "source = { path = \"x\" }\n[models.a.scheduler]\nztsnr = true",
            ),
            "invalid scheduler.ztsnr: unknown key",
        ),
        (
            model_a(
                "sdxl",
                "source = { path = \"x\" }\n[models.a.scheduler]\nrescale_betas_zero_snr = 1",
            ),
            "invalid scheduler.rescale_betas_zero_snr: expected true or false",
        ),
        (
            with_default("sdxl-turbo", "steps = 8"),
            "invalid defaults.steps: 8 is outside 1..=4",
        ),
        (
            from_hub(
                r#"["model_index.json"]"#,
                r#"sha256 = { "model_index.json" = "abc" }"#,
            ),
            "invalid sha256.\"model_index.json\": expected 64 hex",
        ),
        (
            from_hub(
                r#"["model_index.json"]"#,
                r#"sha256 = { "other.json" = "abc" }"#,
            ),
            "not one of source.files",
        ),
        ("[other]\nx = 1".into(), "unknown top-level key 'other'"),
        ("[models.a\n".into(), "weights.toml"),
    ];
    for (text, want) in &cases {
        let err = err_of(text);
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
}

#[test]
fn sha256_table_is_parsed_and_lowercased() {
    let hex = "AB".repeat(32);
    let text = format!("{MINIMAL_HUB}\nsha256 = {{ \"unet/config.json\" = \"{hex}\" }}");
    let reg = Registry::from_str(&text).unwrap();
    let entry = reg.get("m").unwrap();
    assert_eq!(entry.sha256.get("unet/config.json"), Some(&"ab".repeat(32)));
}

#[test]
fn load_reports_missing_file() {
    let err = Registry::load(Path::new("/nonexistent/weights.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/weights.toml"), "{err}");
}

#[test]
fn sdxl_entries_carry_family_vae_and_scheduler_overrides() {
    let text = r#"
        [models.noob]
        architecture = "sdxl"
        family = "NoobAI"
        vae = "sdxl-vae-fp16-fix.safetensors"
        source = { hub = "a/b", revision = "main", files = ["noob.safetensors"] }
        [models.noob.scheduler]
        prediction_type = "v_prediction"
        rescale_betas_zero_snr = true
        timestep_spacing = "trailing"
        [models.plain]
        architecture = "sd1"
        source = { path = "x" }
        [models.turbo]
        architecture = "sdxl-turbo"
        source = { path = "y" }
    "#;
    let reg = Registry::from_str(text).unwrap();
    let noob = reg.get("noob").unwrap();
    assert_eq!(noob.family, Family::Noobai);
    assert_eq!(noob.vae.as_deref(), Some("sdxl-vae-fp16-fix.safetensors"));
    assert_eq!(
        noob.scheduler,
        SchedulerOverrides {
            prediction_type: Some("v_prediction".into()),
            rescale_betas_zero_snr: Some(true),
            timestep_spacing: Some("trailing".into()),
        }
    );
    // Without a `family` the architecture decides; without the rest nothing is overridden.
    let plain = reg.get("plain").unwrap();
    assert_eq!((plain.family, plain.vae.clone()), (Family::Sd1, None));
    assert!(plain.scheduler.is_empty());
    assert_eq!(reg.get("turbo").unwrap().family, Family::Sdxl);
}

#[test]
fn the_repo_sdxl_models_and_their_portrait_defaults() {
    let reg = repo_registry();
    let ill = reg.get("illustrious-xl").unwrap();
    assert_eq!(
        (ill.architecture, ill.family),
        (Architecture::Sdxl, Family::Illustrious)
    );
    assert_eq!(
        (ill.defaults.width, ill.defaults.height),
        (Some(832), Some(1216))
    );
    assert_eq!(ill.defaults.hires_fix, Some(false));
    let real = reg.get("realvis-xl-5").unwrap();
    assert_eq!(
        (real.defaults.width, real.defaults.height),
        (Some(832), Some(1216))
    );
    let turbo = reg.get("sdxl-turbo").unwrap();
    assert_eq!(turbo.architecture, Architecture::SdxlTurbo);
    assert_eq!(
        (turbo.defaults.steps, turbo.defaults.cfg_scale),
        (Some(1), Some(0.0))
    );
    assert_eq!(
        turbo.scheduler.timestep_spacing.as_deref(),
        Some("trailing")
    );
    // Every hub entry is pinned to a commit or names its branch; SDXL ones to a commit.
    for name in ["illustrious-xl", "realvis-xl-5", "sdxl-turbo"] {
        let ModelSource::Hub { revision, .. } = &reg.get(name).unwrap().source else {
            panic!("{name} is not a hub model")
        };
        assert!(
            revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: {revision}"
        );
    }
}

#[test]
fn a_style_goes_to_the_preferred_architecture_then_falls_back() {
    let reg = repo_registry();
    let all = |_: &str| true;
    let pick = |style, prefer, served: &dyn Fn(&str) -> bool| {
        reg.style_model(style, prefer, served).map(|m| m.0)
    };
    assert_eq!(
        pick("fantasy", Architecture::Sd1, &all),
        Some("dreamshaper-8")
    );
    assert_eq!(
        pick("Anime", Architecture::Sdxl, &all),
        Some("illustrious-xl")
    );
    assert_eq!(
        pick("realistic", Architecture::Sdxl, &all),
        Some("realvis-xl-5")
    );
    // Only SDXL models served: they take the styles whatever the preference.
    let only_xl = |n: &str| n.ends_with("-xl") || n.starts_with("realvis");
    assert_eq!(
        pick("cartoon", Architecture::Sd1, &only_xl),
        Some("illustrious-xl")
    );
    // Only SD 1.5 models served: SDXL preferred still falls back to them.
    let only_sd1 = |n: &str| n == "dreamshaper-8";
    assert_eq!(
        pick("fantasy", Architecture::Sdxl, &only_sd1),
        Some("dreamshaper-8")
    );
    assert_eq!(pick("realistic", Architecture::Sdxl, &only_sd1), None);
    assert!(reg.styles().contains(&"photo"));
    // The same style twice within one architecture is still refused, across them allowed.
    let two = |arch_b: &str| {
        Registry::from_str(&format!(
            "[models.a]\narchitecture = \"sd1\"\nstyles = [\"x\"]\nsource = {{ path = \"a\" }}\n\
             [models.b]\narchitecture = \"{arch_b}\"\nstyles = [\"x\"]\nsource = {{ path = \"b\" }}"
        ))
    };
    assert!(two("sdxl").is_ok());
    assert!(two("sd1").is_err());
}

#[test]
fn decoder_entries_are_hub_files_apart_from_the_models() {
    let reg = repo_registry();
    for name in ["taesd", "taesdxl"] {
        assert!(reg.get(name).is_none(), "{name} is not a model to serve");
        let (source, _) = reg.pull_source(name).unwrap();
        assert!(
            matches!(source, ModelSource::Hub { repo, .. } if repo == &format!("madebyollin/{name}"))
        );
    }
    let unknown = reg.pull_source("taesd3").unwrap_err().to_string();
    assert!(
        unknown.contains("taesdxl") && unknown.contains("sd-turbo"),
        "{unknown}"
    );
    let local = err_of("[decoders.taesd]\nsource = { path = \"somewhere\" }");
    assert!(
        local.contains("taesd") && local.contains("hub source"),
        "{local}"
    );
    let stray = err_of(
        "[decoders.taesd]\nstyles = [\"x\"]\nsource = { hub = \"a/b\", revision = \"main\", files = [\"x.safetensors\"] }",
    );
    assert!(stray.contains("styles"), "{stray}");
}

#[test]
fn turbo_architectures_run_trailing_unless_the_entry_says_otherwise() {
    let model = repo_root().join("tests/fixtures/tiny-sd15/model");
    let text = format!(
        r#"
        [models.turbo]
        architecture = "sd-turbo"
        source = {{ path = "{m}" }}
        [models.xl-turbo]
        architecture = "sdxl-turbo"
        source = {{ path = "{m}" }}
        [models.turbo-leading]
        architecture = "sd-turbo"
        source = {{ path = "{m}" }}
        [models.turbo-leading.scheduler]
        timestep_spacing = "leading"
        [models.plain]
        architecture = "sd2"
        source = {{ path = "{m}" }}
        "#,
        m = model.display()
    );
    let reg = Registry::from_str(&text).unwrap();
    let spacing = |name: &str| {
        reg.resolve(name, Path::new("unused"))
            .unwrap()
            .schedule()
            .timestep_spacing
    };
    // The fixture's own scheduler config (PNDM) says nothing about trailing.
    assert_eq!(spacing("turbo").as_deref(), Some("trailing"));
    assert_eq!(spacing("xl-turbo").as_deref(), Some("trailing"));
    assert_eq!(spacing("turbo-leading").as_deref(), Some("leading"));
    assert_eq!(spacing("plain"), None);
}
