//! Remembered Cedar decisions of one policy version.
//!
//! A decision depends only on the policy version, the agent type and the
//! request, and a fleet repeats the same requests all day (the same files
//! opened, the same hosts called). Cedar evaluates every rule of the
//! request's action, so a decision costs time growing with the rule count
//! (about 74 µs at 100 rules on this project's CI host); a remembered one
//! costs a hash lookup. The memo is bounded and sharded
//! (the pool's workers look up concurrently); evictions are counted.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lru::LruCache;
use tyr_common::policy::Request;
use tyr_common::policy::cedar::CedarVerdict;

/// Shards of the memo: enough that workers rarely wait on each other.
const SHARDS: usize = 8;
/// Decisions remembered per shard.
const PER_SHARD: usize = 1024;

/// A request with its strings owned, as a memo key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    File { agent: Box<str>, write: bool, path: Box<str> },
    Exec { agent: Box<str>, path: Box<str> },
    Connect { agent: Box<str>, addr: IpAddr, port: u16 },
    Tls { agent: Box<str>, server_name: Box<str>, addr: IpAddr, port: u16 },
}

impl Key {
    fn of(agent_type: &str, request: &Request<'_>) -> Self {
        let agent = agent_type.into();
        match *request {
            Request::File { write, path } => Key::File { agent, write, path: path.into() },
            Request::Exec { path } => Key::Exec { agent, path: path.into() },
            Request::Connect { addr, port } => Key::Connect { agent, addr, port },
            Request::Tls { server_name, addr, port } => Key::Tls { agent, server_name: server_name.into(), addr, port },
        }
    }
}

/// Counters of a memo.
#[derive(Debug, Default)]
pub struct MemoStats {
    /// Decisions answered from the memo.
    pub hits: AtomicU64,
    /// Decisions Cedar had to take.
    pub misses: AtomicU64,
    /// Remembered decisions dropped to stay within the bound.
    pub evictions: AtomicU64,
}

/// Bounded, sharded memo of decisions.
#[derive(Debug)]
pub struct DecisionMemo {
    shards: Vec<Mutex<LruCache<Key, CedarVerdict>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Counters.
    pub stats: MemoStats,
}

impl Default for DecisionMemo {
    fn default() -> Self {
        let per_shard = NonZeroUsize::new(PER_SHARD).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(LruCache::new(per_shard))).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            stats: MemoStats::default(),
        }
    }
}

impl DecisionMemo {
    /// The remembered decision, or `decide`'s (remembered when it succeeds).
    pub fn get_or_decide<E>(
        &self,
        agent_type: &str,
        request: &Request<'_>,
        decide: impl FnOnce() -> Result<CedarVerdict, E>,
    ) -> Result<CedarVerdict, E> {
        let key = Key::of(agent_type, request);
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        if let Ok(mut cached) = shard.lock()
            && let Some(verdict) = cached.get(&key)
        {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(verdict.clone());
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Decided outside the lock: other workers keep looking up meanwhile.
        let verdict = decide()?;
        if let Ok(mut cached) = shard.lock()
            && cached.push(key.clone(), verdict.clone()).is_some_and(|(old, _)| old != key)
        {
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(verdict)
    }

    /// Decisions remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |s| s.len())).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tyr_common::policy::Verdict;

    fn verdict(v: Verdict) -> CedarVerdict {
        CedarVerdict { verdict: v, rule: None }
    }

    #[test]
    fn remembers_per_agent_and_request_and_stays_bounded() {
        let memo = DecisionMemo::default();
        let request = Request::File { write: false, path: "/etc/shadow" };
        let first: Result<_, ()> = memo.get_or_decide("cursor", &request, || Ok(verdict(Verdict::Deny)));
        assert_eq!(first.map(|v| v.verdict), Ok(Verdict::Deny));
        let again: Result<_, ()> = memo.get_or_decide("cursor", &request, || panic!("must be remembered"));
        assert_eq!(again.map(|v| v.verdict), Ok(Verdict::Deny));
        let other: Result<_, ()> = memo.get_or_decide("aider", &request, || Ok(verdict(Verdict::Allow)));
        assert_eq!(other.map(|v| v.verdict), Ok(Verdict::Allow), "the agent type is part of the key");
        let write = Request::File { write: true, path: "/etc/shadow" };
        let other: Result<_, ()> = memo.get_or_decide("cursor", &write, || Ok(verdict(Verdict::Alert)));
        assert_eq!(other.map(|v| v.verdict), Ok(Verdict::Alert), "read and write differ");
        assert_eq!(memo.stats.hits.load(Ordering::Relaxed), 1);

        let failed: Result<CedarVerdict, &str> =
            memo.get_or_decide("cursor", &Request::Exec { path: "/bin/x" }, || Err("cedar error"));
        assert!(failed.is_err());
        let retried: Result<_, ()> =
            memo.get_or_decide("cursor", &Request::Exec { path: "/bin/x" }, || Ok(verdict(Verdict::Allow)));
        assert!(retried.is_ok(), "errors are not remembered");

        for i in 0..(SHARDS * PER_SHARD * 2) {
            let path = format!("/srv/{i}");
            let _: Result<_, ()> = memo
                .get_or_decide("cursor", &Request::File { write: false, path: &path }, || Ok(verdict(Verdict::Allow)));
        }
        assert!(memo.len() <= SHARDS * PER_SHARD);
        assert!(memo.stats.evictions.load(Ordering::Relaxed) >= (SHARDS * PER_SHARD) as u64);
    }
}
