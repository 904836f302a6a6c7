//! The discovered-agents side of a Stream session: reports from tyrd are
//! checked, rate-limited and stored off the session's read loop; the
//! daemon's override set is sent after the first PolicyPush and whenever it
//! changes (a NOTIFY on `tyr_agents_changed`, or the periodic re-check).
//!
//! A report flood cannot grow server memory or PostgreSQL load without
//! bound: each session takes reports through a token bucket
//! ([`REPORT_BURST`], [`REPORTS_PER_SECOND`]) into a bounded queue
//! ([`REPORT_QUEUE`]) drained by one writer task; what does not fit is
//! dropped and counted (tyrd reports every agent again on its next stream,
//! and active ones every heartbeat interval). A PostgreSQL failure is
//! logged and counted, never fatal to the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value as JsonValue;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tyr_proto::{AgentOverride, AgentOverrides, DiscoveredAgentReport};
use uuid::Uuid;

use super::stream::StreamContext;
use crate::control_db::discovered::{self, AgentReport, DiscoveredError, ReportOutcome};

/// Reports a session takes at once before the rate applies.
pub const REPORT_BURST: f64 = 512.0;
/// Reports a session takes per second, sustained.
pub const REPORTS_PER_SECOND: f64 = 16.0;
/// Reports waiting for the writer, per session.
pub const REPORT_QUEUE: usize = 256;
/// Longest exe path kept, in bytes.
const MAX_EXE_PATH: usize = 4096;
/// Longest evidence text read, in bytes, and most items kept.
const MAX_EVIDENCE: usize = 4096;
const MAX_EVIDENCE_ITEMS: usize = 32;

/// Discovered-agent report counters, across sessions.
#[derive(Debug, Default)]
pub struct ReportStats {
    /// Reports received on streams.
    pub received: AtomicU64,
    /// Reports that created an agent's row.
    pub inserted: AtomicU64,
    /// Reports that refreshed an agent's row.
    pub updated: AtomicU64,
    /// Reports for an id of another daemon or another detected type.
    pub ignored: AtomicU64,
    /// Reports of new agents past the per-daemon cap, not stored.
    pub capped: AtomicU64,
    /// Reports that were not valid (bad id, type, hash).
    pub invalid: AtomicU64,
    /// Reports dropped by the rate limit or a full queue.
    pub dropped: AtomicU64,
    /// Reports PostgreSQL failed to store.
    pub store_failures: AtomicU64,
    /// AgentOverrides messages sent.
    pub overrides_sent: AtomicU64,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new() -> Self {
        Self { tokens: REPORT_BURST, at: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * REPORTS_PER_SECOND).min(REPORT_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One session's discovered-agent state.
#[derive(Debug)]
pub struct AgentSync {
    daemon: Uuid,
    bucket: Bucket,
    queue: mpsc::Sender<AgentReport>,
    /// The override set last sent on this stream.
    sent: Option<Vec<(Uuid, String)>>,
}

impl AgentSync {
    /// Starts the session's report writer (it ends with the session).
    pub fn start(ctx: &Arc<StreamContext>, daemon: Uuid) -> Self {
        let (queue, reports) = mpsc::channel(REPORT_QUEUE);
        tokio::spawn(write_reports(Arc::clone(ctx), daemon, reports));
        Self { daemon, bucket: Bucket::new(), queue, sent: None }
    }

    /// Takes a report from the stream: checked, rate-limited, queued.
    pub fn report(&mut self, stats: &ReportStats, report: &DiscoveredAgentReport) {
        stats.received.fetch_add(1, Ordering::Relaxed);
        let checked = match parse_report(report) {
            Ok(checked) => checked,
            Err(error) => {
                stats.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(daemon = %self.daemon, %error, "ignoring a discovered-agent report");
                return;
            }
        };
        if !self.bucket.take() || self.queue.try_send(checked).is_err() {
            let dropped = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(daemon = %self.daemon, dropped, "discovered-agent reports over the session's rate, dropped");
            }
        }
    }

    /// The daemon's override set when it differs from what this stream
    /// was last sent (always the first time).
    pub async fn changed_overrides(&mut self, pool: &PgPool) -> Result<Option<AgentOverrides>, DiscoveredError> {
        let overrides = discovered::overrides_for(pool, self.daemon).await?;
        if self.sent.as_ref() == Some(&overrides) {
            return Ok(None);
        }
        let message = AgentOverrides {
            overrides: overrides
                .iter()
                .map(|(id, agent_type)| AgentOverride {
                    discovered_agent_id: id.to_string(),
                    agent_type: agent_type.clone(),
                })
                .collect(),
        };
        self.sent = Some(overrides);
        Ok(Some(message))
    }

    /// Forgets what was sent (the send failed: send again next time).
    pub fn unsent(&mut self) {
        self.sent = None;
    }
}

/// Stores queued reports one by one until the session ends.
async fn write_reports(ctx: Arc<StreamContext>, daemon: Uuid, mut reports: mpsc::Receiver<AgentReport>) {
    let stats = &ctx.stats.discovered;
    while let Some(report) = reports.recv().await {
        match discovered::record_report(&ctx.pool, daemon, &report).await {
            Ok(ReportOutcome::Inserted) => {
                stats.inserted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%daemon, agent = %report.id, agent_type = report.agent_type, "new discovered agent");
            }
            Ok(ReportOutcome::Updated) => {
                stats.updated.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ReportOutcome::Capped) => {
                stats.capped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%daemon, agent = %report.id, "daemon has the most discovered agents kept; new one not stored");
            }
            Ok(ReportOutcome::Ignored) => {
                stats.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%daemon, agent = %report.id, "report for an agent of another daemon or type, ignored");
            }
            Err(error) => {
                stats.store_failures.fetch_add(1, Ordering::Relaxed);
                ctx.stats.control_db_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%daemon, %error, "storing a discovered agent failed; the stream goes on");
            }
        }
    }
}

