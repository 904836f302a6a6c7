//! Enrollment tokens: `<id>.<secret>` credentials that let a fresh tyrd
//! register. Only an argon2id hash of the secret is stored; uses are consumed
//! atomically in PostgreSQL, and every way a token can be refused looks the
//! same to the caller.

use std::sync::LazyLock;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, Actor, Change};

/// Random bytes in a token secret.
const SECRET_BYTES: usize = 32;
/// Longest token text looked at; anything longer is refused unparsed.
const MAX_TOKEN_TEXT: usize = 128;
/// Longest description stored with a token, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Longest lifetime a token may be given.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const INSERT_TOKEN: &str = "INSERT INTO enrollment_tokens (id, secret_hash, description, expires_at, max_uses, created_by) \
     VALUES ($1, $2, $3, now() + $4 * interval '1 second', $5, $6) RETURNING expires_at";
const LIST_TOKENS: &str = "SELECT id, description, created_at, expires_at, max_uses, uses, \
         CASE WHEN uses >= max_uses THEN 'exhausted' WHEN expires_at <= now() THEN 'expired' ELSE 'active' END \
         AS state \
     FROM enrollment_tokens ORDER BY created_at, id";
const CONSUME_USE: &str = "UPDATE enrollment_tokens SET uses = uses + 1 \
     WHERE id = $1 AND uses < max_uses AND expires_at > now() RETURNING id";

/// Errors of the enrollment-token repository.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is malformed, unknown, deleted, expired, used up or has the
    /// wrong secret; deliberately one error so callers learn nothing more.
    #[error("enrollment token is invalid, expired or used up")]
    Invalid,
    /// The settings of a new token are out of range.
    #[error("invalid token settings: {0}")]
    InvalidSettings(&'static str),
    /// Hashing a secret failed.
    #[error("hashing the token secret failed: {0}")]
    Hash(String),
    /// The blocking hash task did not finish.
    #[error("token hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A PostgreSQL query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A token just created: the only time its full text exists.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The token's id (its public half).
    pub id: Uuid,
    /// The full token, `<id>.<secret>`; shown once, never stored.
    pub token: String,
    /// When the token stops being accepted.
    pub expires_at: OffsetDateTime,
    /// How many daemons may enroll with it.
    pub max_uses: u32,
}

/// Whether a token can still enroll a daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Uses left and not expired.
    Active,
    /// Past its expiry.
    Expired,
    /// Every use consumed.
    Exhausted,
}

impl TokenState {
    /// The state's name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }
}

/// What is known about a token, without its secret or hash.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The token's id.
    pub id: Uuid,
    /// What the operator wrote about it.
    pub description: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it stops being accepted.
    pub expires_at: OffsetDateTime,
    /// How many daemons may enroll with it.
    pub max_uses: i32,
    /// How many have.
    pub uses: i32,
    /// Whether it can still enroll a daemon.
    pub state: TokenState,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    description: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    max_uses: i32,
    uses: i32,
    state: String,
}

/// argon2id PHC string of `secret` with a fresh random salt (the
/// parameters of operators' passwords: one definition, in `auth::password`).
fn hash_secret(secret: &str) -> Result<String, TokenError> {
    crate::auth::password::hash_blocking(secret.as_bytes()).map_err(|e| TokenError::Hash(e.to_string()))
}

/// A hash of a secret nobody knows, verified against when a token id is
/// unknown so that answer takes as long as a wrong secret.
static DECOY_HASH: LazyLock<Option<String>> = LazyLock::new(|| hash_secret(&hex::encode([0u8; SECRET_BYTES])).ok());

fn secret_matches(secret: &str, phc: &str) -> bool {
    crate::auth::password::verify_blocking(secret.as_bytes(), phc).unwrap_or(false)
}

/// Splits `<id>.<secret>`; `None` for anything that is not a token.
fn parse_token(text: &str) -> Option<(Uuid, String)> {
    if text.len() > MAX_TOKEN_TEXT {
        return None;
    }
    let (id, secret) = text.trim().split_once('.')?;
    let id = Uuid::try_parse(id).ok()?;
    let well_formed = secret.len() == SECRET_BYTES * 2 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| (id, secret.to_ascii_lowercase()))
}

