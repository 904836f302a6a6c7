//! Login rate limiting, in memory: after too many failed logins for one user
//! name, or from one source address, further attempts are refused until the
//! window has passed. Memory is bounded: each table keeps at most a fixed
//! number of keys and evicts the least recently used, counting evictions.
//!
//! Each server replica limits on its own; behind a load balancer spreading
//! logins over N replicas the bound is N times the configured one.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;

/// Failed logins per user name before it is locked out.
pub const DEFAULT_PER_USER: u32 = 5;
/// Failed logins per source address before it is locked out.
pub const DEFAULT_PER_IP: u32 = 30;
/// How long failures count, and how long a lockout lasts.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Most user names and most addresses tracked at once (each table).
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Longest user name kept as a key (longer names cannot exist; the cut
/// only bounds memory).
const MAX_KEY_CHARS: usize = 64;

/// Failures of one key in its current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// When the first failure of the window happened.
    window_start: Instant,
    /// Failures since then.
    count: u32,
    /// Until when the key is locked out, once `count` reached the limit.
    locked_until: Option<Instant>,
}

/// One table of failure counts: user names or addresses.
#[derive(Debug)]
struct Table<K: std::hash::Hash + Eq> {
    /// Failures per key, least recently used evicted first.
    entries: LruCache<K, Failures>,
    /// Failures that lock a key out.
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(limit: u32, capacity: NonZeroUsize) -> Self {
        Self { entries: LruCache::new(capacity), limit }
    }

