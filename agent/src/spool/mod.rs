//! The disk spool: every batch `tyrd run` sends is on disk before it is
//! sent and leaves only when the server's acknowledgement covers it.
//!
//! One file per batch, named by the sequence range it holds
//! (`<first>-<last>.batch`, see [`file`]), written under a temporary name,
//! fsynced, renamed and made durable with a directory fsync before
//! [`Spool::append`] returns. Each event carries the host's next sequence
//! number, stamped here (after every filter), so the server sees contiguous
//! numbers and any gap is a loss it can count.
//!
//! Sequence numbers survive `kill -9` without a reservation file written on
//! every batch: the highest number used is the highest range among the
//! batch files, or, once every batch was acknowledged and deleted, the
//! `acked` state file, which [`Spool::acknowledge`] writes durably *before*
//! it deletes anything. A batch's numbers are used only once its file is
//! durable under its final name, so a crash at any point neither reuses a
//! number (a false duplicate the server would drop) nor skips one (a false
//! gap). A file found damaged at open keeps its numbers used: its events
//! show up as a gap, counted here as torn.
//!
//! The server may know of higher numbers than the spool (the spool was
//! reset under an existing identity): [`Spool::raise_floor`] records, in the
//! `floor` state file, that every number up to the server's is used, so
//! numbering goes on above it instead of being taken for replays.
//!
//! A batch the server refuses as malformed would be replayed forever:
//! [`Spool::reject`] moves it aside to `rejected/` (see [`rejected`]) and
//! acknowledges past it locally.
//!
//! Bound: after each append, the oldest unacknowledged batches are evicted
//! while the spool holds more than `max_bytes`. The batch just written is
//! never evicted, so a single batch larger than the bound is kept (the
//! spool then briefly holds one batch over its bound) — the newest batch
//! also holds the highest sequence number, which must stay on disk.

mod file;
mod rejected;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tracing::{debug, warn};
use tyr_proto::{Event, EventBatch};

pub use file::FrameError;
use file::{WriteFailure, batch_name, parse_batch_name, tmp_name};
pub use rejected::{MAX_REJECTED_FILES, REJECTED_DIR};

/// The state file holding the highest acknowledged sequence number.
const ACKED_FILE: &str = "acked";
/// The state file holding a sequence number known used elsewhere (the
/// server's), below which the spool never numbers.
const FLOOR_FILE: &str = "floor";

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The `acked` state file does not hold a number (refused rather than
    /// reset: a reset would reuse sequence numbers).
    #[error("{} is not a sequence number", path.display())]
    BadState {
        /// The state file.
        path: PathBuf,
    },
    /// A previous thread panicked while holding the spool's lock.
    #[error("spool lock poisoned")]
    Poisoned,
    /// The sequence would pass `u64::MAX`.
    #[error("sequence numbers exhausted")]
    Exhausted,
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence number of the batch's first event (its batch id).
    pub first_seq: u64,
    /// Sequence number of its last event (`first_seq - 1` for an empty batch).
    pub last_seq: u64,
    /// Events evicted (oldest first) to bring the spool back under its bound.
    pub evicted_events: u64,
}

/// What the spool holds and has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    /// Batches waiting for acknowledgement.
    pub batches: u64,
    /// Events waiting for acknowledgement.
    pub events: u64,
    /// Bytes of the batch files waiting for acknowledgement.
    pub bytes: u64,
    /// Batches evicted unacknowledged because of the size bound (since open).
    pub evicted_batches: u64,
    /// Events in those batches (since open).
    pub evicted_events: u64,
    /// Appends that failed to write (since open; their numbers were not used).
    pub write_failures: u64,
    /// Damaged batch files dropped, at open or when read (since open).
    pub torn_files: u64,
    /// Events those files held, by their names' ranges (since open).
    pub torn_events: u64,
    /// The highest sequence number used (0: none yet).
    pub last_seq: u64,
    /// The highest sequence number acknowledged.
    pub acked_seq: u64,
    /// Batches the server refused as malformed, moved aside (since open).
    pub rejected_batches: u64,
    /// Events in those batches (since open).
    pub rejected_events: u64,
    /// Files deleted from `rejected/` to keep it bounded (since open).
    pub rejected_files_deleted: u64,
}

