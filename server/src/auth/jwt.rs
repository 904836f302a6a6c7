//! Operators' session tokens: JWT HS256, 24 h, signed with the key in
//! `$TYR_DATA_DIR/jwt.key`. The key is made on first boot (mode 0600 from
//! creation); deleting it rotates the key and so invalidates every token.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{AuthError, Role};

/// Name of the signing key file in the data directory.
pub const KEY_FILE: &str = "jwt.key";
/// How long a token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Random bytes in a key the server makes.
const KEY_BYTES: usize = 32;
/// Shortest key accepted (HS256 needs at least 256 bits).
const MIN_KEY_BYTES: usize = 32;
/// Longest key accepted; anything bigger is not a key file.
const MAX_KEY_BYTES: usize = 4096;
/// Longest token text looked at; anything longer is refused unparsed.
const MAX_TOKEN_BYTES: usize = 8192;
/// Mode of the key file: owner read/write only.
const KEY_MODE: u32 = 0o600;
/// Mode of the data directory when it is created here.
const DATA_DIR_MODE: u32 = 0o700;

/// What a session token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The operator's user id.
    pub sub: Uuid,
    /// The operator's user name when the token was issued.
    pub name: String,
    /// The operator's role when the token was issued.
    pub role: Role,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
}

/// A token just issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
}

/// The HS256 signing key.
pub struct JwtKeys {
    /// Signs tokens.
    encoding: EncodingKey,
    /// Checks tokens' signatures.
    decoding: DecodingKey,
    /// Where the key was read from.
    path: PathBuf,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys").field("path", &self.path).field("key", &"<redacted>").finish()
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuthError {
    let path = path.to_path_buf();
    move |source| AuthError::KeyFileIo { action, path, source }
}

impl JwtKeys {
    /// Reads `$data_dir/jwt.key`, or makes it (32 random bytes, mode 0600
    /// from creation) when it does not exist. A key file that is readable by
    /// group or others, shorter than 32 bytes or not a regular file is an
    /// error, never silently replaced.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, AuthError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DATA_DIR_MODE)
            .create(data_dir)
            .map_err(io_error("creating", data_dir))?;
        let path = data_dir.join(KEY_FILE);
        let secret = match read_key(&path)? {
            Some(secret) => secret,
            None => create_key(&path)?,
        };
        Self::from_secret(&secret, path)
    }

    /// Keys from raw secret bytes (at least 32).
    fn from_secret(secret: &[u8], path: PathBuf) -> Result<Self, AuthError> {
        let invalid = |reason: String| AuthError::InvalidKeyFile { path: path.clone(), reason };
        let encoding = EncodingKey::from_secret(secret).map_err(|e| invalid(e.to_string()))?;
        let decoding = DecodingKey::from_secret(secret).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { encoding, decoding, path })
    }

    /// The key file these keys came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Signs a token for `user_id`, valid from `now` for [`TOKEN_TTL`].
    pub fn issue(&self, user_id: Uuid, name: &str, role: Role, now: OffsetDateTime) -> Result<IssuedToken, AuthError> {
        let iat = now.unix_timestamp();
        let ttl = i64::try_from(TOKEN_TTL.as_secs()).map_err(|e| AuthError::Signing(e.to_string()))?;
        let exp = iat.checked_add(ttl).ok_or(AuthError::Signing("expiry out of range".to_owned()))?;
        let expires_at = OffsetDateTime::from_unix_timestamp(exp).map_err(|e| AuthError::Signing(e.to_string()))?;
        let claims = Claims { sub: user_id, name: name.to_owned(), role, iat, exp };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        Ok(IssuedToken { token, expires_at })
    }

    /// Checks a token at time `now`: HS256 only (`none` and every other
    /// algorithm refused), a valid signature, `exp` present and not past,
    /// `iat` not in the future (each within [`LEEWAY`]), a lifetime no longer
    /// than [`TOKEN_TTL`].
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed("token is too long"));
        }
        // The header is read first only to name the failure; `decode` below
        // enforces the algorithm again.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::Malformed("header is not a JWT header with a known algorithm"))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // Time is checked below against the caller's `now`, not the library's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                JwtErrorKind::InvalidSignature => AuthError::BadSignature,
                JwtErrorKind::InvalidAlgorithm | JwtErrorKind::UnsupportedAlgorithm => AuthError::UnsupportedAlgorithm,
                JwtErrorKind::MissingRequiredClaim(_) => AuthError::Malformed("a required claim is missing"),
                JwtErrorKind::Json(_) | JwtErrorKind::InvalidClaimFormat(_) => {
                    AuthError::Malformed("claims are not the expected ones")
                }
                _ => AuthError::Malformed("not a compact JWT"),
            })?
            .claims;
        check_times(&claims, now)?;
        Ok(claims)
    }
}

