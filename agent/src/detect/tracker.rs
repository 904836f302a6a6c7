//! Per-process agent state: fingerprints, classifications, inheritance, and
//! the labels events carry.
//!
//! Fed from the ring reader in record order: an exec classifies the new
//! image, a fork copies the parent's agent to the child (the kernel does the
//! same on its side; tyrd repairs the kernel entry when the fork raced the
//! parent's classification), file and TLS records add behavioural evidence.
//!
//! Detection only ever makes governance stricter ([`governance`]): a
//! process classified as, or descended from, an agent stays that agent
//! whatever it execs; a confident classification it does not follow is
//! kept as evidence (`agent_claimed_type`) and counted. Operators'
//! overrides ([`AgentTracker::apply_overrides`]) move every process of an
//! overridden agent — running ones in the kernel's agent map, later ones as
//! they are classified — to the new type's class; descendants follow
//! through the kernel's fork inheritance.
//!
//! The per-process state is bounded in entries and bytes ([`PROCESSES`],
//! [`PROCESS_BYTES`]), evictions counted; a process the tracker forgot is
//! still governed by its kernel entry, which every write checks first.

mod fingerprint;
mod governance;
mod kernel;
mod label;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libbpf_rs::MapHandle;
use tyr_common::agents::{self, Classification, Fingerprint, UNKNOWN};
use tyr_common::policy::compile::{UNKNOWN_CLASS, UNREGISTERED_CLASS, class_of};
use tyr_common::policy::unregistered::Restriction;

pub use label::AgentLabel;

use super::environ::read_marker_names;
use super::exe_hash::ExeHasher;
use super::feed::AgentFeed;
use super::overrides::{Governing, OverrideSet};
use super::registry::Registry;
use crate::bpf::records::tyr_agent_class;
use crate::pipeline::bounded_lru::BoundedLru;
use fingerprint::{EVIDENCE_KEPT, EVIDENCE_MAX_LEN, floor_char_boundary, identity, is_evidence, split_argv};
use governance::Rank;
use kernel::{KernelAgents, Write};

/// Ancestors listed in `agent_lineage`.
const LINEAGE_DEPTH: usize = 4;
/// Processes tracked, at most, and the bytes of their fingerprints.
pub const PROCESSES: usize = 65_536;
pub const PROCESS_BYTES: usize = 32 << 20;
/// What a tracked process costs besides its fingerprint's strings.
const STATE_OVERHEAD: usize = 256;
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

/// How a process is governed (see [`governance`] for the order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Governed {
    /// No agent.
    #[default]
    None,
    /// A discovered agent (registry index): a known type, or `unknown` for
    /// an unregistered agent.
    Agent(u32),
    /// An unregistered agent the registry had no room for.
    Unregistered,
    /// A known agent type the registry had no room for.
    Type(&'static str),
}

/// One process's detection state.
#[derive(Debug, Clone, Default)]
struct ProcState {
    /// Shared with forked children until one of them changes it.
    fingerprint: Arc<Fingerprint>,
    own: Option<Arc<Classification>>,
    governed: Governed,
    /// The governance came from an ancestor, not from the process's own fingerprint.
    inherited: bool,
    /// The parent's thread group id, for the lineage of agent types.
    parent: u32,
    /// A confident classification the governance did not follow.
    claimed: Option<&'static str>,
    /// The kernel entry the tracker wrote for this process, as (agent,
    /// class): taken back when it exits.
    kernel_entry: Option<(u32, u32)>,
    label: Option<Arc<AgentLabel>>,
}

impl ProcState {
    /// Roughly the bytes this state holds (for the tracker's byte bound).
    fn size(&self) -> usize {
        let fp = &*self.fingerprint;
        let strings = |list: &[String]| list.iter().map(String::len).sum::<usize>();
        STATE_OVERHEAD
            + fp.exe.len()
            + strings(&fp.argv)
            + strings(&fp.env_names)
            + strings(&fp.read_paths)
            + strings(&fp.written_names)
            + fp.first_sni.as_ref().map_or(0, String::len)
    }
}

