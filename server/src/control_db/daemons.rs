//! Enrolled daemons: the row Register stores, the lookup that maps a client
//! certificate to a live daemon, what heartbeats and capability reports
//! record, and revocation by deletion (announced on a PostgreSQL channel so
//! the serving processes close the daemon's stream).

use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, Actor, Change};

/// PostgreSQL NOTIFY channel a deletion is announced on; the payload is the
/// daemon id as text.
pub const DAEMON_REVOKED_CHANNEL: &str = "tyr_daemon_revoked";

const INSERT_DAEMON: &str = "INSERT INTO daemons \
     (id, name, kernel_version, arch, cert_serial, cert_not_after, enrolled_with) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// The columns of a [`DaemonRow`], spelled once for both lookups.
macro_rules! select_daemon {
    ($where:literal) => {
        concat!(
            "SELECT id, name, kernel_version, arch, cert_serial, cert_not_after, enrolled_with, ",
            "enrolled_at, last_seen_at, applied_policy_version, unregistered_agents FROM daemons WHERE ",
            $where
        )
    };
}
const GET_DAEMON: &str = select_daemon!("id = $1");
const FIND_BY_IDENTITY: &str = select_daemon!("id = $1 AND cert_serial = $2");
const LIST_DAEMONS: &str = "SELECT d.id, d.name, d.kernel_version, d.arch, d.cert_not_after, d.enrolled_at, \
     d.last_seen_at, d.applied_policy_version, d.policy_applied_at, \
     (SELECT max(e.version) FROM effective_policies e WHERE e.daemon_id = d.id) AS assigned_policy_version, \
     d.spooled_events, d.drops, d.seq_gap_events, d.capabilities, d.unregistered_agents \
     FROM daemons d WHERE ($1::uuid IS NULL OR d.id > $1) AND ($2::uuid IS NULL OR d.id = $2) ORDER BY d.id LIMIT $3";
// The applied version's time moves only when the version does.
const RECORD_HEARTBEAT: &str = "UPDATE daemons \
     SET last_seen_at = now(), \
         policy_applied_at = CASE WHEN applied_policy_version = $2 THEN policy_applied_at ELSE now() END, \
         applied_policy_version = $2, drops = $3, spooled_events = $4 WHERE id = $1";

/// Errors of the daemon repository.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A PostgreSQL query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// A daemon to store at enrollment.
#[derive(Debug, Clone)]
pub struct NewDaemon {
    /// The daemon id (the client certificate's common name).
    pub id: Uuid,
    /// Host name the daemon gave.
    pub name: String,
    /// Kernel release of the host.
    pub kernel_version: String,
    /// CPU architecture: `x86_64` or `aarch64`.
    pub arch: String,
    /// Serial of the client certificate issued to it, lowercase hex.
    pub cert_serial: String,
    /// When that certificate expires.
    pub cert_not_after: OffsetDateTime,
    /// The enrollment token it used.
    pub enrolled_with: Option<Uuid>,
}

/// A daemon's identity and policy state, as the stream session needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DaemonRow {
    /// The daemon id.
    pub id: Uuid,
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Serial of its current client certificate, lowercase hex.
    pub cert_serial: String,
    /// When that certificate expires.
    pub cert_not_after: OffsetDateTime,
    /// The enrollment token it used (gone if the token was deleted).
    pub enrolled_with: Option<Uuid>,
    /// When it enrolled.
    pub enrolled_at: OffsetDateTime,
    /// Its last heartbeat.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Policy version it reported installed.
    pub applied_policy_version: i64,
    /// What its kernel does with unregistered agents: audit, quarantine, deny.
    pub unregistered_agents: String,
}

/// A daemon as `daemon list` shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DaemonSummary {
    /// The daemon id.
    pub id: Uuid,
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// When its client certificate expires.
    pub cert_not_after: OffsetDateTime,
    /// When it enrolled.
    pub enrolled_at: OffsetDateTime,
    /// Its last heartbeat.
    pub last_seen_at: Option<OffsetDateTime>,
    /// Policy version it reported installed.
    pub applied_policy_version: i64,
    /// When it first reported that version installed.
    pub policy_applied_at: Option<OffsetDateTime>,
    /// The newest effective policy version the server computed (and pushes) for it.
    pub assigned_policy_version: Option<i64>,
    /// Events in its disk spool at the last heartbeat.
    pub spooled_events: i64,
    /// Drop counters of the last heartbeat.
    pub drops: JsonValue,
    /// Sequence numbers the server never received from it.
    pub seq_gap_events: i64,
    /// Its last capability report.
    pub capabilities: JsonValue,
    /// What its kernel does with unregistered agents: audit, quarantine, deny.
    pub unregistered_agents: String,
}

