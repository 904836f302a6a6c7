//! Operator queries over the ClickHouse `events` table: filtered,
//! cursor-paginated search, counts, analytics, drift summaries and a live
//! tail. REST handlers and the CLI are thin wrappers over these functions.
//!
//! Every value that comes from a request is a bound ClickHouse query
//! parameter (`{name:Type}`); the SQL text is assembled only from constants
//! and from enums (buckets, kinds, verdicts). Exact counts read the table
//! `FINAL`: `ReplacingMergeTree` collapses a replayed event only at some later
//! merge, and FINAL gives the collapsed view before that merge.

pub mod analytics;
pub mod drift;
pub mod filter;
pub mod search;
mod sql;
pub mod tail;

use std::collections::BTreeMap;

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use analytics::{
    AgentTypeReach, Bucket, CountBucket, HostCount, ResourceCount, SniCount, agent_type_reach, counts_over_time,
    top_resources,
};
pub use drift::{DaemonDrift, DiscoveredAgentDrift, DriftSummary, DriftTotals, drift_summary};
pub use filter::{EventFilter, ResolvedFilter};
pub use search::{count, search};
pub use tail::{TailOptions, tail, tail_with};

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A filter value is malformed or out of range; the message names the
    /// field and says why.
    #[error("invalid filter: {0}")]
    Invalid(String),
    /// The pagination cursor is not one this server issued.
    #[error("invalid cursor")]
    BadCursor,
    /// ClickHouse failed to answer.
    #[error("event store query failed: {0}")]
    Store(#[from] clickhouse::error::Error),
}

/// One page of results and the cursor of the next page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The rows of this page, newest first.
    pub items: Vec<T>,
    /// Opaque cursor of the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One stored event, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    /// The event's UUIDv7, minted by tyrd.
    pub event_id: Uuid,
    /// The daemon (enrolled host) that reported the event.
    pub daemon_id: Uuid,
    /// The discovered AI agent that acted; absent when the process was no known agent.
    pub discovered_agent_id: Option<Uuid>,
    /// The agent type tyrd attributed the process to (`unknown` when none).
    pub agent_type: String,
    /// What happened: `FILE_READ`, `FILE_WRITE`, `EXEC`, `NET_CONNECT`, `TLS`, `EXIT`, `FORK`.
    pub kind: String,
    /// What was touched: a path, an address, a server name.
    pub resource: String,
    /// The kernel's verdict: `ALLOW`, `DENY`, `ALERT` (or `VERDICT_UNSPECIFIED`).
    pub verdict: String,
    /// The server's (Cedar's) verdict for the same operation.
    pub server_verdict: String,
    /// The kernel was more permissive than the server, or decided under a version it was never sent.
    pub drift: bool,
    /// `INFO`, `LOW`, `MEDIUM`, `HIGH`, `CRITICAL` (or `SEVERITY_UNSPECIFIED`).
    pub severity: String,
    /// Process id on the host.
    pub pid: i64,
    /// Parent process id on the host.
    pub ppid: i64,
    /// Executable path of the process.
    pub process_exe: String,
    /// Command line of the process (truncated by tyrd).
    pub cmdline: String,
    /// When it happened on the host, RFC 3339 in UTC with nanoseconds.
    pub timestamp: String,
    /// The same instant in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// When the server stored it, RFC 3339 in UTC (millisecond precision).
    pub inserted_at: String,
    /// The host's sequence number of the event.
    pub seq: u64,
    /// The policy version the kernel decided under (0: none).
    pub policy_version: i64,
    /// Kind-specific details (`sni`, `remote_ip`, `rule`, `enforced`, ...).
    pub metadata: BTreeMap<String, String>,
}

/// The columns every event query selects, in [`RawEvent`]'s order.
/// Enum columns are read by name under new aliases: reusing the column's
/// own name would shadow the column in WHERE clauses.
pub(crate) const EVENT_COLUMNS: &str = "event_id, agent_id, discovered_agent_id, agent_type, \
     toString(kind) AS kind_name, resource, toString(verdict) AS verdict_name, \
     toString(server_verdict) AS server_verdict_name, drift_detected, toString(severity) AS severity_name, \
     pid, ppid, process_exe, cmdline, timestamp_ns, toUnixTimestamp64Milli(inserted_at) AS inserted_ms, \
     seq, policy_version, metadata";

/// One row as ClickHouse returns [`EVENT_COLUMNS`].
#[derive(Debug, Row, Deserialize)]
pub(crate) struct RawEvent {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    agent_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    discovered_agent_id: Uuid,
    agent_type: String,
    kind_name: String,
    resource: String,
    verdict_name: String,
    server_verdict_name: String,
    drift_detected: bool,
    severity_name: String,
    pid: i64,
    ppid: i64,
    process_exe: String,
    cmdline: String,
    timestamp_ns: i64,
    inserted_ms: i64,
    seq: u64,
    policy_version: i64,
    metadata: BTreeMap<String, String>,
}

impl RawEvent {
    /// When the server stored the row, in milliseconds since the epoch.
    pub(crate) fn inserted_ms(&self) -> i64 {
        self.inserted_ms
    }

    /// The event's id.
    pub(crate) fn event_id(&self) -> Uuid {
        self.event_id
    }
}

impl From<RawEvent> for EventRow {
    fn from(raw: RawEvent) -> Self {
        Self {
            event_id: raw.event_id,
            daemon_id: raw.agent_id,
            discovered_agent_id: (!raw.discovered_agent_id.is_nil()).then_some(raw.discovered_agent_id),
            agent_type: raw.agent_type,
            kind: raw.kind_name,
            resource: raw.resource,
            verdict: raw.verdict_name,
            server_verdict: raw.server_verdict_name,
            drift: raw.drift_detected,
            severity: raw.severity_name,
            pid: raw.pid,
            ppid: raw.ppid,
            process_exe: raw.process_exe,
            cmdline: raw.cmdline,
            timestamp: rfc3339_nanos(raw.timestamp_ns),
            timestamp_ns: raw.timestamp_ns,
            inserted_at: rfc3339_nanos(raw.inserted_ms.saturating_mul(1_000_000)),
            seq: raw.seq,
            policy_version: raw.policy_version,
            metadata: raw.metadata,
        }
    }
}

/// Nanoseconds since the epoch as RFC 3339 in UTC with nine fractional digits.
pub fn rfc3339_nanos(nanos: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond()
        ),
        // Unreachable for i64 nanoseconds (years 1677..2262); kept total.
        Err(_) => nanos.to_string(),
    }
}

/// The current time in nanoseconds since the epoch.
pub(crate) fn now_nanos() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_nanoseconds() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(1_790_000_000_123_456_789), "2026-09-21T14:13:20.123456789Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
    }
}