/// Tracks which process is which agent.
#[derive(Debug)]
pub struct AgentTracker {
    registry: Registry,
    hasher: Option<ExeHasher>,
    kernel: Option<KernelAgents>,
    proc_root: PathBuf,
    /// Boot-time nanoseconds of the record being handled (0: unknown).
    record_ns: u64,
    processes: BoundedLru<u32, ProcState>,
    unregistered: UnregisteredAgents,
    unknown_label: Arc<AgentLabel>,
    overrides: OverrideSet,
    feed: Option<Arc<AgentFeed>>,
    /// Kernel map writes that failed.
    pub kernel_update_failures: u64,
    /// Processes moved to another class by an override set, in the kernel map.
    pub override_moves: u64,
    /// Confident classifications not followed: the process was already an
    /// agent (or restricted), whatever it exec'd.
    pub claims_ignored: u64,
    /// Kernel entries left alone because the write would have made them
    /// less strict (a process the tracker had forgotten).
    pub kernel_moves_refused: u64,
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
            kernel: kernel.map(|map| KernelAgents::new(map, &proc_root)),
            proc_root,
            record_ns: 0,
            processes: BoundedLru::new(NonZeroUsize::new(PROCESSES).unwrap_or(NonZeroUsize::MIN), PROCESS_BYTES),
            unregistered,
            unknown_label,
            overrides: OverrideSet::default(),
            feed: None,
            kernel_update_failures: 0,
            override_moves: 0,
            claims_ignored: 0,
            kernel_moves_refused: 0,
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
    /// entries moved. The one way a process leaves its agent's class.
    pub fn apply_overrides(&mut self, overrides: OverrideSet) -> usize {
        self.overrides = overrides;
        for state in self.processes.values_mut() {
            state.label = None;
        }
        let Some(kernel) = &self.kernel else { return 0 };
        let governing = governing!(self);
        let (moved, failed) = kernel.reclass(|agent| governing.class(agent));
        self.kernel_update_failures += failed;
        self.override_moves += moved;
        usize::try_from(moved).unwrap_or(usize::MAX)
    }

    /// The next records are from `boot_ns` (boot-time nanoseconds): kernel
    /// entries are written only for processes that started no later.
    pub fn at(&mut self, boot_ns: u64) {
        self.record_ns = boot_ns;
    }

    /// A tracker with no kernel map, no hashing and no /proc (tests, benchmarks).
    pub fn detached() -> Self {
        Self::new(Registry::in_memory(), None, None, PathBuf::from("/nonexistent"), UnregisteredAgents::Audit)
    }

    /// The registry of discovered agents.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exe hasher's counters, when hashing.
    pub fn hash_counters(&self) -> Option<&Arc<super::exe_hash::HashCounters>> {
        self.hasher.as_ref().map(ExeHasher::counters)
    }

    /// Processes evicted to keep the tracker within its bounds.
    pub fn evicted(&self) -> u64 {
        self.processes.evicted
    }

    /// The governance `pid` gets from its own past, its parent and the
    /// kernel's entry: the strictest of them.
    fn inherited(&self, pid: u32, ppid: u32, kernel_agent: u32) -> Governed {
        let kernel = (kernel_agent != 0).then_some(Governed::Agent(kernel_agent));
        [self.processes.peek(&pid).map(|s| s.governed), self.processes.peek(&ppid).map(|s| s.governed), kernel]
            .into_iter()
            .flatten()
            .fold(Governed::None, |best, next| if self.rank(next) > self.rank(best) { next } else { best })
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
        // (see `governance`).
        let governed = self.inherited(pid, ppid, kernel_agent);
        let mut state = ProcState {
            fingerprint: Arc::new(fingerprint),
            governed,
            inherited: governed != Governed::None,
            parent: ppid,
            kernel_entry: self.processes.peek(&pid).and_then(|s| s.kernel_entry),
            ..ProcState::default()
        };
        self.reclassify(pid, &mut state);
        self.put(pid, state);
        self.hasher.as_mut().and_then(|hasher| hasher.sha256(Path::new(exe)))
    }