/// What a heartbeat records.
#[derive(Debug, Clone)]
pub struct HeartbeatRecord {
    /// Policy version installed in the daemon's kernel maps.
    pub applied_policy_version: u64,
    /// The heartbeat's drop counters, as JSON.
    pub drops: JsonValue,
    /// Events waiting in the daemon's disk spool.
    pub spooled_events: u64,
}

fn to_bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stores a newly enrolled daemon (in the caller's transaction, with the
/// token use it consumed).
pub async fn insert(conn: &mut PgConnection, daemon: &NewDaemon) -> Result<(), DaemonError> {
    sqlx::query(INSERT_DAEMON)
        .bind(daemon.id)
        .bind(&daemon.name)
        .bind(&daemon.kernel_version)
        .bind(&daemon.arch)
        .bind(&daemon.cert_serial)
        .bind(daemon.cert_not_after)
        .bind(daemon.enrolled_with)
        .execute(conn)
        .await?;
    Ok(())
}

/// The daemon with this id, if enrolled.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DaemonRow>, DaemonError> {
    Ok(sqlx::query_as(GET_DAEMON).bind(id).fetch_optional(pool).await?)
}

/// The daemon a client certificate names: the row exists (not revoked) and
/// its stored serial is this certificate's (not an older certificate).
pub async fn find_by_identity(pool: &PgPool, id: Uuid, serial_hex: &str) -> Result<Option<DaemonRow>, DaemonError> {
    Ok(sqlx::query_as(FIND_BY_IDENTITY).bind(id).bind(serial_hex).fetch_optional(pool).await?)
}

/// Every enrolled daemon, by id.
pub async fn list(pool: &PgPool) -> Result<Vec<DaemonSummary>, DaemonError> {
    list_page(pool, None, i64::MAX).await
}

/// At most `limit` daemons with ids after `after`, by id.
pub async fn list_page(pool: &PgPool, after: Option<Uuid>, limit: i64) -> Result<Vec<DaemonSummary>, DaemonError> {
    Ok(sqlx::query_as(LIST_DAEMONS).bind(after).bind(None::<Uuid>).bind(limit).fetch_all(pool).await?)
}

/// One daemon as listed; None when there is none with this id.
pub async fn summary(pool: &PgPool, id: Uuid) -> Result<Option<DaemonSummary>, DaemonError> {
    Ok(sqlx::query_as(LIST_DAEMONS).bind(None::<Uuid>).bind(id).bind(1_i64).fetch_optional(pool).await?)
}

/// Deletes (revokes) a daemon and announces it on
/// [`DAEMON_REVOKED_CHANNEL`] in the same transaction, so listeners hear of
/// it exactly when it is committed; `false` when there was none.
pub async fn delete(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<bool, DaemonError> {
    let mut tx = pool.begin().await?;
    let deleted: Option<(String, String)> =
        sqlx::query_as("DELETE FROM daemons WHERE id = $1 RETURNING name, cert_serial")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((name, cert_serial)) = deleted else {
        tx.rollback().await?;
        return Ok(false);
    };
    let before = serde_json::json!({ "name": name, "cert_serial": cert_serial });
    audit::record(
        &mut tx,
        actor,
        &Change { action: "daemon.delete", target: format!("daemon:{id}"), before: Some(before), after: None },
    )
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)").bind(DAEMON_REVOKED_CHANNEL).bind(id.to_string()).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(daemon_id = %id, "daemon deleted");
    Ok(true)
}

/// Stores a daemon's capability report; `false` when the daemon is gone.
pub async fn record_capabilities(pool: &PgPool, id: Uuid, capabilities: &JsonValue) -> Result<bool, DaemonError> {
    let updated = sqlx::query("UPDATE daemons SET capabilities = $2 WHERE id = $1")
        .bind(id)
        .bind(capabilities)
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() > 0)
}

/// Stores a heartbeat and marks the daemon seen now; `false` when the daemon
/// is gone.
pub async fn record_heartbeat(pool: &PgPool, id: Uuid, heartbeat: &HeartbeatRecord) -> Result<bool, DaemonError> {
    let updated = sqlx::query(RECORD_HEARTBEAT)
        .bind(id)
        .bind(to_bigint(heartbeat.applied_policy_version))
        .bind(&heartbeat.drops)
        .bind(to_bigint(heartbeat.spooled_events))
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() > 0)
}
