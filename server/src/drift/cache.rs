//! One parsed Cedar evaluator per policy version, shared by every stream.
//!
//! Versions are drawn from one fleet-wide sequence (`policy_version_seq`),
//! so a version names one Cedar text; parsing it is the expensive part
//! (milliseconds for a large policy), so each version is parsed once and
//! kept while it is in use. The cache is bounded: past `capacity` versions
//! the least recently used one is evicted, and evictions are counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tyr_common::policy::cedar::{CedarError, CedarVerdict};
use tyr_common::policy::{CedarEvaluator, Request};

use super::DriftError;
use super::memo::DecisionMemo;

/// A policy version as the drift pool evaluates it.
#[derive(Debug)]
pub struct DriftPolicy {
    /// The version the server stamped on the push.
    pub version: i64,
    /// The version's Cedar text, parsed.
    pub evaluator: CedarEvaluator,
    /// Decisions already taken under this version.
    pub memo: DecisionMemo,
}

impl DriftPolicy {
    /// Parses `cedar_text` as the policy of `version`.
    pub fn new(version: i64, cedar_text: &str) -> Result<Self, DriftError> {
        let evaluator = CedarEvaluator::new(cedar_text).map_err(|reason| DriftError::Policy { version, reason })?;
        Ok(Self { version, evaluator, memo: DecisionMemo::default() })
    }

    /// Cedar's decision for `request` by a process of `agent_type`,
    /// remembered for the next identical request.
    pub fn decide(&self, agent_type: &str, request: &Request<'_>) -> Result<CedarVerdict, CedarError> {
        self.memo.get_or_decide(agent_type, request, || self.evaluator.decide(agent_type, request))
    }
}

/// One cached version.
#[derive(Debug)]
struct Entry {
    /// The text the evaluator was parsed from, to notice a reused version.
    cedar_text: Arc<str>,
    /// The parsed policy.
    policy: Arc<DriftPolicy>,
    /// Tick of the last lookup, for LRU eviction.
    last_used: u64,
}

/// The cache's mutable part.
#[derive(Debug, Default)]
struct Slots {
    /// Parsed policies by version.
    entries: HashMap<i64, Entry>,
    /// Lookup counter, the LRU clock.
    tick: u64,
}

/// Parsed policies by version, bounded, least recently used evicted first.
#[derive(Debug)]
pub struct PolicyCache {
    /// Most versions kept parsed.
    capacity: usize,
    /// The entries.
    slots: Mutex<Slots>,
    /// Versions evicted to stay within `capacity`.
    evictions: AtomicU64,
    /// Texts parsed (cache misses).
    parses: AtomicU64,
}

/// Versions kept by [`PolicyCache::default`].
pub const DEFAULT_POLICY_CACHE_CAPACITY: usize = 64;

impl Default for PolicyCache {
    fn default() -> Self {
        Self::new(DEFAULT_POLICY_CACHE_CAPACITY)
    }
}

impl PolicyCache {
    /// A cache keeping at most `capacity` versions (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: Mutex::new(Slots::default()),
            evictions: AtomicU64::new(0),
            parses: AtomicU64::new(0),
        }
    }

    /// The parsed policy of `version`, parsing `cedar_text` on first use.
    ///
    /// A version seen before with another text (which the fleet-wide
    /// version sequence rules out) is parsed again and replaces the entry:
    /// the caller's text is what that daemon was sent.
    pub fn get_or_parse(&self, version: i64, cedar_text: &str) -> Result<Arc<DriftPolicy>, DriftError> {
        {
            let mut slots = self.lock();
            slots.tick += 1;
            let tick = slots.tick;
            if let Some(entry) = slots.entries.get_mut(&version)
                && &*entry.cedar_text == cedar_text
            {
                entry.last_used = tick;
                return Ok(Arc::clone(&entry.policy));
            }
        }
        // Parsed outside the lock: other versions stay available meanwhile.
        let policy = Arc::new(DriftPolicy::new(version, cedar_text)?);
        self.parses.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        slots.tick += 1;
        let tick = slots.tick;
        slots
            .entries
            .insert(version, Entry { cedar_text: Arc::from(cedar_text), policy: Arc::clone(&policy), last_used: tick });
        while slots.entries.len() > self.capacity {
            let oldest = slots.entries.iter().min_by_key(|(_, entry)| entry.last_used).map(|(version, _)| *version);
            let Some(oldest) = oldest else { break };
            slots.entries.remove(&oldest);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(policy)
    }

    /// Versions currently parsed.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when no version is parsed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Versions evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Cedar texts parsed so far (cache misses).
    pub fn parses(&self) -> u64 {
        self.parses.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every update is a single insert or remove): keep serving.
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"permit (principal, action, resource);"#;
    const OTHER: &str = r#"forbid (principal, action, resource);"#;

    #[test]
    fn parses_each_version_once_and_evicts_the_least_recently_used() {
        let cache = PolicyCache::new(2);
        let one = cache.get_or_parse(1, TEXT).expect("parses");
        let again = cache.get_or_parse(1, TEXT).expect("cached");
        assert!(Arc::ptr_eq(&one, &again));
        assert_eq!(cache.parses(), 1);
        cache.get_or_parse(2, TEXT).expect("parses");
        cache.get_or_parse(1, TEXT).expect("cached");
        cache.get_or_parse(3, TEXT).expect("parses");
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions(), 1);
        // Version 2 was the least recently used.
        cache.get_or_parse(1, TEXT).expect("still cached");
        assert_eq!(cache.parses(), 3);
        cache.get_or_parse(2, TEXT).expect("parsed again");
        assert_eq!(cache.parses(), 4);
    }

    #[test]
    fn a_reused_version_with_another_text_is_parsed_again() {
        let cache = PolicyCache::new(4);
        let first = cache.get_or_parse(7, TEXT).expect("parses");
        let second = cache.get_or_parse(7, OTHER).expect("parses");
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn bad_text_is_an_error() {
        let cache = PolicyCache::default();
        assert!(matches!(cache.get_or_parse(3, "permit ("), Err(DriftError::Policy { version: 3, .. })));
        assert!(cache.is_empty());
    }
}
