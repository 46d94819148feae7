//! The SQLite job store and the queue's restart policy on a real database file: records survive
//! reopening, a claim moves a job only once, unfinished jobs fail "server restarted" when a
//! queue opens over them, and retention hides and deletes old records.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use crate::jobs::{FailureKind, JobQueue, JobSpec, QueueConfig};

fn record(id: &str, state: JobState, seq: u64, finished_at: Option<DateTime<Utc>>) -> JobRecord {
    let now = Utc::now();
    JobRecord {
        id: JobId::from(id),
        owner: Some("player-1".into()),
        kind: "portrait.generate".into(),
        label: format!("portrait {id}"),
        request: json!({"steps": 20}),
        state,
        step: 0,
        total: 0,
        result: None,
        error: None,
        seq,
        created_at: now,
        started_at: (state != JobState::Queued).then_some(now),
        finished_at,
    }
}

/// A migrated database file, as `limner serve` has it (the character store applies 0004).
fn migrated_db(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("limner.db");
    crate::characters::SqliteStore::open(&path).expect("character store migrates the file");
    path
}

#[test]
fn records_survive_reopening_the_file_and_a_claim_moves_a_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_db(dir.path());
    let store = SqliteJobStore::open(&path).unwrap();
    store
        .insert(&record("a", JobState::Queued, 1, None))
        .unwrap();
    assert!(store.claim("a", Utc::now()).unwrap());
    assert!(!store.claim("a", Utc::now()).unwrap(), "claimed twice");
    assert!(!store.claim("nobody", Utc::now()).unwrap());
    store.progress("a", 3, 20).unwrap();
    let mut done = store.get("a").unwrap().unwrap().status(Utc::now());
    assert_eq!(
        (done.state, done.step, done.total),
        (JobState::Running, 3, 20)
    );
    done.state = JobState::Done;
    done.step = 20;
    done.result = Some(json!({"portrait_id": "p1"}));
    done.finished_at = Some(Utc::now());
    store.finish(&done).unwrap();
    // Progress that arrives after the end changes nothing.
    store.progress("a", 5, 20).unwrap();
    drop(store);

    let store = SqliteJobStore::open(&path).unwrap();
    let r = store
        .get("a")
        .unwrap()
        .expect("the record outlives the connection");
    assert_eq!(r.state, JobState::Done);
    assert_eq!(r.step, 20);
    assert_eq!(r.result, Some(json!({"portrait_id": "p1"})));
    assert_eq!(r.request, json!({"steps": 20}));
    assert_eq!(r.owner.as_deref(), Some("player-1"));
    assert_eq!(r.kind, "portrait.generate");
    assert!(r.finished_at.is_some() && r.started_at.is_some());
    assert_eq!(store.max_seq().unwrap(), 1);
    assert_eq!(store.get("nobody").unwrap(), None);
}

#[test]
fn an_unmigrated_file_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = SqliteJobStore::open(&dir.path().join("empty.db"))
        .err()
        .expect("no jobs table");
    assert!(err.to_string().contains("no jobs table"), "{err}");
}

#[test]
fn opening_a_queue_fails_every_unfinished_job_as_restarted_and_keeps_finished_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_db(dir.path());
    let store = Arc::new(SqliteJobStore::open(&path).unwrap());
    store
        .insert(&record("queued", JobState::Queued, 3, None))
        .unwrap();
    store
        .insert(&record("running", JobState::Running, 2, None))
        .unwrap();
    let mut done = record("done", JobState::Done, 1, Some(Utc::now()));
    done.result = Some(json!({"portrait_id": "p1"}));
    store.insert(&done).unwrap();

    let q = JobQueue::open(QueueConfig::default(), store.clone()).unwrap();
    for id in ["queued", "running"] {
        let st = q.status(id).expect("still answers after the restart");
        assert_eq!(st.state, JobState::Failed, "{id}");
        let e = st.error.unwrap();
        assert_eq!(e.kind, FailureKind::Restarted);
        assert!(e.message.contains("server restarted"), "{}", e.message);
        assert!(st.finished_at.is_some());
    }
    let st = q.status("done").unwrap();
    assert_eq!(st.state, JobState::Done);
    assert_eq!(st.result, Some(json!({"portrait_id": "p1"})));
    assert_eq!(st.kind, "portrait.generate");
    // Admission order continues after the recorded jobs.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = q
        .submit(JobSpec::new("test", "after"), |_| {
            Ok::<_, JobFailure>(json!("ok"))
        })
        .unwrap();
    let id = h.id().clone();
    assert_eq!(
        rt.block_on(h.wait(Duration::from_secs(60))),
        Ok(json!("ok"))
    );
    assert_eq!(q.status(id.as_str()).unwrap().seq, 4);
    // And its record was written through.
    let r = store.get(id.as_str()).unwrap().unwrap();
    assert_eq!((r.state, r.result), (JobState::Done, Some(json!("ok"))));
}

#[test]
fn retention_hides_old_records_and_startup_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = migrated_db(dir.path());
    let store = Arc::new(SqliteJobStore::open(&path).unwrap());
    let old = Utc::now() - chrono::Duration::hours(2);
    store
        .insert(&record("old", JobState::Done, 1, Some(old)))
        .unwrap();
    store
        .insert(&record("new", JobState::Done, 2, Some(Utc::now())))
        .unwrap();
    let config = QueueConfig {
        retention: Duration::from_secs(3600),
        ..QueueConfig::default()
    };
    let q = JobQueue::open(config, store.clone()).unwrap();
    assert!(q.status("old").is_none(), "expired job still readable");
    assert!(store.get("old").unwrap().is_none(), "expired record kept");
    assert_eq!(q.status("new").unwrap().state, JobState::Done);
    assert!(q.subscribe("old").is_none());
    assert_eq!(
        store
            .prune(Utc::now() + chrono::Duration::seconds(1))
            .unwrap(),
        1
    );
}