    /// How long `key` stays locked out, if it is.
    fn locked_for(&mut self, key: &K, now: Instant, window: Duration) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        match entry.locked_until {
            Some(until) if until > now => Some(until - now),
            Some(_) => {
                self.entries.pop(key);
                None
            }
            None if now.saturating_duration_since(entry.window_start) >= window => {
                self.entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Counts a failure; returns whether a key was evicted to make room.
    fn record(&mut self, key: &K, now: Instant, window: Duration) -> bool {
        if let Some(entry) = self.entries.get_mut(key) {
            let expired = match entry.locked_until {
                Some(until) => until <= now,
                None => now.saturating_duration_since(entry.window_start) >= window,
            };
            if expired {
                *entry = Failures { window_start: now, count: 0, locked_until: None };
            }
            entry.count = entry.count.saturating_add(1);
            if entry.count >= self.limit && entry.locked_until.is_none() {
                entry.locked_until = Some(now + window);
            }
            return false;
        }
        let locked_until = (self.limit <= 1).then(|| now + window);
        let evicted = self.entries.push(key.clone(), Failures { window_start: now, count: 1, locked_until });
        evicted.is_some_and(|(old, _)| old != *key)
    }
}

/// Both tables behind one lock (a login touches both).
#[derive(Debug)]
struct Tables {
    /// Failures per lowercased user name.
    users: Table<String>,
    /// Failures per source address (IPv6 per /64).
    ips: Table<IpAddr>,
}

/// Failed-login counts per user name and per source address.
#[derive(Debug)]
pub struct LoginLimiter {
    /// The counts.
    tables: Mutex<Tables>,
    /// How long failures count and a lockout lasts.
    window: Duration,
    /// Attempts refused because of a lockout.
    refused: AtomicU64,
    /// Keys evicted from a full table (their counts forgotten).
    evicted: AtomicU64,
}

impl Default for LoginLimiter {
    /// 5 failures per user name and 30 per address, in 5 minutes.
    fn default() -> Self {
        Self::new(DEFAULT_PER_USER, DEFAULT_PER_IP, DEFAULT_WINDOW)
    }
}

/// The user-name key: case-insensitive, as names are unique.
fn user_key(username: &str) -> String {
    username.chars().take(MAX_KEY_CHARS).flat_map(char::to_lowercase).collect()
}

/// The address key: IPv4 (also IPv4-mapped IPv6) as is, IPv6 per /64, the
/// block a single host is usually given.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl LoginLimiter {
    /// Locks a user name out after `per_user` failures and an address after
    /// `per_ip` failures within `window`, for `window`; tracks at most
    /// [`DEFAULT_CAPACITY`] names and addresses.
    pub fn new(per_user: u32, per_ip: u32, window: Duration) -> Self {
        Self::with_capacity(per_user, per_ip, window, DEFAULT_CAPACITY)
    }

    /// As [`LoginLimiter::new`], tracking at most `capacity` names and
    /// `capacity` addresses (at least one of each).
    pub fn with_capacity(per_user: u32, per_ip: u32, window: Duration, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            tables: Mutex::new(Tables {
                users: Table::new(per_user.max(1), capacity),
                ips: Table::new(per_ip.max(1), capacity),
            }),
            window,
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // The counts stay consistent even if a holder panicked: each update
        // is a single assignment.
        self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(retry_after)` when this user name or this address is locked out
    /// (the longer of the two waits); each refusal is counted.
    pub fn check(&self, ip: IpAddr, username: &str, now: Instant) -> Result<(), Duration> {
        let mut tables = self.tables();
        let user_wait = tables.users.locked_for(&user_key(username), now, self.window);
        let ip_wait = tables.ips.locked_for(&ip_key(ip), now, self.window);
        drop(tables);
        match user_wait.max(ip_wait) {
            Some(wait) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(wait)
            }
            None => Ok(()),
        }
    }

    /// Counts a failed login for this user name and address.
    pub fn record_failure(&self, ip: IpAddr, username: &str, now: Instant) {
        let mut tables = self.tables();
        let mut evicted = u64::from(tables.users.record(&user_key(username), now, self.window));
        evicted += u64::from(tables.ips.record(&ip_key(ip), now, self.window));
        drop(tables);
        if evicted > 0 {
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Forgets the user name's failures after a successful login. The
    /// address's failures stay: one valid account must not let an address
    /// keep guessing other accounts' passwords.
    pub fn record_success(&self, ip: IpAddr, username: &str) {
        let _ = ip;
        self.tables().users.entries.pop(&user_key(username));
    }

    /// Login attempts refused because of a lockout, since start.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Names and addresses whose counts were evicted to make room, since start.
    pub fn evicted_total(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// How many user names and addresses are tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.tables();
        (tables.users.entries.len(), tables.ips.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn user_locked_after_limit_then_recovers() {
        let limiter = LoginLimiter::new(3, 100, WINDOW);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(limiter.check(ip("192.0.2.1"), "Alice", t0), Ok(()), "attempt {i}");
            limiter.record_failure(ip("192.0.2.1"), "Alice", t0);
        }
        // Locked whatever the case of the name or the address it comes from.
        let wait = limiter.check(ip("198.51.100.7"), "alice", t0 + Duration::from_secs(10));
        assert_eq!(wait, Err(WINDOW - Duration::from_secs(10)));
        assert_eq!(limiter.check(ip("192.0.2.1"), "bob", t0), Ok(()), "other names unaffected");
        assert_eq!(limiter.refused_total(), 1);
        assert_eq!(limiter.check(ip("192.0.2.1"), "alice", t0 + WINDOW), Ok(()), "lockout over");
        limiter.record_failure(ip("192.0.2.1"), "alice", t0 + WINDOW);
        assert_eq!(limiter.check(ip("192.0.2.1"), "alice", t0 + WINDOW), Ok(()), "a fresh window");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let limiter = LoginLimiter::new(2, 100, WINDOW);
        let t0 = Instant::now();
        limiter.record_failure(ip("192.0.2.1"), "alice", t0);
        limiter.record_failure(ip("192.0.2.1"), "alice", t0 + WINDOW);
        assert_eq!(limiter.check(ip("192.0.2.1"), "alice", t0 + WINDOW), Ok(()));
    }

    #[test]
    fn success_clears_the_name_not_the_address() {
        let limiter = LoginLimiter::new(2, 3, WINDOW);
        let t0 = Instant::now();
        limiter.record_failure(ip("192.0.2.1"), "alice", t0);
        limiter.record_success(ip("192.0.2.1"), "alice");
        limiter.record_failure(ip("192.0.2.1"), "alice", t0);
        assert_eq!(limiter.check(ip("192.0.2.1"), "alice", t0), Ok(()));
        limiter.record_failure(ip("192.0.2.1"), "bob", t0);
        assert!(limiter.check(ip("192.0.2.1"), "carol", t0).is_err(), "the address reached 3");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        assert_eq!(ip_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
        let limiter = LoginLimiter::new(100, 2, WINDOW);
        let t0 = Instant::now();
        limiter.record_failure(ip("2001:db8:1:2::1"), "a", t0);
        limiter.record_failure(ip("2001:db8:1:2::2"), "b", t0);
        assert!(limiter.check(ip("2001:db8:1:2::3"), "c", t0).is_err());
        assert_eq!(limiter.check(ip("2001:db8:1:3::1"), "c", t0), Ok(()));
    }
}
