//! Per-process agent state: fingerprints, classifications, inheritance, and
//! the labels events carry.
//!
//! Fed from the ring reader in record order: an exec classifies the new
//! image, a fork copies the parent's agent to the child (the kernel does the
//! same on its side; tyrd repairs the kernel entry when the fork raced the
//! parent's classification), file and TLS records add behavioural evidence.
//!
//! Operators' overrides ([`AgentTracker::apply_overrides`]) move every
//! process of an overridden agent — running ones in the kernel's agent
//! map, later ones as they are classified — to the new type's class;
//! descendants follow through the kernel's fork inheritance.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use lru::LruCache;
use tyr_common::agents::{self, Classification, Fingerprint, KNOWN_AGENTS, Matcher, UNKNOWN};
use tyr_common::policy::compile::UNREGISTERED_CLASS;
use tyr_common::policy::unregistered::Restriction;

use super::environ::read_marker_names;
use super::exe_hash::ExeHasher;
use super::feed::AgentFeed;
use super::overrides::{Governing, OverrideSet};
use super::registry::Registry;
use crate::bpf::records::tyr_agent_class;

/// Arguments kept in a fingerprint, and their length.
const ARGV_KEPT: usize = 32;
const ARG_MAX_LEN: usize = 512;
/// Ancestors listed in `agent_lineage`.
const LINEAGE_DEPTH: usize = 4;
/// Behavioural evidence kept per process.
const EVIDENCE_KEPT: usize = 16;
/// Interpreters whose entry script is part of an agent's identity.
const INTERPRETERS: [&str; 5] = ["node", "python", "bun", "deno", "ruby"];

/// `ReadPathContains` texts of the known-agent table.
static MODULE_PATHS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    KNOWN_AGENTS
        .iter()
        .flat_map(|a| a.signals)
        .filter_map(|s| match s.matcher {
            Matcher::ReadPathContains(text) => Some(text),
            _ => None,
        })
        .collect()
});

/// `WroteFileNamed` names of the known-agent table.
static WRITTEN_NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    KNOWN_AGENTS
        .iter()
        .flat_map(|a| a.signals)
        .filter_map(|s| match s.matcher {
            Matcher::WroteFileNamed(name) => Some(name),
            _ => None,
        })
        .collect()
});

/// Metadata key set on events of unregistered agents: processes showing
/// agent signals (an LLM API key in the environment, TLS to an LLM
/// provider, an agent-like name) that no known agent matched confidently.
pub const UNREGISTERED_AGENT: &str = "unregistered_agent";

/// What tyrd does about unregistered agents (see [`UNREGISTERED_AGENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UnregisteredAgents {
    /// Observed, governed by the daemon's base policy.
    #[default]
    Audit,
    /// Governed by the built-in strict base policy.
    Quarantine,
    /// Every governed syscall refused.
    Deny,
}

impl UnregisteredAgents {
    /// The policy restriction this mode puts on unregistered agents.
    pub fn restriction(self) -> Option<Restriction> {
        match self {
            Self::Audit => None,
            Self::Quarantine => Some(Restriction::Quarantine),
            Self::Deny => Some(Restriction::Deny),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Quarantine => "quarantine",
            Self::Deny => "deny",
        }
    }
}

/// The agent fields an event gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLabel {
    pub agent_type: &'static str,
    /// Empty for processes of no discovered agent.
    pub discovered_agent_id: String,
    /// `agent_evidence`, `agent_confidence`, ... metadata entries.
    pub metadata: Vec<(&'static str, Arc<str>)>,
}

/// One process's detection state.
#[derive(Debug, Clone, Default)]
struct ProcState {
    fingerprint: Fingerprint,
    own: Option<Classification>,
    /// Registry index of the agent the process belongs to (0: none).
    agent: u32,
    /// The agent came from an ancestor, not from the process's own fingerprint.
    inherited_from: Option<u32>,
    /// The parent's thread group id, for the lineage of agent types.
    parent: u32,
    /// An unregistered agent (or descended from one): agent signals, no
    /// confident match.
    unregistered: bool,
    label: Option<Arc<AgentLabel>>,
}