    /// A process forked: the child belongs to the parent's agent.
    pub fn on_fork(&mut self, parent: u32, child: u32, kernel_agent: u32) {
        let parent_state = self.processes.get(&parent).cloned().unwrap_or_default();
        let governed = match parent_state.governed {
            Governed::None if kernel_agent != 0 => Governed::Agent(kernel_agent),
            governed => governed,
        };
        let mut state = ProcState {
            fingerprint: parent_state.fingerprint,
            own: parent_state.own,
            governed,
            inherited: governed != Governed::None,
            parent,
            claimed: parent_state.claimed,
            kernel_entry: None,
            label: None,
        };
        state.kernel_entry = match governed {
            // The fork raced the parent's classification: fix the kernel's view.
            Governed::Agent(index) if kernel_agent != index => self.write_governed(child, governed),
            // No index to compare with: the kernel's copy may predate the parent's entry.
            Governed::Type(_) | Governed::Unregistered => self.write_governed(child, governed),
            _ => None,
        };
        self.put(child, state);
    }

    /// A process exited.
    pub fn on_exit(&mut self, pid: u32) {
        let written = self.processes.pop(&pid).and_then(|s| s.kernel_entry);
        if let (Some((agent, agent_type)), Some(kernel)) = (written, &self.kernel) {
            kernel.forget(pid, tyr_agent_class { agent, agent_type }, self.record_ns);
        }
    }

    fn put(&mut self, pid: u32, state: ProcState) {
        let size = state.size();
        self.processes.put(pid, state, size);
    }

    /// A process opened a file: module loads and agent-specific files are evidence.
    pub fn on_file(&mut self, pid: u32, path: &str, write: bool) {
        if !is_evidence(path, write) {
            return;
        }
        let Some(mut state) = self.processes.pop(&pid) else { return };
        let entry = if write { path.rsplit('/').next().unwrap_or(path) } else { path };
        let entry = &entry[..floor_char_boundary(entry, EVIDENCE_MAX_LEN)];
        let fingerprint = &state.fingerprint;
        let list = if write { &fingerprint.written_names } else { &fingerprint.read_paths };
        if list.len() < EVIDENCE_KEPT && !list.iter().any(|e| e == entry) {
            let fingerprint = Arc::make_mut(&mut state.fingerprint);
            let list = if write { &mut fingerprint.written_names } else { &mut fingerprint.read_paths };
            list.push(entry.to_owned());
            self.reclassify(pid, &mut state);
        }
        self.put(pid, state);
    }

    /// A process made a TLS handshake; returns why it contradicts the
    /// process's agent fingerprint, if it does.
    pub fn on_tls(&mut self, pid: u32, server_name: &str) -> Option<String> {
        let mut state = self.processes.pop(&pid)?;
        if state.fingerprint.first_sni.is_none() {
            let name = &server_name[..floor_char_boundary(server_name, EVIDENCE_MAX_LEN)];
            Arc::make_mut(&mut state.fingerprint).first_sni = Some(name.to_owned());
            self.reclassify(pid, &mut state);
        }
        let agent_type = self.effective_type(state.governed);
        self.put(pid, state);
        agents::egress_mismatch(agent_type?, server_name)
    }

    /// The label for events of `pid` (`kernel_agent`: what the kernel's map said).
    pub fn label(&mut self, pid: u32, kernel_agent: u32) -> Arc<AgentLabel> {
        if let Some(state) = self.processes.get(&pid)
            && let Some(label) = &state.label
        {
            if let (Some(feed), Governed::Agent(index)) = (&self.feed, state.governed) {
                feed.saw(index);
            }
            return Arc::clone(label);
        }
        let lineage = self.lineage(pid);
        if let Some(state) = self.processes.get_mut(&pid) {
            let subject = label::Subject {
                governed: state.governed,
                own: state.own.as_deref(),
                inherited: state.inherited,
                claimed: state.claimed,
            };
            let mut label = label::build(governing!(self), &subject, &self.unknown_label);
            if !lineage.is_empty() {
                label.metadata.push(("agent_lineage", Arc::from(lineage)));
            }
            let label = Arc::new(label);
            state.label = Some(Arc::clone(&label));
            if let (Some(feed), Governed::Agent(index)) = (&self.feed, state.governed) {
                feed.saw(index);
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
            let agent_type = state.and_then(|s| self.effective_type(s.governed)).unwrap_or(UNKNOWN);
            chain.push(format!("{ancestor}:{agent_type}"));
            current = state.map(|s| s.parent);
        }
        chain.join(",")
    }

    /// The type a governance labels events with (None: no agent type).
    fn effective_type(&self, governed: Governed) -> Option<&'static str> {
        match governed {
            Governed::Agent(index) => governing!(self).effective_type(index),
            Governed::Type(agent_type) => Some(agent_type),
            Governed::Unregistered | Governed::None => None,
        }
    }

