//! The agents discovered on this host, persisted in tyrd's state directory.
//!
//! A discovered agent is one (agent type, executable identity) pair; the
//! type is a known agent's, or `unknown` for an unregistered agent (agent
//! signals, no confident match), which operators can then promote. Its id
//! is a UUIDv5 of the pair under this host's id (itself random, created once
//! and kept in the state file), so it is the same across restarts of the
//! agent and of tyrd. Each also gets a small index for the kernel's
//! pid -> agent map.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

const FILE_NAME: &str = "agents.json";
/// Unregistered (`unknown`) agents registered, at most: weak candidates are
/// common (a shell holding an LLM key, throw-away scripts), and the file is
/// rewritten on each discovery.
pub const MAX_UNREGISTERED: usize = 4096;

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
}

/// The registry.
#[derive(Debug)]
pub struct Registry {
    path: Option<PathBuf>,
    host_id: Uuid,
    agents: Vec<DiscoveredAgent>,
    by_key: HashMap<(String, String), usize>,
    /// Saves that failed (the registry stays correct in memory).
    pub save_failures: u64,
    /// Unregistered agents not registered because [`MAX_UNREGISTERED`] were.
    pub unregistered_refused: u64,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Registry {
    /// Loads the registry of `state_dir`, creating it (and the host id) on first use.
    pub fn open(state_dir: &Path) -> Result<Self, RegistryError> {
        let path = state_dir.join(FILE_NAME);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
                .map_err(|source| RegistryError::Parse { path: path.clone(), source })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                StateFile { host_id: Uuid::new_v4(), agents: Vec::new() }
            }
            Err(source) => return Err(RegistryError::Read { path, source }),
        };
        let mut registry = Self::from_state(Some(path), state);
        registry.save();
        Ok(registry)
    }

    /// A registry kept in memory only (tests, benchmarks).
    pub fn in_memory() -> Self {
        Self::from_state(None, StateFile { host_id: Uuid::new_v4(), agents: Vec::new() })
    }

    fn from_state(path: Option<PathBuf>, state: StateFile) -> Self {
        let by_key =
            state.agents.iter().enumerate().map(|(i, a)| ((a.agent_type.clone(), a.identity.clone()), i)).collect();
        Self { path, host_id: state.host_id, agents: state.agents, by_key, save_failures: 0, unregistered_refused: 0 }
    }

    /// The agents discovered so far.
    pub fn agents(&self) -> &[DiscoveredAgent] {
        &self.agents
    }

    /// The agent with kernel index `index`.
    pub fn by_index(&self, index: u32) -> Option<&DiscoveredAgent> {
        self.agents.get(usize::try_from(index).ok()?.checked_sub(1)?)
    }

    /// The agent for (type, identity), registering it when new; returns its
    /// index, or 0 for a new unregistered agent past [`MAX_UNREGISTERED`] (counted).
    pub fn discover(&mut self, agent_type: &str, identity: &str, exe: &str, confidence: u32, evidence: &str) -> u32 {
        let key = (agent_type.to_owned(), identity.to_owned());
        if let Some(&i) = self.by_key.get(&key) {
            return self.agents[i].index;
        }
        if agent_type == tyr_common::agents::UNKNOWN
            && self.agents.iter().filter(|a| a.agent_type == agent_type).count() >= MAX_UNREGISTERED
        {
            self.unregistered_refused += 1;
            if self.unregistered_refused.is_power_of_two() {
                tracing::warn!(
                    refused = self.unregistered_refused,
                    max = MAX_UNREGISTERED,
                    "too many unregistered agents: new ones are governed but not registered or reported"
                );
            }
            return 0;
        }
        let index = u32::try_from(self.agents.len() + 1).unwrap_or(u32::MAX);
        let id = Uuid::new_v5(&self.host_id, format!("{agent_type}\0{identity}").as_bytes());
        self.agents.push(DiscoveredAgent {
            id,
            index,
            agent_type: agent_type.to_owned(),
            identity: identity.to_owned(),
            exe: exe.to_owned(),
            exe_sha256: None,
            confidence,
            evidence: evidence.to_owned(),
            first_seen: now_unix(),
        });
        self.by_key.insert(key, self.agents.len() - 1);
        self.save();
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
        agent.exe_sha256 = Some(sha256.to_owned());
        self.save();
        true
    }

    /// Writes the state file (0600, atomically); failures are counted.
    fn save(&mut self) {
        let Some(path) = &self.path else { return };
        let state = StateFile { host_id: self.host_id, agents: self.agents.clone() };
        if write_private(path, &state).is_err() {
            self.save_failures += 1;
        }
    }
}

/// The agents the registry file of `state_dir` holds (none when there is
/// no file yet); read by the session, which does not own the registry.
pub fn read_agents(state_dir: &Path) -> Result<Vec<DiscoveredAgent>, RegistryError> {
    let path = state_dir.join(FILE_NAME);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes)
            .map(|state| state.agents)
            .map_err(|source| RegistryError::Parse { path, source }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(RegistryError::Read { path, source }),
    }
}

fn write_private(path: &Path, state: &StateFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    serde_json::to_writer_pretty(&mut file, state)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let id = first.by_index(1).expect("agent").id;
        drop(first);
        let second = Registry::open(&dir).expect("reopen");
        assert_eq!(second.by_index(1).expect("agent").id, id);
        assert_eq!(second.by_index(1).expect("agent").exe_sha256.as_deref(), Some("ab"));
        assert_eq!(second.agents().len(), 2);
        assert_eq!(read_agents(&dir).expect("read"), second.agents());
        assert!(second.by_index(0).is_none() && second.by_index(3).is_none());
        let mode = fs::metadata(dir.join(FILE_NAME)).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(dir.join(FILE_NAME), "{not json").expect("corrupt");
        assert!(matches!(Registry::open(&dir), Err(RegistryError::Parse { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn unregistered_agents_are_bounded_known_ones_are_not() {
        let mut registry = Registry::in_memory();
        for i in 0..MAX_UNREGISTERED {
            assert_ne!(registry.discover("unknown", &format!("/tmp/s{i}.py"), "/usr/bin/python3", 15, ""), 0);
        }
        assert_eq!(registry.discover("unknown", "/tmp/one-more.py", "/usr/bin/python3", 15, ""), 0);
        assert_eq!(registry.unregistered_refused, 1);
        assert_ne!(registry.discover("unknown", "/tmp/s7.py", "/usr/bin/python3", 15, ""), 0, "known ones stay");
        assert_ne!(registry.discover("cursor", "/opt/cursor", "/opt/cursor", 70, ""), 0);
    }
}
