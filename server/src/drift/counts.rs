//! Drift counts per daemon and per discovered agent, read from ClickHouse
//! (`tyr-server drift` prints them until the REST API serves them).

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::DriftError;
use crate::event_store::EventStore;

/// Which events to count.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriftFilter {
    /// Only this daemon's events.
    pub daemon: Option<Uuid>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
}

impl DriftFilter {
    /// Events of `daemon` (all daemons: None) from the last `hours` hours (all time: None).
    pub fn last_hours(daemon: Option<Uuid>, hours: Option<u32>) -> Self {
        let since = hours.map(|h| OffsetDateTime::now_utc() - time::Duration::hours(i64::from(h)));
        Self { daemon, since }
    }
}

/// The counts of one daemon and one discovered agent (nil: no agent).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct DriftCount {
    /// The daemon that reported the events.
    #[serde(with = "clickhouse::serde::uuid")]
    pub daemon_id: Uuid,
    /// The AI agent that acted (nil when the process was no known agent).
    #[serde(with = "clickhouse::serde::uuid")]
    pub discovered_agent_id: Uuid,
    /// Events the server marked `drift_detected`.
    pub drift_events: u64,
    /// Events tyrd reported as not enforced.
    pub unenforced_events: u64,
    /// All events.
    pub events: u64,
}

/// The counting query; the filters are appended as fixed text with bound values.
const SELECT: &str = "SELECT agent_id AS daemon_id, discovered_agent_id, countIf(drift_detected) AS drift_events, \
     countIf(metadata['enforced'] = 'false') AS unenforced_events, count() AS events FROM events WHERE 1";
const BY_DAEMON: &str = " AND agent_id = {daemon:UUID}";
const SINCE: &str = " AND timestamp >= fromUnixTimestamp64Nano({since_ns:Int64}, 'UTC')";
const GROUP: &str = " GROUP BY agent_id, discovered_agent_id ORDER BY agent_id, discovered_agent_id";

/// The counts matching `filter`, one row per (daemon, discovered agent).
pub async fn query(store: &EventStore, filter: DriftFilter) -> Result<Vec<DriftCount>, DriftError> {
    let mut sql = String::from(SELECT);
    if filter.daemon.is_some() {
        sql.push_str(BY_DAEMON);
    }
    if filter.since.is_some() {
        sql.push_str(SINCE);
    }
    sql.push_str(GROUP);
    let mut query = store.client().query(&sql);
    if let Some(daemon) = filter.daemon {
        query = query.param("daemon", daemon.to_string());
    }
    if let Some(since) = filter.since {
        let nanos = i64::try_from(since.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        query = query.param("since_ns", nanos);
    }
    Ok(query.fetch_all::<DriftCount>().await?)
}
