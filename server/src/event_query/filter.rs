//! Event filters: what a request may ask for ([`EventFilter`]), checked and
//! normalised once ([`ResolvedFilter`]), and turned into a WHERE clause whose
//! every value is a bound parameter.

use std::collections::BTreeSet;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tyr_proto::{EventKind, Verdict};
use uuid::Uuid;

use super::sql::{Param, Statement};
use super::{QueryError, now_nanos};

/// The time range used when a filter names no start: the 24 hours before its end.
pub const DEFAULT_RANGE_NS: i64 = 24 * 3_600 * 1_000_000_000;
/// The longest text value a filter accepts, in bytes.
pub const MAX_TEXT_LEN: usize = 16 * 1024;
/// The most discovered-agent ids one filter may OR together.
pub const MAX_DISCOVERED_AGENT_IDS: usize = 1_000;
/// How much of a rejected value an error message repeats.
const ECHO_LEN: usize = 64;

/// What an operator asks for; every field optional, all given ones ANDed.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Events at or after this time (RFC 3339); default: 24 h before `to` (or now).
    pub from: Option<String>,
    /// Events before this time (RFC 3339, exclusive); default: no end.
    pub to: Option<String>,
    /// Only events reported by this daemon (enrolled host).
    pub daemon_id: Option<Uuid>,
    /// Only events of this discovered AI agent (and the agents merged into it).
    pub discovered_agent_id: Option<Uuid>,
    /// Only events of this agent type (`cursor`, `claude-code`, `unknown`, ...).
    pub agent_type: Option<String>,
    /// Only events of this kind: `FILE_READ`, `FILE_WRITE`, `EXEC`, `NET_CONNECT`, `TLS`, `EXIT`, `FORK`.
    pub kind: Option<String>,
    /// Only events with this kernel verdict: `ALLOW`, `DENY`, `ALERT`.
    pub verdict: Option<String>,
    /// Only events with this server (Cedar) verdict: `ALLOW`, `DENY`, `ALERT`.
    pub server_verdict: Option<String>,
    /// Only drifting (true) or only non-drifting (false) events.
    pub drift: Option<bool>,
    /// Only events whose resource contains this text (case-sensitive).
    pub resource: Option<String>,
    /// Only events whose resource starts with this text.
    pub resource_prefix: Option<String>,
    /// Only events of this process id.
    pub pid: Option<i64>,
}

/// A checked filter, ready to become SQL. Build one with [`EventFilter::resolve`].
#[derive(Debug, Clone)]
pub struct ResolvedFilter {
    /// Start of the range, nanoseconds since the epoch (inclusive).
    from_ns: i64,
    /// The request named `from` itself (a live tail ignores the default start).
    from_explicit: bool,
    /// End of the range, nanoseconds since the epoch (exclusive).
    to_ns: Option<i64>,
    daemon_id: Option<Uuid>,
    /// ORed; empty: any discovered agent.
    discovered_agent_ids: Vec<Uuid>,
    agent_type: Option<String>,
    kind: Option<&'static str>,
    verdict: Option<&'static str>,
    server_verdict: Option<&'static str>,
    drift: Option<bool>,
    resource: Option<String>,
    resource_prefix: Option<String>,
    pid: Option<i64>,
}

/// Which time bounds a WHERE clause applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeScope {
    /// The resolved range, default start included.
    Range,
    /// Only bounds the request named (a live tail).
    ExplicitOnly,
}

impl EventFilter {
    /// Checks every value and fixes the time range.
    ///
    /// `discovered_agent_ids` is the caller-resolved set of discovered agents
    /// to OR together: the filter's own id plus the ids merged into it. The
    /// filter's id is always part of the set; an empty set with no id in the
    /// filter means any discovered agent.
    pub fn resolve(&self, discovered_agent_ids: Vec<Uuid>) -> Result<ResolvedFilter, QueryError> {
        self.resolve_at(discovered_agent_ids, now_nanos())
    }

