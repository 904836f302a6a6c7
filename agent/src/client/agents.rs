//! The discovered-agents side of a session: reports to the server and the
//! operators' overrides from it.
//!
//! Reports are built here, never on the ring-reading thread, from what the
//! capture loop's [`AgentFeed`] holds: every agent of the registry file
//! when a stream opens (the server upserts, so repeats are harmless and a
//! report lost with a stream is sent again), each new discovery as it comes,
//! and a last-seen refresh at most once per heartbeat interval per active
//! agent. They leave at a bounded pace ([`REPORTS_PER_TICK`] every
//! [`REPORT_TICK`]) from a bounded backlog ([`MAX_PENDING`], overflow
//! counted).
//!
//! An override set replaces the one held: it is kept in the state
//! directory (0600) first, so a restart without a server governs by it,
//! then handed to the capture loop.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use tyr_proto::{AgentOverrides, DiscoveredAgentReport};

use super::identity::{IdentityError, write_atomic};
use crate::detect::feed::AgentFeed;
use crate::detect::overrides::OverrideSet;
use crate::detect::registry::{self, DiscoveredAgent, RegistryError};

/// The override set's file in the state directory.
pub const OVERRIDES_FILE: &str = "agent_overrides.json";
/// How often waiting reports are sent.
pub const REPORT_TICK: Duration = Duration::from_millis(500);
/// Reports sent per tick, at most (the server takes a burst, then 16 a second).
pub const REPORTS_PER_TICK: usize = 32;
/// Reports waiting to be sent, at most.
pub const MAX_PENDING: usize = 4096;

/// Why the override set could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum AgentsError {
    /// Reading the override file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The override file is not valid.
    #[error("{path} is not a valid override file: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Writing the override file failed.
    #[error("keeping the agent overrides: {0}")]
    Write(#[from] IdentityError),
    /// Encoding the set failed.
    #[error("encoding the agent overrides: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The override set kept in `state_dir`, if any.
pub fn load_overrides(state_dir: &Path) -> Result<Option<OverrideSet>, AgentsError> {
    let path = state_dir.join(OVERRIDES_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| AgentsError::Parse { path, source }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentsError::Read { path, source }),
    }
}

/// Keeps `overrides` in `state_dir` (0600, atomically).
pub fn save_overrides(state_dir: &Path, overrides: &OverrideSet) -> Result<(), AgentsError> {
    let mut bytes = serde_json::to_vec_pretty(overrides).map_err(AgentsError::Encode)?;
    bytes.push(b'\n');
    write_atomic(&state_dir.join(OVERRIDES_FILE), &bytes)?;
    Ok(())
}

