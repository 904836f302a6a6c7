//! The capture loop shared by `tyrd observe` and `tyrd run`: kernel capture,
//! enrichment, the userspace filters, policy installation, and batches
//! handed to a [`Sink`].
//!
//! The ring reader (the calling thread) decodes and enriches; a bounded
//! crossbeam channel carries events to the writer thread, which cuts batches
//! and delivers them to the sink. When the sink falls behind, the reader
//! blocks on the channel and the kernel ring fills: records are then lost in
//! the kernel, where they are counted per kind. Nothing is dropped in
//! userspace. Policy updates arrive on a channel and are installed between
//! ring reads through the two-slot [`PolicyInstaller`]; a refused update
//! leaves the policy in force. The loop ends when `shutdown` fires or the
//! sink's output is gone; everything is then detached.

mod counters;

pub use counters::{Counters, LiveCounters};

use std::cell::{Cell, RefCell};
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::Receiver;
use libbpf_rs::RingBufferBuilder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tyr_common::policy::{CompiledPolicy, PolicySet};
use tyr_proto::{CapabilityReport, Event, EventKind, Verdict};

use crate::capture::{Capture, CaptureConfig};
use crate::detect::exe_hash::ExeHasher;
use crate::detect::feed::AgentLink;
use crate::detect::registry::Registry;
use crate::detect::tracker::{AgentTracker, UnregisteredAgents};
use crate::enforce::{PolicyInstaller, link_scan};
use crate::kinds::KindSet;
use crate::pipeline::batcher::{self, BatchPolicy};
use crate::pipeline::clock::BootClock;
use crate::pipeline::event_builder::EventBuilder;
use crate::pipeline::process_cache::ProcessCache;
use crate::sink::Sink;

/// Records consumed between checks for shutdown and policy updates.
const CONSUME_BATCH: usize = 4096;
/// Longest wait for new records before checking for shutdown again.
const POLL_TIMEOUT_MS: i32 = 100;
/// Bites of the final drain (the ring holds at most this many batches of small records).
const DRAIN_BITES: usize = 256;
/// Processes the cache remembers.
const PROCESS_CACHE_CAPACITY: usize = 65_536;
/// How often the kernel's lost and undecided counters are read.
const KERNEL_POLL: Duration = Duration::from_secs(1);

/// What the capture loop runs with.
#[derive(Debug, Clone)]
pub struct CaptureLoopConfig {
    /// Hooks, filters (kinds, pids, comms: applied in the kernel where it
    /// can, and again to the events here) and ring size. `capture.enforce`
    /// attaches the enforcing hooks from the start, before any policy
    /// arrives; policy updates are refused without it.
    pub capture: CaptureConfig,
    /// When batches are cut.
    pub batch: BatchPolicy,
    /// Events queued between the ring reader and the writer.
    pub queue_capacity: usize,
    /// Where discovered agents are kept.
    pub state_dir: PathBuf,
    /// Also write every raw record here (length-prefixed), for replay.
    pub record_raw: Option<PathBuf>,
    /// What happens to processes no agent signature claims.
    pub unregistered_agents: UnregisteredAgents,
    /// Print `tyrd observe`'s status lines (`tyrd: ...`) on stderr besides
    /// the tracing logs.
    pub console: bool,
    /// Discovered agents reported to, and overrides taken from, a session
    /// (`tyrd run`); None for `tyrd observe`.
    pub agents: Option<AgentLink>,
}

/// A policy to put in force (from a local file on SIGHUP, or a server PolicyPush).
#[derive(Debug, Clone)]
pub struct PolicyUpdate {
    /// Its version (monotonic; events decided under it carry it).
    pub version: i64,
    /// The kernel form.
    pub compiled: Arc<CompiledPolicy>,
    /// The source rules (for what is decided in userspace).
    pub set: Arc<PolicySet>,
}

/// Prints a status line when running for a console.
macro_rules! status {
    ($console:expr, $($arg:tt)*) => {
        if $console {
            eprintln!("tyrd: {}", format_args!($($arg)*));
        }
    };
}

