//! Operators' authentication for the REST API: roles, argon2id password
//! hashing, HS256 session tokens signed with `$TYR_DATA_DIR/jwt.key`, and
//! the login rate limiter.

pub mod jwt;
pub mod password;
pub mod rate_limit;

use std::fmt;
use std::str::FromStr;

pub use jwt::{Claims, IssuedToken, JwtKeys, TOKEN_TTL};
pub use rate_limit::LoginLimiter;

/// What an operator may do: `admin` everything, `viewer` read only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every operation, reads and changes.
    Admin,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The role's name as stored, serialized and typed on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    /// Whether this role may make changes.
    pub fn is_admin(self) -> bool {
        self == Self::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is neither `admin` nor `viewer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected admin or viewer")]
pub struct ParseRoleError(pub String);

impl FromStr for Role {
    type Err = ParseRoleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("admin") {
            Ok(Self::Admin)
        } else if text.eq_ignore_ascii_case("viewer") {
            Ok(Self::Viewer)
        } else {
            // Bounded so a hostile value does not end up whole in a message.
            Err(ParseRoleError(text.chars().take(32).collect()))
        }
    }
}

/// Errors of authentication: session tokens, the signing key and password
/// hashing. Token errors never carry the token or its claims.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` is past (beyond the clock-skew leeway).
    #[error("token expired")]
    Expired,
    /// The token's `iat` is in the future (beyond the clock-skew leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// The signature does not match: tampered, or signed with another
    /// (e.g. rotated) key.
    #[error("token signature is not valid")]
    BadSignature,
    /// The token names an algorithm other than HS256.
    #[error("token algorithm is not accepted (only HS256)")]
    UnsupportedAlgorithm,
    /// The token is not a well-formed JWT with the expected claims.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// A token could not be signed.
    #[error("signing a token failed: {0}")]
    Signing(String),
    /// The key file (or its directory) could not be read, created or synced.
    #[error("{action} {path}: {source}")]
    KeyFileIo {
        /// What was being done, e.g. "reading".
        action: &'static str,
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file can be read by other users than the server's.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600` on it")]
    InsecureKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a usable key (too short, too long, not a file).
    #[error("{path} is not a valid signing key: {reason}; remove it to make a new one (this logs every operator out)")]
    InvalidKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// argon2id hashing or verification failed (not a wrong password: the
    /// stored hash or the parameters are unusable).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking hashing task did not finish.
    #[error("password hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl AuthError {
    /// Whether the error is the caller's (a token that is not accepted) rather
    /// than the server's (key file, hashing): the former is a 401, the latter
    /// a 500.
    pub fn is_rejected_token(&self) -> bool {
        matches!(
            self,
            Self::Expired | Self::IssuedInFuture | Self::BadSignature | Self::UnsupportedAlgorithm | Self::Malformed(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_print_and_serialize() {
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!("Viewer".parse::<Role>(), Ok(Role::Viewer));
        assert!("root".parse::<Role>().is_err());
        assert_eq!(Role::Viewer.to_string(), "viewer");
        assert_eq!(serde_json::to_string(&Role::Admin).expect("serializes"), "\"admin\"");
        assert_eq!(serde_json::from_str::<Role>("\"viewer\"").expect("parses"), Role::Viewer);
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err(), "json is lowercase only");
        let long = "x".repeat(10_000).parse::<Role>().expect_err("unknown");
        assert!(long.to_string().len() < 100, "{long}");
    }
}
