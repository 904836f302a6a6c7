//! Reconnect delays: exponential backoff with full jitter (AWS's
//! "Exponential Backoff And Jitter": sleep = random(0, min(cap, base * 2^n))),
//! so a fleet that lost its server does not come back in lockstep.
//!
//! The exponent resets once a session has stayed up long enough to count as
//! healthy. A refused identity is not a transient fault: it is retried on a
//! slow fixed period ([`REFUSED_RETRY`]) instead.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// First ceiling of the delay.
pub const BASE: Duration = Duration::from_millis(500);
/// Largest ceiling of the delay.
pub const CAP: Duration = Duration::from_secs(30);
/// A session up this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Retry period while the server refuses this daemon's identity.
pub const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failures since the last reset.
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// Backoff from `base` up to `cap`, drawing from `rng`.
    pub fn new(base: Duration, cap: Duration, rng: StdRng) -> Self {
        Self { base, cap, attempt: 0, rng }
    }

    /// The defaults ([`BASE`], [`CAP`]), seeded by the OS.
    pub fn standard() -> Self {
        Self::new(BASE, CAP, StdRng::from_os_rng())
    }

    /// The current ceiling: min(cap, base * 2^attempt).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.cap, |d| d.min(self.cap))
    }

    /// The next delay, uniformly drawn from [0, ceiling]; raises the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.random_range(0..=millis))
    }

    /// Back to the first ceiling.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A session ended after `lasted`: one that was healthy resets the backoff.
    pub fn session_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE_AFTER {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(seed: u64) -> Backoff {
        Backoff::new(BASE, CAP, StdRng::seed_from_u64(seed))
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let mut backoff = seeded(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), CAP);
    }

    #[test]
    fn delays_are_full_jitter_within_the_ceiling() {
        for seed in 0..20 {
            let mut backoff = seeded(seed);
            for _ in 0..40 {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
            }
        }
        // Full jitter spreads over the whole range, down to near zero.
        let mut backoff = seeded(7);
        for _ in 0..7 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(3)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(27)));
    }

    #[test]
    fn same_seed_same_delays() {
        let (mut a, mut b) = (seeded(42), seeded(42));
        let first: Vec<Duration> = (0..10).map(|_| a.next_delay()).collect();
        let second: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(first, second);
    }

    #[test]
    fn only_a_healthy_session_resets() {
        let mut backoff = seeded(3);
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.session_ended(Duration::from_secs(5));
        assert_eq!(backoff.ceiling(), Duration::from_secs(16));
        backoff.session_ended(STABLE_AFTER + Duration::from_secs(1));
        assert_eq!(backoff.ceiling(), BASE);
    }
}