/// Waits until the ring has records or `timeout_ms` passes (EINTR included).
fn wait_readable(epoll_fd: i32, timeout_ms: i32) {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `event` is a valid buffer for one event; the fd is the ring
    // buffer's epoll instance, alive while the ring buffer is.
    unsafe { libc::epoll_wait(epoll_fd, &mut event, 1, timeout_ms) };
}

/// Which events the userspace filters let through.
#[derive(Debug)]
struct Selection {
    kinds: KindSet,
    pids: Vec<i64>,
    comms: Vec<String>,
}

impl Selection {
    fn new(capture: &CaptureConfig) -> Self {
        Self {
            kinds: capture.kinds,
            pids: capture.pids.iter().map(|&p| i64::from(p)).collect(),
            comms: capture.comms.clone(),
        }
    }

    /// Policy decisions other than a plain allow (DENY, ALERT, and what
    /// policy would have wanted where it could not enforce) are always
    /// delivered, as the kernel always reports them; everything else by filter.
    fn admits(&self, event: &Event) -> bool {
        let decision = event.verdict == Verdict::Deny as i32
            || event.verdict == Verdict::Alert as i32
            || event.metadata.contains_key("policy_verdict");
        decision || self.filtered_in(event)
    }

    fn filtered_in(&self, event: &Event) -> bool {
        EventKind::try_from(event.kind).is_ok_and(|kind| self.kinds.contains(kind))
            && (self.pids.is_empty() || self.pids.contains(&event.pid))
            && (self.comms.is_empty() || event.metadata.get("comm").is_some_and(|c| self.comms.contains(c)))
    }
}

/// Installs policy updates and keeps the counters about them.
struct Policies<'a> {
    installer: Option<PolicyInstaller>,
    counters: &'a LiveCounters,
    console: bool,
}

impl Policies<'_> {
    /// Installs every update waiting on `updates`.
    fn install_pending(&mut self, updates: &Receiver<PolicyUpdate>) {
        while let Ok(update) = updates.try_recv() {
            self.install(update);
        }
    }

    fn install(&mut self, update: PolicyUpdate) {
        let in_force = self.counters.applied_policy_version.load(Ordering::Relaxed);
        let Some(installer) = self.installer.as_mut() else {
            self.counters.policy_install_failures.fetch_add(1, Ordering::Relaxed);
            warn!(version = update.version, "policy refused: the enforcing hooks are not attached");
            status!(self.console, "policy refused, no enforcing hooks attached");
            return;
        };
        match installer.install(update.compiled, Arc::clone(&update.set)) {
            Ok(()) => {
                if let Some(inode_ids) = installer.inode_ids() {
                    // Links made before this policy: found off the ring thread.
                    link_scan::spawn(inode_ids, update.set, Arc::clone(&self.counters.link_scan));
                }
                self.counters.applied_policy_version.store(update.version, Ordering::Relaxed);
                info!(version = update.version, "policy in force");
                status!(self.console, "policy version {} in force", update.version);
            }
            Err(error) => {
                self.counters.policy_install_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%error, version = update.version, in_force, "policy install failed, previous policy stays");
                status!(self.console, "policy reload refused, version {in_force} stays in force: {error}");
            }
        }
        self.counters.policy_clear_failures.store(installer.clear_failures, Ordering::Relaxed);
        self.counters.policy_swaps_unsynchronised.store(installer.unsynchronised_swaps, Ordering::Relaxed);
    }
}

/// Applies the override sets waiting on the link (the last one wins).
fn apply_overrides(link: Option<&AgentLink>, builder: &RefCell<EventBuilder>) {
    let Some(set) = link.and_then(|link| link.overrides.try_iter().last()) else { return };
    let count = set.len();
    let moved = builder.borrow_mut().agents_mut().apply_overrides(set);
    info!(count, moved, "agent overrides in force");
}

