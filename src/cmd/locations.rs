//! Where limner's files are when no flag says: beside a checkout, else in per-user folders, with
//! the built-in `weights.toml` and prompt templates when no file overrides them.
//!
//! Precedence, for each path: a flag, its `LIMNER_*` variable or the `--config` file; then
//!
//! - data dir: `./data` in a checkout (the working directory holds `weights.toml` or `models/`),
//!   else `$XDG_DATA_HOME/limner`, else `~/.local/share/limner`;
//! - models dir: `./models` in a checkout, else `DATA_DIR/models`;
//! - `weights.toml`: `./weights.toml`, else `DATA_DIR/weights.toml`, else the built-in one;
//! - prompt templates: `./prompts/`, else `DATA_DIR/prompts/`, else the built-in ones.
//!
//! So `cargo install limner && limner serve` works from any directory, and a checkout behaves
//! as it always has.

use std::path::{Path, PathBuf};

use limner::portraits::PortraitTemplates;
use limner::registry::Registry;

/// The environment the defaults are derived from (the process's, or a test's).
#[derive(Debug, Clone)]
pub struct Lookup {
    cwd: PathBuf,
    /// `$XDG_DATA_HOME/limner` or `~/.local/share/limner`; `None` without either variable.
    user_dir: Option<PathBuf>,
}

