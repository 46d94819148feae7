//! The store's pooled readers on a real database file: reads run while a write is in progress
//! (they never queue behind the writer), and readers working beside a stream of writes always
//! see a committed state at least as new as the last write that returned.

#[path = "common/store.rs"]
mod common_store;
use common_store::{named, store};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use limner::characters::{CharacterFilter, CharacterPatch, CharacterStore, DB_FILE_NAME};

fn rename(name: &str) -> CharacterPatch {
    CharacterPatch {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[test]
fn reads_answer_while_a_write_waits_for_the_lock() {
    let (dir, store) = store();
    let c = store.create_character(&named("v0")).unwrap();
    // Another process holds SQLite's write lock, so the store's next write waits for it
    // (holding the store's writer, for up to its busy timeout of 10 s).
    let other = rusqlite::Connection::open(dir.path().join(DB_FILE_NAME)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let writer = {
        let (store, id) = (store.clone(), c.id.clone());
        thread::spawn(move || store.update_character(&id, &rename("v1")))
    };
    // Give the write time to start waiting; if it has not yet, the test only gets weaker.
    thread::sleep(Duration::from_millis(300));
    let (tx, rx) = mpsc::channel();
    {
        let (store, id) = (store.clone(), c.id.clone());
        thread::spawn(move || {
            let read = store.get_character(&id).map(|p| p.name);
            let view = store.enriched_character(&id, None).map(|e| e.profile.name);
            let _ = tx.send((read, view));
        });
    }
    // Well inside the writer's 10 s busy wait: a read queued behind the writer misses this.
    let (read, view) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a read waited for a write in progress");
    assert_eq!(read.unwrap(), "v0", "a read sees the last commit");
    assert_eq!(view.unwrap(), "v0");
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(writer.join().unwrap().unwrap().name, "v1");
    assert_eq!(store.get_character(&c.id).unwrap().name, "v1");
}

#[test]
fn concurrent_readers_never_see_a_state_older_than_the_last_returned_write() {
    const WRITES: u64 = 150;
    const READERS: usize = 6;
    let (_dir, store) = store();
    let target = store.create_character(&named("0")).unwrap();
    for i in 0..10 {
        store
            .create_character(&named(&format!("other {i}")))
            .unwrap();
    }
    // The version of the last write whose call has returned (so it is committed).
    let committed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (store, id) = (store.clone(), target.id.clone());
            let (committed, done) = (committed.clone(), done.clone());
            thread::spawn(move || {
                let mut last_seen = 0;
                let mut read_at_least = |floor: u64| {
                    let name = match r % 3 {
                        0 => store.get_character(&id).unwrap().name,
                        1 => store.enriched_character(&id, None).unwrap().profile.name,
                        _ => {
                            let all = store
                                .list_characters(&CharacterFilter {
                                    limit: Some(100),
                                    ..Default::default()
                                })
                                .unwrap();
                            assert_eq!(all.len(), 11, "a list during writes lost or gained rows");
                            all.into_iter().find(|p| p.id == id).expect("listed").name
                        }
                    };
                    let seen: u64 = name.parse().expect("the name is a version number");
                    assert!(
                        seen >= floor,
                        "reader {r} saw version {seen} after version {floor} was committed"
                    );
                    assert!(
                        seen >= last_seen,
                        "reader {r} went back from {last_seen} to {seen}"
                    );
                    last_seen = seen;
                    seen
                };
                while !done.load(Ordering::SeqCst) {
                    read_at_least(committed.load(Ordering::SeqCst));
                }
                // Begun after the last write returned: must see it.
                read_at_least(committed.load(Ordering::SeqCst))
            })
        })
        .collect();
    for v in 1..=WRITES {
        store
            .update_character(&target.id, &rename(&v.to_string()))
            .unwrap();
        committed.store(v, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        assert_eq!(r.join().unwrap(), WRITES);
    }
}
