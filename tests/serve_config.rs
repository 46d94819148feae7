//! `limner serve`'s settings through the real binary: a `--config` file applies, a flag wins
//! over it, and a bad value from a flag, a variable or the file stops the server before it
//! binds, with a message naming where the value came from and the limit.

#[path = "common/server.rs"]
mod server;

use std::process::Stdio;

use server::{limner_command, Server};

/// `limner serve ARGS` with `env`; it must exit unsuccessfully without listening. Returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = limner_command()
        .args(["serve", "--model", "tiny-fixture", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run limner serve");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} {env:?} started: {stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "{args:?} {env:?} bound before refusing"
    );
    stderr
}

#[test]
fn a_bad_value_stops_the_server_naming_its_source_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limner.toml");
    std::fs::write(&file, "concurrency = 0\n").unwrap();
    let file_arg = file.display().to_string();
    for (args, env, wants) in [
        (
            vec!["--queue-depth", "20000"],
            vec![],
            vec!["--queue-depth", "from 0 to 10000"],
        ),
        (
            vec![],
            vec![("LIMNER_MAX_LOADED", "0")],
            vec!["LIMNER_MAX_LOADED", "from 1 to 64"],
        ),
        (
            vec!["--config", file_arg.as_str()],
            vec![],
            vec!["concurrency = \"0\" in", "limner.toml", "from 1 to 64"],
        ),
        (
            vec![],
            vec![("LIMNER_CONFIG", file_arg.as_str())],
            vec!["concurrency", "from 1 to 64"],
        ),
    ] {
        let stderr = refused(&args, &env);
        for want in wants {
            assert!(stderr.contains(want), "{args:?} {env:?}: {stderr}");
        }
    }
}

#[test]
fn a_config_file_applies_and_a_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limner.toml");
    std::fs::write(&file, "no_auth = true\nqueue_depth = 3\n").unwrap();
    let file_arg = file.display().to_string();

    let open = Server::start(&dir.path().join("a"), &["--config", &file_arg]);
    open.client().get("/api/characters").expect(200);
    drop(open);

    let closed = Server::start(
        &dir.path().join("b"),
        &["--config", &file_arg, "--no-auth=false"],
    );
    assert!(closed.admin_token.is_some(), "auth is on: a token was made");
    closed.client().get("/api/characters").expect(401);
}