/// Copies the builder's own counters into the live ones.
fn publish(counters: &LiveCounters, builder: &EventBuilder) {
    counters.tls_unparsed.store(builder.tls_unparsed, Ordering::Relaxed);
    counters.proc_reads.store(builder.cache().proc_reads, Ordering::Relaxed);
    counters.agents_discovered.store(builder.agents().registry().len() as u64, Ordering::Relaxed);
    counters.agent_map_failures.store(builder.agents().kernel_update_failures, Ordering::Relaxed);
    let agents = builder.agents();
    counters.agent_save_failures.store(agents.registry().save_failures(), Ordering::Relaxed);
    let refused = agents.registry().refused + agents.registry().unregistered_refused;
    counters.agents_refused.store(refused, Ordering::Relaxed);
    counters.agent_claims_ignored.store(agents.claims_ignored, Ordering::Relaxed);
    counters.agent_moves_refused.store(agents.kernel_moves_refused, Ordering::Relaxed);
    counters.agent_processes_evicted.store(agents.evicted(), Ordering::Relaxed);
    counters.processes_evicted.store(builder.cache().evicted(), Ordering::Relaxed);
}

/// Reads the kernel's lost and undecided counters (a failed read keeps the
/// previous values: they are read again a second later and at exit).
fn poll_kernel(counters: &LiveCounters, capture: &Capture) {
    match (capture.lost(), capture.undecided()) {
        (Ok(lost), Ok(undecided)) => counters.set_kernel(&lost, &undecided),
        (Err(error), _) | (_, Err(error)) => warn!(%error, "reading the kernel counters failed"),
    }
    match (capture.refused(), capture.health()) {
        (Ok(refused), Ok(health)) => counters.set_kernel_decisions(&refused, health),
        (Err(error), _) | (_, Err(error)) => warn!(%error, "reading the kernel counters failed"),
    }
}