/// Tracks which process is which agent.
#[derive(Debug)]
pub struct AgentTracker {
    registry: Registry,
    hasher: Option<ExeHasher>,
    kernel: Option<MapHandle>,
    proc_root: PathBuf,
    processes: LruCache<u32, ProcState>,
    unregistered: UnregisteredAgents,
    unknown_label: Arc<AgentLabel>,
    overrides: OverrideSet,
    feed: Option<Arc<AgentFeed>>,
    /// Kernel map writes that failed.
    pub kernel_update_failures: u64,
    /// Processes moved to another class by an override set, in the kernel map.
    pub override_moves: u64,
}

/// The [`Governing`] view of a tracker's fields (a macro, so that it
/// borrows only those fields while a process state is borrowed).
macro_rules! governing {
    ($tracker:expr) => {
        Governing {
            registry: &$tracker.registry,
            overrides: &$tracker.overrides,
            restricted: $tracker.unregistered.restriction().is_some(),
        }
    };
}

/// Is `path`'s file name an interpreter (`python3.11`, `node`, ...)?
fn is_interpreter(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    INTERPRETERS.iter().any(|i| name.starts_with(i))
}

/// The executable identity of a discovered agent: its exe, and for
/// interpreters the script they run.
fn identity(fp: &Fingerprint) -> String {
    if !is_interpreter(&fp.exe) {
        return fp.exe.clone();
    }
    let script = fp.argv.iter().skip(1).find(|a| !a.starts_with('-') && (a.contains('/') || a.contains('.')));
    match script {
        Some(script) => format!("{} {script}", fp.exe),
        None => fp.exe.clone(),
    }
}

fn split_argv(argv: &[u8]) -> Vec<String> {
    argv.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .take(ARGV_KEPT)
        .map(|a| String::from_utf8_lossy(&a[..a.len().min(ARG_MAX_LEN)]).into_owned())
        .collect()
}

