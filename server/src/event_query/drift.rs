//! Drift over a time range: how many events drifted (the kernel was more
//! permissive than the server, or decided under a version it was never
//! sent) per daemon and per discovered agent, with the latest drifting
//! events. Events tyrd reported as not enforced (`metadata['enforced'] =
//! 'false'`, e.g. no BPF LSM) are a known degradation and counted apart:
//! they are never drift and must not drown the tamper signal.

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::filter::{ResolvedFilter, TimeScope};
use super::search::{self, MAX_PAGE};
use super::sql::{Param, Statement};
use super::{EventRow, QueryError, rfc3339_nanos};
use crate::event_store::EventStore;

/// The most daemons and the most discovered agents a summary lists.
pub const MAX_DRIFT_ROWS: u32 = 1_000;

/// The condition of an unenforced event, on the key tyrd and the drift
/// evaluator use ([`crate::drift::evaluate::ENFORCED_KEY`]).
const UNENFORCED: &str = "metadata['enforced'] = 'false'";

/// Drift over the filtered events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DriftSummary {
    /// Start of the range, RFC 3339.
    pub from: String,
    /// End of the range (exclusive), RFC 3339; absent: up to now.
    pub to: Option<String>,
    /// Totals over every filtered event.
    pub totals: DriftTotals,
    /// Daemons with drifting or unenforced events, most drift first.
    pub by_daemon: Vec<DaemonDrift>,
    /// More daemons matched than [`MAX_DRIFT_ROWS`]; the list is cut.
    pub by_daemon_truncated: bool,
    /// Discovered agents (per daemon) with drifting or unenforced events, most drift first.
    pub by_discovered_agent: Vec<DiscoveredAgentDrift>,
    /// More agents matched than [`MAX_DRIFT_ROWS`]; the list is cut.
    pub by_discovered_agent_truncated: bool,
    /// The latest drifting events, newest first.
    pub latest: Vec<EventRow>,
}

/// Event counts of a whole selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Row, Deserialize, Serialize, utoipa::ToSchema)]
pub struct DriftTotals {
    /// All events.
    pub events: u64,
    /// Events marked `drift_detected`.
    pub drift_events: u64,
    /// Events tyrd reported as not enforced.
    pub unenforced_events: u64,
}

/// One daemon's drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DaemonDrift {
    /// The daemon (enrolled host).
    pub daemon_id: Uuid,
    /// Its events.
    pub events: u64,
    /// Its drifting events.
    pub drift_events: u64,
    /// Its events reported as not enforced.
    pub unenforced_events: u64,
    /// Its latest drifting event's time, RFC 3339 (absent: none).
    pub last_drift_at: Option<String>,
}

/// One discovered agent's drift on one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DiscoveredAgentDrift {
    /// The daemon it runs on.
    pub daemon_id: Uuid,
    /// The discovered agent (absent: processes that were no known agent).
    pub discovered_agent_id: Option<Uuid>,
    /// The agent type of its latest event.
    pub agent_type: String,
    /// Its events.
    pub events: u64,
    /// Its drifting events.
    pub drift_events: u64,
    /// Its events reported as not enforced.
    pub unenforced_events: u64,
    /// Its latest drifting event's time, RFC 3339 (absent: none).
    pub last_drift_at: Option<String>,
}

#[derive(Debug, Row, Deserialize)]
struct RawGroup {
    #[serde(with = "clickhouse::serde::uuid")]
    daemon_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    agent: Uuid,
    latest_type: String,
    events: u64,
    drift_events: u64,
    unenforced_events: u64,
    last_drift_ns: i64,
}

impl RawGroup {
    fn last_drift_at(&self) -> Option<String> {
        (self.drift_events > 0).then(|| rfc3339_nanos(self.last_drift_ns))
    }
}

