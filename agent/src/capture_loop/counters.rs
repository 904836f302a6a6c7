//! The capture loop's counters: atomics other threads (heartbeats, metrics)
//! read at any time, and the serialisable snapshot `tyrd observe` prints
//! on exit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::capture::KernelHealth;
use crate::capture::mounts::MountTableStats;
use crate::detect::exe_hash::HashCounters;
use crate::enforce::link_scan::LinkScanStats;
use crate::kinds::{ALL_KINDS, KIND_COUNT};

/// Counters printed on exit (a [`LiveCounters::snapshot`]).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// Records decoded, by kind (before the userspace filters).
    pub seen: BTreeMap<&'static str, u64>,
    /// Records the kernel could not emit, by kind.
    pub lost: BTreeMap<&'static str, u64>,
    /// Operations let through unchecked by policy (no scratch space), by kind.
    pub undecided: BTreeMap<&'static str, u64>,
    /// Operations of governed processes refused because the kernel could
    /// not decide them (fail closed), by kind.
    pub refused: BTreeMap<&'static str, u64>,
    /// The kernel side's own counters (agent map full, per-task scratch
    /// used, file identities that could not be resolved).
    pub kernel: KernelHealth,
    /// Files linked before the policy whose inode was given the protected name.
    pub hardlinks_protected: u64,
    /// Hard-link scans cut at their entry bound.
    pub hardlink_scans_cut: u64,
    /// File rule patterns too broad for the hard-link scan (no directory before `*`).
    pub hardlink_patterns_unscanned: u64,
    /// Inodes the kernel refused a protected name.
    pub hardlink_protect_failures: u64,
    /// Rewrites of the kernel's mount maps after a mount table change.
    pub mount_refreshes: u64,
    /// Mounts the kernel's maps could not hold (files there are decided on
    /// the name asked for alone, or named by identity at a walk's cost).
    pub mounts_unlisted: u64,
    /// Writes to the kernel's mount maps that failed.
    pub mount_write_failures: u64,
    /// Records that did not decode.
    pub decode_failed: u64,
    /// Events delivered to the sink (printed, for `tyrd observe`).
    pub printed: u64,
    /// TLS records whose ClientHello did not parse (still delivered).
    pub tls_unparsed: u64,
    /// Processes looked up in /proc because they started before tyrd.
    pub proc_reads: u64,
    /// AI agents discovered on this host so far.
    pub agents_discovered: usize,
    /// Writes to the kernel's pid -> agent map that failed.
    pub agent_map_failures: u64,
    /// Saves of the discovered-agents file that failed.
    pub agent_save_failures: u64,
    /// Agents not registered because the registry was full (still governed).
    pub agents_refused: u64,
    /// Confident classifications not followed because the process was
    /// already governed as an agent (no class laundering).
    pub agent_claims_ignored: u64,
    /// Kernel agent entries left alone because a write would have made
    /// them less strict.
    pub agent_moves_refused: u64,
    /// Processes evicted from the process cache (entry or byte bound).
    pub processes_evicted: u64,
    /// Processes evicted from the agent tracker (entry or byte bound).
    pub agent_processes_evicted: u64,
    /// Executables hashed.
    pub exe_hashed: u64,
    /// Digests evicted from the executable hash cache.
    pub exe_hash_evicted: u64,
    /// Executables not hashed: larger than the size cap.
    pub exe_hash_too_large: u64,
    /// Hash requests dropped: the queue was full (asked again at the next exec).
    pub exe_hash_queue_full: u64,
    /// Executables that could not be read, or changed while hashed.
    pub exe_hash_failed: u64,
    /// Old policy slots that could not be emptied after a swap.
    pub policy_clear_failures: u64,
    /// Policy swaps that waited a fixed grace, not an RCU grace period,
    /// before emptying the old slot.
    pub policy_swaps_unsynchronised: u64,
}

