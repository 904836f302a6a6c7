//! The agents discovered on this host, persisted in tyrd's state directory.
//!
//! A discovered agent is one (agent type, executable identity) pair; the
//! type is a known agent's, or `unknown` for an unregistered agent (agent
//! signals, no confident match), which operators can then promote. Its id
//! is a UUIDv5 of the pair under this host's id (itself random, created once
//! and kept in the state file), so it is the same across restarts of the
//! agent and of tyrd. Each also gets a small index for the kernel's
//! pid -> agent map.
//!
//! Every signal is under the process's control, so a local process can
//! make up identities at will: the registry holds at most [`MAX_AGENTS`]
//! (of which [`MAX_UNREGISTERED`] unregistered), each field bounded, and
//! refuses (counted) past that. The file is written by a background
//! [`writer`], never on the ring-reading thread.

mod writer;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use writer::Writer;

const FILE_NAME: &str = "agents.json";
/// Agents registered, at most (the feed tracks activity of as many).
pub const MAX_AGENTS: usize = super::feed::MAX_SEEN_FLAGS;
/// Unregistered (`unknown`) agents registered, at most: weak candidates are
/// common (a shell holding an LLM key, throw-away scripts).
pub const MAX_UNREGISTERED: usize = 4096;
/// Longest identity, exe and evidence kept, in bytes; longer ones keep
/// their start and a digest of the whole (so distinct ones stay distinct).
pub const MAX_FIELD_BYTES: usize = 512;

/// One discovered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredAgent {
    /// The discovered_agent_id events carry.
    pub id: Uuid,
    /// Index in the kernel's pid -> agent map (1-based).
    pub index: u32,
    pub agent_type: String,
    /// Executable identity: the exe path, plus the entry script for interpreters.
    pub identity: String,
    pub exe: String,
    /// sha256 of the executable, once hashed.
    pub exe_sha256: Option<String>,
    /// Confidence and evidence of the classification that discovered it.
    pub confidence: u32,
    pub evidence: String,
    /// Unix seconds.
    pub first_seen: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    host_id: Uuid,
    agents: Vec<DiscoveredAgent>,
}

/// Why the registry could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid agents file: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    host_id: Uuid,
    agents: Vec<Arc<DiscoveredAgent>>,
    by_id: HashMap<Uuid, usize>,
    unregistered: usize,
    /// Persists changes (None: in memory only).
    writer: Option<Writer>,
    /// Saves that failed (the registry stays correct in memory).
    save_failures: Arc<AtomicU64>,
    /// Unregistered agents not registered because [`MAX_UNREGISTERED`] were.
    pub unregistered_refused: u64,
    /// Agents not registered because [`MAX_AGENTS`] were.
    pub refused: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `text` cut to [`MAX_FIELD_BYTES`]: its start and the sha256 of the whole.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_FIELD_BYTES {
        return text.to_owned();
    }
    let digest = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    let mut end = MAX_FIELD_BYTES - digest.len() - 1;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}~{digest}", &text[..end])
}

fn read_state(path: &Path) -> Result<Option<StateFile>, RegistryError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
            .map(Some)
            .map_err(|source| RegistryError::Parse { path: path.to_owned(), source }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RegistryError::Read { path: path.to_owned(), source }),
    }
}

impl Registry {
    /// Loads the registry of `state_dir`, creating it (and the host id) on
    /// first use; later changes are written by a background thread.
    pub fn open(state_dir: &Path) -> Result<Self, RegistryError> {
        let path = state_dir.join(FILE_NAME);
        let state = read_state(&path)?.unwrap_or_else(|| StateFile { host_id: Uuid::new_v4(), agents: Vec::new() });
        // The host id is written before anything is discovered under it.
        writer::write_private(&path, state.host_id, state.agents.iter())
            .map_err(|source| RegistryError::Write { path: path.clone(), source })?;
        let mut registry = Self::from_state(state);
        registry.writer = Some(Writer::start(path, registry.host_id, &registry.agents, &registry.save_failures));
        Ok(registry)
    }

