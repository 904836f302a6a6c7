//! sha256 of executables, computed on a background thread and cached by
//! (device, inode, size, mtime): the same file is hashed once, however many
//! times it is executed, and a replaced file is hashed again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use sha2::{Digest, Sha256};

/// Identity of a file's content as far as the filesystem tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExeKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl ExeKey {
    /// The key of the file at `path` now.
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

type Cache = Arc<Mutex<HashMap<ExeKey, String>>>;

/// Hashes executables off the event path.
#[derive(Debug)]
pub struct ExeHasher {
    cache: Cache,
    pending: HashSet<ExeKey>,
    requests: Sender<(ExeKey, PathBuf)>,
    /// Files hashed so far (each at most once per key).
    hashed: Arc<AtomicU64>,
}

/// Bounds the queue of files waiting to be hashed; requests beyond it are
/// retried at the next exec of the file.
const QUEUE: usize = 1024;

impl ExeHasher {
    /// Starts the hashing thread.
    pub fn start() -> Self {
        let cache: Cache = Arc::default();
        let hashed = Arc::new(AtomicU64::new(0));
        let (requests, queue) = crossbeam_channel::bounded::<(ExeKey, PathBuf)>(QUEUE);
        let (thread_cache, thread_hashed) = (Arc::clone(&cache), Arc::clone(&hashed));
        let spawned = std::thread::Builder::new().name("tyrd-exe-hash".into()).spawn(move || {
            for (key, path) in queue {
                // A file changed while hashing is not cached under the old key.
                if let Some(digest) = sha256_file(&path).filter(|_| ExeKey::of(&path) == Some(key)) {
                    thread_hashed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut cache) = thread_cache.lock() {
                        cache.insert(key, digest);
                    }
                }
            }
        });
        if let Err(error) = spawned {
            eprintln!("tyrd: cannot start the exe hashing thread: {error}");
        }
        Self { cache, pending: HashSet::new(), requests, hashed }
    }

    /// The sha256 (hex) of the file at `path` if already known; otherwise
    /// queues it for hashing and returns None.
    pub fn sha256(&mut self, path: &Path) -> Option<String> {
        let key = ExeKey::of(path)?;
        if let Some(digest) = self.cache.lock().ok()?.get(&key) {
            self.pending.remove(&key);
            return Some(digest.clone());
        }
        if !self.pending.contains(&key) && self.requests.try_send((key, path.to_path_buf())).is_ok() {
            self.pending.insert(key);
        }
        None
    }

    /// Files hashed so far.
    pub fn hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }
}

fn sha256_file(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_for(hasher: &mut ExeHasher, path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(digest) = hasher.sha256(path) {
                return digest;
            }
            assert!(Instant::now() < deadline, "hash never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn hashes_once_per_file_version() {
        let path = std::env::temp_dir().join(format!("tyr-hash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, b"abc").expect("write");
        let mut hasher = ExeHasher::start();
        let digest = wait_for(&mut hasher, &path);
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        for _ in 0..20 {
            assert_eq!(hasher.sha256(&path).as_deref(), Some(digest.as_str()));
        }
        assert_eq!(hasher.hashed(), 1, "cached, not re-hashed");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, b"abcd").expect("rewrite");
        let changed = wait_for(&mut hasher, &path);
        assert_ne!(changed, digest);
        assert_eq!(hasher.hashed(), 2);
        let _ = std::fs::remove_file(&path);
    }
}