impl AgentTracker {
    pub fn new(
        registry: Registry,
        hasher: Option<ExeHasher>,
        kernel: Option<MapHandle>,
        proc_root: PathBuf,
        unregistered: UnregisteredAgents,
    ) -> Self {
        let unknown_label = Arc::new(AgentLabel {
            agent_type: UNKNOWN,
            discovered_agent_id: String::new(),
            metadata: vec![("unregistered_agents", Arc::from(unregistered.as_str()))],
        });
        Self {
            registry,
            hasher,
            kernel,
            proc_root,
            processes: LruCache::new(NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN)),
            unregistered,
            unknown_label,
            overrides: OverrideSet::default(),
            feed: None,
            kernel_update_failures: 0,
            override_moves: 0,
        }
    }

    /// Reports discoveries and activity to `feed` (the session reads it).
    pub fn with_feed(mut self, feed: Arc<AgentFeed>) -> Self {
        self.feed = Some(feed);
        self
    }

    /// Governs by `overrides` from now on: processes of every agent whose
    /// class changed are moved in the kernel's agent map (running
    /// processes, and through fork inheritance their later children), and
    /// events are labelled with the new types. Returns how many kernel
    /// entries moved.
    pub fn apply_overrides(&mut self, overrides: OverrideSet) -> usize {
        self.overrides = overrides;
        for (_, state) in self.processes.iter_mut() {
            state.label = None;
        }
        let Some(kernel) = &self.kernel else { return 0 };
        let governing = governing!(self);
        let mut moves = Vec::new();
        for key in kernel.keys() {
            let Ok(Some(bytes)) = kernel.lookup(&key, MapFlags::ANY) else { continue };
            let mut current = tyr_agent_class { agent: 0, agent_type: 0 };
            if plain::copy_from_bytes(&mut current, &bytes).is_err() || current.agent == 0 {
                continue;
            }
            let class = governing.class(current.agent);
            if class != current.agent_type {
                moves.push((key, tyr_agent_class { agent: current.agent, agent_type: class }));
            }
        }
        let mut moved = 0;
        for (key, value) in moves {
            // SAFETY: tyr_agent_class is a Plain repr(C) struct of two u32.
            let bytes = unsafe { plain::as_bytes(&value) };
            // EXIST: a process that exited meanwhile is not brought back.
            match kernel.update(&key, bytes, MapFlags::EXIST) {
                Ok(()) => moved += 1,
                Err(error) if error.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(_) => self.kernel_update_failures += 1,
            }
        }
        self.override_moves += moved as u64;
        moved
    }

    /// A tracker with no kernel map, no hashing and no /proc (tests, benchmarks).
    pub fn detached() -> Self {
        Self::new(Registry::in_memory(), None, None, PathBuf::from("/nonexistent"), UnregisteredAgents::Audit)
    }

    /// The registry of discovered agents.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A process replaced its image. Returns the executable's sha256 when it
    /// is already known (otherwise it is being computed).
    pub fn on_exec(&mut self, pid: u32, ppid: u32, exe: &str, argv: &[u8], kernel_agent: u32) -> Option<String> {
        let fingerprint = Fingerprint {
            exe: exe.to_owned(),
            argv: split_argv(argv),
            env_names: read_marker_names(&self.proc_root, pid),
            ..Fingerprint::default()
        };
        // Whatever the process belonged to before the exec, it still does
        // unless its new image is confidently another agent.
        let previous = self.processes.get(&pid).map(|s| s.agent).filter(|&a| a != 0);
        let from_parent = self.processes.get(&ppid).map(|s| s.agent).filter(|&a| a != 0);
        let inherited = previous.or(from_parent).or((kernel_agent != 0).then_some(kernel_agent));
        let unregistered = [pid, ppid].iter().any(|p| self.processes.peek(p).is_some_and(|s| s.unregistered))
            || inherited.is_some_and(|agent| self.is_unregistered_agent(agent));
        let mut state = ProcState { fingerprint, parent: ppid, unregistered, ..ProcState::default() };
        if let Some(agent) = inherited {
            state.agent = agent;
            state.inherited_from = Some(agent);
        }
        self.reclassify(pid, &mut state);
        self.processes.put(pid, state);
        self.hasher.as_mut().and_then(|hasher| hasher.sha256(Path::new(exe)))
    }

    /// A process forked: the child belongs to the parent's agent.
    pub fn on_fork(&mut self, parent: u32, child: u32, kernel_agent: u32) {
        let parent_state = self.processes.get(&parent).cloned().unwrap_or_default();
        let agent = if parent_state.agent != 0 { parent_state.agent } else { kernel_agent };
        let state = ProcState {
            fingerprint: parent_state.fingerprint,
            own: parent_state.own,
            agent,
            inherited_from: (agent != 0).then_some(agent),
            parent,
            unregistered: parent_state.unregistered || self.is_unregistered_agent(agent),
            label: None,
        };
        if agent != 0 && kernel_agent != agent {
            // The fork raced the parent's classification: fix the kernel's view.
            self.write_kernel(child, agent);
        }
        self.processes.put(child, state);
    }

    /// A process exited.
    pub fn on_exit(&mut self, pid: u32) {
        self.processes.pop(&pid);
    }

    /// A process opened a file: module loads and agent-specific files are evidence.
    pub fn on_file(&mut self, pid: u32, path: &str, write: bool) {
        // Runs for every file event: a cheap gate first, the table after.
        let interesting = if write {
            let name = path.rsplit('/').next().unwrap_or(path);
            name.starts_with('.') && WRITTEN_NAMES.contains(&name)
        } else {
            path.contains("/site-packages/") && MODULE_PATHS.iter().any(|m| path.contains(m))
        };
        if !interesting {
            return;
        }
        let Some(mut state) = self.processes.pop(&pid) else { return };
        let list = if write { &mut state.fingerprint.written_names } else { &mut state.fingerprint.read_paths };
        let entry = if write { path.rsplit('/').next().unwrap_or(path).to_owned() } else { path.to_owned() };
        if list.len() < EVIDENCE_KEPT && !list.contains(&entry) {
            list.push(entry);
            self.reclassify(pid, &mut state);
        }
        self.processes.put(pid, state);
    }

    /// A process made a TLS handshake; returns why it contradicts the
    /// process's agent fingerprint, if it does.
    pub fn on_tls(&mut self, pid: u32, server_name: &str) -> Option<String> {
        let mut state = self.processes.pop(&pid)?;
        if state.fingerprint.first_sni.is_none() {
            state.fingerprint.first_sni = Some(server_name.to_owned());
            self.reclassify(pid, &mut state);
        }
        let agent_type = governing!(self).effective_type(state.agent);
        self.processes.put(pid, state);
        agents::egress_mismatch(agent_type?, server_name)
    }

    /// The label for events of `pid` (`kernel_agent`: what the kernel's map said).
    pub fn label(&mut self, pid: u32, kernel_agent: u32) -> Arc<AgentLabel> {
        if let Some(state) = self.processes.get(&pid)
            && let Some(label) = &state.label
        {
            if let Some(feed) = &self.feed {
                feed.saw(state.agent);
            }
            return Arc::clone(label);
        }
        let lineage = self.lineage(pid);
        if let Some(state) = self.processes.get_mut(&pid) {
            let mut label = build_label(governing!(self), state, &self.unknown_label);
            if !lineage.is_empty() {
                label.metadata.push(("agent_lineage", Arc::from(lineage)));
            }
            let label = Arc::new(label);
            state.label = Some(Arc::clone(&label));
            if let Some(feed) = &self.feed {
                feed.saw(state.agent);
            }
            return label;
        }
        if let Some(feed) = &self.feed {
            feed.saw(kernel_agent);
        }
        let governing = governing!(self);
        match (self.registry.by_index(kernel_agent), governing.effective_type(kernel_agent)) {
            (Some(agent), Some(agent_type)) => Arc::new(AgentLabel {
                agent_type,
                discovered_agent_id: agent.id.to_string(),
                metadata: vec![("agent_inherited", Arc::from("true"))],
            }),
            _ => Arc::clone(&self.unknown_label),
        }
    }

    /// Ancestors nearest first as `pid:agent_type`, bounded, from what the
    /// tracker has seen.
    fn lineage(&self, pid: u32) -> String {
        let mut chain = Vec::new();
        let mut current = self.processes.peek(&pid).map(|s| s.parent);
        while let Some(ancestor) = current.filter(|&p| p != 0 && chain.len() < LINEAGE_DEPTH) {
            let state = self.processes.peek(&ancestor);
            let agent_type = state.and_then(|s| governing!(self).effective_type(s.agent)).unwrap_or(UNKNOWN);
            chain.push(format!("{ancestor}:{agent_type}"));
            current = state.map(|s| s.parent);
        }
        chain.join(",")
    }

    /// Scores the fingerprint again and adopts a confident result.
    fn reclassify(&mut self, pid: u32, state: &mut ProcState) {
        let own = agents::classify(&state.fingerprint);
        state.label = None;
        // Under quarantine or deny an unregistered agent stays restricted,
        // whatever it or its children exec next: exec'ing a known agent's
        // binary is no way out (an operator promotes it instead).
        let restricted = state.unregistered
            && self.unregistered.restriction().is_some()
            && !governing!(self).overridden(state.agent);
        if own.is_confident() && !restricted {
            let index = self.discover(own.agent_type, &state.fingerprint, &own);
            state.unregistered = false;
            if state.agent != index {
                state.agent = index;
                state.inherited_from = None;
                self.write_kernel(pid, index);
            }
        } else if state.agent == 0 && own.confidence > 0 && !state.unregistered {
            // An unregistered agent: discovered as `unknown`, so operators
            // see it and can promote it. Under quarantine or deny the
            // kernel governs it (and, through fork, its children) by the
            // unregistered overlay from now on.
            state.unregistered = true;
            let index = self.discover(UNKNOWN, &state.fingerprint, &own);
            if index != 0 {
                state.agent = index;
                state.inherited_from = None;
                self.write_kernel(pid, index);
            } else if self.unregistered.restriction().is_some() {
                // Not registered (too many): restricted all the same.
                self.write_kernel_class(pid, 0, UNREGISTERED_CLASS);
            }
        }
        state.own = Some(own).filter(|c| c.confidence > 0);
    }

    /// Whether agent `index` is an unregistered agent (detected `unknown`).
    fn is_unregistered_agent(&self, index: u32) -> bool {
        self.registry.by_index(index).is_some_and(|a| a.agent_type == UNKNOWN)
    }

    /// Registers (or finds) the agent of type `agent_type` for this
    /// fingerprint; tells the feed when it is new or its hash became known.
    fn discover(&mut self, agent_type: &str, fingerprint: &Fingerprint, own: &Classification) -> u32 {
        let known = self.registry.agents().len();
        let index = self.registry.discover(
            agent_type,
            &identity(fingerprint),
            &fingerprint.exe,
            own.confidence,
            &own.evidence_text(),
        );
        let mut changed = self.registry.agents().len() != known;
        if let Some(hasher) = self.hasher.as_mut()
            && let Some(sha) = hasher.sha256(Path::new(&fingerprint.exe))
        {
            changed |= self.registry.set_sha256(index, &sha);
        }
        if changed && let (Some(feed), Some(agent)) = (&self.feed, self.registry.by_index(index)) {
            feed.notify(agent);
        }
        index
    }

    fn write_kernel(&mut self, pid: u32, index: u32) {
        let class = governing!(self).class(index);
        self.write_kernel_class(pid, index, class);
    }

    fn write_kernel_class(&mut self, pid: u32, index: u32, agent_type: u32) {
        let Some(kernel) = &self.kernel else { return };
        let value = tyr_agent_class { agent: index, agent_type };
        // SAFETY: tyr_agent_class is a Plain repr(C) struct of two u32.
        let bytes = unsafe { plain::as_bytes(&value) };
        if kernel.update(&pid.to_ne_bytes(), bytes, MapFlags::ANY).is_err() {
            self.kernel_update_failures += 1;
        }
    }

    /// The unregistered-agents mode events are labelled with.
    pub fn unregistered(&self) -> UnregisteredAgents {
        self.unregistered
    }
}

