//! The serve configuration's precedence (flags > environment > file > defaults), its limits
//! and messages, the clap wiring, and the README's table of settings.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use super::config::{Layer, SETTINGS};
use super::ServeConfig;
use crate::cmd::locations::Lookup;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: super::Args,
}

fn flags(args: &[&str]) -> Layer {
    let argv = std::iter::once("serve").chain(args.iter().copied());
    Cli::try_parse_from(argv).expect("flags parse").args.flags.0
}

fn env(vars: &[(&str, &str)]) -> Layer {
    let vars: BTreeMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    Layer::from_env(|k| vars.get(k).cloned()).expect("env layer")
}

fn file(text: &str) -> Layer {
    Layer::from_toml(text, Path::new("/etc/limner.toml")).expect("file layer")
}

/// A working directory that is no checkout, with a per-user data dir.
fn lookup() -> (tempfile::TempDir, Lookup) {
    let dir = tempfile::tempdir().unwrap();
    let l = Lookup::at(dir.path().join("cwd"), Some(dir.path().join("user")));
    (dir, l)
}

fn resolve(layers: &[Layer]) -> Result<ServeConfig, String> {
    let (_dir, l) = lookup();
    ServeConfig::resolve(layers, &l).map_err(|e| e.to_string())
}

#[test]
fn a_flag_beats_the_environment() {
    let c = resolve(&[
        flags(&["--port", "8101", "--no-auth=false"]),
        env(&[("LIMNER_PORT", "8102"), ("LIMNER_NO_AUTH", "true")]),
        file("port = 8103\nno_auth = true"),
    ])
    .unwrap();
    assert_eq!(c.port, 8101);
    assert!(!c.no_auth);
}

#[test]
fn the_environment_beats_the_file() {
    let c = resolve(&[
        flags(&[]),
        env(&[("LIMNER_QUEUE_DEPTH", "3"), ("LIMNER_MODELS", "a,b")]),
        file("queue_depth = 4\nmodels = [\"c\"]"),
    ])
    .unwrap();
    assert_eq!(c.queue.max_queued, 3);
    assert_eq!(c.models, Some(vec!["a".to_string(), "b".to_string()]));
}

#[test]
fn the_file_beats_the_defaults() {
    let c = resolve(&[
        flags(&[]),
        env(&[]),
        file("request_timeout = 7\ndevice = \"CPU\"\nmin_free_space = \"2K\"\nflash_attn = false"),
    ])
    .unwrap();
    assert_eq!(c.request_timeout, Duration::from_secs(7));
    assert_eq!(c.device, "cpu");
    assert_eq!(c.min_free_space, 2048);
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let (dir, l) = lookup();
    let c = ServeConfig::resolve(&[], &l).unwrap();
    assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8000));
    assert_eq!((c.device.as_str(), c.dtype.as_str()), ("auto", "auto"));
    assert_eq!(c.max_memory, "auto");
    assert_eq!(
        (c.max_loaded, c.queue.max_queued, c.queue.concurrency),
        (2, 8, 1)
    );
    assert_eq!(c.request_timeout, Duration::from_secs(60));
    assert_eq!(c.media_url_ttl, 3600);
    assert!(!c.no_auth && !c.flash_attn);
    assert_eq!(c.min_free_space, 0);
    // The table's default is the one a state built without the setting (tests) uses.
    assert_eq!(c.preview_every, limner::api::live::DEFAULT_PREVIEW_EVERY);
    assert_eq!((c.model, c.models), (None, None));
    // Paths come from the lookup: per-user outside a checkout, built-in files.
    let user = dir.path().join("user");
    assert_eq!(c.data_dir, user);
    assert_eq!(c.models_dir, user.join("models"));
    assert_eq!((c.weights, c.prompts_dir), (None, None));
}

#[test]
fn the_data_dir_given_moves_the_paths_that_follow_it() {
    let (dir, l) = lookup();
    let data = dir.path().join("elsewhere");
    std::fs::create_dir_all(data.join("prompts")).unwrap();
    std::fs::write(data.join("weights.toml"), "").unwrap();
    let env = env(&[("LIMNER_DATA_DIR", data.to_str().unwrap())]);
    let c = ServeConfig::resolve(&[env], &l).unwrap();
    assert_eq!(c.models_dir, data.join("models"));
    assert_eq!(c.weights, Some(data.join("weights.toml")));
    assert_eq!(c.prompts_dir, Some(data.join("prompts")));
}

