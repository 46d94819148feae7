//! `./test.sh`, the README's test command: it installs only what is missing, then runs
//! `cargo test` with the arguments passed through and `CARGO_TARGET_DIR` outside the clone; and
//! `.ci/run` runs exactly it. Runs the real script in a copy of the repo's layout whose
//! installers (`apt-get`, `npm`, `pip` through `python3`) and `cargo` are stand-ins on `PATH`
//! that record how they were called, so nothing is installed on the test machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A stand-in command that appends its name and arguments to `calls.log` and exits `rc`.
fn stub(bin: &Path, name: &str, body: &str) {
    let path = bin.join(name);
    fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"{name} $*\" >> \"$CALLS\"\n{body}\n",
            name = name,
            body = body
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// The script and the files it checks, everything installed.
    fn new(python_ok: bool) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        fs::create_dir_all(root.join("tests/browser/node_modules")).unwrap();
        fs::create_dir_all(root.join("tests/compat_clients")).unwrap();
        fs::copy(repo().join("test.sh"), root.join("test.sh")).unwrap();
        fs::write(root.join("tests/browser/package-lock.json"), "{}").unwrap();
        fs::write(root.join("tests/compat_clients/requirements.txt"), "").unwrap();
        // npm's record of what it installed, written after the lock file.
        let record = root.join("tests/browser/node_modules/.package-lock.json");
        fs::write(&record, "{}").unwrap();
        set_mtime(&root.join("tests/browser/package-lock.json"), 1_000_000);
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        stub(
            &bin,
            "cargo",
            "echo \"CARGO_TARGET_DIR=$CARGO_TARGET_DIR\" >> \"$CALLS\"",
        );
        stub(&bin, "apt-get", "");
        stub(&bin, "sudo", "exec \"$@\"");
        stub(&bin, "npm", "");
        // `python3 -c "import ..."` answers whether the clients import; `-m pip` installs.
        let import_rc = if python_ok { 0 } else { 1 };
        stub(
            &bin,
            "python3",
            &format!("if [ \"$1\" = -c ]; then exit {import_rc}; fi"),
        );
        fs::create_dir_all(dir.path().join("home")).unwrap();
        fs::write(dir.path().join("chromium"), "").unwrap();
        fs::set_permissions(
            dir.path().join("chromium"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        Sandbox { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn run(&self, chromium: &Path, args: &[&str]) -> (Output, String) {
        self.run_with(chromium, args, &[])
    }

    fn run_with(&self, chromium: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
        let calls = self.dir.path().join("calls.log");
        let _ = fs::remove_file(&calls);
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg(self.root().join("test.sh"))
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.dir.path().join("home"))
            .env("CALLS", &calls)
            .env("CHROMIUM_PATH", chromium)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out, fs::read_to_string(&calls).unwrap_or_default())
    }

    fn chromium(&self) -> PathBuf {
        self.dir.path().join("chromium")
    }
}

fn set_mtime(path: &Path, secs: i64) {
    let status = Command::new("touch")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn with_everything_installed_it_only_runs_cargo_test_with_the_arguments() {
    let s = Sandbox::new(true);
    let (out, calls) = s.run(&s.chromium(), &["--test", "web_ui", "--", "--nocapture"]);
    assert!(out.status.success(), "{out:?}");
    let home = s.dir.path().join("home");
    // The checks themselves (`python3 -c "import ..."`) run; no installer does.
    let calls: String = calls
        .lines()
        .filter(|l| !l.starts_with("python3 -c "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        calls,
        format!(
            "cargo test --test web_ui -- --nocapture\nCARGO_TARGET_DIR={}/.cache/limner-target\n",
            home.display()
        ),
        "nothing but cargo should run"
    );
}

#[test]
fn it_installs_exactly_what_is_missing() {
    let s = Sandbox::new(false);
    // A lock file newer than what npm installed: node_modules is stale.
    set_mtime(
        &s.root().join("tests/browser/package-lock.json"),
        4_000_000_000,
    );
    let missing = s.dir.path().join("no-chromium");
    let (out, calls) = s.run(&missing, &[]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = calls.lines().collect();
    assert!(lines.contains(&"apt-get install -y chromium"), "{calls}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("npm ci --prefix tests/browser")),
        "{calls}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("python3 -m pip install")
            && l.contains("-r tests/compat_clients/requirements.txt")),
        "{calls}"
    );
    assert_eq!(
        lines.last().map(|l| l.starts_with("CARGO_TARGET_DIR=")),
        Some(true)
    );
}

#[test]
fn a_missing_tool_without_installing_names_the_install_command() {
    let s = Sandbox::new(true);
    fs::remove_file(
        s.root()
            .join("tests/browser/node_modules/.package-lock.json"),
    )
    .unwrap();
    let (out, calls) = s.run_with(&s.chromium(), &[], &[("LIMNER_TEST_NO_INSTALL", "1")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("npm ci --prefix tests/browser"), "{err}");
    assert!(
        !calls.contains("cargo") && !calls.contains("npm"),
        "{calls}"
    );
}

#[test]
fn ci_runs_exactly_the_readme_test_command() {
    let ci = fs::read_to_string(repo().join(".ci/run")).unwrap();
    let last = ci.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(last.trim(), "exec ./test.sh");
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    let setup = &readme[readme.find("## Setup").unwrap()..readme.find("## Models").unwrap()];
    assert!(setup.contains("\n./test.sh "), "{setup}");
    assert!(!setup.contains("\ncargo test "), "{setup}");
}
