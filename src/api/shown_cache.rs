//! Finished jobs' status replies, kept serialized for clients that poll them. A finished job
//! never changes; only the signed media URLs in its result age, so an entry is reused for a
//! short window well inside the URLs' lifetime and then rendered afresh.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;

use crate::auth::Principal;

/// Entries kept at most; past it the cache starts over (it only saves work, never holds state).
const MAX_ENTRIES: usize = 4096;

struct Entry {
    at: Instant,
    owner: Option<String>,
    body: Bytes,
}

pub(crate) struct ShownCache {
    /// How long an entry is served: 30 s, or half the media URLs' lifetime when that is shorter.
    reuse: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ShownCache {
    pub(crate) fn new(url_ttl_secs: u64) -> Self {
        let half_ttl = Duration::from_millis(url_ttl_secs.saturating_mul(500));
        ShownCache {
            reuse: half_ttl.min(Duration::from_secs(30)),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached reply of job `id` if `caller` may see it and it is fresh; `None` sends the
    /// caller down the normal path (which also answers 404 to anyone else).
    pub(crate) fn get(&self, id: &str, caller: &Principal) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let e = entries.get(id)?;
        let visible = caller.is_admin() || e.owner.as_deref() == Some(caller.user.as_str());
        (visible && e.at.elapsed() < self.reuse).then(|| e.body.clone())
    }

    pub(crate) fn put(&self, id: &str, owner: Option<String>, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.at.elapsed() < self.reuse);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let at = Instant::now();
        entries.insert(id.to_string(), Entry { at, owner, body });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn who(user: &str, role: Role) -> Principal {
        Principal {
            user: user.into(),
            role,
        }
    }

    #[test]
    fn only_the_owner_or_an_admin_gets_a_fresh_entry() {
        let c = ShownCache::new(3600);
        c.put("j", Some("alice".into()), Bytes::from_static(b"{}"));
        assert!(c.get("j", &who("alice", Role::Player)).is_some());
        assert!(c.get("j", &who("root", Role::Admin)).is_some());
        assert!(c.get("j", &who("bob", Role::Player)).is_none());
        assert!(c.get("other", &who("alice", Role::Player)).is_none());
    }

    #[test]
    fn entries_age_out_within_the_media_urls_lifetime() {
        // A 1 s URL lifetime: entries live half of it.
        assert_eq!(ShownCache::new(1).reuse, Duration::from_millis(500));
        assert_eq!(ShownCache::new(3600).reuse, Duration::from_secs(30));
        let c0 = ShownCache::new(0);
        c0.put("j", None, Bytes::from_static(b"{}"));
        assert!(
            c0.get("j", &who("root", Role::Admin)).is_none(),
            "never reused"
        );
    }
}
