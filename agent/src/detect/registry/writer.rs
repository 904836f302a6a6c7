//! Writes the registry's state file from a background thread: the ring
//! reader only records which agent changed (a lock and a map insert, never
//! I/O), and the writer rewrites the file at most every [`MIN_INTERVAL`],
//! with every change made meanwhile. Agents are shared (`Arc`) with the
//! registry, so the writer's copy costs no second set of strings.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use super::DiscoveredAgent;

/// Shortest time between two writes of the file.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// What the registry hands the writer.
#[derive(Debug, Default)]
struct Pending {
    /// Agents added or changed since the last write, by index (latest wins).
    changed: BTreeMap<u32, Arc<DiscoveredAgent>>,
    /// Changes recorded so far, and written so far (for [`Writer::flush`]).
    recorded: u64,
    written: u64,
    /// The registry is gone: write what is pending and stop.
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled on new changes (to the writer) and on writes (to flush).
    wake: Condvar,
}

/// The writer thread and its queue.
#[derive(Debug)]
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Failed writes (shared with the registry's counter).
    failures: Arc<AtomicU64>,
}

#[derive(Serialize)]
struct StateRef<'a> {
    host_id: Uuid,
    agents: Vec<&'a DiscoveredAgent>,
}

impl Writer {
    /// Starts the thread writing `path`, which holds `agents` now; failed
    /// writes are counted in `failures`.
    pub(super) fn start(
        path: PathBuf,
        host_id: Uuid,
        agents: &[Arc<DiscoveredAgent>],
        failures: &Arc<AtomicU64>,
    ) -> Self {
        let shared = Arc::new(Shared::default());
        let (thread_shared, thread_failures) = (Arc::clone(&shared), Arc::clone(failures));
        let agents = agents.to_vec();
        let thread = std::thread::Builder::new()
            .name("tyrd-agents-file".into())
            .spawn(move || run(&thread_shared, &path, host_id, agents, &thread_failures));
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(error) => {
                // Discovery goes on in memory; every change is then a failed save.
                tracing::warn!(%error, "cannot start the agents file writer");
                None
            }
        };
        Self { shared, thread, failures: Arc::clone(failures) }
    }

    /// Records a new or changed agent for the next write.
    pub(super) fn record(&self, agent: &Arc<DiscoveredAgent>) {
        if self.thread.is_none() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.changed.insert(agent.index, Arc::clone(agent));
        pending.recorded += 1;
        self.shared.wake.notify_all();
    }

    /// Waits until every change recorded so far is written (or the writer is gone).
    pub(super) fn flush(&self) {
        if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
            return;
        }
        let mut pending = self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let target = pending.recorded;
        while pending.written < target {
            pending = self.shared.wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the agents file writer panicked");
        }
    }
}

fn run(shared: &Shared, path: &Path, host_id: Uuid, mut agents: Vec<Arc<DiscoveredAgent>>, failures: &AtomicU64) {
    loop {
        let (changed, recorded, stop) = {
            let mut pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            while pending.changed.is_empty() && !pending.stop {
                pending = shared.wake.wait(pending).unwrap_or_else(PoisonError::into_inner);
            }
            (std::mem::take(&mut pending.changed), pending.recorded, pending.stop)
        };
        if changed.is_empty() && stop {
            return;
        }
        for (index, agent) in changed {
            let Some(slot) = usize::try_from(index).ok().and_then(|i| i.checked_sub(1)) else { continue };
            if slot < agents.len() {
                agents[slot] = agent;
            } else {
                // Indexes are handed out in order; the map yields them so.
                agents.push(agent);
            }
        }
        if let Err(error) = write_private(path, host_id, agents.iter().map(|a| &**a)) {
            failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, path = %path.display(), "writing the agents file failed");
        }
        let written_at = Instant::now();
        {
            let mut pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.written = recorded;
            shared.wake.notify_all();
            if stop && pending.changed.is_empty() {
                return;
            }
        }
        // Coalesce a burst of discoveries into one write per interval.
        let wait = MIN_INTERVAL.saturating_sub(written_at.elapsed());
        if !wait.is_zero() {
            let pending = shared.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = shared.wake.wait_timeout_while(pending, wait, |p| !p.stop);
        }
    }
}

/// Writes the state file (0600, in a 0700 directory, atomically).
pub(super) fn write_private<'a>(
    path: &Path,
    host_id: Uuid,
    agents: impl Iterator<Item = &'a DiscoveredAgent>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        crate::private_fs::ensure_dir(dir)?;
    }
    let tmp = crate::private_fs::temporary_for(path);
    let file = crate::private_fs::create(&tmp)?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, &StateRef { host_id, agents: agents.collect() })?;
    out.write_all(b"\n")?;
    out.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()?;
    fs::rename(&tmp, path)
}