/// Expiry, issue time and lifetime of verified claims, against `now`.
fn check_times(claims: &Claims, now: OffsetDateTime) -> Result<(), AuthError> {
    let now = now.unix_timestamp();
    let leeway = LEEWAY.as_secs() as i64;
    let ttl = TOKEN_TTL.as_secs() as i64;
    if claims.exp <= claims.iat || claims.exp.saturating_sub(claims.iat) > ttl {
        return Err(AuthError::Malformed("lifetime is not the one the server issues"));
    }
    if now > claims.exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(AuthError::IssuedInFuture);
    }
    Ok(())
}

/// The key's bytes, `None` when the file does not exist. The checks are
/// made on the opened file, so a swap between check and read cannot pass.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>, AuthError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("opening", path)(error)),
    };
    let metadata = file.metadata().map_err(io_error("inspecting", path))?;
    let invalid = |reason: String| AuthError::InvalidKeyFile { path: path.to_path_buf(), reason };
    if !metadata.is_file() {
        return Err(invalid("not a regular file".to_owned()));
    }
    let mode = metadata.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::InsecureKeyFile { path: path.to_path_buf(), mode });
    }
    let mut secret = Vec::with_capacity(KEY_BYTES);
    // One byte past the limit tells "too long" from "exactly the limit".
    (&mut file).take(MAX_KEY_BYTES as u64 + 1).read_to_end(&mut secret).map_err(io_error("reading", path))?;
    if secret.len() < MIN_KEY_BYTES {
        return Err(invalid(format!("it has {} bytes, at least {MIN_KEY_BYTES} are needed", secret.len())));
    }
    if secret.len() > MAX_KEY_BYTES {
        return Err(invalid(format!("it has more than {MAX_KEY_BYTES} bytes")));
    }
    Ok(Some(secret))
}

/// Makes the key file: random bytes written to a temporary file created
/// 0600, synced, then hard-linked to `path` (which fails if another process
/// made the key first: its key is read instead, never overwritten).
fn create_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    let secret: [u8; KEY_BYTES] = rand::random();
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let temp = dir.join(format!(".{KEY_FILE}.{}.tmp", Uuid::new_v4().simple()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_MODE)
            .open(&temp)
            .map_err(io_error("creating", &temp))?;
        file.write_all(&secret).map_err(io_error("writing", &temp))?;
        file.sync_all().map_err(io_error("syncing", &temp))?;
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(io_error("creating", path)(error)),
        }
    })();
    if let Err(error) = fs::remove_file(&temp)
        && error.kind() != ErrorKind::NotFound
    {
        tracing::warn!(%error, path = %temp.display(), "cannot remove temporary key file");
    }
    if written? {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("syncing", dir))?;
        tracing::info!(path = %path.display(), "made a new session signing key");
        Ok(secret.to_vec())
    } else {
        read_key(path)?.ok_or_else(|| AuthError::InvalidKeyFile {
            path: path.to_path_buf(),
            reason: "it vanished while being made".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("tyr-jwt-{}", Uuid::new_v4().simple()))
    }

    #[test]
    fn round_trip_and_times() {
        let dir = temp_dir();
        let keys = JwtKeys::load_or_create(&dir).expect("keys");
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        let user = Uuid::new_v4();
        let issued = keys.issue(user, "alice", Role::Viewer, now).expect("issue");
        assert_eq!(issued.expires_at, now + TOKEN_TTL);
        let claims = keys.verify(&issued.token, now).expect("valid");
        assert_eq!((claims.sub, claims.name.as_str(), claims.role), (user, "alice", Role::Viewer));
        let at_expiry = now + TOKEN_TTL;
        assert!(keys.verify(&issued.token, at_expiry + LEEWAY).is_ok(), "within the leeway");
        let late = at_expiry + LEEWAY + Duration::from_secs(1);
        assert!(matches!(keys.verify(&issued.token, late), Err(AuthError::Expired)));
        let early = now - LEEWAY - Duration::from_secs(1);
        assert!(matches!(keys.verify(&issued.token, early), Err(AuthError::IssuedInFuture)));
        assert!(format!("{keys:?}").contains("redacted"));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn racing_creators_share_one_key() {
        let dir = temp_dir();
        let now = OffsetDateTime::now_utc();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || JwtKeys::load_or_create(&dir).expect("keys"))
            })
            .collect();
        let keys: Vec<JwtKeys> = handles.into_iter().map(|h| h.join().expect("thread")).collect();
        let token = keys[0].issue(Uuid::new_v4(), "a", Role::Admin, now).expect("issue").token;
        for other in &keys {
            other.verify(&token, now).expect("every loader has the same key");
        }
        let leftovers = fs::read_dir(&dir).expect("dir").count();
        assert_eq!(leftovers, 1, "only jwt.key remains");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
