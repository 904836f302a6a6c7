//! The AI agents tyrd discovers on each host, and the operators' overrides
//! of them: rename, merge, reclassify, archive and promote.
//!
//! Reports from a daemon's stream upsert its agents' rows by id (tyrd's
//! `discovered_agent_id`); a report never touches a row of another daemon.
//! Every operator change writes its audit entry and a NOTIFY on
//! [`AGENTS_CHANGED_CHANNEL`] (payload: the daemon id) in the transaction
//! that makes it, so the session holding that daemon's stream — on any
//! replica — sends the daemon its new override set ([`overrides_for`]).
//!
//! Types: an agent is governed by its *effective type*: the survivor's when
//! it was merged, else its reclassification, else the type tyrd detected.
//! Reclassifications name a type of the known-agent table or `unknown`;
//! policy overlays, the kernel's agent classes and event labels know no
//! other (a custom type would be governed by nothing but the base policy).
//!
//! Merges keep no chains: when an agent that others were merged into is
//! merged in turn, they move with it, so `merged_into` always names a
//! survivor on the same daemon and no cycle can form. [`merged_ids`]
//! still walks `merged_into` transitively.

use serde_json::Value as JsonValue;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tyr_common::agents::{KNOWN_AGENTS, UNKNOWN};
use uuid::Uuid;

use super::audit::{self, Actor, Change};
use crate::error::ServiceError;

/// PostgreSQL NOTIFY channel announcing that a daemon's agent overrides may
/// have changed; the payload is the daemon id as text.
pub const AGENTS_CHANGED_CHANNEL: &str = "tyr_agents_changed";

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 128;
/// Most rows one list call returns.
pub const MAX_LIST_LIMIT: i64 = 1000;

/// The columns of a [`DiscoveredAgent`]: the row `d` and its survivor `s`.
macro_rules! select_agents {
    ($tail:literal) => {
        concat!(
            "SELECT d.id, d.daemon_id, d.agent_type, d.reclassified_as, ",
            "COALESCE(s.reclassified_as, s.agent_type, d.reclassified_as, d.agent_type) AS effective_type, ",
            "d.display_name, d.exe_path, d.exe_sha256, d.evidence, d.confidence, d.merged_into, ",
            "d.archived_at, d.first_seen_at, d.last_seen_at ",
            "FROM discovered_agents d LEFT JOIN discovered_agents s ON s.id = d.merged_into ",
            $tail
        )
    };
}

const GET_AGENT: &str = select_agents!("WHERE d.id = $1");
const LIST_AGENTS: &str = select_agents!(
    "WHERE ($1::text IS NULL OR COALESCE(s.reclassified_as, s.agent_type, d.reclassified_as, d.agent_type) = $1)
       AND ($2::uuid IS NULL OR d.daemon_id = $2)
       AND ($3::text IS NULL OR $3 = CASE WHEN d.merged_into IS NOT NULL THEN 'merged'
                                          WHEN d.archived_at IS NOT NULL THEN 'archived'
                                          ELSE 'active' END)
       AND ($4::uuid IS NULL OR d.id > $4)
     ORDER BY d.id
     LIMIT $5"
);
/// The daemon's agents whose effective type is not the detected one.
const OVERRIDES_FOR: &str = "SELECT d.id, COALESCE(s.reclassified_as, s.agent_type, d.reclassified_as) AS agent_type
       FROM discovered_agents d LEFT JOIN discovered_agents s ON s.id = d.merged_into
      WHERE d.daemon_id = $1
        AND (d.reclassified_as IS NOT NULL OR d.merged_into IS NOT NULL)
        AND COALESCE(s.reclassified_as, s.agent_type, d.reclassified_as) <> d.agent_type
      ORDER BY d.id";