#[test]
fn a_bad_value_names_where_it_came_from_and_the_limit() {
    for (layers, wants) in [
        (
            vec![flags(&["--queue-depth", "20000"])],
            &["--queue-depth", "queue_depth", "from 0 to 10000"][..],
        ),
        (
            vec![env(&[("LIMNER_PORT", "eighty")])],
            &["LIMNER_PORT", "port", "from 0 to 65535"][..],
        ),
        (
            vec![file("concurrency = 0")],
            &["concurrency = \"0\" in /etc/limner.toml", "from 1 to 64"][..],
        ),
        (
            vec![flags(&["--request-timeout", "0"])],
            &["--request-timeout", "from 1 to 86400"][..],
        ),
        (
            vec![env(&[("LIMNER_DEVICE", "gpu")])],
            &["LIMNER_DEVICE", "auto, cpu, cuda, cuda:N or metal"][..],
        ),
        (
            vec![flags(&["--max-memory", "lots"])],
            &["--max-memory", "a size (12G, 800M), none or auto"][..],
        ),
        (
            vec![flags(&["--job-retention", "5x"])],
            &["--job-retention", "job_retention", "unknown unit"][..],
        ),
        (
            vec![env(&[("LIMNER_JOB_RETENTION", "99999d")])],
            &["LIMNER_JOB_RETENTION", "at most 3650 days"][..],
        ),
        (
            vec![flags(&["--min-free-space", "2X"])],
            &["--min-free-space", "unknown size unit"][..],
        ),
        (
            vec![file("no_auth = \"maybe\"")],
            &["no_auth", "true or false"][..],
        ),
        (
            vec![flags(&["--models", "a,,b"])],
            &["--models", "none of them empty"][..],
        ),
        (
            vec![flags(&["--host", "0.0.0.0", "--no-auth"])],
            &[
                "refusing to serve 0.0.0.0 without authentication",
                "--no-auth",
            ][..],
        ),
    ] {
        let err = resolve(&layers).expect_err(wants[0]);
        for want in wants {
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }
}

#[test]
fn a_bad_value_that_a_higher_layer_overrides_does_no_harm() {
    let c = resolve(&[flags(&["--port", "9"]), env(&[("LIMNER_PORT", "eighty")])]).unwrap();
    assert_eq!(c.port, 9);
}

#[test]
#[cfg(not(feature = "flash-attn"))]
fn flash_attention_without_the_feature_is_refused() {
    let err = resolve(&[flags(&["--flash-attn"])]).unwrap_err();
    assert!(err.contains("--features flash-attn"), "{err}");
}

#[test]
fn the_file_refuses_unknown_keys_and_odd_values() {
    let path = Path::new("/etc/limner.toml");
    let err = Layer::from_toml("queue_size = 3", path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown key 'queue_size'"), "{err}");
    assert!(
        err.contains("queue_depth"),
        "the known keys are listed: {err}"
    );
    let err = Layer::from_toml("port = { a = 1 }", path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("port in config file /etc/limner.toml"),
        "{err}"
    );
    let err = Layer::from_toml("port = ", path).unwrap_err().to_string();
    assert!(
        err.contains("invalid config file /etc/limner.toml"),
        "{err}"
    );
}

#[test]
fn empty_variables_count_as_unset() {
    let c = resolve(&[env(&[("LIMNER_PORT", ""), ("LIMNER_HOST", " ")])]).unwrap();
    assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 8000));
}

#[test]
fn switches_and_lists_read_as_before() {
    let f = flags(&[
        "--no-auth",
        "--models",
        "a,b",
        "--models",
        "c",
        "--flash-attn=false",
    ]);
    let c = resolve(&[f]).unwrap();
    assert!(c.no_auth && !c.flash_attn);
    let names: Vec<&str> = c.models.iter().flatten().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn the_table_of_settings_is_well_formed() {
    let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys.len(), 24);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), SETTINGS.len(), "keys are unique");
    let free = SETTINGS.iter().find(|s| s.key == "min_free_space").unwrap();
    assert_eq!(
        (free.flag.as_str(), free.env.as_str()),
        ("min-free-space", "LIMNER_MIN_FREE_SPACE")
    );
}