/// A batch file in the spool.
#[derive(Debug, Clone, Copy)]
struct Entry {
    last: u64,
    bytes: u64,
}

impl Entry {
    fn events(first: u64, entry: &Entry) -> u64 {
        entry.last - first + 1
    }
}

/// The spool's bookkeeping, behind one lock.
#[derive(Debug, Default)]
struct State {
    /// Batch files by first sequence number.
    index: BTreeMap<u64, Entry>,
    stats: SpoolStats,
    /// Batches up to this sequence number were sent and may be stored by
    /// the server though not acknowledged: eviction spares them (counting
    /// them as evicted would report a loss that may not have happened)
    /// until the server says what it holds ([`Spool::resolve_sent`]).
    sent_through: u64,
    /// Highest sequence number sent on the current stream.
    session_sent: u64,
}

impl State {
    fn insert(&mut self, first: u64, entry: Entry) {
        self.stats.batches += 1;
        self.stats.events += Entry::events(first, &entry);
        self.stats.bytes += entry.bytes;
        self.index.insert(first, entry);
    }

    fn remove(&mut self, first: u64) -> Option<Entry> {
        let entry = self.index.remove(&first)?;
        self.stats.batches -= 1;
        self.stats.events -= Entry::events(first, &entry);
        self.stats.bytes -= entry.bytes;
        Some(entry)
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    /// Serialises the operations that create and delete files (append,
    /// acknowledge), held across their fsyncs; `state` is only held briefly,
    /// so `next_batch` and `stats` never wait for a disk write.
    writer: Mutex<()>,
    state: Mutex<State>,
    notify: Arc<Notify>,
}

/// The bounded on-disk spool of unacknowledged event batches (cheap to clone;
/// clones share one spool).
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

/// Removes a file, treating "already gone" as done.
fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Reads a state file holding one sequence number (`acked`, `floor`); 0
/// when there is none.
fn read_state(dir: &Path, name: &str) -> Result<u64, SpoolError> {
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| SpoolError::BadState { path }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(io_error("reading", &path)(error)),
    }
}

/// Checks that a batch file is complete (header and size; the checksum is
/// verified when the batch is read).
fn file_complete(path: &Path) -> io::Result<Result<u64, FrameError>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut header = Vec::with_capacity(file::HEADER_LEN);
    file.by_ref().take(file::HEADER_LEN as u64).read_to_end(&mut header)?;
    Ok(file::check_complete(&header, size).map(|()| size))
}

