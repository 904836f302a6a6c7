//! Operators' accounts: creation with an argon2id-hashed password, listing,
//! disabling (never the last enabled admin), and password authentication.
//! Every change writes its audit entry in the transaction that makes it;
//! audit summaries never contain the password hash.

use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::password::{self, MAX_PASSWORD_BYTES};
use crate::auth::{AuthError, ParseRoleError, Role};
use crate::control_db::audit::{self, Actor, Change};

/// Longest user name (the table's `users_username_format` check).
pub const MAX_USERNAME_CHARS: usize = 64;
/// Most users one [`list`] call returns: a bound on one query's size, well
/// above any page size (REST asks for its page limit + 1 to learn whether
/// more follow).
pub const MAX_LIST_LIMIT: i64 = 10_000;
/// The unique index that makes user names case-insensitively unique.
const USERNAME_UNIQUE_INDEX: &str = "users_username_key";
/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// A PHC string of a random password nobody knows, with the project's
/// argon2id parameters: verified against when a user name is unknown, so
/// that answer takes as long as a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$rHz1OTSBSBN/OingeRBOIg$EC/inc/Jgw/p1XwvXL41vvhVdBVKNa4BKACXCIb37DA";

const INSERT_USER: &str = "INSERT INTO users (id, username, password_hash, role) VALUES ($1, $2, $3, $4) \
     RETURNING id, username, role, created_at, disabled_at";
const LIST_USERS: &str = "SELECT id, username, role, created_at, disabled_at FROM users \
     WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2";
const GET_USER: &str = "SELECT id, username, role, created_at, disabled_at FROM users WHERE id = $1";
const LOCK_USER: &str = "SELECT id, username, role, created_at, disabled_at FROM users WHERE id = $1 FOR UPDATE";
/// Locks every enabled admin, in id order so concurrent disables queue up
/// instead of each seeing the other still enabled.
const LOCK_ENABLED_ADMINS: &str =
    "SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL ORDER BY id FOR UPDATE";
const DISABLE_USER: &str = "UPDATE users SET disabled_at = now() WHERE id = $1 \
     RETURNING id, username, role, created_at, disabled_at";
const FIND_FOR_LOGIN: &str = "SELECT id, username, role, created_at, disabled_at, password_hash FROM users \
     WHERE lower(username) = lower($1)";
const COUNT_ADMINS: &str = "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL";

/// Errors of the user repository.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user with this name (compared case-insensitively) exists.
    #[error("a user named {0:?} already exists")]
    Exists(String),
    /// No user has this id.
    #[error("no user {0}")]
    NotFound(Uuid),
    /// The password does not meet the strength rule; the message says why.
    #[error("{0}")]
    WeakPassword(String),
    /// The user name does not meet the naming rule.
    #[error("invalid user name {0:?}: 1 to 64 characters among letters, digits and _ . @ -")]
    InvalidName(String),
    /// Disabling this user would leave no enabled admin.
    #[error("cannot disable the last enabled admin")]
    LastAdmin,
    /// A PostgreSQL query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// Hashing or verifying the password failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// An operator's account, without its password hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct User {
    /// The user's id (UUIDv7).
    pub id: Uuid,
    /// The user's name, as created (names are unique ignoring case).
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// When the user was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the user was disabled; a disabled user cannot log in.
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
}

impl User {
    /// Whether the user may log in.
    pub fn is_enabled(&self) -> bool {
        self.disabled_at.is_none()
    }

    /// The summary written to the audit log (never the hash: [`User`] has none).
    fn audit_summary(&self) -> JsonValue {
        serde_json::json!({
            "id": self.id,
            "username": self.username,
            "role": self.role,
            "disabled": self.disabled_at.is_some(),
        })
    }
}

/// A row of `users`, role still as text.
#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    username: String,
    role: String,
    created_at: OffsetDateTime,
    disabled_at: Option<OffsetDateTime>,
}

impl TryFrom<UserRow> for User {
    type Error = UserError;

    fn try_from(row: UserRow) -> Result<Self, UserError> {
        let role =
            row.role.parse::<Role>().map_err(|e: ParseRoleError| UserError::Query(sqlx::Error::Decode(e.into())))?;
        Ok(Self { id: row.id, username: row.username, role, created_at: row.created_at, disabled_at: row.disabled_at })
    }
}

/// A row for login: the user and its hash.
#[derive(sqlx::FromRow)]
struct LoginRow {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

/// Whether `name` meets the naming rule (the table's check, in Rust so the
/// caller gets [`UserError::InvalidName`] rather than a constraint error).
pub fn is_valid_username(name: &str) -> bool {
    (1..=MAX_USERNAME_CHARS).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

/// Turns the database's constraint errors into user errors, in one place.
fn on_constraint(error: sqlx::Error, username: &str) -> UserError {
    if let sqlx::Error::Database(db) = &error
        && db.code().as_deref() == Some(UNIQUE_VIOLATION)
        && db.constraint() == Some(USERNAME_UNIQUE_INDEX)
    {
        return UserError::Exists(username.to_owned());
    }
    UserError::Query(error)
}

/// Creates an enabled user with `password` (checked for strength, stored
/// argon2id-hashed) and writes `user.create` to the audit log.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    username: &str,
    password: String,
    role: Role,
) -> Result<User, UserError> {
    if !is_valid_username(username) {
        return Err(UserError::InvalidName(username.chars().take(MAX_USERNAME_CHARS + 1).collect()));
    }
    password::check_password_strength(&password).map_err(UserError::WeakPassword)?;
    let hash = password::hash_password(password).await?;
    let mut tx = pool.begin().await?;
    let row: UserRow = sqlx::query_as(INSERT_USER)
        .bind(Uuid::now_v7())
        .bind(username)
        .bind(&hash)
        .bind(role.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| on_constraint(error, username))?;
    let user = User::try_from(row)?;
    let change = Change {
        action: "user.create",
        target: format!("user:{}", user.id),
        before: None,
        after: Some(user.audit_summary()),
    };
    audit::record(&mut tx, actor, &change).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, username = %user.username, role = %user.role, actor = %actor.name, "user created");
    Ok(user)
}

