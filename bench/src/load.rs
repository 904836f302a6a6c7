//! Load for the fleet tests, and what became of it: a generator of file
//! opens (tyrd captures every process on the host, so each open is an
//! event it spools and sends), tyrd's spool as its files show it, and the
//! per-host sequence ClickHouse holds for a daemon.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tyr_server::event_store::{EventStore, EventStoreError};

/// A thread opening one file at a steady rate until stopped.
#[derive(Debug)]
pub struct OpenLoad {
    /// Tells the thread to stop.
    stop: Arc<AtomicBool>,
    /// Opens done so far.
    opens: Arc<AtomicU64>,
    /// The thread (None once stopped).
    thread: Option<JoinHandle<()>>,
}

impl OpenLoad {
    /// Starts opening `path` (created when missing) `per_second` times a
    /// second, paced in 10 ms steps; behind schedule it catches up.
    pub fn start(path: &Path, per_second: u64) -> Self {
        if !path.exists() {
            std::fs::write(path, b"load\n").expect("create the load file");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicU64::new(0));
        let (path, thread_stop, thread_opens) = (path.to_path_buf(), Arc::clone(&stop), Arc::clone(&opens));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut done = 0u64;
            while !thread_stop.load(Ordering::Relaxed) {
                let due = per_second.saturating_mul(started.elapsed().as_millis() as u64) / 1000;
                while done < due && !thread_stop.load(Ordering::Relaxed) {
                    if std::fs::File::open(&path).is_ok() {
                        thread_opens.fetch_add(1, Ordering::Relaxed);
                    }
                    done += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self { stop, opens, thread: Some(thread) }
    }

    /// Opens done so far.
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Stops the thread and waits for it; the opens done.
    pub fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.opens()
    }
}

impl Drop for OpenLoad {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where tyrd's spool (`<state_dir>/spool`) stands, read from its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolPosition {
    /// The `acked` file: the highest seq the server acknowledged (0: none).
    pub acked: u64,
    /// The `(first, last)` seq ranges of the batch files waiting, sorted.
    pub batches: Vec<(u64, u64)>,
}

impl SpoolPosition {
    /// Reads the spool directory of the tyrd whose state is in `state_dir`.
    pub fn read(state_dir: &Path) -> Self {
        let dir = state_dir.join("spool");
        let acked = std::fs::read_to_string(dir.join("acked")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        let mut batches: Vec<(u64, u64)> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|entry| {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let (first, last) = name.strip_suffix(".batch")?.split_once('-')?;
                        Some((first.parse().ok()?, last.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        batches.sort_unstable();
        Self { acked, batches }
    }

    /// The highest seq tyrd has used: every number up to it is on disk or acknowledged.
    pub fn last_seq(&self) -> u64 {
        self.batches.last().map_or(self.acked, |&(_, last)| last.max(self.acked))
    }

    /// Events waiting in batch files.
    pub fn spooled_events(&self) -> u64 {
        self.batches.iter().map(|&(first, last)| last - first + 1).sum()
    }
}

/// What ClickHouse holds of one daemon's per-host sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqCoverage {
    /// Rows stored for the daemon.
    pub rows: u64,
    /// Distinct seqs among them.
    pub distinct_seqs: u64,
    /// Distinct event ids among them.
    pub distinct_event_ids: u64,
    /// The highest seq stored.
    pub max_seq: u64,
    /// The inclusive ranges of `1..=upto` not stored.
    pub missing: Vec<(u64, u64)>,
    /// Seqs of `1..=upto` stored more than once (the first few).
    pub duplicated: Vec<u64>,
}

impl SeqCoverage {
    /// How many numbers of `1..=upto` are not stored.
    pub fn missing_events(&self) -> u64 {
        self.missing.iter().map(|&(first, last)| last - first + 1).sum()
    }

    /// No seq and no event id stored twice.
    pub fn no_duplicates(&self) -> bool {
        self.rows == self.distinct_seqs && self.rows == self.distinct_event_ids && self.duplicated.is_empty()
    }
}

/// Counts and missing ranges of `daemon`'s seqs in ClickHouse, up to
/// `upto`. Counts come from one query, so rows inserted meanwhile cannot
/// make them disagree. Run `SYSTEM STOP MERGES events` first: the table is
/// a ReplacingMergeTree and a merge would hide a stored duplicate.
pub async fn seq_coverage(store: &EventStore, daemon: uuid::Uuid, upto: u64) -> Result<SeqCoverage, EventStoreError> {
    let (rows, distinct_seqs, distinct_event_ids, max_seq) = store
        .client()
        .query("SELECT count(), uniqExact(seq), uniqExact(event_id), max(seq) FROM events WHERE agent_id = toUUID(?)")
        .bind(daemon.to_string())
        .fetch_one::<(u64, u64, u64, u64)>()
        .await?;
    let seqs = store
        .client()
        .query("SELECT seq FROM events WHERE agent_id = toUUID(?) AND seq <= ? ORDER BY seq")
        .bind(daemon.to_string())
        .bind(upto)
        .fetch_all::<u64>()
        .await?;
    let mut coverage = SeqCoverage { rows, distinct_seqs, distinct_event_ids, max_seq, ..SeqCoverage::default() };
    let mut expected = 1u64;
    for seq in seqs {
        if seq < expected {
            if coverage.duplicated.len() < 20 && coverage.duplicated.last() != Some(&seq) {
                coverage.duplicated.push(seq);
            }
            continue;
        }
        if seq > expected {
            coverage.missing.push((expected, seq - 1));
        }
        expected = seq + 1;
    }
    if expected <= upto {
        coverage.missing.push((expected, upto));
    }
    Ok(coverage)
}