/// Verifies and keeps a server's override set; returns it for the capture
/// loop (also when it could not be kept: it governs all the same, but a
/// restart before the next stream would not know it).
pub async fn receive_overrides(state_dir: &Path, message: &AgentOverrides) -> OverrideSet {
    let (set, skipped) = OverrideSet::from_proto(message);
    if skipped > 0 {
        warn!(skipped, "agent overrides with a malformed id or an agent type this tyrd does not know, left out");
    }
    let (dir, kept) = (state_dir.to_path_buf(), set.clone());
    match tokio::task::spawn_blocking(move || save_overrides(&dir, &kept)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(%error, "agent overrides could not be kept; they apply until tyrd restarts"),
        Err(error) => warn!(%error, "agent overrides could not be kept; they apply until tyrd restarts"),
    }
    set
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// The report of `agent`, last seen at `last_seen_ns` (0: not said).
pub fn report_of(agent: &DiscoveredAgent, last_seen_ns: i64) -> DiscoveredAgentReport {
    DiscoveredAgentReport {
        id: agent.id.to_string(),
        agent_type: agent.agent_type.clone(),
        exe_path: agent.identity.clone(),
        exe_sha256: agent.exe_sha256.clone().unwrap_or_default(),
        evidence: agent.evidence.clone(),
        confidence: agent.confidence,
        first_seen_ns: i64::try_from(agent.first_seen).unwrap_or(0).saturating_mul(1_000_000_000),
        last_seen_ns,
    }
}

/// One session's reporting state.
#[derive(Debug)]
pub struct Reporter {
    feed: Arc<AgentFeed>,
    state_dir: PathBuf,
    /// Agents by registry index (for sightings, which name indexes).
    known: HashMap<u32, DiscoveredAgent>,
    pending: VecDeque<DiscoveredAgentReport>,
    /// The feed's dropped count when this reporter last re-read the registry.
    dropped_seen: u64,
    /// Reports the backlog could not take.
    pub backlog_dropped: u64,
}

impl Reporter {
    /// A reporter with every agent of the registry file queued.
    pub async fn start(feed: Arc<AgentFeed>, state_dir: &Path) -> Self {
        let mut reporter = Self {
            dropped_seen: feed.dropped.load(std::sync::atomic::Ordering::Relaxed),
            feed,
            state_dir: state_dir.to_path_buf(),
            known: HashMap::new(),
            pending: VecDeque::new(),
            backlog_dropped: 0,
        };
        reporter.resync().await;
        reporter
    }

    /// Queues every agent of the registry file (off the runtime).
    async fn resync(&mut self) {
        let dir = self.state_dir.clone();
        let agents = match tokio::task::spawn_blocking(move || registry::read_agents(&dir)).await {
            Ok(Ok(agents)) => agents,
            Ok(Err(error)) => return warn_registry(&error),
            Err(error) => return warn!(%error, "reading the discovered agents failed"),
        };
        for agent in agents {
            self.queue(report_of(&agent, 0), false);
            self.known.insert(agent.index, agent);
        }
    }

    fn queue(&mut self, report: DiscoveredAgentReport, urgent: bool) {
        if self.pending.len() >= MAX_PENDING {
            self.backlog_dropped += 1;
            if self.backlog_dropped.is_power_of_two() {
                warn!(dropped = self.backlog_dropped, "discovered-agent reports over the backlog, dropped");
            }
            return;
        }
        if urgent { self.pending.push_front(report) } else { self.pending.push_back(report) }
    }

    /// Takes the feed's new discoveries (re-reading the registry when the
    /// feed dropped some) and returns the reports to send now.
    pub async fn tick(&mut self) -> Vec<DiscoveredAgentReport> {
        for agent in self.feed.notices(MAX_PENDING) {
            // A new discovery goes first: it is what operators wait for.
            self.queue(report_of(&agent, now_ns()), true);
            self.known.insert(agent.index, agent);
        }
        let dropped = self.feed.dropped.load(std::sync::atomic::Ordering::Relaxed);
        if dropped != self.dropped_seen {
            self.dropped_seen = dropped;
            info!(dropped, "discovery notices were dropped: reporting every agent again");
            self.resync().await;
        }
        let count = self.pending.len().min(REPORTS_PER_TICK);
        self.pending.drain(..count).collect()
    }

    /// Queues a last-seen refresh for every agent active since the last
    /// call (call once per heartbeat interval).
    pub fn collect_sightings(&mut self) {
        let untracked = self.feed.untracked.swap(0, std::sync::atomic::Ordering::Relaxed);
        if untracked > 0 {
            warn!(untracked, "activity of agents past the tracked number is not refreshed");
        }
        let now = now_ns();
        for index in self.feed.take_seen() {
            if let Some(report) = self.known.get(&index).map(|agent| report_of(agent, now)) {
                self.queue(report, false);
            }
        }
    }
}

fn warn_registry(error: &RegistryError) {
    warn!(%error, "reading the discovered agents failed; new discoveries are still reported");
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::detect::registry::Registry;

    #[test]
    fn overrides_are_kept_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tyr-overrides-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert!(load_overrides(&dir).expect("none yet").is_none());
        let mut set = OverrideSet::default();
        set.insert(uuid::Uuid::new_v4(), "aider");
        save_overrides(&dir, &set).expect("save");
        assert_eq!(load_overrides(&dir).expect("load"), Some(set));
        let mode = std::fs::metadata(dir.join(OVERRIDES_FILE)).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(dir.join(OVERRIDES_FILE), "{").expect("corrupt");
        assert!(matches!(load_overrides(&dir), Err(AgentsError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_session_reports_every_agent_then_discoveries_then_sightings() {
        let dir = std::env::temp_dir().join(format!("tyr-reporter-{}", uuid::Uuid::new_v4().simple()));
        let mut registry = Registry::open(&dir).expect("registry");
        let first = registry.discover("cursor", "/opt/cursor", "/opt/cursor", 70, "env:CURSOR_TRACE_ID=45");
        registry.flush();
        let feed = Arc::new(AgentFeed::default());
        let mut reporter = Reporter::start(Arc::clone(&feed), &dir).await;
        let sent = reporter.tick().await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].agent_type, "cursor");
        assert_eq!(sent[0].last_seen_ns, 0, "a resync says nothing of activity");
        let second = registry.discover("unknown", "/tmp/x", "/tmp/x", 15, "env:OPENAI_API_KEY=15");
        feed.notify(registry.by_index(second).expect("agent"));
        let sent = reporter.tick().await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].agent_type, "unknown");
        assert!(sent[0].last_seen_ns > 0);
        feed.saw(first);
        feed.saw(first);
        reporter.collect_sightings();
        reporter.collect_sightings();
        let sent = reporter.tick().await;
        assert_eq!(sent.len(), 1, "one refresh per interval");
        assert_eq!(sent[0].id, registry.by_index(first).expect("agent").id.to_string());
        assert!(reporter.tick().await.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