/// `$1` and every id merged into it, transitively (bounded depth: merges
/// keep no chains, the bound only guards against rows written otherwise).
const MERGED_IDS: &str = "WITH RECURSIVE merged(id, depth) AS (
         SELECT id, 0 FROM discovered_agents WHERE id = $1
         UNION
         SELECT d.id, m.depth + 1 FROM discovered_agents d JOIN merged m ON d.merged_into = m.id WHERE m.depth < 64
     )
     SELECT DISTINCT id FROM merged ORDER BY id";
/// Upserts one report; no row comes back when the id belongs to another
/// daemon or another detected type (the report is then ignored).
/// Most discovered agents kept per daemon (tyrd itself registers at most
/// 4,096 unregistered ones).
pub const MAX_AGENTS_PER_DAEMON: i64 = 10_000;

const UPSERT_REPORT: &str = "INSERT INTO discovered_agents AS d
         (id, daemon_id, agent_type, exe_path, exe_sha256, evidence, confidence, first_seen_at, last_seen_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, LEAST($8, now()), GREATEST(LEAST($9, now()), LEAST($8, now())))
     ON CONFLICT (id) DO UPDATE SET
         exe_path = EXCLUDED.exe_path,
         exe_sha256 = COALESCE(EXCLUDED.exe_sha256, d.exe_sha256),
         evidence = EXCLUDED.evidence,
         confidence = EXCLUDED.confidence,
         first_seen_at = LEAST(d.first_seen_at, EXCLUDED.first_seen_at),
         last_seen_at = GREATEST(d.last_seen_at, EXCLUDED.last_seen_at),
         archived_at = CASE WHEN EXCLUDED.last_seen_at > d.archived_at THEN NULL ELSE d.archived_at END
     WHERE d.daemon_id = EXCLUDED.daemon_id AND d.agent_type = EXCLUDED.agent_type
     RETURNING (xmax = 0) AS inserted";

/// Where a discovered agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Neither merged nor archived.
    Active,
    /// Archived by an operator (a new sighting makes it active again).
    Archived,
    /// Merged into another agent (its survivor).
    Merged,
}

impl AgentState {
    /// The state's name, as filters and JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
            Self::Merged => "merged",
        }
    }
}

/// Which discovered agents to list.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiscoveredFilter {
    /// Only agents of this effective type.
    pub agent_type: Option<String>,
    /// Only agents of this daemon.
    pub daemon_id: Option<Uuid>,
    /// Only agents in this state.
    pub state: Option<AgentState>,
}

/// A discovered agent, as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct DiscoveredAgent {
    /// tyrd's discovered_agent_id (events carry it).
    pub id: Uuid,
    /// The daemon that discovered it.
    pub daemon_id: Uuid,
    /// The type tyrd detected (`unknown` for an unregistered agent).
    pub agent_type: String,
    /// The type it is governed as: its survivor's when merged, else its
    /// reclassification, else the detected type.
    pub effective_type: String,
    /// The operators' reclassification, if any.
    pub reclassified_as: Option<String>,
    /// The operators' name for it.
    pub display_name: Option<String>,
    /// Executable path (for interpreters, with the script they run).
    pub exe_path: String,
    /// sha256 of the executable (hex); None until tyrd hashed it.
    pub exe_sha256: Option<String>,
    /// The signals of its classification: `[{"signal", "detail", "weight"}]`.
    #[schema(value_type = Vec<Object>)]
    pub evidence: JsonValue,
    /// Sum of the signals' weights (tyrd caps it at 100; confident from 60).
    pub confidence: i32,
    /// Active, archived or merged.
    pub state: AgentState,
    /// The survivor it was merged into.
    pub merged_into: Option<Uuid>,
    /// When an operator archived it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub archived_at: Option<OffsetDateTime>,
    /// When tyrd first discovered it.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen_at: OffsetDateTime,
    /// When tyrd last saw one of its processes active.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    id: Uuid,
    daemon_id: Uuid,
    agent_type: String,
    reclassified_as: Option<String>,
    effective_type: String,
    display_name: Option<String>,
    exe_path: String,
    exe_sha256: Option<String>,
    evidence: JsonValue,
    confidence: i32,
    merged_into: Option<Uuid>,
    archived_at: Option<OffsetDateTime>,
    first_seen_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
}