impl Spool {
    /// Opens (creating) the spool directory and recovers what a crash left:
    /// temporary files are removed (their appends never returned), batch
    /// files already acknowledged are deleted, a damaged batch file is
    /// dropped and counted (`torn_files`, `torn_events`) with its numbers
    /// kept used, and numbering resumes after the highest number used.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        // 0700 when created here; an existing directory is reported, not chmod'ed.
        crate::private_fs::ensure_dir(dir).map_err(io_error("creating", dir))?;
        let acked = read_state(dir, ACKED_FILE)?;
        let floor = read_state(dir, FLOOR_FILE)?;
        let mut state = State::default();
        state.stats.acked_seq = acked;
        state.stats.last_seq = acked.max(floor);
        let mut damaged = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("listing", dir))? {
            let entry = entry.map_err(io_error("listing", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(file::TMP_SUFFIX) {
                // An append (or state write) that never returned: nothing used its numbers.
                remove(&path).map_err(io_error("removing", &path))?;
                continue;
            }
            let Some((first, last)) = parse_batch_name(&name) else {
                if name != ACKED_FILE && name != FLOOR_FILE && name != REJECTED_DIR {
                    debug!(file = %path.display(), "ignoring a file that is not a spooled batch");
                }
                continue;
            };
            state.stats.last_seq = state.stats.last_seq.max(last);
            if last <= acked {
                remove(&path).map_err(io_error("removing", &path))?;
                continue;
            }
            match file_complete(&path).map_err(io_error("reading", &path))? {
                Ok(bytes) => {
                    if state.index.range(..=last).next_back().is_some_and(|(_, e)| e.last >= first) {
                        damaged.push((path, first, last, "overlaps another batch".to_owned()));
                    } else {
                        state.insert(first, Entry { last, bytes });
                    }
                }
                Err(error) => damaged.push((path, first, last, error.to_string())),
            }
        }
        for (path, first, last, reason) in damaged {
            warn!(file = %path.display(), first, last, reason, "dropping a damaged spool batch");
            remove(&path).map_err(io_error("removing", &path))?;
            state.stats.torn_files += 1;
            state.stats.torn_events += last - first + 1;
        }
        file::sync_dir(dir).map_err(io_error("syncing", dir))?;
        debug!(
            dir = %dir.display(),
            batches = state.stats.batches,
            last_seq = state.stats.last_seq,
            acked_seq = acked,
            "spool opened"
        );
        Ok(Spool {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                max_bytes,
                writer: Mutex::new(()),
                state: Mutex::new(state),
                notify: Arc::new(Notify::new()),
            }),
        })
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, SpoolError> {
        self.inner.state.lock().map_err(|_| SpoolError::Poisoned)
    }

    /// Stamps each event's `seq` with the host's next sequence numbers
    /// (contiguous across batches and restarts), writes the batch durably
    /// (file fsync, rename, directory fsync) before returning, then evicts
    /// the oldest unacknowledged batches while the spool is over its bound
    /// (never the batch just written). On error nothing was written and the
    /// numbers were not used: the same events can be appended again. An
    /// empty batch writes nothing.
    pub fn append(&self, mut events: Vec<Event>) -> Result<Appended, SpoolError> {
        let _writer = self.inner.writer.lock().map_err(|_| SpoolError::Poisoned)?;
        let first = self.state()?.stats.last_seq.checked_add(1).ok_or(SpoolError::Exhausted)?;
        if events.is_empty() {
            return Ok(Appended { first_seq: first, last_seq: first - 1, evicted_events: 0 });
        }
        let last = first.checked_add(events.len() as u64 - 1).ok_or(SpoolError::Exhausted)?;
        for (event, seq) in events.iter_mut().zip(first..) {
            event.seq = seq;
        }
        let bytes = file::encode(&EventBatch { events, batch_id: first });
        let dir = &self.inner.dir;
        let name = batch_name(first, last);
        match file::write_durably(dir, &tmp_name(first), &name, &bytes) {
            Ok(()) => {}
            Err(WriteFailure::NotWritten(source)) => {
                self.state()?.stats.write_failures += 1;
                return Err(SpoolError::Io { op: "writing", path: dir.join(name), source });
            }
            Err(WriteFailure::Renamed(error)) => {
                // Complete and readable, only its directory entry's
                // durability is in doubt (the next directory fsync settles
                // it): its numbers count as used so they are never reused.
                self.state()?.stats.write_failures += 1;
                warn!(%error, file = %dir.join(&name).display(), "spool directory fsync failed, batch kept");
            }
        }
        let mut state = self.state()?;
        state.insert(first, Entry { last, bytes: bytes.len() as u64 });
        state.stats.last_seq = last;
        let evicted_events = self.evict(&mut state);
        drop(state);
        self.inner.notify.notify_one();
        Ok(Appended { first_seq: first, last_seq: last, evicted_events })
    }

    /// Evicts the oldest batches while over the bound, keeping the newest.
    fn evict(&self, state: &mut State) -> u64 {
        let mut evicted_events = 0;
        while state.stats.bytes > self.inner.max_bytes {
            // The oldest batch not on the wire, never the newest: while a
            // stream is open the spool may exceed its bound by the batches
            // in flight (at most the session's window).
            let newest = state.index.last_key_value().map(|(&first, _)| first);
            let unsent = state.sent_through.saturating_add(1);
            let Some((&first, &entry)) = state.index.range(unsent..).next() else { break };
            if Some(first) == newest {
                break;
            }
            let path = self.inner.dir.join(batch_name(first, entry.last));
            if let Err(error) = remove(&path) {
                warn!(%error, file = %path.display(), "could not evict a spooled batch");
                break;
            }
            state.remove(first);
            let events = Entry::events(first, &entry);
            state.stats.evicted_batches += 1;
            state.stats.evicted_events += events;
            evicted_events += events;
        }
        if evicted_events > 0 {
            warn!(evicted_events, max_bytes = self.inner.max_bytes, "spool full, oldest batches evicted");
        }
        evicted_events
    }

    /// The oldest spooled batch whose first sequence number is greater than
    /// `after_seq` (None: nothing newer), as the `EventBatch` to send
    /// (`batch_id` is its first sequence number). A batch found damaged is
    /// dropped, counted as torn, and the next one returned.
    pub fn next_batch(&self, after_seq: u64) -> Result<Option<EventBatch>, SpoolError> {
        self.read_next(after_seq, false)
    }

    /// As [`Spool::next_batch`], for sending on the live stream: the batch
    /// is marked sent in the same step that picks it (eviction spares it
    /// until [`Spool::resolve_sent`]), so eviction cannot take, and count, a
    /// batch already on its way.
    pub fn next_to_send(&self, after_seq: u64) -> Result<Option<EventBatch>, SpoolError> {
        self.read_next(after_seq, true)
    }

    fn read_next(&self, after_seq: u64, send: bool) -> Result<Option<EventBatch>, SpoolError> {
        loop {
            let found = {
                let mut state = self.state()?;
                let found = state.index.range(after_seq.saturating_add(1)..).next().map(|(&f, &e)| (f, e));
                if let (true, Some((_, entry))) = (send, found) {
                    state.sent_through = state.sent_through.max(entry.last);
                    state.session_sent = state.session_sent.max(entry.last);
                }
                found
            };
            let Some((first, entry)) = found else { return Ok(None) };
            let path = self.inner.dir.join(batch_name(first, entry.last));
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                // Evicted or acknowledged meanwhile: look again.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // Acknowledge deletes the file before the index entry,
                    // under the writer lock: with it held, an entry still
                    // indexed really lost its file behind our back.
                    let _writer = self.inner.writer.lock().map_err(|_| SpoolError::Poisoned)?;
                    if self.state()?.index.contains_key(&first) {
                        self.drop_damaged(first, &path, "file missing");
                    }
                    continue;
                }
                Err(error) => return Err(io_error("reading", &path)(error)),
            };
            match file::decode(&bytes) {
                Ok(batch) => return Ok(Some(batch)),
                Err(error) => self.drop_damaged(first, &path, &error.to_string()),
            }
        }
    }

    /// Forgets a damaged batch file, counting its events as torn.
    fn drop_damaged(&self, first: u64, path: &Path, reason: &str) {
        let Ok(mut state) = self.state() else { return };
        if let Some(entry) = state.remove(first) {
            warn!(file = %path.display(), reason, "dropping a damaged spool batch");
            state.stats.torn_files += 1;
            state.stats.torn_events += Entry::events(first, &entry);
            if let Err(error) = remove(path) {
                warn!(%error, file = %path.display(), "could not remove a damaged spool batch");
            }
        }
    }

    /// Deletes (durably) every batch whose last sequence number is at most
    /// `acked_seq`. An acknowledgement beyond the last number used is
    /// clamped to it (and logged); an older one than already recorded
    /// changes nothing.
    pub fn acknowledge(&self, acked_seq: u64) -> Result<(), SpoolError> {
        let _writer = self.inner.writer.lock().map_err(|_| SpoolError::Poisoned)?;
        let (last_seq, previous) = {
            let state = self.state()?;
            (state.stats.last_seq, state.stats.acked_seq)
        };
        let acked = if acked_seq > last_seq {
            warn!(acked_seq, last_seq, "acknowledgement beyond the last sequence number used, clamped");
            last_seq
        } else {
            acked_seq
        };
        let dir = &self.inner.dir;
        if acked > previous {
            // Durable before any file goes: it holds the last number used
            // once the newest batch is deleted.
            file::write_state(dir, ACKED_FILE, &format!("{acked}\n"))
                .map_err(io_error("writing", &dir.join(ACKED_FILE)))?;
        }
        let acked = acked.max(previous);
        let covered: Vec<(u64, Entry)> = {
            let mut state = self.state()?;
            state.stats.acked_seq = acked;
            state.index.iter().take_while(|(_, e)| e.last <= acked).map(|(&f, &e)| (f, e)).collect()
        };
        if covered.is_empty() {
            return Ok(());
        }
        let mut failure = None;
        for (first, entry) in covered {
            let path = dir.join(batch_name(first, entry.last));
            match remove(&path) {
                Ok(()) => {
                    self.state()?.remove(first);
                }
                Err(error) => {
                    failure = Some(io_error("removing", &path)(error));
                    break;
                }
            }
        }
        file::sync_dir(dir).map_err(io_error("syncing", dir))?;
        failure.map_or(Ok(()), Err)
    }

    /// Records durably that every sequence number up to `seq` is used
    /// (the server holds numbers up to it), so the next batch is numbered
    /// from `seq + 1`. A `seq` not above the last number used changes
    /// nothing; returns whether the numbering moved. Unacknowledged batches
    /// stay as they are.
    pub fn raise_floor(&self, seq: u64) -> Result<bool, SpoolError> {
        let _writer = self.inner.writer.lock().map_err(|_| SpoolError::Poisoned)?;
        let last_seq = self.state()?.stats.last_seq;
        if seq <= last_seq {
            return Ok(false);
        }
        let dir = &self.inner.dir;
        // Durable before any number above it is handed out.
        file::write_state(dir, FLOOR_FILE, &format!("{seq}\n")).map_err(io_error("writing", &dir.join(FLOOR_FILE)))?;
        self.state()?.stats.last_seq = seq;
        Ok(true)
    }

    /// A new stream begins: nothing is sent on it yet.
    pub fn begin_session(&self) {
        if let Ok(mut state) = self.inner.state.lock() {
            state.session_sent = 0;
        }
    }

    /// The server holds everything up to `stored_seq` (its per-host
    /// deduplication keeps what it stores a prefix, minus evictions): those
    /// batches are acknowledged, and what an earlier stream sent beyond it
    /// never arrived, so eviction may take (and count) it again. Batches
    /// sent on the current stream stay spared.
    pub fn resolve_sent(&self, stored_seq: u64) -> Result<(), SpoolError> {
        let last = self.stats().last_seq;
        if stored_seq > 0 && last > 0 {
            self.acknowledge(stored_seq.min(last))?;
        }
        if let Ok(mut state) = self.inner.state.lock() {
            state.sent_through = state.session_sent;
        }
        Ok(())
    }

    /// What the spool holds and its counters since open.
    pub fn stats(&self) -> SpoolStats {
        match self.inner.state.lock() {
            Ok(state) => state.stats,
            Err(poisoned) => poisoned.into_inner().stats,
        }
    }

    /// Woken on every append (with `notify_one`, so an append made while
    /// nobody waits is remembered for the next wait).
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.notify)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

#[cfg(test)]
mod tests;
