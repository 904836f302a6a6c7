//! The per-host event sequence number: monotonic across tyrd restarts.
//!
//! Numbers are handed out from blocks; before a block is used, its end is
//! written durably to the state directory. After a restart numbering resumes
//! past the last reserved block, so a number is never issued twice (a gap
//! of at most one block is the price of not writing on every event).

use std::fs;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1 << 20;
const FILE_NAME: &str = "event_seq";

/// Hands out sequence numbers.
#[derive(Debug)]
pub struct SeqAllocator {
    next: u64,
    reserved_until: u64,
    path: Option<PathBuf>,
    /// Reservations that could not be written (numbering continued in memory).
    pub persist_failures: u64,
}

impl SeqAllocator {
    /// An allocator persisting its reservations under `state_dir`.
    pub fn persistent(state_dir: &Path) -> std::io::Result<Self> {
        crate::private_fs::ensure_dir(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let start = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} is not a number", path.display()))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error),
        };
        let mut seq = Self { next: start + 1, reserved_until: start, path: Some(path), persist_failures: 0 };
        seq.reserve()?;
        Ok(seq)
    }

    /// An allocator that starts at 1 and remembers nothing (tests, benchmarks).
    pub fn in_memory() -> Self {
        Self { next: 1, reserved_until: u64::MAX, path: None, persist_failures: 0 }
    }

    /// The next number.
    pub fn allocate(&mut self) -> u64 {
        if self.next > self.reserved_until && self.reserve().is_err() {
            self.persist_failures += 1;
            self.reserved_until = self.next.saturating_add(BLOCK - 1);
        }
        let value = self.next;
        self.next += 1;
        value
    }

    fn reserve(&mut self) -> std::io::Result<()> {
        let until = self.next.saturating_add(BLOCK - 1);
        if let Some(path) = &self.path {
            crate::private_fs::write_atomic(path, format!("{until}\n").as_bytes())?;
        }
        self.reserved_until = until;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_increase_across_restarts() {
        let dir = std::env::temp_dir().join(format!("tyr-seq-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut first = SeqAllocator::persistent(&dir).expect("state dir");
        let a: Vec<u64> = (0..5).map(|_| first.allocate()).collect();
        assert_eq!(a, [1, 2, 3, 4, 5]);
        drop(first);
        let mut second = SeqAllocator::persistent(&dir).expect("state dir");
        let b = second.allocate();
        assert!(b > 5, "restart resumes past the reserved block, got {b}");
        fs::write(dir.join(FILE_NAME), "garbage").expect("write");
        assert!(SeqAllocator::persistent(&dir).is_err(), "corrupt state is an error, not a reset");
        let _ = fs::remove_dir_all(&dir);
    }
}
