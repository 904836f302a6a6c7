//! Per-process agent state: fingerprints, classifications, inheritance, and
//! the labels events carry.
//!
//! Fed from the ring reader in record order: an exec classifies the new
//! image, a fork copies the parent's agent to the child (the kernel does the
//! same on its side; tyrd repairs the kernel entry when the fork raced the
//! parent's classification), file and TLS records add behavioural evidence.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use lru::LruCache;
use tyr_common::agents::{self, Classification, Fingerprint, KNOWN_AGENTS, Matcher, UNKNOWN};
use tyr_common::policy::compile::{UNREGISTERED_CLASS, class_of};
use tyr_common::policy::unregistered::Restriction;

use super::environ::read_marker_names;
use super::exe_hash::ExeHasher;
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
    /// Kernel map writes that failed.
    pub kernel_update_failures: u64,
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
            kernel_update_failures: 0,
        }
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
        let unregistered = [pid, ppid].iter().any(|p| self.processes.peek(p).is_some_and(|s| s.unregistered));
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
            unregistered: parent_state.unregistered,
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
        let agent_type = self.registry.by_index(state.agent).map(|a| a.agent_type.clone());
        self.processes.put(pid, state);
        agents::egress_mismatch(&agent_type?, server_name)
    }

    /// The label for events of `pid` (`kernel_agent`: what the kernel's map said).
    pub fn label(&mut self, pid: u32, kernel_agent: u32) -> Arc<AgentLabel> {
        if let Some(label) = self.processes.get(&pid).and_then(|s| s.label.clone()) {
            return label;
        }
        let lineage = self.lineage(pid);
        if let Some(state) = self.processes.get_mut(&pid) {
            let mut label = build_label(&self.registry, state, &self.unknown_label);
            if !lineage.is_empty() {
                label.metadata.push(("agent_lineage", Arc::from(lineage)));
            }
            let label = Arc::new(label);
            state.label = Some(Arc::clone(&label));
            return label;
        }
        match self.registry.by_index(kernel_agent) {
            Some(agent) => Arc::new(AgentLabel {
                agent_type: static_type(&agent.agent_type),
                discovered_agent_id: agent.id.to_string(),
                metadata: vec![("agent_inherited", Arc::from("true"))],
            }),
            None => Arc::clone(&self.unknown_label),
        }
    }

    /// Ancestors nearest first as `pid:agent_type`, bounded, from what the
    /// tracker has seen.
    fn lineage(&self, pid: u32) -> String {
        let mut chain = Vec::new();
        let mut current = self.processes.peek(&pid).map(|s| s.parent);
        while let Some(ancestor) = current.filter(|&p| p != 0 && chain.len() < LINEAGE_DEPTH) {
            let state = self.processes.peek(&ancestor);
            let agent_type =
                state.and_then(|s| self.registry.by_index(s.agent)).map_or(UNKNOWN, |a| static_type(&a.agent_type));
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
        // binary is no way out (an operator registers it instead).
        let restricted = state.unregistered && self.unregistered.restriction().is_some();
        if own.is_confident() && !restricted {
            let index = self.registry.discover(
                own.agent_type,
                &identity(&state.fingerprint),
                &state.fingerprint.exe,
                own.confidence,
                &own.evidence_text(),
            );
            if let Some(hasher) = self.hasher.as_mut()
                && let Some(sha) = hasher.sha256(Path::new(&state.fingerprint.exe))
            {
                self.registry.set_sha256(index, &sha);
            }
            state.unregistered = false;
            if state.agent != index {
                state.agent = index;
                state.inherited_from = None;
                self.write_kernel(pid, index);
            }
        } else if state.agent == 0 && own.confidence > 0 && !state.unregistered {
            state.unregistered = true;
            // Under quarantine or deny the kernel governs it (and, through
            // fork, its children) by the unregistered overlay from now on.
            if self.unregistered.restriction().is_some() {
                self.write_kernel_class(pid, 0, UNREGISTERED_CLASS);
            }
        }
        state.own = Some(own).filter(|c| c.confidence > 0);
    }

    fn write_kernel(&mut self, pid: u32, index: u32) {
        let agent_type = self.registry.by_index(index).and_then(|a| class_of(&a.agent_type)).unwrap_or(0);
        self.write_kernel_class(pid, index, agent_type);
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

/// The known-agent table's own string for a type read from the registry.
fn static_type(agent_type: &str) -> &'static str {
    KNOWN_AGENTS.iter().find(|a| a.agent_type == agent_type).map_or(UNKNOWN, |a| a.agent_type)
}

fn build_label(registry: &Registry, state: &ProcState, unknown: &AgentLabel) -> AgentLabel {
    let mut metadata = Vec::new();
    if let Some(own) = &state.own {
        metadata.push(("agent_evidence", Arc::from(own.evidence_text())));
        metadata.push(("agent_confidence", Arc::from(own.confidence.to_string())));
        if !own.is_confident() {
            metadata.push(("agent_candidate", Arc::from(own.agent_type)));
        }
    }
    match registry.by_index(state.agent) {
        Some(agent) => {
            if state.inherited_from.is_some() {
                metadata.push(("agent_inherited", Arc::from("true")));
            }
            AgentLabel {
                agent_type: static_type(&agent.agent_type),
                discovered_agent_id: agent.id.to_string(),
                metadata,
            }
        }
        None => {
            metadata.extend(unknown.metadata.iter().cloned());
            if state.unregistered {
                metadata.push((UNREGISTERED_AGENT, Arc::from("true")));
            }
            AgentLabel { agent_type: UNKNOWN, discovered_agent_id: String::new(), metadata }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_unregistered_agent_cannot_exec_its_way_out() {
        let mut t = AgentTracker::new(
            Registry::in_memory(),
            None,
            None,
            PathBuf::from("/nonexistent"),
            UnregisteredAgents::Quarantine,
        );
        // Only a name: a weak candidate, so an unregistered agent.
        t.on_exec(20, 1, "/opt/tools/cursor", &argv(&["cursor"]), 0);
        assert!(t.label(20, 0).metadata.iter().any(|(k, v)| *k == UNREGISTERED_AGENT && &**v == "true"));
        // Its child execs a confidently known agent: still unregistered.
        t.on_fork(20, 21, 0);
        t.on_exec(21, 20, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
        let child = t.label(21, 0);
        assert_eq!(child.agent_type, UNKNOWN, "{child:?}");
        assert!(child.metadata.iter().any(|(k, _)| *k == UNREGISTERED_AGENT));
        // Under audit the same child is claude-code.
        let mut audit = AgentTracker::detached();
        audit.on_exec(20, 1, "/opt/tools/cursor", &argv(&["cursor"]), 0);
        audit.on_fork(20, 21, 0);
        audit.on_exec(21, 20, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
        assert_eq!(audit.label(21, 0).agent_type, "claude-code");
    }

    fn argv(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn classification_inheritance_and_evidence() {
        let mut t = AgentTracker::detached();
        t.on_exec(10, 1, "/usr/bin/node", &argv(&["node", "/opt/@anthropic-ai/claude-code/cli.js"]), 0);
        let claude = t.label(10, 0);
        assert_eq!(claude.agent_type, "claude-code");
        assert!(!claude.discovered_agent_id.is_empty());
        // A shell it starts, and that shell's child, are claude-code too.
        t.on_fork(10, 11, 0);
        t.on_exec(11, 10, "/usr/bin/bash", &argv(&["bash", "-c", "ls"]), 0);
        t.on_fork(11, 12, 0);
        t.on_exec(12, 11, "/usr/bin/ls", &argv(&["ls"]), 0);
        let lineage = t.label(12, 0);
        let lineage: std::collections::HashMap<_, _> = lineage.metadata.iter().cloned().collect();
        assert_eq!(&*lineage["agent_lineage"], "11:claude-code,10:claude-code,1:unknown");
        for pid in [11, 12] {
            let label = t.label(pid, 0);
            assert_eq!(label.agent_type, "claude-code");
            assert_eq!(label.discovered_agent_id, claude.discovered_agent_id);
            assert!(label.metadata.iter().any(|(k, v)| *k == "agent_inherited" && &**v == "true"));
        }
        // Plain processes are unknown, with the unregistered mode recorded.
        t.on_exec(20, 1, "/usr/bin/ls", &argv(&["ls"]), 0);
        let plain = t.label(20, 0);
        assert_eq!(plain.agent_type, "unknown");
        assert!(plain.metadata.iter().any(|(k, v)| *k == "unregistered_agents" && &**v == "audit"));
        // A renamed binary called cursor: a candidate, not a classification.
        t.on_exec(21, 1, "/tmp/x/cursor", &argv(&["cursor"]), 0);
        let renamed = t.label(21, 0);
        assert_eq!(renamed.agent_type, "unknown");
        let meta: std::collections::HashMap<_, _> = renamed.metadata.iter().cloned().collect();
        assert_eq!(&*meta["agent_candidate"], "cursor");
        assert_eq!(&*meta["agent_evidence"], "exe_name:cursor=25");
    }

    #[test]
    fn the_file_gate_covers_the_table() {
        assert!(!MODULE_PATHS.is_empty() && MODULE_PATHS.iter().all(|m| m.contains("/site-packages/")));
        assert!(!WRITTEN_NAMES.is_empty() && WRITTEN_NAMES.iter().all(|n| n.starts_with('.')));
    }

    #[test]
    fn behaviour_completes_a_fingerprint() {
        let mut t = AgentTracker::detached();
        t.on_exec(30, 1, "/usr/bin/python3.11", &argv(&["python3", "agent.py"]), 0);
        assert_eq!(t.label(30, 0).agent_type, "unknown");
        t.on_file(30, "/venv/lib/python3.11/site-packages/langgraph/__init__.py", false);
        assert_eq!(t.label(30, 0).agent_type, "unknown", "a module alone is 50 < 60");
        let mut t = AgentTracker::detached();
        t.on_exec(31, 1, "/home/u/.local/bin/aider", &argv(&["aider"]), 0);
        t.on_file(31, "/home/u/project/.aider.chat.history.md", true);
        assert_eq!(t.label(31, 0).agent_type, "aider");
        // Identity of interpreted agents includes the script.
        let fp = Fingerprint {
            exe: "/usr/bin/python3".into(),
            argv: vec!["python3".into(), "-u".into(), "bots/agent.py".into()],
            ..Fingerprint::default()
        };
        assert_eq!(identity(&fp), "/usr/bin/python3 bots/agent.py");
    }

    #[test]
    fn tls_to_an_unexpected_host_is_a_mismatch() {
        let mut t = AgentTracker::detached();
        t.on_exec(40, 1, "/opt/cursor/bin/cursor", &argv(&["cursor"]), 0);
        // No environment in this detached tracker: make it confident by path and SNI.
        assert_eq!(t.on_tls(40, "api2.cursor.sh"), None);
        assert_eq!(t.label(40, 0).agent_type, "cursor");
        let reason = t.on_tls(40, "evil.example.com").expect("mismatch");
        assert!(reason.contains("evil.example.com"), "{reason}");
    }
}