impl From<AgentRow> for DiscoveredAgent {
    fn from(row: AgentRow) -> Self {
        let state = match (row.merged_into, row.archived_at) {
            (Some(_), _) => AgentState::Merged,
            (None, Some(_)) => AgentState::Archived,
            (None, None) => AgentState::Active,
        };
        Self {
            id: row.id,
            daemon_id: row.daemon_id,
            agent_type: row.agent_type,
            effective_type: row.effective_type,
            reclassified_as: row.reclassified_as,
            display_name: row.display_name,
            exe_path: row.exe_path,
            exe_sha256: row.exe_sha256,
            evidence: row.evidence,
            confidence: row.confidence,
            state,
            merged_into: row.merged_into,
            archived_at: row.archived_at,
            first_seen_at: row.first_seen_at,
            last_seen_at: row.last_seen_at,
        }
    }
}

impl DiscoveredAgent {
    /// What the audit log keeps of it before and after a change.
    fn summary(&self) -> JsonValue {
        serde_json::json!({
            "daemon_id": self.daemon_id,
            "agent_type": self.agent_type,
            "effective_type": self.effective_type,
            "display_name": self.display_name,
            "state": self.state,
            "merged_into": self.merged_into,
        })
    }
}

/// Why a discovered-agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveredError {
    /// No discovered agent has this id.
    #[error("no discovered agent {0}")]
    NotFound(Uuid),
    /// The type is not one of the known-agent table (or `unknown`).
    #[error("unknown agent type {0:?}: one of {types}", types = agent_types().join(", "))]
    InvalidType(String),
    /// The display name is empty, too long or has control characters.
    #[error("invalid display name {0:?}: 1 to 128 characters, no control characters")]
    InvalidName(String),
    /// The change contradicts the agent's state; the message says why.
    #[error("{0}")]
    Conflict(String),
    /// A daemon's report does not hold a valid agent.
    #[error("invalid discovered-agent report: {0}")]
    InvalidReport(String),
    /// A PostgreSQL query failed.
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] sqlx::Error),
}

impl From<DiscoveredError> for ServiceError {
    fn from(error: DiscoveredError) -> Self {
        match error {
            DiscoveredError::NotFound(_) => Self::NotFound(error.to_string()),
            DiscoveredError::InvalidType(_) | DiscoveredError::InvalidName(_) | DiscoveredError::InvalidReport(_) => {
                Self::InvalidArgument(error.to_string())
            }
            DiscoveredError::Conflict(message) => Self::Conflict(message),
            DiscoveredError::Query(error) => Self::internal(error),
        }
    }
}

/// The types an agent may be reclassified as: the known-agent table and `unknown`.
pub fn agent_types() -> Vec<&'static str> {
    KNOWN_AGENTS.iter().map(|a| a.agent_type).chain([UNKNOWN]).collect()
}

fn known_type(agent_type: &str) -> Result<&'static str, DiscoveredError> {
    agent_types()
        .into_iter()
        .find(|t| *t == agent_type)
        .ok_or_else(|| DiscoveredError::InvalidType(agent_type.to_owned()))
}

/// Discovered agents matching `filter`, in id order after `after`, at most
/// `limit` (clamped to 1..=[`MAX_LIST_LIMIT`]).
pub async fn list(
    pool: &PgPool,
    filter: &DiscoveredFilter,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DiscoveredAgent>, DiscoveredError> {
    let rows: Vec<AgentRow> = sqlx::query_as(LIST_AGENTS)
        .bind(&filter.agent_type)
        .bind(filter.daemon_id)
        .bind(filter.state.map(AgentState::as_str))
        .bind(after)
        .bind(limit.clamp(1, MAX_LIST_LIMIT))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(DiscoveredAgent::from).collect())
}

/// The discovered agent `id`, if there is one.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DiscoveredAgent>, DiscoveredError> {
    let row: Option<AgentRow> = sqlx::query_as(GET_AGENT).bind(id).fetch_optional(pool).await?;
    Ok(row.map(DiscoveredAgent::from))
}