    /// [`resolve`](Self::resolve) with "now" given, for tests.
    pub(crate) fn resolve_at(
        &self,
        discovered_agent_ids: Vec<Uuid>,
        now_ns: i64,
    ) -> Result<ResolvedFilter, QueryError> {
        let to_ns = self.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
        let from_explicit = self.from.is_some();
        let from_ns = match self.from.as_deref() {
            Some(f) => parse_time("from", f)?,
            None => to_ns.unwrap_or(now_ns).saturating_sub(DEFAULT_RANGE_NS),
        };
        if let Some(to_ns) = to_ns
            && from_ns >= to_ns
        {
            return Err(QueryError::Invalid("from must be before to".to_owned()));
        }

        let mut ids: BTreeSet<Uuid> = discovered_agent_ids.into_iter().collect();
        ids.extend(self.discovered_agent_id);
        if ids.len() > MAX_DISCOVERED_AGENT_IDS {
            return Err(QueryError::Invalid(format!(
                "discovered_agent_id: {} merged ids, at most {MAX_DISCOVERED_AGENT_IDS}",
                ids.len()
            )));
        }
        if let Some(pid) = self.pid
            && pid < 0
        {
            return Err(QueryError::Invalid(format!("pid: {pid} is negative")));
        }

        Ok(ResolvedFilter {
            from_ns,
            from_explicit,
            to_ns,
            daemon_id: self.daemon_id,
            discovered_agent_ids: ids.into_iter().collect(),
            agent_type: text("agent_type", self.agent_type.as_deref())?,
            kind: enum_name("kind", self.kind.as_deref(), KINDS)?,
            verdict: enum_name("verdict", self.verdict.as_deref(), VERDICTS)?,
            server_verdict: enum_name("server_verdict", self.server_verdict.as_deref(), VERDICTS)?,
            drift: self.drift,
            resource: text("resource", self.resource.as_deref())?,
            resource_prefix: text("resource_prefix", self.resource_prefix.as_deref())?,
            pid: self.pid,
        })
    }
}

impl ResolvedFilter {
    /// Start of the range, nanoseconds since the epoch (inclusive).
    pub fn from_ns(&self) -> i64 {
        self.from_ns
    }

    /// End of the range, nanoseconds since the epoch (exclusive); None: open.
    pub fn to_ns(&self) -> Option<i64> {
        self.to_ns
    }

    /// The discovered agents ORed together (empty: any).
    pub fn discovered_agent_ids(&self) -> &[Uuid] {
        &self.discovered_agent_ids
    }

    /// The same filter narrowed to drifting events.
    pub(crate) fn drifting(&self) -> Self {
        Self { drift: Some(self.drift.unwrap_or(true)), ..self.clone() }
    }

    /// True when the filter's own drift condition excludes drifting events.
    pub(crate) fn excludes_drift(&self) -> bool {
        self.drift == Some(false)
    }

    /// Appends ` WHERE …` with this filter's conditions to `sql`.
    pub(crate) fn write_where(&self, sql: &mut Statement, scope: TimeScope) {
        sql.push(" WHERE 1");
        if scope == TimeScope::Range || self.from_explicit {
            sql.push(" AND timestamp >= fromUnixTimestamp64Nano({f_from:Int64}, 'UTC')")
                .bind("f_from", Param::I64(self.from_ns));
        }
        if let Some(to) = self.to_ns {
            sql.push(" AND timestamp < fromUnixTimestamp64Nano({f_to:Int64}, 'UTC')").bind("f_to", Param::I64(to));
        }
        if let Some(daemon) = self.daemon_id {
            sql.push(" AND agent_id = {f_daemon:UUID}").bind("f_daemon", Param::Str(daemon.to_string()));
        }
        match self.discovered_agent_ids.as_slice() {
            [] => {}
            [one] => {
                sql.push(" AND discovered_agent_id = {f_agent:UUID}").bind("f_agent", Param::Str(one.to_string()));
            }
            many => {
                let ids = many.iter().map(Uuid::to_string).collect();
                sql.push(" AND has({f_agents:Array(UUID)}, discovered_agent_id)").bind("f_agents", Param::Uuids(ids));
            }
        }
        if let Some(agent_type) = &self.agent_type {
            sql.push(" AND agent_type = {f_type:String}").bind("f_type", Param::Str(agent_type.clone()));
        }
        if let Some(kind) = self.kind {
            sql.push(" AND kind = {f_kind:String}").bind("f_kind", Param::Str(kind.to_owned()));
        }
        if let Some(verdict) = self.verdict {
            sql.push(" AND verdict = {f_verdict:String}").bind("f_verdict", Param::Str(verdict.to_owned()));
        }
        if let Some(verdict) = self.server_verdict {
            sql.push(" AND server_verdict = {f_server_verdict:String}")
                .bind("f_server_verdict", Param::Str(verdict.to_owned()));
        }
        if let Some(drift) = self.drift {
            sql.push(" AND drift_detected = {f_drift:Bool}").bind("f_drift", Param::Bool(drift));
        }
        if let Some(resource) = &self.resource {
            sql.push(" AND position(resource, {f_resource:String}) > 0")
                .bind("f_resource", Param::Str(resource.clone()));
        }
        if let Some(prefix) = &self.resource_prefix {
            sql.push(" AND startsWith(resource, {f_prefix:String})").bind("f_prefix", Param::Str(prefix.clone()));
        }
        if let Some(pid) = self.pid {
            sql.push(" AND pid = {f_pid:Int64}").bind("f_pid", Param::I64(pid));
        }
    }
}