    /// A registry kept in memory only (tests, benchmarks).
    pub fn in_memory() -> Self {
        Self::from_state(StateFile { host_id: Uuid::new_v4(), agents: Vec::new() })
    }

    fn from_state(state: StateFile) -> Self {
        let agents: Vec<_> = state.agents.into_iter().map(Arc::new).collect();
        let by_id = agents.iter().enumerate().map(|(i, a)| (a.id, i)).collect();
        let unregistered = agents.iter().filter(|a| a.agent_type == tyr_common::agents::UNKNOWN).count();
        Self {
            host_id: state.host_id,
            agents,
            by_id,
            unregistered,
            writer: None,
            save_failures: Arc::default(),
            unregistered_refused: 0,
            refused: 0,
        }
    }

    /// The agents discovered so far.
    pub fn agents(&self) -> impl ExactSizeIterator<Item = &DiscoveredAgent> {
        self.agents.iter().map(|a| &**a)
    }

    /// How many agents are registered.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether no agent is registered.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Saves of the state file that failed.
    pub fn save_failures(&self) -> u64 {
        self.save_failures.load(Ordering::Relaxed)
    }

    /// Waits until every change so far is written (tests, shutdown).
    pub fn flush(&self) {
        if let Some(writer) = &self.writer {
            writer.flush();
        }
    }

    /// The agent with kernel index `index`.
    pub fn by_index(&self, index: u32) -> Option<&DiscoveredAgent> {
        self.agents.get(usize::try_from(index).ok()?.checked_sub(1)?).map(|a| &**a)
    }

    /// The agent for (type, identity), registering it when new; returns its
    /// index, or 0 for a new agent past [`MAX_AGENTS`] or a new unregistered
    /// one past [`MAX_UNREGISTERED`] (both counted).
    pub fn discover(&mut self, agent_type: &str, identity: &str, exe: &str, confidence: u32, evidence: &str) -> u32 {
        let identity = bounded(identity);
        let id = Uuid::new_v5(&self.host_id, format!("{agent_type}\0{identity}").as_bytes());
        if let Some(&i) = self.by_id.get(&id) {
            return self.agents[i].index;
        }
        let unregistered = agent_type == tyr_common::agents::UNKNOWN;
        if self.agents.len() >= MAX_AGENTS || (unregistered && self.unregistered >= MAX_UNREGISTERED) {
            let (refused, max, what) = if self.agents.len() >= MAX_AGENTS {
                self.refused += 1;
                (self.refused, MAX_AGENTS, "too many agents: new ones are governed by type but not registered")
            } else {
                self.unregistered_refused += 1;
                (
                    self.unregistered_refused,
                    MAX_UNREGISTERED,
                    "too many unregistered agents: new ones are governed but not registered or reported",
                )
            };
            if refused.is_power_of_two() {
                tracing::warn!(refused, max, "{what}");
            }
            return 0;
        }
        let index = u32::try_from(self.agents.len() + 1).unwrap_or(u32::MAX);
        let agent = Arc::new(DiscoveredAgent {
            id,
            index,
            agent_type: agent_type.to_owned(),
            identity,
            exe: bounded(exe),
            exe_sha256: None,
            confidence,
            evidence: bounded(evidence),
            first_seen: now_unix(),
        });
        self.unregistered += usize::from(unregistered);
        self.by_id.insert(id, self.agents.len());
        self.save(&agent);
        self.agents.push(agent);
        index
    }

    /// Records the executable hash of an agent once it is known; true when
    /// it changed.
    pub fn set_sha256(&mut self, index: u32, sha256: &str) -> bool {
        let Some(agent) =
            usize::try_from(index).ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.agents.get_mut(i))
        else {
            return false;
        };
        if agent.exe_sha256.as_deref() == Some(sha256) {
            return false;
        }
        Arc::make_mut(agent).exe_sha256 = Some(sha256.to_owned());
        let agent = Arc::clone(agent);
        self.save(&agent);
        true
    }

    /// Hands a new or changed agent to the writer (it never blocks).
    fn save(&self, agent: &Arc<DiscoveredAgent>) {
        if let Some(writer) = &self.writer {
            writer.record(agent);
        }
    }
}