/// Runs capture until `shutdown` fires or the sink's output is gone, then
/// detaches everything and returns the final counters.
///
/// `started` receives the capability report once capture is attached and
/// the policy updates already waiting are installed (so a caller that
/// queued its policy first knows it is in force). Updates sent later are installed between ring reads.
pub fn run(
    config: CaptureLoopConfig,
    sink: Box<dyn Sink>,
    policies: Receiver<PolicyUpdate>,
    counters: Arc<LiveCounters>,
    shutdown: CancellationToken,
    started: impl FnOnce(CapabilityReport),
) -> anyhow::Result<Counters> {
    let console = config.console;
    let mut raw_out = match &config.record_raw {
        Some(path) => {
            // Raw records hold unredacted command lines: 0600, like every file tyrd writes.
            let file = crate::private_fs::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = BufWriter::new(file);
            out.write_all(&crate::capture::record::recording_header())?;
            Some(out)
        }
        None => None,
    };
    let capture = Capture::start(&config.capture).context("starting kernel capture")?;
    let installer = if config.capture.enforce {
        let maps = capture.policy_maps()?.context("no enforcing hook attached: nothing could enforce the policy")?;
        let installer = PolicyInstaller::new(maps);
        if !installer.enforces_paths() {
            warn!("file and exec rules cannot be enforced on this kernel (no BPF LSM)");
            status!(
                console,
                "file and exec rules cannot be enforced on this kernel (no BPF LSM): they are evaluated in userspace and reported with enforced=false"
            );
        }
        Some(installer)
    } else {
        None
    };
    let versions = installer.as_ref().map(PolicyInstaller::versions);
    let mut policy = Policies { installer, counters: &counters, console };
    policy.install_pending(&policies);
    for hook in capture.capabilities().hooks.iter().filter(|h| !h.attached) {
        let fallback = if hook.fallback.is_empty() { "none".to_owned() } else { hook.fallback.clone() };
        warn!(hook = hook.name, error = hook.error, fallback, "hook not attached");
        status!(console, "hook {} not attached ({}); fallback: {fallback}", hook.name, hook.error);
    }

    let (sender, receiver) = crossbeam_channel::bounded::<Event>(config.queue_capacity.max(1));
    let batch_policy = config.batch;
    let writer_counters = Arc::clone(&counters);
    let writer = std::thread::Builder::new().name("tyrd-writer".into()).spawn(move || {
        let mut sink = sink;
        batcher::run(&receiver, batch_policy, |batch| {
            let events = batch.len() as u64;
            match sink.deliver(batch) {
                Ok(()) => {
                    writer_counters.delivered.fetch_add(events, Ordering::Relaxed);
                    true
                }
                Err(error) => {
                    // A closed output (broken pipe) ends capture normally.
                    writer_counters.sink_failures.fetch_add(1, Ordering::Relaxed);
                    info!(%error, "sink closed, capture stops");
                    false
                }
            }
        });
    })?;

    let selection = Selection::new(&config.capture);
    let capacity = NonZeroUsize::new(PROCESS_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    let registry = Registry::open(&config.state_dir).context("loading discovered agents")?;
    let mut tracker = AgentTracker::new(
        registry,
        Some(ExeHasher::start()),
        Some(capture.agent_map()?),
        PathBuf::from("/proc"),
        config.unregistered_agents,
    );
    if let Some(link) = &config.agents {
        tracker = tracker.with_feed(Arc::clone(&link.feed));
    }
    if let Some(mounts) = capture.mount_stats() {
        let _ = counters.mounts.set(mounts);
    }
    if let Some(hash) = tracker.hash_counters() {
        // Set once: the hasher's atomics are read directly.
        let _ = counters.exe_hash.set(Arc::clone(hash));
    }
    let mut builder = EventBuilder::new(ProcessCache::new(capacity), BootClock::now(), tracker);
    if let Some(versions) = versions {
        builder = builder.with_policies(versions);
    }
    // Shared by the ring callback and the loop, which publishes its counters.
    let builder = RefCell::new(builder);
    apply_overrides(config.agents.as_ref(), &builder);
    let output_closed = Cell::new(false);
    let mut raw_error = None;

    let attached = capture.capabilities().hooks.iter().filter(|h| h.attached).count();
    info!(attached, "capture started");
    status!(console, "observing ({attached} hooks attached)");
    started(capture.capabilities().to_proto());

    let ring = capture.ring()?;
    let mut last_poll = Instant::now();
    {
        let mut ring_builder = RingBufferBuilder::new();
        ring_builder.add(&ring, |raw: &[u8]| {
            if let Some(out) = raw_out.as_mut()
                && let Err(error) = out.write_all(&(raw.len() as u32).to_le_bytes()).and_then(|()| out.write_all(raw))
            {
                raw_error = Some(error);
            }
            let built = builder.borrow_mut().build(raw);
            match built {
                Ok(event) => {
                    counters.saw(event.kind);
                    if selection.admits(&event) && sender.send(event).is_err() {
                        output_closed.set(true);
                        return -1;
                    }
                }
                Err(_) => {
                    counters.decode_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            0
        })?;
        let ring_buffer = ring_builder.build()?;
        let epoll = ring_buffer.epoll_fd();
        while !shutdown.is_cancelled() && !output_closed.get() {
            policy.install_pending(&policies);
            apply_overrides(config.agents.as_ref(), &builder);
            // Bounded bites, so shutdown and updates are seen even when
            // records arrive as fast as they are consumed.
            let consumed = ring_buffer.consume_raw_n(CONSUME_BATCH);
            if consumed < 0 {
                if output_closed.get() {
                    break;
                }
                return Err(std::io::Error::from_raw_os_error(-consumed)).context("consuming the ring buffer");
            }
            publish(&counters, &builder.borrow());
            if last_poll.elapsed() >= KERNEL_POLL {
                last_poll = Instant::now();
                poll_kernel(&counters, &capture);
            }
            if (consumed as usize) < CONSUME_BATCH {
                wait_readable(epoll, POLL_TIMEOUT_MS);
            }
        }
        // Drain what is already in the ring before detaching (bounded: a
        // producer that never stops cannot hold tyrd here).
        if !output_closed.get() {
            for _ in 0..DRAIN_BITES {
                if ring_buffer.consume_raw_n(CONSUME_BATCH) < CONSUME_BATCH as i32 {
                    break;
                }
            }
        }
    }
    drop(sender);
    writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    if let Some(mut out) = raw_out {
        out.flush().context("writing raw records")?;
    }
    if let Some(error) = raw_error {
        return Err(error).context("writing raw records");
    }
    publish(&counters, &builder.borrow());
    counters.set_kernel(&capture.lost()?, &capture.undecided()?);
    counters.set_kernel_decisions(&capture.refused()?, capture.health()?);
    drop(capture);
    info!("capture stopped");
    Ok(counters.snapshot())
}
