//! Which way detection may move a process: only to stricter governance.
//!
//! Every detection signal (exe path and name, argv, environment markers,
//! modules read, files written, TLS names) is under the process's own
//! control, so a governed agent could otherwise exec — or fork and exec —
//! a binary fingerprinted as a more permissive agent, or fake its signals,
//! and be moved to that agent's overlay. Governance is ranked:
//!
//! 1. **none** — no agent (no kernel entry, the base policy);
//! 2. **unknown** — an unregistered agent under `unregistered_agents:
//!    audit` (the `unknown` overlay);
//! 3. **agent** — a known agent type, detected or set by an operator's
//!    override (that type's overlay);
//! 4. **restricted** — an unregistered agent under `quarantine` or `deny`
//!    (the `unregistered` overlay).
//!
//! "Stricter" means a higher rank. Detection moves a process only from
//! **none** to any other rank, or from **unknown** to **agent** (a weak
//! candidate that becomes confident); it never moves a process from one
//! agent to another (not even to a new agent of the same type, which an
//! operator's override of the first would not cover), nor out of
//! **restricted**. A process keeps what it was classified as, or inherited,
//! whatever it execs; only operators reclassify (overrides, applied by
//! [`super::AgentTracker::apply_overrides`]), and a process whose agent an
//! operator overrode ranks as **agent** whatever type the override names.
//!
//! One caveat stays with policy authors: an overlay refines the base, so
//! an overlay that allows what the base denies grants it to any process
//! that looks like that agent — a plain process can fake the signals too.

use tyr_common::policy::compile::{BASE_CLASS, UNKNOWN_CLASS, UNREGISTERED_CLASS};

use crate::bpf::records::tyr_agent_class;

/// How strictly a process is governed (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    None,
    Unknown,
    Agent,
    Restricted,
}

impl Rank {
    /// The rank of a kernel class.
    pub fn of_class(class: u32) -> Self {
        match class {
            BASE_CLASS => Self::None,
            UNKNOWN_CLASS => Self::Unknown,
            UNREGISTERED_CLASS => Self::Restricted,
            _ => Self::Agent,
        }
    }

    /// Whether detection may put a process of this rank under a known
    /// agent type.
    pub fn may_become_agent(self) -> bool {
        matches!(self, Self::None | Self::Unknown)
    }
}

/// Whether detection may replace the kernel entry `current` (None: the
/// process has none) with `next`: the check made right before every write,
/// against what the kernel holds, so a process the tracker forgot (evicted,
/// or started before tyrd) cannot be moved either.
pub fn may_replace(current: Option<tyr_agent_class>, next: tyr_agent_class) -> bool {
    let Some(current) = current else { return true };
    let (from, to) = (Rank::of_class(current.agent_type), Rank::of_class(next.agent_type));
    (current.agent == next.agent && current.agent_type == next.agent_type) || from == Rank::None || to > from
}

#[cfg(test)]
mod tests {
    use super::*;
    use tyr_common::policy::compile::class_of;

    fn entry(agent: u32, agent_type: u32) -> tyr_agent_class {
        tyr_agent_class { agent, agent_type }
    }

    #[test]
    fn only_stricter_moves_are_allowed() {
        let claude = class_of("claude-code").expect("class");
        let cursor = class_of("cursor").expect("class");
        assert!(Rank::None < Rank::Unknown && Rank::Unknown < Rank::Agent && Rank::Agent < Rank::Restricted);
        // From nothing, anything.
        assert!(may_replace(None, entry(1, claude)));
        assert!(may_replace(Some(entry(0, BASE_CLASS)), entry(1, claude)));
        // From unknown, to an agent or restricted, not back or sideways.
        assert!(may_replace(Some(entry(2, UNKNOWN_CLASS)), entry(1, claude)));
        assert!(may_replace(Some(entry(2, UNKNOWN_CLASS)), entry(0, UNREGISTERED_CLASS)));
        assert!(!may_replace(Some(entry(2, UNKNOWN_CLASS)), entry(3, UNKNOWN_CLASS)));
        // An agent is never moved to another agent, of another type or the same.
        assert!(!may_replace(Some(entry(1, claude)), entry(4, cursor)));
        assert!(!may_replace(Some(entry(1, claude)), entry(5, claude)));
        assert!(!may_replace(Some(entry(0, claude)), entry(4, cursor)), "registry full: typed, no index");
        assert!(!may_replace(Some(entry(1, claude)), entry(0, UNKNOWN_CLASS)));
        assert!(may_replace(Some(entry(1, claude)), entry(1, claude)), "the same entry again");
        // Restricted stays restricted.
        assert!(!may_replace(Some(entry(2, UNREGISTERED_CLASS)), entry(1, claude)));
        assert!(!may_replace(Some(entry(0, UNREGISTERED_CLASS)), entry(1, claude)));
        assert!(Rank::Unknown.may_become_agent() && !Rank::Agent.may_become_agent());
    }
}
