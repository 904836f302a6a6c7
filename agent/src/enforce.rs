//! In-kernel policy: installs a compiled policy into the inactive one of the
//! kernel's two policy slots, then flips the one-word switch. A program
//! reads the switch once per decision, so no syscall is ever checked
//! against a half-written policy; if writing fails, the switch is not
//! flipped and the previous policy stays in force. The slot that was active
//! is emptied once the switch has moved on; what cannot be removed is kept
//! on record and removed before anything is written into that slot again,
//! so no entry of an old policy ever points into a new one.

mod layout;
pub mod link_scan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle};
use tracing::warn;
use tyr_common::policy::compile::bytes::verdict_code;
use tyr_common::policy::compile::glob::GlobAutomaton;
use tyr_common::policy::compile::{CompiledPolicy, MAX_CANDIDATES, MAX_PATH_CANDIDATES, RuleInfo};
use tyr_common::policy::model::PolicySet;

use crate::bpf::records::{tyr_glob, tyr_net_candidates, tyr_path_candidates, tyr_policy_slot};
use crate::capture::{NetPolicyMaps, PathPolicyMaps, PolicyMaps};

/// Policy versions whose rule names stay resolvable for events still in the
/// ring when newer versions are installed (a compiled policy is small).
const VERSIONS_KEPT: usize = 256;
/// Where no RCU grace period can be waited for (see
/// [`wait_for_old_readers`]): how long a program that read the old switch
/// value may still be using the old slot before it is emptied (programs run
/// for microseconds).
const GRACE: Duration = Duration::from_millis(20);