/// The README's table under "### Configuration" has one row per setting with its flag,
/// variable, file key and default, and no row for a setting that does not exist.
#[test]
fn the_readme_table_lists_every_setting() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let section = readme
        .split("\n### Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n#").next())
        .expect("a Configuration section");
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| `--")).collect();
    for s in SETTINGS.iter() {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `--{}` |", s.flag)))
            .unwrap_or_else(|| panic!("no README row for --{}", s.flag));
        for want in [
            format!("`{}`", s.env),
            format!("`{}`", s.key),
            s.default.to_string(),
        ] {
            assert!(
                row.contains(&want),
                "README row for --{} lacks {want:?}: {row}",
                s.flag
            );
        }
    }
    assert_eq!(rows.len(), SETTINGS.len(), "one row per setting: {rows:#?}");
}

#[test]
fn vae_and_style_architecture_follow_the_precedence() {
    let c = resolve(&[flags(&[]), env(&[]), file("")]).unwrap();
    assert_eq!(c.vae, None);
    assert_eq!(c.style_architecture, limner::registry::Architecture::Sd1);
    let c = resolve(&[
        flags(&["--vae", "sdxl-vae-fp16-fix.safetensors"]),
        env(&[
            ("LIMNER_VAE", "other.safetensors"),
            ("LIMNER_STYLE_ARCHITECTURE", "SDXL"),
        ]),
        file("vae = \"third.safetensors\"\nstyle_architecture = \"sd2\""),
    ])
    .unwrap();
    assert_eq!(c.vae.as_deref(), Some("sdxl-vae-fp16-fix.safetensors"));
    assert_eq!(c.style_architecture, limner::registry::Architecture::Sdxl);
    let e = resolve(&[flags(&["--style-architecture", "sd3"])]).unwrap_err();
    assert!(
        e.contains("--style-architecture") && e.contains("sd1, sd2, sdxl, sd-turbo, sdxl-turbo"),
        "{e}"
    );
}

#[test]
fn served_models_get_the_weights_toml_vae_unless_vae_is_given() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    std::fs::create_dir_all(models.join("vae")).unwrap();
    for f in ["own.safetensors", "forced.safetensors"] {
        std::fs::write(models.join("vae").join(f), b"x").unwrap();
    }
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15/model");
    let registry = limner::registry::Registry::from_str(&format!(
        "[models.m]\narchitecture = \"sd1\"\nvae = \"own\"\nsource = {{ path = {:?} }}\n\
         [models.m.scheduler]\nprediction_type = \"v_prediction\"\nrescale_betas_zero_snr = true\n\
         [models.plain]\narchitecture = \"sd1\"\nsource = {{ path = {:?} }}\n",
        tiny.display().to_string(),
        tiny.display().to_string(),
    ))
    .unwrap();
    let models_flag = models.display().to_string();
    let config = |extra: &[&str]| {
        let mut args = vec!["--models-dir", models_flag.as_str(), "--models", "m,plain"];
        args.extend_from_slice(extra);
        resolve(&[flags(&args)]).unwrap()
    };
    let specs = |c: &ServeConfig| super::model_specs(c, &registry).map(|s| s.unwrap().1);
    let own = specs(&config(&[])).unwrap();
    assert_eq!(own[0].vae, Some(models.join("vae/own.safetensors")));
    assert_eq!(
        own[0].schedule.prediction_type.as_deref(),
        Some("v_prediction")
    );
    assert_eq!(own[0].schedule.rescale_betas_zero_snr, Some(true));
    assert_eq!(
        (own[1].vae.clone(), own[1].schedule.clone()),
        (None, Default::default())
    );
    let forced = specs(&config(&["--vae", "forced.safetensors"])).unwrap();
    assert!(forced
        .iter()
        .all(|s| s.vae == Some(models.join("vae/forced.safetensors"))));
    let e = specs(&config(&["--vae", "missing"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--vae") && e.contains("missing"), "{e}");
}

#[test]
fn preview_every_comes_from_every_layer_and_names_its_limit() {
    let c = resolve(&[flags(&[]), env(&[]), file("preview_every = 5")]).unwrap();
    assert_eq!(c.preview_every, 5);
    let c = resolve(&[
        flags(&[]),
        env(&[("LIMNER_PREVIEW_EVERY", "0")]),
        file("preview_every = 5"),
    ])
    .unwrap();
    assert_eq!(c.preview_every, 0, "0 turns previews off");
    let c = resolve(&[flags(&["--preview-every", "3"]), env(&[]), file("")]).unwrap();
    assert_eq!(c.preview_every, 3);
    let e = resolve(&[flags(&["--preview-every", "1001"]), env(&[]), file("")]).unwrap_err();
    assert!(
        e.contains("preview_every") && e.contains("0 to 1000"),
        "{e}"
    );
}

#[test]
fn decoder_defaults_to_the_vae_and_follows_the_precedence() {
    use limner::engine::Decoder;
    let c = resolve(&[flags(&[]), env(&[]), file("")]).unwrap();
    assert_eq!(c.decoder, Decoder::Vae);
    let c = resolve(&[flags(&[]), env(&[]), file("decoder = \"taesd\"")]).unwrap();
    assert_eq!(c.decoder, Decoder::Taesd);
    let c = resolve(&[
        flags(&["--decoder", "vae"]),
        env(&[("LIMNER_DECODER", "taesd")]),
    ])
    .unwrap();
    assert_eq!(c.decoder, Decoder::Vae);
    let e = resolve(&[env(&[("LIMNER_DECODER", "tiny")])]).unwrap_err();
    assert!(
        e.contains("LIMNER_DECODER") && e.contains("vae or taesd"),
        "{e}"
    );
}