/// Drift counts over the filtered events (default range: the last 24 h),
/// and the `latest` drifting events (clamped to [`MAX_PAGE`]; 0: none).
pub async fn drift_summary(
    store: &EventStore,
    filter: &ResolvedFilter,
    latest: u32,
) -> Result<DriftSummary, QueryError> {
    let client = store.client();

    let mut totals = Statement::new("SELECT count() AS events, countIf(drift_detected) AS drift_events, countIf(");
    totals.push(UNENFORCED).push(") AS unenforced_events FROM events FINAL");
    filter.write_where(&mut totals, TimeScope::Range);
    let totals: DriftTotals = totals.query(client).fetch_one().await?;

    let (by_daemon, by_daemon_truncated) = groups(store, filter, Grouping::Daemon).await?;
    let (by_agent, by_discovered_agent_truncated) = groups(store, filter, Grouping::DiscoveredAgent).await?;

    let latest = if latest == 0 || filter.excludes_drift() || totals.drift_events == 0 {
        Vec::new()
    } else {
        search::search(store, &filter.drifting(), None, latest.min(MAX_PAGE)).await?.items
    };

    Ok(DriftSummary {
        from: rfc3339_nanos(filter.from_ns()),
        to: filter.to_ns().map(rfc3339_nanos),
        totals,
        by_daemon: by_daemon
            .into_iter()
            .map(|g| DaemonDrift {
                last_drift_at: g.last_drift_at(),
                daemon_id: g.daemon_id,
                events: g.events,
                drift_events: g.drift_events,
                unenforced_events: g.unenforced_events,
            })
            .collect(),
        by_daemon_truncated,
        by_discovered_agent: by_agent
            .into_iter()
            .map(|g| DiscoveredAgentDrift {
                last_drift_at: g.last_drift_at(),
                daemon_id: g.daemon_id,
                discovered_agent_id: (!g.agent.is_nil()).then_some(g.agent),
                agent_type: g.latest_type,
                events: g.events,
                drift_events: g.drift_events,
                unenforced_events: g.unenforced_events,
            })
            .collect(),
        by_discovered_agent_truncated,
        latest,
    })
}

/// What the per-group counts are grouped by.
#[derive(Debug, Clone, Copy)]
enum Grouping {
    Daemon,
    DiscoveredAgent,
}

/// Groups with drifting or unenforced events, most drift first, and whether
/// the list was cut at [`MAX_DRIFT_ROWS`].
async fn groups(
    store: &EventStore,
    filter: &ResolvedFilter,
    grouping: Grouping,
) -> Result<(Vec<RawGroup>, bool), QueryError> {
    let (agent, group_by) = match grouping {
        Grouping::Daemon => ("toUUID('00000000-0000-0000-0000-000000000000')", "agent_id"),
        Grouping::DiscoveredAgent => ("discovered_agent_id", "agent_id, discovered_agent_id"),
    };
    let mut sql = Statement::new("SELECT agent_id AS daemon_id, ");
    sql.push(agent).push(
        " AS agent, argMax(agent_type, timestamp) AS latest_type, count() AS events, \
         countIf(drift_detected) AS drift_events, countIf(",
    );
    sql.push(UNENFORCED).push(
        ") AS unenforced_events, toUnixTimestamp64Nano(maxIf(timestamp, drift_detected)) AS last_drift_ns \
         FROM events FINAL",
    );
    filter.write_where(&mut sql, TimeScope::Range);
    sql.push(" GROUP BY ").push(group_by).push(
        " HAVING drift_events > 0 OR unenforced_events > 0 \
         ORDER BY drift_events DESC, unenforced_events DESC, daemon_id, agent LIMIT {rows:UInt32}",
    );
    sql.bind("rows", Param::U32(MAX_DRIFT_ROWS + 1));
    let mut rows: Vec<RawGroup> = sql.query(store.client()).fetch_all().await?;
    let truncated = rows.len() > MAX_DRIFT_ROWS as usize;
    rows.truncate(MAX_DRIFT_ROWS as usize);
    Ok((rows, truncated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unenforced_uses_the_evaluators_key() {
        assert!(UNENFORCED.starts_with(&format!("metadata['{}']", crate::drift::evaluate::ENFORCED_KEY)));
    }
}