impl Lookup {
    pub fn from_env() -> Lookup {
        let var = |k: &str| {
            std::env::var_os(k)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        Lookup {
            cwd: std::env::current_dir().unwrap_or_default(),
            user_dir: user_dir(var("XDG_DATA_HOME"), var("HOME")),
        }
    }

    /// A lookup from `cwd` with `user_dir` as the per-user folder.
    #[cfg(test)]
    pub fn at(cwd: PathBuf, user_dir: Option<PathBuf>) -> Lookup {
        Lookup { cwd, user_dir }
    }

    /// Whether the working directory is a limner checkout (or any folder set up like one).
    pub fn is_checkout(&self) -> bool {
        self.cwd.join("weights.toml").is_file() || self.cwd.join("models").is_dir()
    }

    pub fn data_dir(&self) -> PathBuf {
        match &self.user_dir {
            Some(dir) if !self.is_checkout() => dir.clone(),
            // Relative, so a checkout's messages and config files read as before.
            _ => PathBuf::from("data"),
        }
    }

    pub fn models_dir(&self, data_dir: &Path) -> PathBuf {
        if self.is_checkout() || self.user_dir.is_none() {
            PathBuf::from("models")
        } else {
            data_dir.join("models")
        }
    }

    /// The first of `./NAME`, `DATA_DIR/NAME` that exists (`is` checks its kind).
    fn found(&self, data_dir: &Path, name: &str, is: fn(&Path) -> bool) -> Option<PathBuf> {
        if is(&self.cwd.join(name)) {
            return Some(PathBuf::from(name));
        }
        let in_data = data_dir.join(name);
        is(&in_data).then_some(in_data)
    }

    /// A `weights.toml` file to read, or `None` for the built-in one.
    pub fn weights(&self, data_dir: &Path) -> Option<PathBuf> {
        self.found(data_dir, "weights.toml", Path::is_file)
    }

    /// A prompt templates folder to read, or `None` for the built-in templates.
    pub fn prompts_dir(&self, data_dir: &Path) -> Option<PathBuf> {
        self.found(data_dir, "prompts", Path::is_dir)
    }
}

fn user_dir(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    xdg_data_home
        .or_else(|| home.map(|h| h.join(".local").join("share")))
        .map(|d| d.join("limner"))
}

/// The registry of `path`, or the built-in one.
pub fn load_registry(path: Option<&Path>) -> anyhow::Result<Registry> {
    Ok(match path {
        Some(p) => Registry::load(p)?,
        None => Registry::embedded()?,
    })
}

/// The templates of `dir`, or the built-in ones.
pub fn load_templates(dir: Option<&Path>) -> anyhow::Result<PortraitTemplates> {
    Ok(match dir {
        Some(d) => PortraitTemplates::load_dir(d)?,
        None => PortraitTemplates::embedded()?,
    })
}

/// The data dir when `--data-dir` is not given (clap's default for every subcommand).
pub fn default_data_dir() -> PathBuf {
    Lookup::from_env().data_dir()
}

/// The models dir of commands without a `--data-dir` flag: `LIMNER_DATA_DIR` counts, so
/// `limner pull` puts models where `limner serve` looks.
pub fn default_models_dir() -> PathBuf {
    let (lookup, data_dir) = lookup_and_data_dir();
    lookup.models_dir(&data_dir)
}

/// The registry of commands without a `--data-dir` flag: the flag's file, else
/// `./weights.toml`, else `DATA_DIR/weights.toml`, else the built-in one.
pub fn registry_for(flag: Option<&Path>) -> anyhow::Result<Registry> {
    if flag.is_some() {
        return load_registry(flag);
    }
    let (lookup, data_dir) = lookup_and_data_dir();
    load_registry(lookup.weights(&data_dir).as_deref())
}

/// The process's lookup and its data dir: `LIMNER_DATA_DIR`, else the default.
fn lookup_and_data_dir() -> (Lookup, PathBuf) {
    let lookup = Lookup::from_env();
    let data_dir = std::env::var_os("LIMNER_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| lookup.data_dir());
    (lookup, data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(cwd: &Path, user: &Path) -> Lookup {
        Lookup {
            cwd: cwd.to_path_buf(),
            user_dir: Some(user.to_path_buf()),
        }
    }

    #[test]
    fn user_dir_prefers_xdg_data_home() {
        let xdg = PathBuf::from("/x/share");
        let home = PathBuf::from("/home/u");
        assert_eq!(
            user_dir(Some(xdg), Some(home.clone())),
            Some(PathBuf::from("/x/share/limner"))
        );
        assert_eq!(
            user_dir(None, Some(home)),
            Some(PathBuf::from("/home/u/.local/share/limner"))
        );
        assert_eq!(user_dir(None, None), None);
    }

    #[test]
    fn outside_a_checkout_everything_is_per_user_and_built_in() {
        let cwd = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        let l = lookup(cwd.path(), user.path());
        assert!(!l.is_checkout());
        let data = l.data_dir();
        assert_eq!(data, user.path());
        assert_eq!(l.models_dir(&data), user.path().join("models"));
        assert_eq!(l.weights(&data), None);
        assert_eq!(l.prompts_dir(&data), None);
        // Files in the data dir override the built-in ones.
        std::fs::write(user.path().join("weights.toml"), "").unwrap();
        std::fs::create_dir(user.path().join("prompts")).unwrap();
        assert_eq!(l.weights(&data), Some(user.path().join("weights.toml")));
        assert_eq!(l.prompts_dir(&data), Some(user.path().join("prompts")));
        // ... and the working directory's override those.
        std::fs::create_dir(cwd.path().join("prompts")).unwrap();
        assert_eq!(l.prompts_dir(&data), Some(PathBuf::from("prompts")));
    }

    #[test]
    fn a_checkout_keeps_its_relative_folders() {
        let cwd = tempfile::tempdir().unwrap();
        let user = tempfile::tempdir().unwrap();
        std::fs::write(cwd.path().join("weights.toml"), "").unwrap();
        let l = lookup(cwd.path(), user.path());
        assert!(l.is_checkout());
        let data = l.data_dir();
        assert_eq!(data, PathBuf::from("data"));
        assert_eq!(l.models_dir(&data), PathBuf::from("models"));
        assert_eq!(l.weights(&data), Some(PathBuf::from("weights.toml")));
    }

    #[test]
    fn the_built_in_files_load() {
        let reg = load_registry(None).unwrap();
        for name in ["dreamshaper-8", "sd-turbo", "tiny-fixture"] {
            assert!(reg.get(name).is_some(), "{name}");
        }
        let t = load_templates(None).unwrap();
        assert!(t.styles().contains(&"default"));
    }
}
