//! Kernel boot-time timestamps to wall-clock nanoseconds.
//!
//! Records carry `bpf_ktime_get_boot_ns()` (CLOCK_BOOTTIME, which keeps
//! counting through suspend); events carry nanoseconds since the Unix epoch.
//! The offset between the two clocks is measured once at start.

/// Converts CLOCK_BOOTTIME nanoseconds to Unix-epoch nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    offset_ns: i64,
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl BootClock {
    /// Measures the current offset between the two clocks.
    pub fn now() -> Self {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self { offset_ns: real - boot }
    }

    /// A clock with a known offset (tests, replays).
    pub fn with_offset(offset_ns: i64) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock nanoseconds for a boot-time stamp.
    pub fn to_unix_ns(self, boot_ns: u64) -> i64 {
        i64::try_from(boot_ns).unwrap_or(i64::MAX).saturating_add(self.offset_ns)
    }

    /// Boot-time nanoseconds now.
    pub fn boot_now_ns() -> u64 {
        u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_roughly_now() {
        let clock = BootClock::now();
        let unix = clock.to_unix_ns(BootClock::boot_now_ns());
        let system =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as i64;
        assert!((unix - system).abs() < 1_000_000_000, "{unix} vs {system}");
    }
}
