//! Batches the server refused as malformed, set aside: the oldest
//! unacknowledged batch is moved to `<spool>/rejected/` (kept for a human to
//! inspect) and the spool acknowledges past it locally, so a batch the
//! server will never take cannot hold back everything after it. The server
//! sees the missing numbers as a gap and counts them.
//!
//! The directory is bounded to [`MAX_REJECTED_FILES`] files: the oldest are
//! deleted (and counted) past it.

use std::fs;
use std::path::Path;

use tracing::{error, warn};

use super::file::{self, batch_name, parse_batch_name};
use super::{ACKED_FILE, Entry, Spool, SpoolError, io_error};

/// The subdirectory of the spool holding rejected batches.
pub const REJECTED_DIR: &str = "rejected";
/// Most files kept in `rejected/`; the oldest are deleted past it.
pub const MAX_REJECTED_FILES: usize = 16;

/// Deletes the oldest rejected batch files past the bound; returns how many.
fn prune(dir: &Path) -> Result<u64, SpoolError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_error("listing", dir))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| parse_batch_name(name).is_some())
        .collect();
    if names.len() <= MAX_REJECTED_FILES {
        return Ok(0);
    }
    // Zero-padded ranges: name order is sequence order.
    names.sort();
    let excess = names.len() - MAX_REJECTED_FILES;
    let mut deleted = 0;
    for name in names.into_iter().take(excess) {
        let path = dir.join(&name);
        match super::remove(&path) {
            Ok(()) => deleted += 1,
            Err(error) => warn!(%error, file = %path.display(), "could not delete an old rejected batch"),
        }
    }
    file::sync_dir(dir).map_err(io_error("syncing", dir))?;
    Ok(deleted)
}

impl Spool {
    /// Moves the batch starting at `first` aside to `rejected/` and
    /// acknowledges past it locally (durably, before the file moves, as
    /// [`Spool::acknowledge`] does). Only the oldest unacknowledged batch can
    /// be rejected (acknowledging past it must not cover another): returns
    /// its event count, or `None` when `first` is not that batch.
    pub fn reject(&self, first: u64) -> Result<Option<u64>, SpoolError> {
        let _writer = self.inner.writer.lock().map_err(|_| SpoolError::Poisoned)?;
        let (entry, previous) = {
            let state = self.state()?;
            let acked = state.stats.acked_seq;
            let Some(&entry) = state.index.get(&first) else { return Ok(None) };
            if state.index.range(..first).any(|(_, e)| e.last > acked) {
                return Ok(None);
            }
            (entry, acked)
        };
        let dir = &self.inner.dir;
        let aside = dir.join(REJECTED_DIR);
        crate::private_fs::ensure_dir(&aside).map_err(io_error("creating", &aside))?;
        if entry.last > previous {
            // Durable before the file goes: it holds the last number used
            // once the batch is out of the spool directory.
            file::write_state(dir, ACKED_FILE, &format!("{}\n", entry.last))
                .map_err(io_error("writing", &dir.join(ACKED_FILE)))?;
        }
        let name = batch_name(first, entry.last);
        let (from, to) = (dir.join(&name), aside.join(&name));
        fs::rename(&from, &to).map_err(io_error("moving aside", &from))?;
        file::sync_dir(&aside).map_err(io_error("syncing", &aside))?;
        file::sync_dir(dir).map_err(io_error("syncing", dir))?;
        let events = Entry::events(first, &entry);
        let deleted = prune(&aside)?;
        let mut state = self.state()?;
        state.remove(first);
        state.stats.acked_seq = state.stats.acked_seq.max(entry.last);
        state.stats.rejected_batches += 1;
        state.stats.rejected_events += events;
        state.stats.rejected_files_deleted += deleted;
        error!(
            first,
            last = entry.last,
            events,
            rejected_events = state.stats.rejected_events,
            file = %to.display(),
            "the server refuses this spooled batch: moved aside, its events will not be delivered"
        );
        Ok(Some(events))
    }
}