    /// The kernel class of a governance.
    fn class(&self, governed: Governed) -> u32 {
        match governed {
            Governed::None => 0,
            Governed::Agent(index) => governing!(self).class(index),
            Governed::Type(agent_type) => class_of(agent_type).unwrap_or(0),
            Governed::Unregistered if self.unregistered.restriction().is_some() => UNREGISTERED_CLASS,
            Governed::Unregistered => UNKNOWN_CLASS,
        }
    }

    /// How strictly `governed` governs; an operator's override counts as
    /// an agent whatever its type (detection never undoes an operator).
    fn rank(&self, governed: Governed) -> Rank {
        let rank = Rank::of_class(self.class(governed));
        match governed {
            Governed::Agent(index) if governing!(self).overridden(index) => rank.max(Rank::Agent),
            _ => rank,
        }
    }

    /// Scores the fingerprint again and adopts a result that makes the
    /// process's governance stricter (see `governance`); a confident one it
    /// may not adopt is kept as a claim.
    fn reclassify(&mut self, pid: u32, state: &mut ProcState) {
        let own = agents::classify(&state.fingerprint);
        state.label = None;
        let rank = self.rank(state.governed);
        if own.is_confident() && rank.may_become_agent() {
            let index = self.discover(own.agent_type, &state.fingerprint, &own);
            let governed = if index == 0 { Governed::Type(own.agent_type) } else { Governed::Agent(index) };
            self.adopt(pid, state, governed);
        } else if own.is_confident() {
            let claimed = (self.effective_type(state.governed) != Some(own.agent_type)).then_some(own.agent_type);
            if claimed.is_some() && state.claimed != claimed {
                self.claims_ignored += 1;
            }
            state.claimed = claimed.or(state.claimed);
        } else if rank == Rank::None && own.confidence > 0 {
            // An unregistered agent: discovered as `unknown`, so operators
            // see it and can promote it. Under quarantine or deny the
            // kernel governs it (and, through fork, its children) by the
            // unregistered overlay from now on.
            let index = self.discover(UNKNOWN, &state.fingerprint, &own);
            let governed = if index == 0 { Governed::Unregistered } else { Governed::Agent(index) };
            self.adopt(pid, state, governed);
        }
        state.own = Some(Arc::new(own)).filter(|c| c.confidence > 0);
    }

    /// Puts the process under `governed`, in the kernel too.
    fn adopt(&mut self, pid: u32, state: &mut ProcState, governed: Governed) {
        if state.governed != governed {
            state.governed = governed;
            state.inherited = false;
            state.claimed = None;
            if let Some(entry) = self.write_governed(pid, governed) {
                state.kernel_entry = Some(entry);
            }
        }
    }

    /// Registers (or finds) the agent of type `agent_type` for this
    /// fingerprint; tells the feed when it is new or its hash became known.
    /// 0: not registered (the registry is full).
    fn discover(&mut self, agent_type: &str, fingerprint: &Fingerprint, own: &Classification) -> u32 {
        let known = self.registry.len();
        let index = self.registry.discover(
            agent_type,
            &identity(fingerprint),
            &fingerprint.exe,
            own.confidence,
            &own.evidence_text(),
        );
        if index == 0 {
            return 0;
        }
        let mut changed = self.registry.len() != known;
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

    /// Writes `governed` as `pid`'s kernel entry, unless the entry there
    /// now would become less strict (counted) or the process is gone;
    /// returns the entry written, as (agent, class).
    fn write_governed(&mut self, pid: u32, governed: Governed) -> Option<(u32, u32)> {
        let agent = match governed {
            Governed::Agent(index) => index,
            _ => 0,
        };
        let value = tyr_agent_class { agent, agent_type: self.class(governed) };
        let kernel = self.kernel.as_ref()?;
        match kernel.write(pid, value, self.record_ns) {
            Write::Written => return Some((value.agent, value.agent_type)),
            Write::Gone => {}
            Write::Refused => self.kernel_moves_refused += 1,
            Write::Failed => self.kernel_update_failures += 1,
        }
        None
    }

    /// The unregistered-agents mode events are labelled with.
    pub fn unregistered(&self) -> UnregisteredAgents {
        self.unregistered
    }
}

#[cfg(test)]
mod tests;
