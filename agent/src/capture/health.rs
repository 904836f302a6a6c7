//! The kernel side's health counters (`tyr_health`), and the test-only
//! fault injection switch.

use serde::Serialize;

use super::FAULT_INJECT_ENV;
use crate::bpf::records::{tyr_fault, tyr_health_counter};

/// Counters in `tyr_health` (`TYR_HEALTH_COUNT`).
pub const HEALTH_COUNT: usize = tyr_health_counter::TYR_HEALTH_COUNT.0 as usize;

/// What the kernel counted about its own operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KernelHealth {
    /// Forks whose agent class found no room in `tyr_agents`: the child was
    /// kept governed through its task's storage.
    pub agents_full: u64,
    /// Decisions made in per-task scratch because the CPU's was held.
    pub task_scratch: u64,
    /// File identities on a filesystem tyrd's namespace does not mount.
    pub identity_unmapped: u64,
    /// File identities deeper or longer than the kernel's walk.
    pub identity_deep: u64,
    /// Operations of governed processes refused because one of their names
    /// or checks could not be resolved.
    pub incomplete: u64,
}

impl KernelHealth {
    pub(super) fn from_totals(totals: [u64; HEALTH_COUNT]) -> Self {
        let at = |counter: tyr_health_counter| totals[counter.0 as usize];
        Self {
            agents_full: at(tyr_health_counter::TYR_HEALTH_AGENTS_FULL),
            task_scratch: at(tyr_health_counter::TYR_HEALTH_TASK_SCRATCH),
            identity_unmapped: at(tyr_health_counter::TYR_HEALTH_IDENTITY_UNMAPPED),
            identity_deep: at(tyr_health_counter::TYR_HEALTH_IDENTITY_DEEP),
            incomplete: at(tyr_health_counter::TYR_HEALTH_INCOMPLETE),
        }
    }
}

/// Faults tests can inject through [`FAULT_INJECT_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// Every scratch claim of a kernel policy decision fails.
    Scratch,
    /// File checks stop after the first, as if their scratch were lost.
    Incomplete,
    /// Attaching `cgroup/connect4` fails.
    ConnectAttach,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Scratch => "scratch",
            Self::Incomplete => "incomplete",
            Self::ConnectAttach => "connect-attach",
        }
    }
}

/// Whether [`FAULT_INJECT_ENV`] (a comma-separated list) asks for `fault`.
pub(super) fn fault_injected(fault: Fault) -> bool {
    std::env::var(FAULT_INJECT_ENV).is_ok_and(|faults| faults.split(',').any(|f| f.trim() == fault.name()))
}

/// The kernel's fault injection bits (`enum tyr_fault`) asked for.
pub(super) fn fault_injection() -> u32 {
    [(Fault::Scratch, tyr_fault::TYR_FAULT_SCRATCH), (Fault::Incomplete, tyr_fault::TYR_FAULT_INCOMPLETE)]
        .into_iter()
        .filter(|(fault, _)| fault_injected(*fault))
        .fold(0, |bits, (_, bit)| bits | bit.0)
}
