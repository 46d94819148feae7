//! Signed, expiring URLs for media: `?expires=<unix>&sig=<hmac>` over the path, so an `<img>` tag
//! can load a portrait without an Authorization header, and a leaked URL stops working.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
    /// How long a signed URL stays valid.
    pub ttl_secs: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl UrlSigner {
    pub fn new(key: Vec<u8>, ttl_secs: u64) -> Self {
        Self { key, ttl_secs }
    }

    /// Loads the server secret from `path`, creating it (random, owner-only) on first start, so
    /// signed URLs survive restarts.
    pub fn load_or_create(path: &Path, ttl_secs: u64) -> std::io::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(key) = unhex(text.trim()).filter(|k| k.len() >= 32) {
                return Ok(Self::new(key, ttl_secs));
            }
        }
        let mut key = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, hex(&key))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(Self::new(key, ttl_secs))
    }

    fn mac(&self, path: &str, expires: u64) -> String {
        // new_from_slice accepts any key length for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// `path?expires=..&sig=..`, valid for `ttl_secs` from `now`.
    pub fn sign(&self, path: &str, now: u64) -> String {
        let expires = now + self.ttl_secs;
        format!("{path}?expires={expires}&sig={}", self.mac(path, expires))
    }

    /// Checks a signature in constant time and that it has not expired.
    pub fn verify(&self, path: &str, expires: u64, sig: &str, now: u64) -> bool {
        if expires < now {
            return false;
        }
        let Some(given) = unhex(sig) else {
            return false;
        };
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac.verify_slice(&given).is_ok()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, u64, String) {
        let (path, q) = url.split_once('?').unwrap();
        let mut expires = 0;
        let mut sig = String::new();
        for kv in q.split('&') {
            match kv.split_once('=').unwrap() {
                ("expires", v) => expires = v.parse().unwrap(),
                ("sig", v) => sig = v.into(),
                _ => {}
            }
        }
        (path.into(), expires, sig)
    }

    #[test]
    fn signed_urls_verify_until_they_expire_and_only_for_their_path() {
        let s = UrlSigner::new(vec![7; 32], 60);
        let url = s.sign("/api/media/images/portraits/a/b.png", 1000);
        let (path, expires, sig) = parts(&url);
        assert_eq!(expires, 1060);
        assert!(s.verify(&path, expires, &sig, 1000));
        assert!(s.verify(&path, expires, &sig, 1060));
        assert!(!s.verify(&path, expires, &sig, 1061), "expired");
        assert!(!s.verify("/api/media/images/portraits/a/c.png", expires, &sig, 1000));
        assert!(
            !s.verify(&path, expires + 100, &sig, 1000),
            "tampered expiry"
        );
        assert!(!s.verify(&path, expires, "zz", 1000));
        let other = UrlSigner::new(vec![8; 32], 60);
        assert!(!other.verify(&path, expires, &sig, 1000), "other key");
    }

    #[test]
    fn secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        let a = UrlSigner::load_or_create(&p, 60).unwrap();
        let b = UrlSigner::load_or_create(&p, 60).unwrap();
        assert_eq!(a.key, b.key);
        assert_eq!(a.key.len(), 32);
    }
}