/// Users ordered by id, starting after `after`; at most `limit` (clamped to
/// 0..=[`MAX_LIST_LIMIT`]).
pub async fn list(pool: &PgPool, after: Option<Uuid>, limit: i64) -> Result<Vec<User>, UserError> {
    let rows: Vec<UserRow> =
        sqlx::query_as(LIST_USERS).bind(after).bind(limit.clamp(0, MAX_LIST_LIMIT)).fetch_all(pool).await?;
    rows.into_iter().map(User::try_from).collect()
}

/// The user with this id.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<User>, UserError> {
    let row: Option<UserRow> = sqlx::query_as(GET_USER).bind(id).fetch_optional(pool).await?;
    row.map(User::try_from).transpose()
}

/// Disables a user (sets `disabled_at`) and writes `user.disable` to the
/// audit log; refuses to disable the last enabled admin. Disabling a
/// disabled user changes nothing and writes no entry.
pub async fn disable(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<User, UserError> {
    let mut tx = pool.begin().await?;
    // Disables take turns: each locks its own row and then every enabled
    // admin, and two of them taking those locks in different orders deadlock.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tyr.users.disable', 0))").execute(&mut *tx).await?;
    if lock_user(&mut tx, id).await?.is_some_and(|user| user.role.is_admin() && user.is_enabled()) {
        let admins: Vec<Uuid> = sqlx::query_scalar(LOCK_ENABLED_ADMINS).fetch_all(&mut *tx).await?;
        if admins.iter().all(|admin| *admin == id) {
            return Err(UserError::LastAdmin);
        }
    }
    // Locked again: the admin lock above may have waited for a concurrent change.
    let before = lock_user(&mut tx, id).await?.ok_or(UserError::NotFound(id))?;
    if !before.is_enabled() {
        return Ok(before);
    }
    let row: UserRow = sqlx::query_as(DISABLE_USER).bind(id).fetch_one(&mut *tx).await?;
    let after = User::try_from(row)?;
    let change = Change {
        action: "user.disable",
        target: format!("user:{id}"),
        before: Some(before.audit_summary()),
        after: Some(after.audit_summary()),
    };
    audit::record(&mut tx, actor, &change).await?;
    tx.commit().await?;
    tracing::info!(user_id = %id, username = %after.username, actor = %actor.name, "user disabled");
    Ok(after)
}

async fn lock_user(conn: &mut PgConnection, id: Uuid) -> Result<Option<User>, UserError> {
    let row: Option<UserRow> = sqlx::query_as(LOCK_USER).bind(id).fetch_optional(conn).await?;
    row.map(User::try_from).transpose()
}

/// The enabled user named `username` (ignoring case) whose password is
/// `password`; `None` for an unknown name, a wrong password or a disabled
/// user alike. Every answer costs one argon2id verification.
pub async fn authenticate(pool: &PgPool, username: &str, password: String) -> Result<Option<User>, UserError> {
    let row: Option<LoginRow> = if is_valid_username(username) {
        sqlx::query_as(FIND_FOR_LOGIN).bind(username).fetch_optional(pool).await?
    } else {
        None
    };
    // An over-long password cannot be anyone's: verify something short
    // instead, so its length costs no more than any other guess.
    let (candidate, too_long) =
        if password.len() > MAX_PASSWORD_BYTES { (String::new(), true) } else { (password, false) };
    let Some(row) = row else {
        password::verify_password(candidate, DUMMY_HASH.to_owned()).await?;
        return Ok(None);
    };
    let matches = password::verify_password(candidate, row.password_hash).await?;
    let user = User::try_from(row.user)?;
    Ok((matches && !too_long && user.is_enabled()).then_some(user))
}

/// How many enabled admins there are.
pub async fn count_admins(pool: &PgPool) -> Result<i64, UserError> {
    Ok(sqlx::query_scalar(COUNT_ADMINS).fetch_one(pool).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rule_matches_the_table_check() {
        for good in ["a", "alice", "Alice.Smith", "ops@example.com", "a_b-c", &"x".repeat(64)] {
            assert!(is_valid_username(good), "{good}");
        }
        for bad in ["", "al ice", "alice\n", "ali'ce", "é", "a/b", &"x".repeat(65)] {
            assert!(!is_valid_username(bad), "{bad:?}");
        }
    }

    #[test]
    fn dummy_hash_has_the_project_parameters() {
        assert!(DUMMY_HASH.starts_with(password::PHC_PREFIX), "{DUMMY_HASH}");
        assert_eq!(password::verify_blocking(b"", DUMMY_HASH).ok(), Some(false), "well-formed, matches nothing");
    }

    #[test]
    fn user_json_has_no_hash() {
        let user = User {
            id: Uuid::nil(),
            username: "alice".to_owned(),
            role: Role::Viewer,
            created_at: OffsetDateTime::UNIX_EPOCH,
            disabled_at: None,
        };
        let json = serde_json::to_value(&user).expect("serializes");
        assert_eq!(json["role"], "viewer");
        assert_eq!(json["created_at"], "1970-01-01T00:00:00Z");
        assert!(json["disabled_at"].is_null());
        assert_eq!(json.as_object().map(|o| o.len()), Some(5));
    }
}
