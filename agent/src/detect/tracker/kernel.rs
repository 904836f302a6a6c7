//! The kernel's pid -> agent map as the tracker writes it. The tracker
//! works from records, after the fact: the process a record names may have
//! exited since (the kernel then already removed its entry) and its pid may
//! even belong to another process by now. A write must neither bring an
//! exited process's entry back — a later process reusing the pid would
//! inherit it — nor land on that other process, nor make any entry less
//! strict ([`super::governance`]). So every write checks, through
//! `/proc/PID/stat`, that the pid still runs a live (not zombie) process
//! started no later than the record, and checks again after writing
//! (undoing the write when the process went meanwhile); and the entry the
//! tracker wrote is taken back when the process's exit is handled, unless
//! the pid already runs a newer process. (The kernel's fork hook leaves a
//! child's entry alone when the parent has none, so an entry that outlived
//! its process would be inherited by the pid's next owner.)

use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::governance::may_replace;
use crate::bpf::records::tyr_agent_class;

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Written,
    /// It would have made the entry less strict.
    Refused,
    /// The process is gone (or its pid reused): nothing written, or undone.
    Gone,
    Failed,
}

/// The map, and where to check processes.
#[derive(Debug)]
pub(super) struct KernelAgents {
    map: MapHandle,
    proc_root: PathBuf,
    /// Nanoseconds per clock tick of `/proc/PID/stat`'s start time.
    tick_ns: u64,
}

/// The state (field 3) and start time (field 22, clock ticks since boot)
/// in a `/proc/PID/stat` line.
fn state_and_start(stat: &str) -> Option<(char, u64)> {
    // After the comm (field 2), which may hold spaces and parentheses.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

/// What `/proc/PID/stat` tells of the process at a pid now.
enum AtPid {
    /// No process, or one that exited (a zombie).
    Gone,
    /// A live process started at this boot-time nanosecond (tick-rounded down).
    Running(u64),
}

fn entry_of(bytes: &[u8]) -> Option<tyr_agent_class> {
    let mut entry = tyr_agent_class { agent: 0, agent_type: 0 };
    plain::copy_from_bytes(&mut entry, bytes).ok().map(|()| entry)
}

fn as_bytes(entry: &tyr_agent_class) -> &[u8] {
    // SAFETY: tyr_agent_class is a Plain repr(C) struct of two u32.
    unsafe { plain::as_bytes(entry) }
}

impl KernelAgents {
    pub(super) fn new(map: MapHandle, proc_root: &Path) -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_ns = u64::try_from(ticks).ok().filter(|&t| t > 0).map_or(10_000_000, |t| 1_000_000_000 / t);
        Self { map, proc_root: proc_root.to_path_buf(), tick_ns }
    }

    fn at_pid(&self, pid: u32) -> AtPid {
        let stat = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat"));
        match stat.ok().as_deref().and_then(state_and_start) {
            Some((state, start)) if !matches!(state, 'Z' | 'X' | 'x') => {
                AtPid::Running(start.saturating_mul(self.tick_ns))
            }
            _ => AtPid::Gone,
        }
    }

    /// Whether `pid` still runs a live process started no later than
    /// `record_ns` (boot-time nanoseconds of the record; 0: any live one).
    fn same_process(&self, pid: u32, record_ns: u64) -> bool {
        matches!(self.at_pid(pid), AtPid::Running(start) if record_ns == 0 || start <= record_ns)
    }

    /// Deletes `pid`'s entry if it still is `value`.
    fn take_back(&self, pid: u32, value: tyr_agent_class) {
        let key = pid.to_ne_bytes();
        if let Ok(Some(bytes)) = self.map.lookup(&key, MapFlags::ANY)
            && entry_of(&bytes).is_some_and(|e| e.agent == value.agent && e.agent_type == value.agent_type)
        {
            let _ = self.map.delete(&key);
        }
    }

    /// The process that had `value` written exited (its exit record made
    /// at `record_ns`): takes the entry back unless a newer process has the pid.
    pub(super) fn forget(&self, pid: u32, value: tyr_agent_class, record_ns: u64) {
        match self.at_pid(pid) {
            AtPid::Running(start) if record_ns == 0 || start > record_ns => {}
            _ => self.take_back(pid, value),
        }
    }

    /// Writes `value` as `pid`'s entry (see the module documentation);
    /// `record_ns` is when the record that led to it was made.
    pub(super) fn write(&self, pid: u32, value: tyr_agent_class, record_ns: u64) -> Write {
        if !self.same_process(pid, record_ns) {
            return Write::Gone;
        }
        let key = pid.to_ne_bytes();
        let current = match self.map.lookup(&key, MapFlags::ANY) {
            Ok(bytes) => bytes.as_deref().and_then(entry_of),
            Err(_) => return Write::Failed,
        };
        if !may_replace(current, value) {
            return Write::Refused;
        }
        if self.map.update(&key, as_bytes(&value), MapFlags::ANY).is_err() {
            return Write::Failed;
        }
        if self.same_process(pid, record_ns) {
            return Write::Written;
        }
        // Gone while writing: take back what was written, and only that.
        self.take_back(pid, value);
        Write::Gone
    }

    /// Sets the class of every entry of a discovered agent to `class_of`
    /// its agent (operators' overrides): returns (moved, failed).
    pub(super) fn reclass(&self, class_of: impl Fn(u32) -> u32) -> (u64, u64) {
        let mut moves = Vec::new();
        for key in self.map.keys() {
            let Some(current) = self.map.lookup(&key, MapFlags::ANY).ok().flatten().as_deref().and_then(entry_of)
            else {
                continue;
            };
            let class = class_of(current.agent);
            if current.agent != 0 && class != current.agent_type {
                moves.push((key, tyr_agent_class { agent: current.agent, agent_type: class }));
            }
        }
        let (mut moved, mut failed) = (0, 0);
        for (key, value) in moves {
            // EXIST: a process that exited meanwhile is not brought back.
            match self.map.update(&key, as_bytes(&value), MapFlags::EXIST) {
                Ok(()) => moved += 1,
                Err(error) if error.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(_) => failed += 1,
            }
        }
        (moved, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_start_times_are_read_after_the_comm() {
        let stat = "42 (a) b) c) Z 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(state_and_start(stat), Some(('Z', 123_456)));
        assert_eq!(state_and_start("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("stat");
        assert!(state_and_start(&own).is_some_and(|(state, start)| state != 'Z' && start > 0));
    }
}
