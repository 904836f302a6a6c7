//! sha256 of executables, computed on a background thread and cached by
//! (device, inode, size, mtime): the same file is hashed once, however many
//! times it is executed, and a replaced file is hashed again.
//!
//! Executables are under a local process's control (it can make thousands
//! of them, or a huge one), so everything here is bounded and counted: the
//! queue ([`QUEUE`]; a request past it is dropped and asked again at the
//! file's next exec), the cache ([`CACHE_ENTRIES`], least recently used
//! evicted), the size of a file hashed ([`MAX_FILE_BYTES`]; larger ones
//! are skipped) and the buffer it is read with. The ring reader only stats
//! the file and looks the cache up.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::num::NonZeroUsize;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Sender, TrySendError};
use lru::LruCache;
use sha2::{Digest, Sha256};

/// Files waiting to be hashed, at most.
pub const QUEUE: usize = 1024;
/// Digests kept, at most.
pub const CACHE_ENTRIES: usize = 4096;
/// Largest file hashed, in bytes (a 512 MiB file takes about a second).
pub const MAX_FILE_BYTES: u64 = 512 << 20;
/// Bytes read at a time.
const READ_BUFFER: usize = 1 << 16;

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

/// What the hasher counts (readable from any thread).
#[derive(Debug, Default)]
pub struct HashCounters {
    /// Files hashed (each at most once per key while cached).
    pub hashed: AtomicU64,
    /// Digests evicted from the cache to keep it under [`CACHE_ENTRIES`].
    pub evicted: AtomicU64,
    /// Files not hashed because they are larger than [`MAX_FILE_BYTES`].
    pub too_large: AtomicU64,
    /// Requests dropped because the queue was full.
    pub queue_full: AtomicU64,
    /// Files that could not be read, or changed while being hashed.
    pub failed: AtomicU64,
}

/// The cache and the keys queued, shared with the hashing thread.
#[derive(Debug)]
struct State {
    digests: LruCache<ExeKey, Arc<str>>,
    /// Queued or being hashed (at most [`QUEUE`] + 1): not asked for twice.
    pending: HashSet<ExeKey>,
}

/// Hashes executables off the event path.
#[derive(Debug)]
pub struct ExeHasher {
    state: Arc<Mutex<State>>,
    requests: Sender<(ExeKey, PathBuf)>,
    counters: Arc<HashCounters>,
}

impl ExeHasher {
    /// Starts the hashing thread.
    pub fn start() -> Self {
        let capacity = NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN);
        let state = Arc::new(Mutex::new(State { digests: LruCache::new(capacity), pending: HashSet::new() }));
        let counters = Arc::new(HashCounters::default());
        let (requests, queue) = crossbeam_channel::bounded::<(ExeKey, PathBuf)>(QUEUE);
        let (thread_state, thread_counters) = (Arc::clone(&state), Arc::clone(&counters));
        let spawned = std::thread::Builder::new().name("tyrd-exe-hash".into()).spawn(move || {
            let mut buf = vec![0u8; READ_BUFFER];
            for (key, path) in queue {
                let digest = hash_one(&path, key, &mut buf, &thread_counters);
                let mut state = thread_state.lock().unwrap_or_else(PoisonError::into_inner);
                state.pending.remove(&key);
                if let Some(digest) = digest
                    && state.digests.push(key, digest).is_some_and(|(old, _)| old != key)
                {
                    thread_counters.evicted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the exe hashing thread: executables are not hashed");
        }
        Self { state, requests, counters }
    }

    /// The sha256 (hex) of the file at `path` if already known; otherwise
    /// queues it for hashing and returns None.
    pub fn sha256(&mut self, path: &Path) -> Option<String> {
        let key = ExeKey::of(path)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(digest) = state.digests.get(&key) {
            return Some(digest.to_string());
        }
        if key.size > MAX_FILE_BYTES {
            self.counters.too_large.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if state.pending.contains(&key) {
            return None;
        }
        match self.requests.try_send((key, path.to_path_buf())) {
            Ok(()) => {
                state.pending.insert(key);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
        None
    }

    /// The hasher's counters.
    pub fn counters(&self) -> &Arc<HashCounters> {
        &self.counters
    }
}

/// The digest of `path` if it still has `key` once read; failures counted.
fn hash_one(path: &Path, key: ExeKey, buf: &mut [u8], counters: &HashCounters) -> Option<Arc<str>> {
    let hashed = File::open(path).ok().and_then(|file| sha256_file(file, key.size, buf));
    // A file changed while hashing is not cached under the old key.
    match hashed.filter(|_| ExeKey::of(path) == Some(key)) {
        Some(digest) => {
            counters.hashed.fetch_add(1, Ordering::Relaxed);
            Some(Arc::from(digest))
        }
        None => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// The digest of at most `size` bytes of `file` (what it held when stat'ed;
/// a file that grew is then refused by the key check).
fn sha256_file(file: File, size: u64, buf: &mut [u8]) -> Option<String> {
    let mut reader = file.take(size.min(MAX_FILE_BYTES) + 1);
    let mut hasher = Sha256::new();
    loop {
        let n = reader.read(buf).ok()?;
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

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("tyr-hash-{name}-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn hashes_once_per_file_version() {
        let path = temp("once");
        std::fs::write(&path, b"abc").expect("write");
        let mut hasher = ExeHasher::start();
        let digest = wait_for(&mut hasher, &path);
        assert_eq!(digest, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        for _ in 0..20 {
            assert_eq!(hasher.sha256(&path).as_deref(), Some(digest.as_str()));
        }
        let counters = Arc::clone(hasher.counters());
        assert_eq!(counters.hashed.load(Ordering::Relaxed), 1, "cached, not re-hashed");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, b"abcd").expect("rewrite");
        let changed = wait_for(&mut hasher, &path);
        assert_ne!(changed, digest);
        assert_eq!(counters.hashed.load(Ordering::Relaxed), 2);
        assert!(hasher.state.lock().expect("lock").pending.is_empty(), "nothing left pending");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn large_files_are_skipped_and_the_queue_and_cache_are_bounded() {
        let big = temp("big");
        let file = File::create(&big).expect("create");
        file.set_len(MAX_FILE_BYTES + 1).expect("sparse file");
        let mut hasher = ExeHasher::start();
        assert_eq!(hasher.sha256(&big), None);
        assert_eq!(hasher.counters().too_large.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_file(&big);

        // More distinct files than the queue and the cache hold.
        let dir = temp("many");
        std::fs::create_dir_all(&dir).expect("dir");
        let files: Vec<PathBuf> = (0..CACHE_ENTRIES + QUEUE)
            .map(|i| {
                let path = dir.join(i.to_string());
                std::fs::write(&path, i.to_string()).expect("write");
                path
            })
            .collect();
        let counters = Arc::clone(hasher.counters());
        for round in 0..200 {
            for path in &files {
                hasher.sha256(path);
            }
            let done = counters.hashed.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed);
            if done >= files.len() as u64 {
                break;
            }
            assert!(round < 199, "files never all hashed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let state = hasher.state.lock().expect("lock");
        assert!(state.digests.len() <= CACHE_ENTRIES && state.pending.len() <= QUEUE + 1);
        assert!(counters.evicted.load(Ordering::Relaxed) >= QUEUE as u64, "evictions counted");
        drop(state);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