/// The `kind` values the events table stores, as ClickHouse names them.
const KINDS: &[EventKind] = &[
    EventKind::Unspecified,
    EventKind::FileRead,
    EventKind::FileWrite,
    EventKind::Exec,
    EventKind::NetConnect,
    EventKind::Tls,
    EventKind::Exit,
    EventKind::Fork,
];

/// The verdict values the events table stores.
const VERDICTS: &[Verdict] = &[Verdict::Unspecified, Verdict::Allow, Verdict::Deny, Verdict::Alert];

/// Protocol enums named as the table's Enum8 names them.
trait StoredName: Copy {
    fn stored_name(self) -> &'static str;
}

impl StoredName for EventKind {
    fn stored_name(self) -> &'static str {
        self.as_str_name()
    }
}

impl StoredName for Verdict {
    fn stored_name(self) -> &'static str {
        self.as_str_name()
    }
}

/// The stored name matching `value` (case-insensitive), or a clear error.
fn enum_name<E: StoredName>(
    field: &'static str,
    value: Option<&str>,
    allowed: &[E],
) -> Result<Option<&'static str>, QueryError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else { return Ok(None) };
    let wanted = value.trim();
    allowed.iter().map(|e| e.stored_name()).find(|name| name.eq_ignore_ascii_case(wanted)).map(Some).ok_or_else(|| {
        let names: Vec<&str> = allowed.iter().map(|e| e.stored_name()).collect();
        QueryError::Invalid(format!("{field}: unknown value {:?}; expected one of {}", echo(value), names.join(", ")))
    })
}

/// A text value: empty means no filter; longer than [`MAX_TEXT_LEN`] is refused.
fn text(field: &'static str, value: Option<&str>) -> Result<Option<String>, QueryError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) if v.len() > MAX_TEXT_LEN => {
            Err(QueryError::Invalid(format!("{field}: {} bytes, at most {MAX_TEXT_LEN}", v.len())))
        }
        Some(v) => Ok(Some(v.to_owned())),
    }
}

/// An RFC 3339 time as nanoseconds since the epoch.
fn parse_time(field: &'static str, value: &str) -> Result<i64, QueryError> {
    let time = OffsetDateTime::parse(value.trim(), &Rfc3339).map_err(|error| {
        QueryError::Invalid(format!("{field}: {:?} is not an RFC 3339 time ({error})", echo(value)))
    })?;
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| QueryError::Invalid(format!("{field}: {:?} is out of range (years 1678 to 2261)", echo(value))))
}