/// Why a policy could not be installed (the previous one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("writing {map}: {source}")]
    Map { map: &'static str, source: libbpf_rs::Error },
    #[error("{count} {what} prefixes; the kernel trie holds {capacity}")]
    TooManyPrefixes { what: &'static str, count: usize, capacity: u32 },
}

/// The compiled policies events may refer to, by version, and the policy
/// in force (for the rules the kernel does not enforce yet).
#[derive(Debug, Clone, Default)]
pub struct PolicyVersions {
    compiled: Arc<RwLock<BTreeMap<i64, Arc<CompiledPolicy>>>>,
    in_force: Arc<RwLock<Option<InForce>>>,
}

/// A policy in force: its version and its source rules.
pub type InForce = (i64, Arc<PolicySet>);

impl PolicyVersions {
    /// The rule `rule` (1-based) of `version`.
    pub fn rule(&self, version: i64, rule: u32) -> Option<RuleInfo> {
        let versions = self.compiled.read().ok()?;
        versions.get(&version)?.rule(rule).cloned()
    }

    /// The version and source of the policy in force, if any.
    pub fn in_force(&self) -> Option<InForce> {
        self.in_force.read().ok()?.clone()
    }

    fn insert(&self, policy: Arc<CompiledPolicy>) {
        if let Ok(mut versions) = self.compiled.write() {
            versions.insert(policy.version, policy);
            while versions.len() > VERSIONS_KEPT {
                versions.pop_first();
            }
        }
    }

    fn set_in_force(&self, version: i64, source: Arc<PolicySet>) {
        if let Ok(mut in_force) = self.in_force.write() {
            *in_force = Some((version, source));
        }
    }
}

/// What was written into one slot and not removed yet, so it can be
/// emptied again.
#[derive(Debug, Default)]
struct SlotContents {
    net4_keys: Vec<Vec<u8>>,
    net6_keys: Vec<Vec<u8>>,
    net_lists: u32,
    path_keys: Vec<Vec<u8>>,
    path_lists: u32,
}

/// Writes policies into the kernel.
#[derive(Debug)]
pub struct PolicyInstaller {
    maps: PolicyMaps,
    active: Option<usize>,
    contents: [SlotContents; 2],
    versions: PolicyVersions,
    /// Slots that could not be emptied: after a switch (the new policy is
    /// in force regardless), or before an install into them (which then
    /// fails). What was not removed is retried before the slot's next use.
    pub clear_failures: u64,
    /// Switches after which the old slot was emptied following a fixed
    /// grace rather than a kernel RCU grace period.
    pub unsynchronised_swaps: u64,
}

/// Waits until no BPF program can still be reading the policy slot just
/// switched away from; false when only a fixed grace could be waited.
///
/// The hooks run their programs inside an RCU read-side section, so one RCU
/// grace period after the switch is exactly that wait. `membarrier(2)`
/// with `MEMBARRIER_CMD_GLOBAL` runs one (`synchronize_rcu`) when more than
/// one CPU is online; on one CPU it returns at once, and nohz_full kernels
/// refuse it, so there the fixed [`GRACE`] serves.
impl PolicyInstaller {
    /// A handle on the kernel's map of protected names kept on inodes, when
    /// the BPF LSM hooks loaded (see [`link_scan`]).
    pub fn inode_ids(&self) -> Option<MapHandle> {
        self.maps.inode_ids.as_ref().and_then(|map| MapHandle::try_from(map).ok())
    }
}

fn wait_for_old_readers() -> bool {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: sysconf(3) with a valid name has no preconditions.
    let online_cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online_cpus > 1 {
        // SAFETY: membarrier(2) takes two integers and touches no memory of ours.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0 as libc::c_long) };
        if rc == 0 {
            return true;
        }
    }
    std::thread::sleep(GRACE);
    false
}

fn map_error(map: &'static str) -> impl Fn(libbpf_rs::Error) -> InstallError {
    move |source| InstallError::Map { map, source }
}

/// Writes a Plain value at array index `index`.
fn put<T: plain::Plain>(map: &MapHandle, name: &'static str, index: u32, value: &T) -> Result<(), InstallError> {
    // SAFETY: the values written are Plain repr(C) structs of integers.
    let bytes = unsafe { plain::as_bytes(value) };
    map.update(&index.to_ne_bytes(), bytes, MapFlags::ANY).map_err(map_error(name))
}

fn net_list(list: &[tyr_common::policy::compile::NetCandidate]) -> tyr_net_candidates {
    let mut value = tyr_net_candidates { count: list.len().min(MAX_CANDIDATES) as u32, ..Default::default() };
    for (entry, candidate) in value.list.iter_mut().zip(list) {
        entry.rule = candidate.rule;
        entry.verdict = verdict_code(candidate.verdict);
        entry.nports = candidate.ports.len() as u8;
        for (range, port) in entry.ports.iter_mut().zip(&candidate.ports) {
            range.first = port.first;
            range.last = port.last;
        }
    }
    value
}

fn path_list(list: &[tyr_common::policy::compile::PathCandidate]) -> tyr_path_candidates {
    let mut value = tyr_path_candidates { count: list.len().min(MAX_PATH_CANDIDATES) as u32, ..Default::default() };
    for (entry, candidate) in value.list.iter_mut().zip(list) {
        entry.rule = candidate.rule;
        entry.verdict = verdict_code(candidate.verdict);
        (entry.r#match, entry.len, entry.glob) = candidate.matcher.fields();
    }
    value
}

fn glob_value(automaton: &GlobAutomaton) -> tyr_glob {
    tyr_glob {
        accept: automaton.accept,
        star: automaton.star,
        before_star: automaton.before_star,
        chars: automaton.chars,
    }
}

impl PolicyInstaller {
    pub fn new(maps: PolicyMaps) -> Self {
        Self {
            maps,
            active: None,
            contents: Default::default(),
            versions: PolicyVersions::default(),
            clear_failures: 0,
            unsynchronised_swaps: 0,
        }
    }

    /// The versions events can resolve rule names in.
    pub fn versions(&self) -> PolicyVersions {
        self.versions.clone()
    }

    /// Whether file and exec rules reach the kernel (BPF LSM loaded).
    pub fn enforces_paths(&self) -> bool {
        self.maps.path.is_some()
    }

    /// Installs `policy` (compiled from `source`) and makes it the one in force.
    pub fn install(&mut self, policy: Arc<CompiledPolicy>, source: Arc<PolicySet>) -> Result<(), InstallError> {
        let (net, path) = (self.maps.net.as_ref(), self.maps.path.as_ref());
        for (what, count, trie) in [
            ("IPv4", policy.net_prefixes.iter().filter(|p| p.cidr.addr.is_ipv4()).count(), net.map(|n| &n.v4[0])),
            ("IPv6", policy.net_prefixes.iter().filter(|p| !p.cidr.addr.is_ipv4()).count(), net.map(|n| &n.v6[0])),
            ("path", policy.path_prefixes.len(), path.map(|p| &p.tries[0])),
        ] {
            // The trie's own size, as the kernel created it.
            let capacity = trie.map_or(u32::MAX, MapCore::max_entries);
            if count > capacity as usize {
                return Err(InstallError::TooManyPrefixes { what, count, capacity });
            }
        }
        let slot = self.active.map_or(0, |s| 1 - s);
        // Whatever a failed install or clear left here is removed first:
        // nothing is written next to an old policy's entries.
        if let Err(error) = self.clear(slot) {
            self.clear_failures += 1;
            return Err(error);
        }
        self.versions.insert(Arc::clone(&policy));
        self.write(slot, &policy)?;

        let switch = (slot as u32 + 1).to_ne_bytes();
        self.maps.active.update(&0u32.to_ne_bytes(), &switch, MapFlags::ANY).map_err(map_error("tyr_policy_active"))?;
        let previous = self.active.replace(slot);
        self.versions.set_in_force(policy.version, source);
        if let Some(previous) = previous {
            if !wait_for_old_readers() {
                self.unsynchronised_swaps += 1;
            }
            if let Err(error) = self.clear(previous) {
                self.clear_failures += 1;
                warn!(%error, slot = previous, "old policy slot not emptied; retried before its next use");
            }
        }
        Ok(())
    }

    fn write(&mut self, slot: usize, policy: &CompiledPolicy) -> Result<(), InstallError> {
        if let Some(net) = &self.maps.net {
            write_net(net, slot, policy, &mut self.contents[slot])?;
        }
        if let Some(path) = &self.maps.path {
            write_path(path, slot, policy, &mut self.contents[slot])?;
        }
        let meta = tyr_policy_slot {
            version: u64::try_from(policy.version).unwrap_or(0),
            default_verdict: u32::from(verdict_code(policy.default_verdict)),
            flags: slot_flags(policy),
        };
        put(&self.maps.slots, "tyr_policy_slots", slot as u32, &meta)
    }

    /// Empties a slot that is not in force, as far as the kernel lets it:
    /// what could not be removed stays in the slot's contents, for the next
    /// clear to retry, and the first failure is returned. Glob automata are
    /// only read through list entries, so stale ones are harmless and
    /// overwritten.
    fn clear(&mut self, slot: usize) -> Result<(), InstallError> {
        let contents = &mut self.contents[slot];
        let mut failure = None;
        if let Some(net) = &self.maps.net {
            remove_keys(&net.v4[slot], "tyr_net4", &mut contents.net4_keys, &mut failure);
            remove_keys(&net.v6[slot], "tyr_net6", &mut contents.net6_keys, &mut failure);
            reset_lists::<tyr_net_candidates>(&net.lists[slot], "tyr_net_lists", &mut contents.net_lists, &mut failure);
        }
        if let Some(path) = &self.maps.path {
            remove_keys(&path.tries[slot], "tyr_path_trie", &mut contents.path_keys, &mut failure);
            reset_lists::<tyr_path_candidates>(
                &path.lists[slot],
                "tyr_path_lists",
                &mut contents.path_lists,
                &mut failure,
            );
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Deletes `keys` from `map`, keeping those whose delete failed (a key
/// already gone is removed); the first failure goes to `failure`.
fn remove_keys(map: &MapHandle, name: &'static str, keys: &mut Vec<Vec<u8>>, failure: &mut Option<InstallError>) {
    keys.retain(|key| match delete_key(map, key) {
        Ok(()) => false,
        Err(source) => {
            failure.get_or_insert(InstallError::Map { map: name, source });
            true
        }
    });
}

fn delete_key(map: &MapHandle, key: &[u8]) -> Result<(), libbpf_rs::Error> {
    #[cfg(test)]
    tests::injected_delete_failure()?;
    match map.delete(key) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        result => result,
    }
}

/// Resets the first `*count` entries of a candidate list array to empty
/// lists; `*count` stays as it was when any reset failed, so all are retried.
fn reset_lists<T: plain::Plain + Default>(
    map: &MapHandle,
    name: &'static str,
    count: &mut u32,
    failure: &mut Option<InstallError>,
) {
    let mut failed = false;
    for index in 0..*count {
        if let Err(error) = put(map, name, index, &T::default()) {
            failure.get_or_insert(error);
            failed = true;
        }
    }
    if !failed {
        *count = 0;
    }
}

fn write_net(
    maps: &NetPolicyMaps,
    slot: usize,
    policy: &CompiledPolicy,
    contents: &mut SlotContents,
) -> Result<(), InstallError> {
    for (index, list) in policy.net_lists.iter().enumerate() {
        put(&maps.lists[slot], "tyr_net_lists", index as u32, &net_list(list))?;
        contents.net_lists = contents.net_lists.max(index as u32 + 1);
    }
    for prefix in &policy.net_prefixes {
        let key = layout::net_key(prefix.class, prefix.cidr.prefix, prefix.cidr.addr);
        let (map, keys) = if prefix.cidr.addr.is_ipv4() {
            (&maps.v4[slot], &mut contents.net4_keys)
        } else {
            (&maps.v6[slot], &mut contents.net6_keys)
        };
        map.update(&key, &prefix.list.to_ne_bytes(), MapFlags::ANY).map_err(map_error("tyr_net_trie"))?;
        keys.push(key);
    }
    Ok(())
}

fn write_path(
    maps: &PathPolicyMaps,
    slot: usize,
    policy: &CompiledPolicy,
    contents: &mut SlotContents,
) -> Result<(), InstallError> {
    for (index, glob) in policy.globs.iter().enumerate() {
        // from_bytes and compile both refuse globs without an automaton.
        let Some(automaton) = GlobAutomaton::new(glob) else { continue };
        put(&maps.globs[slot], "tyr_globs", index as u32, &glob_value(&automaton))?;
    }
    for (index, list) in policy.path_lists.iter().enumerate() {
        put(&maps.lists[slot], "tyr_path_lists", index as u32, &path_list(list))?;
        contents.path_lists = contents.path_lists.max(index as u32 + 1);
    }
    for prefix in &policy.path_prefixes {
        let key = layout::path_key(prefix.class, prefix.action, &prefix.bytes);
        maps.tries[slot].update(&key, &prefix.list.to_ne_bytes(), MapFlags::ANY).map_err(map_error("tyr_path_trie"))?;
        contents.path_keys.push(key);
    }
    Ok(())
}

/// What the kernel needs to know about a policy as a whole: whether it can
/// deny (a governed process the kernel cannot decide for is then refused).
fn slot_flags(policy: &CompiledPolicy) -> u32 {
    use tyr_common::policy::model::Verdict;
    let denies =
        policy.default_verdict == Verdict::Deny || policy.rules.iter().any(|rule| rule.verdict == Verdict::Deny);
    if denies { crate::bpf::records::tyr_slot_flag::TYR_SLOT_DENIES.0 } else { 0 }
}
