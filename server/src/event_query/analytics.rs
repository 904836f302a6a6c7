//! Aggregates over the filtered events: counts by kind and verdict per time
//! bucket, the most touched resources, and the hosts and TLS server names
//! each agent type reaches. All exact (`FINAL`, `uniqExact`, `LIMIT n BY`).

use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::filter::{ResolvedFilter, TimeScope};
use super::sql::{Param, Statement};
use super::{QueryError, now_nanos, rfc3339_nanos};
use crate::event_store::EventStore;

/// The most buckets one [`counts_over_time`] range may span.
pub const MAX_BUCKETS: i64 = 10_000;
/// The most resources [`top_resources`] returns.
pub const MAX_TOP: u32 = 1_000;
/// Hosts and server names listed per agent type by [`agent_type_reach`].
pub const REACH_TOP: u32 = 20;
/// The most agent types [`agent_type_reach`] returns.
const MAX_AGENT_TYPES: u32 = 1_000;

/// The width of a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// The bucket's width in nanoseconds.
    pub fn nanos(self) -> i64 {
        match self {
            Self::Minute => 60 * 1_000_000_000,
            Self::Hour => 3_600 * 1_000_000_000,
            Self::Day => 86_400 * 1_000_000_000,
        }
    }

    /// The bucket's name, as requests spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// The ClickHouse function truncating a time to the bucket's start.
    fn start_function(self) -> &'static str {
        match self {
            Self::Minute => "toStartOfMinute",
            Self::Hour => "toStartOfHour",
            Self::Day => "toStartOfDay",
        }
    }
}

impl std::str::FromStr for Bucket {
    type Err = QueryError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(QueryError::Invalid("bucket: expected minute, hour or day".to_owned())),
        }
    }
}

/// Events of one kind and verdict in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CountBucket {
    /// Start of the bucket, RFC 3339 in UTC.
    pub bucket_start: String,
    /// Start of the bucket in seconds since the epoch.
    pub bucket_start_s: i64,
    /// The event kind.
    pub kind: String,
    /// The kernel's verdict.
    pub verdict: String,
    /// Events in the bucket.
    pub events: u64,
}

#[derive(Debug, Row, Deserialize)]
struct RawBucket {
    bucket_s: i64,
    kind_name: String,
    verdict_name: String,
    events: u64,
}

/// A resource and how often it was touched.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize, Serialize, utoipa::ToSchema)]
pub struct ResourceCount {
    /// The path, address or server name.
    pub resource: String,
    /// Events that touched it.
    pub events: u64,
    /// Of those, events the kernel denied.
    pub denied: u64,
}

/// Where one agent type runs and which TLS servers it talks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgentTypeReach {
    /// The agent type.
    pub agent_type: String,
    /// Its events.
    pub events: u64,
    /// Distinct daemons (hosts) it was seen on.
    pub hosts: u64,
    /// The hosts with most of its events (at most [`REACH_TOP`]).
    pub top_hosts: Vec<HostCount>,
    /// Distinct TLS server names (SNI) it reached.
    pub sni_count: u64,
    /// The server names with most of its events (at most [`REACH_TOP`]).
    pub snis: Vec<SniCount>,
}

/// A daemon's share of an agent type's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HostCount {
    /// The daemon (enrolled host).
    pub daemon_id: Uuid,
    /// Events of the agent type on it.
    pub events: u64,
}

/// A TLS server name an agent type reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SniCount {
    /// The server name.
    pub sni: String,
    /// Events naming it.
    pub events: u64,
    /// Distinct daemons whose agents reached it.
    pub hosts: u64,
}

#[derive(Debug, Row, Deserialize)]
struct RawReach {
    agent_type: String,
    events: u64,
    hosts: u64,
    sni_count: u64,
}

#[derive(Debug, Row, Deserialize)]
struct RawHost {
    agent_type: String,
    #[serde(with = "clickhouse::serde::uuid")]
    daemon_id: Uuid,
    events: u64,
}

#[derive(Debug, Row, Deserialize)]
struct RawSni {
    agent_type: String,
    sni: String,
    events: u64,
    hosts: u64,
}

/// Filtered events counted per bucket, kind and verdict, oldest bucket first.
///
/// The range (from the filter's start to its end, or now) may span at most
/// [`MAX_BUCKETS`] buckets. Empty buckets are not listed.
pub async fn counts_over_time(
    store: &EventStore,
    filter: &ResolvedFilter,
    bucket: Bucket,
) -> Result<Vec<CountBucket>, QueryError> {
    let end = filter.to_ns().unwrap_or_else(now_nanos);
    let span = end.saturating_sub(filter.from_ns());
    if span / bucket.nanos() >= MAX_BUCKETS {
        return Err(QueryError::Invalid(format!(
            "bucket: the range spans more than {MAX_BUCKETS} {} buckets; narrow it or widen the bucket",
            bucket.name()
        )));
    }
    let mut sql = Statement::new("SELECT toInt64(toUnixTimestamp(");
    sql.push(bucket.start_function()).push(
        "(timestamp))) AS bucket_s, toString(kind) AS kind_name, toString(verdict) AS verdict_name, \
         count() AS events \
         FROM events FINAL",
    );
    filter.write_where(&mut sql, TimeScope::Range);
    sql.push(" GROUP BY bucket_s, kind_name, verdict_name ORDER BY bucket_s, kind_name, verdict_name");
    let rows: Vec<RawBucket> = sql.query(store.client()).fetch_all().await?;
    Ok(rows
        .into_iter()
        .map(|row| CountBucket {
            bucket_start: rfc3339_nanos(row.bucket_s.saturating_mul(1_000_000_000)),
            bucket_start_s: row.bucket_s,
            kind: row.kind_name,
            verdict: row.verdict_name,
            events: row.events,
        })
        .collect())
}