/// The start of `value`, short enough to repeat in an error message.
fn echo(value: &str) -> String {
    match value.char_indices().nth(ECHO_LEN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000_000_000;

    fn invalid(filter: EventFilter) -> String {
        match filter.resolve_at(Vec::new(), NOW) {
            Err(QueryError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn default_range_is_the_last_day() {
        let resolved = EventFilter::default().resolve_at(Vec::new(), NOW).expect("valid");
        assert_eq!(resolved.from_ns(), NOW - DEFAULT_RANGE_NS);
        assert_eq!(resolved.to_ns(), None);
        let to = EventFilter { to: Some("2026-09-21T14:13:20Z".to_owned()), ..EventFilter::default() };
        let resolved = to.resolve_at(Vec::new(), NOW).expect("valid");
        assert_eq!(resolved.to_ns(), Some(NOW));
        assert_eq!(resolved.from_ns(), NOW - DEFAULT_RANGE_NS, "24 h before the given end");
    }

    #[test]
    fn times_are_checked() {
        let bad = EventFilter { from: Some("yesterday'; DROP TABLE events; --".to_owned()), ..EventFilter::default() };
        assert!(invalid(bad).starts_with("from: "));
        let reversed = EventFilter {
            from: Some("2026-09-21T14:13:21Z".to_owned()),
            to: Some("2026-09-21T14:13:20Z".to_owned()),
            ..EventFilter::default()
        };
        assert_eq!(invalid(reversed), "from must be before to");
        let far = EventFilter { from: Some("2999-01-01T00:00:00Z".to_owned()), ..EventFilter::default() };
        assert!(invalid(far).contains("out of range"));
        let offset = EventFilter { from: Some("2026-09-21T16:13:20.5+02:00".to_owned()), ..EventFilter::default() };
        assert_eq!(offset.resolve_at(Vec::new(), NOW).expect("valid").from_ns(), NOW + 500_000_000);
    }

    #[test]
    fn enums_by_name_case_insensitively() {
        let filter = EventFilter {
            kind: Some("file_read".to_owned()),
            verdict: Some("Deny".to_owned()),
            server_verdict: Some("ALERT".to_owned()),
            ..EventFilter::default()
        };
        let resolved = filter.resolve_at(Vec::new(), NOW).expect("valid");
        assert_eq!(resolved.kind, Some("FILE_READ"));
        assert_eq!(resolved.verdict, Some("DENY"));
        assert_eq!(resolved.server_verdict, Some("ALERT"));
        let message = invalid(EventFilter { kind: Some("FILE_READ' OR 1=1".to_owned()), ..EventFilter::default() });
        assert!(message.starts_with("kind: unknown value"), "{message}");
        assert!(message.contains("NET_CONNECT"), "{message}");
        let long = invalid(EventFilter { verdict: Some("x".repeat(10_000)), ..EventFilter::default() });
        assert!(long.len() < 300, "the value is not echoed whole: {}", long.len());
    }

    #[test]
    fn texts_and_ids() {
        let too_long = invalid(EventFilter { resource: Some("a".repeat(MAX_TEXT_LEN + 1)), ..EventFilter::default() });
        assert!(too_long.starts_with("resource: "), "{too_long}");
        assert!(invalid(EventFilter { pid: Some(-1), ..EventFilter::default() }).starts_with("pid: "));
        let empty = EventFilter { resource: Some(String::new()), ..EventFilter::default() };
        assert_eq!(empty.resolve_at(Vec::new(), NOW).expect("valid").resource, None);

        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let filter = EventFilter { discovered_agent_id: Some(a), ..EventFilter::default() };
        let resolved = filter.resolve_at(vec![b, a, b], NOW).expect("valid");
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(resolved.discovered_agent_ids(), want.as_slice(), "deduplicated, own id included");
        let many = (0..=MAX_DISCOVERED_AGENT_IDS).map(|_| Uuid::new_v4()).collect();
        assert!(matches!(EventFilter::default().resolve_at(many, NOW), Err(QueryError::Invalid(_))));
    }

    #[test]
    fn values_never_reach_the_sql_text() {
        let hostile = "'; DROP TABLE events; --\\\0{f_kind:String}";
        let filter = EventFilter {
            agent_type: Some(hostile.to_owned()),
            resource: Some(hostile.to_owned()),
            resource_prefix: Some(hostile.to_owned()),
            discovered_agent_id: Some(Uuid::now_v7()),
            daemon_id: Some(Uuid::now_v7()),
            pid: Some(42),
            drift: Some(true),
            ..EventFilter::default()
        };
        let resolved = filter.resolve_at(vec![Uuid::now_v7()], NOW).expect("valid");
        let mut sql = Statement::new("SELECT count() FROM events");
        resolved.write_where(&mut sql, TimeScope::Range);
        assert!(!sql.text().contains("DROP"), "{}", sql.text());
        assert!(!sql.text().contains("42"), "{}", sql.text());
        assert!(sql.text().contains("has({f_agents:Array(UUID)}, discovered_agent_id)"), "{}", sql.text());
        let mut tail = Statement::new("SELECT 1");
        resolved.write_where(&mut tail, TimeScope::ExplicitOnly);
        assert!(!tail.text().contains("f_from"), "a tail ignores the default start");
    }
}