/// The agents the registry file of `state_dir` holds (none when there is
/// no file yet); read by the session, which does not own the registry.
pub fn read_agents(state_dir: &Path) -> Result<Vec<DiscoveredAgent>, RegistryError> {
    Ok(read_state(&state_dir.join(FILE_NAME))?.map(|state| state.agents).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ids_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("tyr-registry-{}", Uuid::new_v4().simple()));
        let mut first = Registry::open(&dir).expect("open");
        let a = first.discover("cursor", "/opt/cursor/cursor", "/opt/cursor/cursor", 70, "env:CURSOR_TRACE_ID=45");
        let b = first.discover("claude-code", "/usr/bin/node cli.js", "/usr/bin/node", 60, "argv");
        assert_eq!((a, b), (1, 2));
        assert_eq!(first.discover("cursor", "/opt/cursor/cursor", "/opt/cursor/cursor", 70, ""), 1);
        assert!(first.set_sha256(1, "ab"));
        assert!(!first.set_sha256(1, "ab"), "unchanged");
        first.flush();
        assert_eq!(read_agents(&dir).expect("read").len(), 2, "written once flushed");
        let id = first.by_index(1).expect("agent").id;
        drop(first);
        let second = Registry::open(&dir).expect("reopen");
        assert_eq!(second.by_index(1).expect("agent").id, id);
        assert_eq!(second.by_index(1).expect("agent").exe_sha256.as_deref(), Some("ab"));
        assert_eq!(second.len(), 2);
        assert_eq!(read_agents(&dir).expect("read"), second.agents().cloned().collect::<Vec<_>>());
        assert!(second.by_index(0).is_none() && second.by_index(3).is_none());
        assert_eq!(second.save_failures(), 0);
        let mode = fs::metadata(dir.join(FILE_NAME)).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(second);
        fs::write(dir.join(FILE_NAME), "{not json").expect("corrupt");
        assert!(matches!(Registry::open(&dir), Err(RegistryError::Parse { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unregistered_agents_are_bounded_and_so_are_all() {
        let mut registry = Registry::in_memory();
        for i in 0..MAX_UNREGISTERED {
            assert_ne!(registry.discover("unknown", &format!("/tmp/s{i}.py"), "/usr/bin/python3", 15, ""), 0);
        }
        assert_eq!(registry.discover("unknown", "/tmp/one-more.py", "/usr/bin/python3", 15, ""), 0);
        assert_eq!(registry.unregistered_refused, 1);
        assert_ne!(registry.discover("unknown", "/tmp/s7.py", "/usr/bin/python3", 15, ""), 0, "known ones stay");
        for i in registry.len()..MAX_AGENTS {
            assert_ne!(registry.discover("cursor", &format!("/opt/cursor{i}"), "/opt/cursor", 70, ""), 0);
        }
        assert_eq!(registry.discover("cursor", "/opt/cursor-new", "/opt/cursor-new", 70, ""), 0);
        assert_eq!((registry.refused, registry.len()), (1, MAX_AGENTS));
        assert_ne!(registry.discover("cursor", "/opt/cursor5000", "/opt/cursor", 70, ""), 0, "known ones stay");
    }

    #[test]
    fn long_fields_are_bounded_and_stay_distinct() {
        let mut registry = Registry::in_memory();
        let long = |tail: &str| format!("/{}{tail}", "é".repeat(400));
        let a = registry.discover("cursor", &long("a"), &long("a"), 70, &"e".repeat(5000));
        let b = registry.discover("cursor", &long("b"), &long("b"), 70, "");
        assert_ne!(a, b);
        let agent = registry.by_index(a).expect("agent");
        assert!(agent.identity.len() <= MAX_FIELD_BYTES && agent.exe.len() <= MAX_FIELD_BYTES);
        assert!(agent.evidence.len() <= MAX_FIELD_BYTES);
        assert_eq!(registry.discover("cursor", &long("a"), "", 0, ""), a, "found again by its full identity");
    }
}