/// Counters of a running capture loop, by atomics: readable from any thread
/// at any time. Kernel counts (lost, undecided) are polled every second;
/// the rest are published by the loop as it goes.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Records decoded, by kind number.
    seen: [AtomicU64; KIND_COUNT],
    /// Records the kernel could not emit, by kind number.
    lost: [AtomicU64; KIND_COUNT],
    /// Operations let through unchecked by policy, by kind number.
    undecided: [AtomicU64; KIND_COUNT],
    /// Operations of governed processes refused undecided, by kind number.
    refused: [AtomicU64; KIND_COUNT],
    /// The kernel side's own counters, as last read.
    kernel: std::sync::Mutex<KernelHealth>,
    /// What the scans for hard links made before the policy did.
    pub link_scan: Arc<LinkScanStats>,
    /// Records that did not decode.
    pub decode_failed: AtomicU64,
    /// Records dropped because the userspace queue was full. The ring reader
    /// waits for the queue instead of dropping (loss then happens in the
    /// kernel, counted in `lost`), so this stays 0; it is kept for the
    /// heartbeat's drop counters.
    pub queue_overflow: AtomicU64,
    /// Events the sink took.
    pub delivered: AtomicU64,
    /// Batches the sink refused (the output was gone; the loop stopped).
    pub sink_failures: AtomicU64,
    /// TLS records whose ClientHello did not parse.
    pub tls_unparsed: AtomicU64,
    /// Processes read from /proc.
    pub proc_reads: AtomicU64,
    /// AI agents discovered on this host so far.
    pub agents_discovered: AtomicU64,
    /// Failed writes to the kernel's pid -> agent map.
    pub agent_map_failures: AtomicU64,
    /// Failed saves of the discovered-agents file.
    pub agent_save_failures: AtomicU64,
    /// Agents the full registry refused.
    pub agents_refused: AtomicU64,
    /// Confident classifications not followed.
    pub agent_claims_ignored: AtomicU64,
    /// Kernel agent entries a write would have made less strict.
    pub agent_moves_refused: AtomicU64,
    /// Process cache evictions.
    pub processes_evicted: AtomicU64,
    /// Agent tracker evictions.
    pub agent_processes_evicted: AtomicU64,
    /// Executables hashed, digests evicted, files too large, requests
    /// dropped on a full queue, and failures: the hasher's own atomics.
    pub exe_hash: OnceLock<Arc<HashCounters>>,
    /// The mount table watcher's own atomics (when file identities are on).
    pub mounts: OnceLock<Arc<MountTableStats>>,
    /// The policy version installed in the kernel (0: none yet).
    pub applied_policy_version: AtomicI64,
    /// Policy updates that could not be installed (the previous policy stayed).
    pub policy_install_failures: AtomicU64,
    /// Old policy slots that could not be emptied after a swap.
    pub policy_clear_failures: AtomicU64,
    /// Swaps that waited a fixed grace rather than an RCU grace period.
    pub policy_swaps_unsynchronised: AtomicU64,
}

fn load_all(counts: &[AtomicU64; KIND_COUNT]) -> [u64; KIND_COUNT] {
    std::array::from_fn(|i| counts[i].load(Ordering::Relaxed))
}

fn named(counts: &[u64; KIND_COUNT]) -> BTreeMap<&'static str, u64> {
    ALL_KINDS.iter().map(|&kind| (kind.as_str_name(), counts[kind as usize])).collect()
}