fn build_label(governing: Governing<'_>, state: &ProcState, unknown: &AgentLabel) -> AgentLabel {
    let mut metadata = Vec::new();
    if let Some(own) = &state.own {
        metadata.push(("agent_evidence", Arc::from(own.evidence_text())));
        metadata.push(("agent_confidence", Arc::from(own.confidence.to_string())));
        if !own.is_confident() {
            metadata.push(("agent_candidate", Arc::from(own.agent_type)));
        }
    }
    let agent = governing.registry.by_index(state.agent);
    match (agent, governing.effective_type(state.agent)) {
        (Some(agent), Some(agent_type)) => {
            if state.inherited_from.is_some() {
                metadata.push(("agent_inherited", Arc::from("true")));
            }
            if governing.overridden(state.agent) {
                metadata.push(("agent_detected_type", Arc::from(agent.agent_type.as_str())));
            } else if state.unregistered {
                metadata.extend(unknown.metadata.iter().cloned());
                metadata.push((UNREGISTERED_AGENT, Arc::from("true")));
            }
            AgentLabel { agent_type, discovered_agent_id: agent.id.to_string(), metadata }
        }
        _ => {
            metadata.extend(unknown.metadata.iter().cloned());
            if state.unregistered {
                metadata.push((UNREGISTERED_AGENT, Arc::from("true")));
            }
            AgentLabel { agent_type: UNKNOWN, discovered_agent_id: String::new(), metadata }
        }
    }
}

#[cfg(test)]
mod tests;