/// Creates a token valid for `expires_in` and `max_uses` enrollments.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    expires_in: Duration,
    max_uses: u32,
    description: &str,
) -> Result<CreatedToken, TokenError> {
    if expires_in < Duration::from_secs(1) || expires_in > MAX_LIFETIME {
        return Err(TokenError::InvalidSettings("lifetime must be between 1 second and 10 years"));
    }
    let max_uses_db = i32::try_from(max_uses).ok().filter(|n| *n > 0);
    let Some(max_uses_db) = max_uses_db else {
        return Err(TokenError::InvalidSettings("max uses must be between 1 and 2147483647"));
    };
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(TokenError::InvalidSettings("description is longer than 1024 characters"));
    }
    let id = Uuid::new_v4();
    let secret = hex::encode(rand::random::<[u8; SECRET_BYTES]>());
    let hash = {
        let secret = secret.clone();
        tokio::task::spawn_blocking(move || hash_secret(&secret)).await??
    };
    let seconds = i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX);
    let mut tx = pool.begin().await?;
    let expires_at: OffsetDateTime = sqlx::query_scalar(INSERT_TOKEN)
        .bind(id)
        .bind(&hash)
        .bind(description)
        .bind(seconds)
        .bind(max_uses_db)
        .bind(actor.user_id)
        .fetch_one(&mut *tx)
        .await?;
    let after = serde_json::json!({ "description": description, "max_uses": max_uses, "expires_at": expires_at.unix_timestamp() });
    audit::record(
        &mut tx,
        actor,
        &Change { action: "token.create", target: format!("token:{id}"), before: None, after: Some(after) },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, max_uses, %expires_at, "enrollment token created");
    Ok(CreatedToken { id, token: format!("{id}.{secret}"), expires_at, max_uses })
}

/// Every token, oldest first, without secrets or hashes.
pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, TokenError> {
    let rows: Vec<TokenRow> = sqlx::query_as(LIST_TOKENS).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|row| TokenInfo {
            id: row.id,
            description: row.description,
            created_at: row.created_at,
            expires_at: row.expires_at,
            max_uses: row.max_uses,
            uses: row.uses,
            state: match row.state.as_str() {
                "exhausted" => TokenState::Exhausted,
                "expired" => TokenState::Expired,
                _ => TokenState::Active,
            },
        })
        .collect())
}

/// Deletes a token; `false` when there was none with this id. Daemons that
/// enrolled with it stay enrolled.
pub async fn delete(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<bool, TokenError> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(String, i32, i32)> =
        sqlx::query_as("DELETE FROM enrollment_tokens WHERE id = $1 RETURNING description, max_uses, uses")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((description, max_uses, uses)) = deleted else {
        return Ok(false);
    };
    let before = serde_json::json!({ "description": description, "max_uses": max_uses, "uses": uses });
    audit::record(
        &mut tx,
        actor,
        &Change { action: "token.delete", target: format!("token:{id}"), before: Some(before), after: None },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, "enrollment token deleted");
    Ok(true)
}

/// Checks a token's secret against its stored hash (argon2id, off the async
/// runtime) without consuming a use; returns the token's id. Unknown ids
/// cost the same hash work as wrong secrets.
pub async fn verify(pool: &PgPool, token_text: &str) -> Result<Uuid, TokenError> {
    let Some((id, secret)) = parse_token(token_text) else {
        return Err(TokenError::Invalid);
    };
    let stored: Option<String> = sqlx::query_scalar("SELECT secret_hash FROM enrollment_tokens WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    let known = stored.is_some();
    let matches = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => secret_matches(&secret, &hash),
        None => {
            if let Some(decoy) = DECOY_HASH.as_deref() {
                secret_matches(&secret, decoy);
            }
            false
        }
    })
    .await?;
    if known && matches { Ok(id) } else { Err(TokenError::Invalid) }
}

/// Consumes one use of token `id` if it has uses left and has not expired,
/// atomically (racing callers never consume more than `max_uses`). Run it in
/// the transaction that stores what the use was for, so a failure after it
/// gives the use back.
pub async fn consume_use(conn: &mut PgConnection, id: Uuid) -> Result<(), TokenError> {
    let consumed: Option<Uuid> = sqlx::query_scalar(CONSUME_USE).bind(id).fetch_optional(conn).await?;
    consumed.map(|_| ()).ok_or(TokenError::Invalid)
}

/// Verifies a token and consumes one use; returns the token's id.
pub async fn consume(pool: &PgPool, token_text: &str) -> Result<Uuid, TokenError> {
    let id = verify(pool, token_text).await?;
    let mut conn = pool.acquire().await?;
    consume_use(&mut conn, id).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_parsing() {
        let id = Uuid::new_v4();
        let secret = "ab".repeat(SECRET_BYTES);
        assert_eq!(parse_token(&format!("{id}.{secret}")), Some((id, secret.clone())));
        assert_eq!(parse_token(&format!("{id}.{}", &secret[2..])), None);
        assert_eq!(parse_token(&format!("{id}{secret}")), None);
        assert_eq!(parse_token(&format!("nope.{secret}")), None);
        assert_eq!(parse_token(&format!("{id}.{}zz", &secret[2..])), None);
        assert_eq!(parse_token(""), None);
        assert_eq!(parse_token(&"a".repeat(10_000)), None);
    }

    #[test]
    fn hashes_are_argon2id_with_the_configured_cost() {
        let hash = hash_secret("secret").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(secret_matches("secret", &hash));
        assert!(!secret_matches("other", &hash));
        assert!(!secret_matches("secret", "not a hash"));
    }
}