/// Locks `id`'s row for the rest of `tx` and reads it.
async fn locked(conn: &mut PgConnection, id: Uuid) -> Result<DiscoveredAgent, DiscoveredError> {
    sqlx::query("SELECT 1 FROM discovered_agents WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut *conn).await?;
    let row: Option<AgentRow> = sqlx::query_as(GET_AGENT).bind(id).fetch_optional(&mut *conn).await?;
    row.map(DiscoveredAgent::from).ok_or(DiscoveredError::NotFound(id))
}

async fn reread(conn: &mut PgConnection, id: Uuid) -> Result<DiscoveredAgent, DiscoveredError> {
    let row: Option<AgentRow> = sqlx::query_as(GET_AGENT).bind(id).fetch_optional(&mut *conn).await?;
    row.map(DiscoveredAgent::from).ok_or(DiscoveredError::NotFound(id))
}

/// Audits the change and tells the daemon's session, on `conn` (the
/// transaction that made the change).
async fn audited(
    conn: &mut PgConnection,
    actor: &Actor,
    action: &str,
    before: &DiscoveredAgent,
    after: &DiscoveredAgent,
) -> Result<(), DiscoveredError> {
    let change = Change {
        action,
        target: format!("discovered:{}", before.id),
        before: Some(before.summary()),
        after: Some(after.summary()),
    };
    audit::record(&mut *conn, actor, &change).await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(AGENTS_CHANGED_CHANNEL)
        .bind(before.daemon_id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Gives `id` an operator's name (`display_name`, trimmed).
pub async fn rename(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    display_name: &str,
) -> Result<DiscoveredAgent, DiscoveredError> {
    let name = display_name.trim();
    if name.is_empty() || name.chars().count() > MAX_DISPLAY_NAME || name.chars().any(char::is_control) {
        return Err(DiscoveredError::InvalidName(display_name.to_owned()));
    }
    let mut tx = pool.begin().await?;
    let before = locked(&mut tx, id).await?;
    sqlx::query("UPDATE discovered_agents SET display_name = $2 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let after = reread(&mut tx, id).await?;
    audited(&mut tx, actor, "discovered.rename", &before, &after).await?;
    tx.commit().await?;
    Ok(after)
}

/// Merges `id` into `into` (the survivor, which keeps its id): both on one
/// daemon, neither merged already. Agents merged into `id` move to `into`.
/// Events of merged ids count for the survivor ([`merged_ids`]); a merged
/// agent is governed as its survivor's effective type.
pub async fn merge(pool: &PgPool, actor: &Actor, id: Uuid, into: Uuid) -> Result<DiscoveredAgent, DiscoveredError> {
    if id == into {
        return Err(DiscoveredError::Conflict(format!("cannot merge discovered agent {id} into itself")));
    }
    let mut tx = pool.begin().await?;
    // Locked in id order: two opposite merges cannot deadlock, the second
    // finds the first done and is refused.
    let (first, second) = if id < into { (id, into) } else { (into, id) };
    let first = locked(&mut tx, first).await?;
    let second = locked(&mut tx, second).await?;
    let (merged, survivor) = if first.id == id { (first, second) } else { (second, first) };
    if merged.daemon_id != survivor.daemon_id {
        return Err(DiscoveredError::Conflict(format!(
            "{id} and {into} were discovered by different daemons: an agent's id is per host, only duplicates on one host merge"
        )));
    }
    if let Some(target) = merged.merged_into {
        return Err(DiscoveredError::Conflict(format!("{id} is already merged into {target}")));
    }
    if let Some(target) = survivor.merged_into {
        return Err(DiscoveredError::Conflict(format!("{into} is merged into {target}: merge into {target} instead")));
    }
    sqlx::query("UPDATE discovered_agents SET merged_into = $2 WHERE id = $1 OR merged_into = $1")
        .bind(id)
        .bind(into)
        .execute(&mut *tx)
        .await?;
    let after = reread(&mut tx, id).await?;
    audited(&mut tx, actor, "discovered.merge", &merged, &after).await?;
    let survivor = reread(&mut tx, into).await?;
    tx.commit().await?;
    Ok(survivor)
}

/// Sets the type `id` is governed as (a type of the known-agent table or
/// `unknown`; the detected type clears the reclassification). The daemon
/// governs the agent's processes by that type's overlay from then on.
pub async fn reclassify(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    agent_type: &str,
) -> Result<DiscoveredAgent, DiscoveredError> {
    let agent_type = known_type(agent_type)?;
    set_type(pool, actor, id, agent_type, "discovered.reclassify", |_| Ok(())).await
}

/// Promotes an unregistered agent (effective type `unknown`) to a known
/// type: it is then governed as that type, no longer quarantined.
pub async fn promote(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    agent_type: &str,
) -> Result<DiscoveredAgent, DiscoveredError> {
    let agent_type = known_type(agent_type)?;
    if agent_type == UNKNOWN {
        return Err(DiscoveredError::InvalidType(format!("{agent_type} (promote to a known agent type)")));
    }
    set_type(pool, actor, id, agent_type, "discovered.promote", |before| {
        if before.effective_type == UNKNOWN {
            Ok(())
        } else {
            Err(DiscoveredError::Conflict(format!(
                "{id} is governed as {}, not unknown: reclassify it instead",
                before.effective_type
            )))
        }
    })
    .await
}

async fn set_type(
    pool: &PgPool,
    actor: &Actor,
    id: Uuid,
    agent_type: &'static str,
    action: &str,
    allowed: impl FnOnce(&DiscoveredAgent) -> Result<(), DiscoveredError>,
) -> Result<DiscoveredAgent, DiscoveredError> {
    let mut tx = pool.begin().await?;
    let before = locked(&mut tx, id).await?;
    if let Some(survivor) = before.merged_into {
        return Err(DiscoveredError::Conflict(format!(
            "{id} is merged into {survivor} and governed as its type: change {survivor} instead"
        )));
    }
    allowed(&before)?;
    let reclassified = (agent_type != before.agent_type).then_some(agent_type);
    sqlx::query("UPDATE discovered_agents SET reclassified_as = $2 WHERE id = $1")
        .bind(id)
        .bind(reclassified)
        .execute(&mut *tx)
        .await?;
    let after = reread(&mut tx, id).await?;
    audited(&mut tx, actor, action, &before, &after).await?;
    tx.commit().await?;
    Ok(after)
}

/// Archives `id` (a long-gone agent): hidden from the active list; its
/// overrides stay, and a new sighting makes it active again.
pub async fn archive(pool: &PgPool, actor: &Actor, id: Uuid) -> Result<DiscoveredAgent, DiscoveredError> {
    let mut tx = pool.begin().await?;
    let before = locked(&mut tx, id).await?;
    if before.archived_at.is_some() {
        return Err(DiscoveredError::Conflict(format!("{id} is already archived")));
    }
    sqlx::query("UPDATE discovered_agents SET archived_at = GREATEST(now(), first_seen_at) WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let after = reread(&mut tx, id).await?;
    audited(&mut tx, actor, "discovered.archive", &before, &after).await?;
    tx.commit().await?;
    Ok(after)
}

/// `id` and every id merged into it, transitively (for event queries:
/// events of merged ids count for the survivor). Empty when `id` does not exist.
pub async fn merged_ids(pool: &PgPool, id: Uuid) -> Result<Vec<Uuid>, DiscoveredError> {
    Ok(sqlx::query_scalar(MERGED_IDS).bind(id).fetch_all(pool).await?)
}

/// For each of `ids` that was merged, the agent it was merged into (its
/// survivor: merging moves the agents merged into it along).
pub async fn survivors(pool: &PgPool, ids: &[Uuid]) -> Result<std::collections::HashMap<Uuid, Uuid>, DiscoveredError> {
    let rows: Vec<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, merged_into FROM discovered_agents WHERE id = ANY($1) AND merged_into IS NOT NULL")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// The daemon's override set, as sent to tyrd: every agent of `daemon`
/// whose effective type differs from the detected one, with that type.
pub async fn overrides_for(pool: &PgPool, daemon: Uuid) -> Result<Vec<(Uuid, String)>, DiscoveredError> {
    Ok(sqlx::query_as(OVERRIDES_FOR).bind(daemon).fetch_all(pool).await?)
}

/// A daemon's report of one of its agents, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentReport {
    /// The discovered_agent_id.
    pub id: Uuid,
    /// The detected type.
    pub agent_type: String,
    /// Executable path (with the script for interpreters).
    pub exe_path: String,
    /// sha256 (hex), once hashed.
    pub exe_sha256: Option<String>,
    /// The signals, as stored (`[{"signal", "detail", "weight"}]`).
    pub evidence: JsonValue,
    /// Sum of the signals' weights.
    pub confidence: i32,
    /// When tyrd discovered it.
    pub first_seen: OffsetDateTime,
    /// When it was last seen active (`first_seen` when the report does not say).
    pub last_seen: OffsetDateTime,
}

/// What storing a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// A new agent.
    Inserted,
    /// A known agent's row was refreshed.
    Updated,
    /// The id belongs to another daemon or another detected type: ignored.
    Ignored,
    /// A new agent, but the daemon already has [`MAX_AGENTS_PER_DAEMON`]: not stored.
    Capped,
}

/// Upserts `report` for `daemon`: a new agent's row, or a known one's
/// last-seen time, hash and evidence (a sighting after its archiving makes
/// it active again). Times are clamped to the server's clock.
pub async fn record_report(
    pool: &PgPool,
    daemon: Uuid,
    report: &AgentReport,
) -> Result<ReportOutcome, DiscoveredError> {
    // A flood of new ids (a tampered tyrd) must not grow the table without
    // bound: past the cap only agents already known are refreshed.
    let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM discovered_agents WHERE id = $1)")
        .bind(report.id)
        .fetch_one(pool)
        .await?;
    if !known {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM discovered_agents WHERE daemon_id = $1")
            .bind(daemon)
            .fetch_one(pool)
            .await?;
        if rows >= MAX_AGENTS_PER_DAEMON {
            return Ok(ReportOutcome::Capped);
        }
    }
    let inserted: Option<bool> = sqlx::query_scalar(UPSERT_REPORT)
        .bind(report.id)
        .bind(daemon)
        .bind(&report.agent_type)
        .bind(&report.exe_path)
        .bind(&report.exe_sha256)
        .bind(&report.evidence)
        .bind(report.confidence)
        .bind(report.first_seen)
        .bind(report.last_seen)
        .fetch_optional(pool)
        .await?;
    Ok(match inserted {
        Some(true) => ReportOutcome::Inserted,
        Some(false) => ReportOutcome::Updated,
        None => ReportOutcome::Ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_the_table_and_unknown() {
        assert!(known_type("aider").is_ok());
        assert_eq!(known_type("unknown").ok(), Some("unknown"));
        assert!(matches!(known_type("our-custom-agent"), Err(DiscoveredError::InvalidType(_))));
        assert!(matches!(known_type("Aider"), Err(DiscoveredError::InvalidType(_))));
        let message = DiscoveredError::InvalidType("x".into()).to_string();
        assert!(message.contains("claude-code") && message.contains("unknown"), "{message}");
    }

    #[test]
    fn errors_map_to_service_errors() {
        let id = Uuid::nil();
        assert_eq!(ServiceError::from(DiscoveredError::NotFound(id)).code(), "not_found");
        assert_eq!(ServiceError::from(DiscoveredError::InvalidName(String::new())).code(), "invalid_argument");
        assert_eq!(ServiceError::from(DiscoveredError::Conflict("x".into())).code(), "conflict");
    }
}