fn time_of(ns: i64) -> Option<OffsetDateTime> {
    (ns > 0).then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).ok()).flatten()
}

fn valid_type(agent_type: &str) -> bool {
    let mut chars = agent_type.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && agent_type.len() <= 64
}

/// Cuts `text` to at most `max` bytes on a character boundary; PostgreSQL
/// text cannot hold NUL.
fn bounded(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].replace('\0', "")
}

/// tyrd's evidence line (`signal:detail=weight,...`) as JSON objects; an
/// item that does not parse is kept as `{"text": ...}`.
pub fn evidence_json(text: &str) -> JsonValue {
    let items = bounded(text, MAX_EVIDENCE)
        .split(',')
        .filter(|item| !item.is_empty())
        .take(MAX_EVIDENCE_ITEMS)
        .map(|item| {
            let parsed = item.rsplit_once('=').and_then(|(head, weight)| {
                let (signal, detail) = head.split_once(':')?;
                Some(serde_json::json!({"signal": signal, "detail": detail, "weight": weight.parse::<u32>().ok()?}))
            });
            parsed.unwrap_or_else(|| serde_json::json!({ "text": item }))
        })
        .collect();
    JsonValue::Array(items)
}

/// Checks a report and turns it into what is stored.
pub fn parse_report(report: &DiscoveredAgentReport) -> Result<AgentReport, DiscoveredError> {
    let invalid = |what: String| DiscoveredError::InvalidReport(what);
    let id = Uuid::parse_str(&report.id).map_err(|_| invalid(format!("id {:?} is not a UUID", report.id)))?;
    if !valid_type(&report.agent_type) {
        return Err(invalid(format!("agent type {:?}", report.agent_type)));
    }
    let sha = &report.exe_sha256;
    let exe_sha256 = match sha.len() {
        0 => None,
        64 if sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Some(sha.clone()),
        _ => return Err(invalid(format!("exe_sha256 {sha:?} is not lowercase hex sha256"))),
    };
    let now = OffsetDateTime::now_utc();
    let first_seen = time_of(report.first_seen_ns).unwrap_or(now);
    let last_seen = time_of(report.last_seen_ns).unwrap_or(first_seen);
    Ok(AgentReport {
        id,
        agent_type: report.agent_type.clone(),
        exe_path: bounded(&report.exe_path, MAX_EXE_PATH),
        exe_sha256,
        evidence: evidence_json(&report.evidence),
        confidence: i32::try_from(report.confidence.min(1000)).unwrap_or(1000),
        first_seen,
        last_seen,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DiscoveredAgentReport {
        DiscoveredAgentReport {
            id: Uuid::new_v4().to_string(),
            agent_type: "cursor".into(),
            exe_path: "/opt/cursor/cursor".into(),
            exe_sha256: "ab".repeat(32),
            evidence: "env:CURSOR_TRACE_ID=45,exe_dir:cursor=30,odd".into(),
            confidence: 75,
            first_seen_ns: 1_700_000_000_000_000_000,
            last_seen_ns: 0,
        }
    }

    #[test]
    fn reports_are_checked_and_evidence_parsed() {
        let parsed = parse_report(&report()).expect("valid");
        assert_eq!(parsed.exe_sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(parsed.last_seen, parsed.first_seen, "no sighting: first seen");
        assert_eq!(
            parsed.evidence,
            serde_json::json!([
                {"signal": "env", "detail": "CURSOR_TRACE_ID", "weight": 45},
                {"signal": "exe_dir", "detail": "cursor", "weight": 30},
                {"text": "odd"},
            ])
        );
        for bad in [
            DiscoveredAgentReport { id: "x".into(), ..report() },
            DiscoveredAgentReport { agent_type: "Cursor".into(), ..report() },
            DiscoveredAgentReport { agent_type: String::new(), ..report() },
            DiscoveredAgentReport { exe_sha256: "AB".repeat(32), ..report() },
            DiscoveredAgentReport { exe_sha256: "'; DROP TABLE x; --".into(), ..report() },
        ] {
            assert!(matches!(parse_report(&bad), Err(DiscoveredError::InvalidReport(_))), "{bad:?}");
        }
        let unhashed = parse_report(&DiscoveredAgentReport { exe_sha256: String::new(), ..report() }).expect("ok");
        assert_eq!(unhashed.exe_sha256, None);
        let nul = parse_report(&DiscoveredAgentReport { exe_path: "/a\0b".into(), ..report() }).expect("ok");
        assert_eq!(nul.exe_path, "/ab");
        let long = parse_report(&DiscoveredAgentReport { exe_path: "é".repeat(5000), ..report() }).expect("ok");
        assert!(long.exe_path.len() <= MAX_EXE_PATH);
    }

    #[test]
    fn the_bucket_holds_a_burst_then_the_rate() {
        let mut bucket = Bucket::new();
        let taken = (0..2000).filter(|_| bucket.take()).count();
        assert!((512..520).contains(&taken), "{taken}");
    }
}
