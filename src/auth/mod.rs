//! Authentication: bearer tokens (only their SHA-256 is stored), the two roles, and signed
//! expiring media URLs so `<img src>` works without headers. Authorization rules (who may see
//! which character) live in the API layer, next to the routes that apply them.

mod signing;
mod tokens;

pub use signing::{now_secs as signing_now, UrlSigner};
pub use tokens::{TokenInfo, TokenStore, TOKEN_CACHE_TTL};

use serde::{Deserialize, Serialize};

/// What a token may do: admins everything; players their own characters and the campaigns
/// they play in or run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Player,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "admin" => Ok(Role::Admin),
            "player" | "dm" | "user" => Ok(Role::Player),
            other => Err(format!(
                "unknown role '{other}'; allowed values: admin, player"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Player => "player",
        }
    }
}

/// The authenticated caller. `user` is the token's user name; characters' `owner_id` and
/// campaigns' `dm_id` refer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    /// The caller of a server started with `--no-auth` on a loopback address.
    pub fn local_admin() -> Self {
        Principal {
            user: "local".into(),
            role: Role::Admin,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// True for addresses only this machine can reach (127.0.0.0/8, ::1, "localhost").
pub fn is_loopback_bind(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_bind(h), "{h}");
        }
        for h in ["0.0.0.0", "::", "192.168.1.5", "example.com", ""] {
            assert!(!is_loopback_bind(h), "{h}");
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("ADMIN").unwrap(), Role::Admin);
        assert_eq!(Role::parse("player").unwrap(), Role::Player);
        assert!(Role::parse("wizard").unwrap_err().contains("admin, player"));
    }
}
