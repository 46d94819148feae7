//! A process killed with SIGKILL in the middle of a burst of writes: on reopening, the database
//! passes `PRAGMA integrity_check` and every write the child reported as committed is present,
//! whole (its campaign state and portrait included). Also `limner backup` through the binary.
#![cfg(unix)]

use limner::characters::{CharacterStore, NewCampaign, NewCharacter, NewPortrait, Store};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Set in the re-executed test binary: the database the child writes to.
const CHILD_DB: &str = "LIMNER_TEST_CRASH_CHILD_DB";
const TEST_NAME: &str = "sigkill_mid_burst_keeps_every_committed_write";

/// The child: writes until killed, printing each id only after its transaction committed.
fn child_burst(db: &str) {
    let store = Store::open(std::path::Path::new(db)).unwrap();
    let campaign = store
        .create_campaign(&NewCampaign {
            name: "Burst".into(),
            ..Default::default()
        })
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "CAMPAIGN {}", campaign.id).unwrap();
    for i in 0..1_000_000 {
        // One transaction: profile + campaign state.
        let new = NewCharacter {
            name: format!("burst {i}"),
            backstory: Some("x".repeat(2000)),
            campaign_id: Some(campaign.id.clone()),
            ..Default::default()
        };
        let p = store.create_character(&new).unwrap();
        writeln!(out, "CHARACTER {}", p.id).unwrap();
        out.flush().unwrap();
        let portrait = NewPortrait {
            character_id: p.id.clone(),
            file_path: format!("media/{i}.png"),
            ..Default::default()
        };
        let r = store.add_portrait(&portrait, true).unwrap();
        writeln!(out, "PORTRAIT {} {}", p.id, r.id).unwrap();
        out.flush().unwrap();
    }
}

/// The child's record in a line of its output; the test harness may print its own text
/// ("test NAME ... ") in front of the first one.
fn record(line: &str) -> Option<String> {
    ["CAMPAIGN ", "CHARACTER ", "PORTRAIT "]
        .iter()
        .filter_map(|m| line.find(m))
        .min()
        .map(|at| line[at..].trim().to_string())
}

#[test]
fn sigkill_mid_burst_keeps_every_committed_write() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        child_burst(&db);
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("limner.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    // Let a good number of transactions commit, then kill while the child is still writing.
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("CHARACTER"))
        .count()
        < 150
    {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "child ended early: {lines:?}");
        lines.extend(record(&line));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "child was not killed by SIGKILL");
    // Whatever it printed before dying was committed too.
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    lines.extend(rest.lines().filter_map(record));

    let store = Store::open(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    let campaign = lines
        .iter()
        .find_map(|l| l.strip_prefix("CAMPAIGN "))
        .unwrap();
    let roster = store.campaign_roster(campaign).unwrap();
    let mut characters = 0;
    let mut portraits = 0;
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["CHARACTER", id] => {
                characters += 1;
                let p = store.get_character(id).unwrap();
                assert_eq!(p.backstory.len(), 2000);
                // The campaign state committed with it.
                store.campaign_state(campaign, id).unwrap();
            }
            ["PORTRAIT", id, portrait] => {
                portraits += 1;
                let record = store.get_portrait(portrait).unwrap();
                assert_eq!(&record.character_id, id);
                let p = store.get_character(id).unwrap();
                assert!(p.current_portrait_id.is_some());
            }
            _ => {}
        }
    }
    assert!(
        characters >= 150 && portraits >= 149,
        "{characters} {portraits}"
    );
    // No half-written character: every profile in the campaign has its state (the roster is
    // built from states joined to profiles, so compare with all profiles).
    let all = store
        .list_characters(&limner::characters::CharacterFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), roster.len());
    assert!(roster.len() >= characters);
}

#[test]
fn backup_command_copies_a_consistent_database() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = Store::open_in_data_dir(&data).unwrap();
    let p = store
        .create_character(&NewCharacter {
            name: "Saved".into(),
            ..Default::default()
        })
        .unwrap();
    let dest = tmp.path().join("out/backup.db");
    // The store stays open (as a running server would hold it) during the backup.
    let out = Command::new(env!("CARGO_BIN_EXE_limner"))
        .args(["backup", dest.to_str().unwrap(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["integrity_check"], "ok");
    let copy = Store::open_existing(&dest).unwrap();
    assert_eq!(copy.get_character(&p.id).unwrap().name, "Saved");
    // A missing database is an error, not an empty backup.
    let out = Command::new(env!("CARGO_BIN_EXE_limner"))
        .args(["backup", dest.to_str().unwrap(), "--data-dir"])
        .arg(tmp.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