impl Counters {
    /// Where enforcement was less exact than the policy says, by cause:
    /// operations the kernel could not decide (refused or let through, by
    /// kind), and what could leave a file decided on fewer of its names.
    /// Only causes that happened; heartbeats carry it.
    pub fn enforcement_degraded(&self) -> BTreeMap<String, u64> {
        let by_kind = |prefix: &str, counts: &BTreeMap<&'static str, u64>| {
            counts.iter().map(|(kind, n)| (format!("{prefix}_{}", kind.to_ascii_lowercase()), *n)).collect::<Vec<_>>()
        };
        let causes = [
            ("kernel_agents_full", self.kernel.agents_full),
            ("identity_unmapped", self.kernel.identity_unmapped),
            ("identity_deep", self.kernel.identity_deep),
            ("incomplete", self.kernel.incomplete),
            ("hardlink_scans_cut", self.hardlink_scans_cut),
            ("hardlink_patterns_unscanned", self.hardlink_patterns_unscanned),
            ("hardlink_protect_failures", self.hardlink_protect_failures),
            ("mounts_unlisted", self.mounts_unlisted),
            ("mount_write_failures", self.mount_write_failures),
            ("agent_map_failures", self.agent_map_failures),
            ("policy_clear_failures", self.policy_clear_failures),
        ];
        by_kind("refused", &self.refused)
            .into_iter()
            .chain(by_kind("undecided", &self.undecided))
            .chain(causes.into_iter().map(|(cause, n)| (cause.to_owned(), n)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl LiveCounters {
    /// Counts one decoded record of kind number `kind`.
    pub(super) fn saw(&self, kind: i32) {
        if let Some(count) = usize::try_from(kind).ok().and_then(|k| self.seen.get(k)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores the kernel's lost and undecided totals.
    pub(super) fn set_kernel(&self, lost: &[u64; KIND_COUNT], undecided: &[u64; KIND_COUNT]) {
        for (slot, value) in self.lost.iter().zip(lost) {
            slot.store(*value, Ordering::Relaxed);
        }
        for (slot, value) in self.undecided.iter().zip(undecided) {
            slot.store(*value, Ordering::Relaxed);
        }
    }

    /// Stores the kernel's fail-closed refusals and its health counters.
    pub(super) fn set_kernel_decisions(&self, refused: &[u64; KIND_COUNT], health: KernelHealth) {
        for (slot, value) in self.refused.iter().zip(refused) {
            slot.store(*value, Ordering::Relaxed);
        }
        *self.kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = health;
    }

    /// Records the kernel could not emit, by kind name (the heartbeat's
    /// `ringbuf_reserve_failed`).
    pub fn lost_by_kind(&self) -> BTreeMap<&'static str, u64> {
        named(&load_all(&self.lost))
    }

    /// The counters as `tyrd observe` prints them.
    pub fn snapshot(&self) -> Counters {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let hash = self.exe_hash.get().map(|h| &**h);
        let hashes = |field: fn(&HashCounters) -> &AtomicU64| hash.map_or(0, |h| get(field(h)));
        let mount_stats = self.mounts.get().map(|m| &**m);
        let mounts = |field: fn(&MountTableStats) -> &AtomicU64| mount_stats.map_or(0, |m| get(field(m)));
        Counters {
            seen: named(&load_all(&self.seen)),
            lost: named(&load_all(&self.lost)),
            undecided: named(&load_all(&self.undecided)),
            refused: named(&load_all(&self.refused)),
            kernel: *self.kernel.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            hardlinks_protected: get(&self.link_scan.kept),
            hardlink_scans_cut: get(&self.link_scan.truncated),
            hardlink_patterns_unscanned: get(&self.link_scan.too_broad),
            hardlink_protect_failures: get(&self.link_scan.failures),
            mount_refreshes: mounts(|m| &m.refreshes),
            mounts_unlisted: mounts(|m| &m.skipped),
            mount_write_failures: mounts(|m| &m.write_failures),
            decode_failed: get(&self.decode_failed),
            printed: get(&self.delivered),
            tls_unparsed: get(&self.tls_unparsed),
            proc_reads: get(&self.proc_reads),
            agents_discovered: usize::try_from(get(&self.agents_discovered)).unwrap_or(usize::MAX),
            agent_map_failures: get(&self.agent_map_failures),
            agent_save_failures: get(&self.agent_save_failures),
            agents_refused: get(&self.agents_refused),
            agent_claims_ignored: get(&self.agent_claims_ignored),
            agent_moves_refused: get(&self.agent_moves_refused),
            processes_evicted: get(&self.processes_evicted),
            agent_processes_evicted: get(&self.agent_processes_evicted),
            exe_hashed: hashes(|h| &h.hashed),
            exe_hash_evicted: hashes(|h| &h.evicted),
            exe_hash_too_large: hashes(|h| &h.too_large),
            exe_hash_queue_full: hashes(|h| &h.queue_full),
            exe_hash_failed: hashes(|h| &h.failed),
            policy_clear_failures: get(&self.policy_clear_failures),
            policy_swaps_unsynchronised: get(&self.policy_swaps_unsynchronised),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tyr_proto::EventKind;

    #[test]
    fn snapshot_names_every_kind() {
        let counters = LiveCounters::default();
        counters.saw(EventKind::Exec as i32);
        counters.saw(-1);
        let mut lost = [0; KIND_COUNT];
        lost[EventKind::Tls as usize] = 4;
        counters.set_kernel(&lost, &[0; KIND_COUNT]);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.seen["EXEC"], 1);
        assert_eq!(snapshot.lost["TLS"], 4);
        assert_eq!(snapshot.seen.len(), ALL_KINDS.len());
        assert_eq!(counters.lost_by_kind()["TLS"], 4);
        assert_eq!(snapshot.exe_hashed, 0, "no hasher yet");
        let hash = Arc::new(HashCounters::default());
        hash.evicted.store(7, Ordering::Relaxed);
        assert!(counters.exe_hash.set(hash).is_ok());
        counters.agent_claims_ignored.store(2, Ordering::Relaxed);
        let snapshot = counters.snapshot();
        assert_eq!((snapshot.exe_hash_evicted, snapshot.agent_claims_ignored), (7, 2));
    }

    #[test]
    fn enforcement_degradations_name_their_cause() {
        let counters = LiveCounters::default();
        assert!(counters.snapshot().enforcement_degraded().is_empty(), "nothing happened");
        let mut refused = [0; KIND_COUNT];
        refused[EventKind::FileRead as usize] = 3;
        let health = KernelHealth { identity_unmapped: 5, ..KernelHealth::default() };
        counters.set_kernel_decisions(&refused, health);
        counters.link_scan.truncated.store(1, Ordering::Relaxed);
        let mounts = Arc::new(MountTableStats::default());
        mounts.skipped.store(2, Ordering::Relaxed);
        assert!(counters.mounts.set(mounts).is_ok());
        let degraded = counters.snapshot().enforcement_degraded();
        let want =
            [("refused_file_read", 3), ("identity_unmapped", 5), ("hardlink_scans_cut", 1), ("mounts_unlisted", 2)];
        assert_eq!(degraded, want.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<BTreeMap<_, _>>());
    }
}