/// The `n` most touched resources among the filtered events (`n` clamped
/// to 1..=[`MAX_TOP`]), most events first, ties by resource.
pub async fn top_resources(
    store: &EventStore,
    filter: &ResolvedFilter,
    n: u32,
) -> Result<Vec<ResourceCount>, QueryError> {
    Ok(top_resources_statement(filter, n).query(store.client()).fetch_all().await?)
}

/// The statement [`top_resources`] runs.
pub(crate) fn top_resources_statement(filter: &ResolvedFilter, n: u32) -> Statement {
    let mut sql =
        Statement::new("SELECT resource, count() AS events, countIf(verdict = 'DENY') AS denied FROM events FINAL");
    filter.write_where(&mut sql, TimeScope::Range);
    sql.push(" GROUP BY resource ORDER BY events DESC, resource LIMIT {n:UInt32}")
        .bind("n", Param::U32(n.clamp(1, MAX_TOP)));
    sql
}

/// Per agent type among the filtered events: how many events, on which
/// hosts, reaching which TLS server names (`metadata['sni']`). Most events first.
pub async fn agent_type_reach(store: &EventStore, filter: &ResolvedFilter) -> Result<Vec<AgentTypeReach>, QueryError> {
    let client = store.client();

    let mut totals = Statement::new(
        "SELECT agent_type, count() AS events, uniqExact(agent_id) AS hosts, \
         uniqExactIf(metadata['sni'], metadata['sni'] != '') AS sni_count FROM events FINAL",
    );
    filter.write_where(&mut totals, TimeScope::Range);
    totals
        .push(" GROUP BY agent_type ORDER BY events DESC, agent_type LIMIT {types:UInt32}")
        .bind("types", Param::U32(MAX_AGENT_TYPES));
    let totals: Vec<RawReach> = totals.query(client).fetch_all().await?;

    let mut hosts = Statement::new("SELECT agent_type, agent_id AS daemon_id, count() AS events FROM events FINAL");
    filter.write_where(&mut hosts, TimeScope::Range);
    hosts
        .push(" GROUP BY agent_type, agent_id ORDER BY agent_type, events DESC, agent_id LIMIT {top:UInt32} BY agent_type")
        .bind("top", Param::U32(REACH_TOP));
    let hosts: Vec<RawHost> = hosts.query(client).fetch_all().await?;

    let mut snis = Statement::new(
        "SELECT agent_type, metadata['sni'] AS sni, count() AS events, uniqExact(agent_id) AS hosts FROM events FINAL",
    );
    filter.write_where(&mut snis, TimeScope::Range);
    snis.push(
        " AND sni != '' GROUP BY agent_type, sni ORDER BY agent_type, events DESC, sni LIMIT {top:UInt32} BY agent_type",
    )
    .bind("top", Param::U32(REACH_TOP));
    let snis: Vec<RawSni> = snis.query(client).fetch_all().await?;

    Ok(totals
        .into_iter()
        .map(|total| AgentTypeReach {
            top_hosts: hosts
                .iter()
                .filter(|h| h.agent_type == total.agent_type)
                .map(|h| HostCount { daemon_id: h.daemon_id, events: h.events })
                .collect(),
            snis: snis
                .iter()
                .filter(|s| s.agent_type == total.agent_type)
                .map(|s| SniCount { sni: s.sni.clone(), events: s.events, hosts: s.hosts })
                .collect(),
            agent_type: total.agent_type,
            events: total.events,
            hosts: total.hosts,
            sni_count: total.sni_count,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_parse_and_size() {
        assert_eq!("Hour".parse::<Bucket>().expect("valid"), Bucket::Hour);
        assert!(matches!("week".parse::<Bucket>(), Err(QueryError::Invalid(_))));
        assert_eq!(Bucket::Day.nanos(), 24 * Bucket::Hour.nanos());
        assert_eq!(Bucket::Hour.nanos(), 60 * Bucket::Minute.nanos());
    }

    #[test]
    fn top_n_is_capped_and_bound() {
        let filter = crate::event_query::EventFilter::default().resolve(Vec::new()).expect("valid");
        let sql = top_resources_statement(&filter, 1_000_000);
        assert!(sql.text().ends_with("LIMIT {n:UInt32}"), "{}", sql.text());
        assert_eq!(sql.param("n"), Some(&Param::U32(MAX_TOP)));
        assert_eq!(top_resources_statement(&filter, 0).param("n"), Some(&Param::U32(1)));
    }
}
