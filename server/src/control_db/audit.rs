//! The operators' audit log. Every mutating operation writes its entry with
//! [`record`] on the transaction that makes the change, so the change and
//! its entry commit (or roll back) together.

use std::net::IpAddr;

use serde_json::Value as JsonValue;
use sqlx::PgConnection;
use sqlx::types::ipnet::IpNet;
use time::OffsetDateTime;
use uuid::Uuid;

/// Who made a change and from where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    /// The operator's user id; None for the local admin subcommands.
    pub user_id: Option<Uuid>,
    /// The operator's name (or `local-admin`).
    pub name: String,
    /// The client's address, for calls over REST.
    pub source: Option<IpAddr>,
}

impl Actor {
    /// The actor of `tyr-server` admin subcommands run on the server host.
    pub fn local_admin() -> Self {
        Self { user_id: None, name: "local-admin".to_owned(), source: None }
    }
}

/// One change, as the audit log records it.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// A dotted verb: `policy.apply`, `daemon.delete`, `discovered.merge`.
    pub action: &'a str,
    /// The target's kind and id or name: `policy:base`, `daemon:<uuid>`.
    pub target: String,
    /// Summary of the target before the change (None: it did not exist).
    pub before: Option<JsonValue>,
    /// Summary of the target after the change (None: it no longer exists).
    pub after: Option<JsonValue>,
}

/// Writes `change` by `actor` on `conn`, which must be the transaction that
/// makes the change.
pub async fn record(conn: &mut PgConnection, actor: &Actor, change: &Change<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (id, actor_id, actor_name, source, action, target, before, after)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(actor.user_id)
    .bind(&actor.name)
    .bind(actor.source.map(IpNet::from))
    .bind(change.action)
    .bind(&change.target)
    .bind(&change.before)
    .bind(&change.after)
    .execute(conn)
    .await?;
    Ok(())
}

/// An audit log entry as listed.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    /// The entry's id (UUIDv7: ordered by time).
    pub id: Uuid,
    /// When the change committed.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The operator's user id; None for local admin subcommands.
    pub actor_id: Option<Uuid>,
    /// The operator's name at the time.
    pub actor_name: String,
    /// The client's address, for calls over REST.
    pub source: Option<String>,
    /// The dotted verb.
    pub action: String,
    /// The target.
    pub target: String,
    /// Summary before the change.
    #[schema(value_type = Option<Object>)]
    pub before: Option<JsonValue>,
    /// Summary after the change.
    #[schema(value_type = Option<Object>)]
    pub after: Option<JsonValue>,
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only changes by this operator name.
    pub actor: Option<String>,
    /// Only this action, or actions under this prefix (`policy.`).
    pub action: Option<String>,
    /// Only changes to this target.
    pub target: Option<String>,
    /// Only changes at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only changes before this time.
    pub until: Option<OffsetDateTime>,
    /// Continue after this entry (newest first: entries older than it).
    pub after_id: Option<Uuid>,
    /// At most this many entries.
    pub limit: i64,
}

/// Entries matching `filter`, newest first.
pub async fn list(pool: &sqlx::PgPool, filter: &AuditFilter) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, actor_id, actor_name, host(source) AS source, action, target, before, after
           FROM audit_log
          WHERE ($1::text IS NULL OR actor_name = $1)
            AND ($2::text IS NULL OR action = $2 OR (right($2, 1) = '.' AND starts_with(action, $2)))
            AND ($3::text IS NULL OR target = $3)
            AND ($4::timestamptz IS NULL OR at >= $4)
            AND ($5::timestamptz IS NULL OR at < $5)
            AND ($6::uuid IS NULL OR id < $6)
          ORDER BY id DESC
          LIMIT $7",
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.after_id)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}
