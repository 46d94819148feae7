//! A fresh store on a real database file in a temp dir, for the store tests.

#![allow(dead_code)]

use limner::characters::{NewCharacter, Store};

/// The temp dir (keep it alive) and the store opened in it.
pub fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_data_dir(dir.path()).unwrap();
    (dir, store)
}

/// A new character with only a name (every other field its default).
pub fn named(name: &str) -> NewCharacter {
    NewCharacter {
        name: name.into(),
        ..Default::default()
    }
}
