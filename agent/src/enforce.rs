//! In-kernel policy: installs a compiled policy into the inactive one of the
//! kernel's two policy slots, then flips the one-word switch. A program
//! reads the switch once per decision, so no syscall is ever checked
//! against a half-written policy; if writing fails, the switch is not
//! flipped and the previous policy stays in force. The slot that was active
//! is emptied once the switch has moved on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags};
use tyr_common::policy::compile::{CompiledPolicy, MAX_CANDIDATES, RuleInfo};
use tyr_common::policy::model::{PolicySet, Verdict};

use crate::bpf::records::{tyr_net_candidates, tyr_policy_slot};
use crate::capture::PolicyMaps;

/// Entries each prefix trie holds (bpf/lib/net_policy.h).
const TRIE_CAPACITY: usize = 16_384;
/// Policy versions whose rule names stay resolvable for events still in the
/// ring when newer versions are installed (a compiled policy is small).
const VERSIONS_KEPT: usize = 256;
/// How long a program that read the old switch value may still be using
/// the old slot before it is emptied (programs run for microseconds).
const GRACE: Duration = Duration::from_millis(20);

/// Why a policy could not be installed (the previous one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("writing {map}: {source}")]
    Map { map: &'static str, source: libbpf_rs::Error },
    #[error("{count} IPv{family} prefixes; the kernel trie holds {TRIE_CAPACITY}")]
    TooManyPrefixes { family: u8, count: usize },
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

/// What was written into one slot, so it can be emptied again.
#[derive(Debug, Default)]
struct SlotContents {
    net4_keys: Vec<Vec<u8>>,
    net6_keys: Vec<Vec<u8>>,
    lists: u32,
}

/// Writes policies into the kernel.
#[derive(Debug)]
pub struct PolicyInstaller {
    maps: PolicyMaps,
    active: Option<usize>,
    contents: [SlotContents; 2],
    versions: PolicyVersions,
    /// Old slots that could not be emptied after a switch (the new policy
    /// is in force regardless; the slot is emptied before its next use).
    pub clear_failures: u64,
}

fn verdict_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Allow => 1,
        Verdict::Deny => 2,
        Verdict::Alert => 3,
    }
}

/// The LPM key `{prefixlen, class (big-endian), addr}`.
fn trie_key(class: u32, prefix: u8, addr: IpAddr) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&(32 + u32::from(prefix)).to_ne_bytes());
    key.extend_from_slice(&class.to_be_bytes());
    match addr {
        IpAddr::V4(a) => key.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => key.extend_from_slice(&a.octets()),
    }
    key
}

fn map_error(map: &'static str) -> impl Fn(libbpf_rs::Error) -> InstallError {
    move |source| InstallError::Map { map, source }
}

impl PolicyInstaller {
    pub fn new(maps: PolicyMaps) -> Self {
        Self {
            maps,
            active: None,
            contents: Default::default(),
            versions: PolicyVersions::default(),
            clear_failures: 0,
        }
    }

    /// The versions events can resolve rule names in.
    pub fn versions(&self) -> PolicyVersions {
        self.versions.clone()
    }

    /// Installs `policy` (compiled from `source`) and makes it the one in force.
    pub fn install(&mut self, policy: Arc<CompiledPolicy>, source: Arc<PolicySet>) -> Result<(), InstallError> {
        for family in [4u8, 6] {
            let count = policy.prefixes.iter().filter(|p| p.cidr.addr.is_ipv4() == (family == 4)).count();
            if count > TRIE_CAPACITY {
                return Err(InstallError::TooManyPrefixes { family, count });
            }
        }
        let slot = self.active.map_or(0, |s| 1 - s);
        // Whatever a failed install left here is removed first.
        self.clear(slot)?;
        self.versions.insert(Arc::clone(&policy));
        self.write(slot, &policy)?;

        let switch = (slot as u32 + 1).to_ne_bytes();
        self.maps.active.update(&0u32.to_ne_bytes(), &switch, MapFlags::ANY).map_err(map_error("tyr_policy_active"))?;
        let previous = self.active.replace(slot);
        self.versions.set_in_force(policy.version, source);
        if let Some(previous) = previous {
            std::thread::sleep(GRACE);
            if self.clear(previous).is_err() {
                self.clear_failures += 1;
            }
        }
        Ok(())
    }

    fn write(&mut self, slot: usize, policy: &CompiledPolicy) -> Result<(), InstallError> {
        for (index, list) in policy.lists.iter().enumerate() {
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
            // SAFETY: tyr_net_candidates is a Plain repr(C) struct of integers.
            let bytes = unsafe { plain::as_bytes(&value) };
            self.maps.lists[slot]
                .update(&(index as u32).to_ne_bytes(), bytes, MapFlags::ANY)
                .map_err(map_error("tyr_net_lists"))?;
            self.contents[slot].lists = index as u32 + 1;
        }
        for prefix in &policy.prefixes {
            let key = trie_key(prefix.class, prefix.cidr.prefix, prefix.cidr.addr);
            let (map, keys) = if prefix.cidr.addr.is_ipv4() {
                (&self.maps.net4[slot], &mut self.contents[slot].net4_keys)
            } else {
                (&self.maps.net6[slot], &mut self.contents[slot].net6_keys)
            };
            map.update(&key, &prefix.list.to_ne_bytes(), MapFlags::ANY).map_err(map_error("tyr_net_trie"))?;
            keys.push(key);
        }
        let meta = tyr_policy_slot {
            version: u64::try_from(policy.version).unwrap_or(0),
            default_verdict: u32::from(verdict_code(policy.default_verdict)),
            reserved: 0,
        };
        // SAFETY: tyr_policy_slot is a Plain repr(C) struct of integers.
        let bytes = unsafe { plain::as_bytes(&meta) };
        self.maps
            .slots
            .update(&(slot as u32).to_ne_bytes(), bytes, MapFlags::ANY)
            .map_err(map_error("tyr_policy_slots"))
    }

    /// Empties a slot that is not in force.
    fn clear(&mut self, slot: usize) -> Result<(), InstallError> {
        let contents = std::mem::take(&mut self.contents[slot]);
        for key in &contents.net4_keys {
            self.maps.net4[slot].delete(key).map_err(map_error("tyr_net4"))?;
        }
        for key in &contents.net6_keys {
            self.maps.net6[slot].delete(key).map_err(map_error("tyr_net6"))?;
        }
        let empty = tyr_net_candidates::default();
        // SAFETY: as in write().
        let bytes = unsafe { plain::as_bytes(&empty) };
        for index in 0..contents.lists {
            self.maps.lists[slot]
                .update(&index.to_ne_bytes(), bytes, MapFlags::ANY)
                .map_err(map_error("tyr_net_lists"))?;
        }
        Ok(())
    }
}
