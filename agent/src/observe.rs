//! `tyrd observe`: capture with no server, events as JSON lines on stdout.
//!
//! The ring reader (this thread) decodes and enriches; a bounded crossbeam
//! channel carries events to the batcher thread, which writes them. When the
//! writer falls behind, the reader blocks on the channel and the kernel ring
//! fills: records are then lost in the kernel, where they are counted per
//! kind. Nothing is dropped in userspace. On SIGINT or SIGTERM everything is
//! detached and the counters go to stderr.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use libbpf_rs::RingBufferBuilder;
use serde::Serialize;
use tyr_proto::{Event, EventKind, Severity, Verdict};

use crate::capture::{Capture, CaptureConfig};
use crate::detect::exe_hash::ExeHasher;
use crate::detect::registry::Registry;
use crate::detect::tracker::{AgentTracker, UnregisteredAgents};
use crate::enforce::PolicyInstaller;
use crate::kinds::{ALL_KINDS, KIND_COUNT, KindSet};
use crate::pipeline::batcher::{self, BatchPolicy};
use crate::pipeline::clock::BootClock;
use crate::pipeline::event_builder::EventBuilder;
use crate::pipeline::process_cache::ProcessCache;
use crate::pipeline::seq::SeqAllocator;
use tyr_common::policy::unregistered::{Restriction, with_unregistered};
use tyr_common::policy::{Policy, PolicySet, Verdict as PolicyVerdict, compile, parse_policy};

/// Records consumed between checks for signals and reloads.
const CONSUME_BATCH: usize = 4096;
/// Longest wait for new records before checking for signals again.
const POLL_TIMEOUT_MS: i32 = 100;
/// Bites of the final drain (the ring holds at most this many batches of small records).
const DRAIN_BITES: usize = 256;

/// Waits until the ring has records or `timeout_ms` passes (EINTR included).
fn wait_readable(epoll_fd: i32, timeout_ms: i32) {
    let mut event = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: `event` is a valid buffer for one event; the fd is the ring
    // buffer's epoll instance, alive while the ring buffer is.
    unsafe { libc::epoll_wait(epoll_fd, &mut event, 1, timeout_ms) };
}

/// Processes the cache remembers.
const PROCESS_CACHE_CAPACITY: usize = 65_536;

/// What `tyrd observe` was asked for.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Hooks, filters and ring size for the kernel side.
    pub capture: CaptureConfig,
    /// When batches are cut.
    pub batch: BatchPolicy,
    /// Events queued between the ring reader and the writer.
    pub queue_capacity: usize,
    /// Where the sequence-number reservation is kept.
    pub state_dir: PathBuf,
    /// Also write every raw record here (length-prefixed), for replay.
    pub record_raw: Option<PathBuf>,
    /// What happens to processes no agent signature claims.
    pub unregistered_agents: UnregisteredAgents,
    /// A local policy file to enforce (reloaded on SIGHUP).
    pub policy: Option<PathBuf>,
}

/// A local policy file and the installer that puts it in force.
struct LocalPolicy {
    /// The policy file; None: no file, only the unregistered-agents
    /// restriction over an allow-everything base.
    path: Option<PathBuf>,
    installer: PolicyInstaller,
    version: i64,
    /// The unregistered-agents overlay added to the file's policy.
    restriction: Option<Restriction>,
}

impl LocalPolicy {
    /// Reads, validates, compiles and installs the file; on any error the
    /// policy in force (if any) stays.
    fn load(&mut self) -> anyhow::Result<i64> {
        let mut set = match &self.path {
            Some(path) => {
                let source = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let name =
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                parse_policy(&name, &source)?
            }
            None => PolicySet {
                name: "no policy file".to_owned(),
                base: Policy { default_verdict: PolicyVerdict::Allow, rules: Vec::new() },
                overlays: Default::default(),
            },
        };
        if let Some(restriction) = self.restriction {
            set = with_unregistered(&set, restriction)?;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let version = now_ms.max(self.version + 1);
        let compiled = compile(&set, version).context("compiling the policy for the kernel")?;
        self.installer.install(Arc::new(compiled), Arc::new(set)).context("installing the policy")?;
        self.version = version;
        Ok(version)
    }
}

/// An event as one JSON line: the Event message's field names.
#[derive(Serialize)]
struct JsonEvent<'a> {
    event_id: &'a str,
    seq: u64,
    kind: &'a str,
    resource: &'a str,
    verdict: &'a str,
    severity: &'a str,
    pid: i64,
    ppid: i64,
    process_exe: &'a str,
    cmdline: &'a str,
    timestamp_ns: i64,
    agent_type: &'a str,
    discovered_agent_id: &'a str,
    policy_version: i64,
    metadata: BTreeMap<&'a str, &'a str>,
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> &'static str {
    E::try_from(value).map(|e| name(&e)).unwrap_or("UNKNOWN")
}

fn write_event(out: &mut impl Write, event: &Event) -> std::io::Result<()> {
    let line = JsonEvent {
        event_id: &event.event_id,
        seq: event.seq,
        kind: enum_name(event.kind, EventKind::as_str_name),
        resource: &event.resource,
        verdict: enum_name(event.verdict, Verdict::as_str_name),
        severity: enum_name(event.severity, Severity::as_str_name),
        pid: event.pid,
        ppid: event.ppid,
        process_exe: &event.process_exe,
        cmdline: &event.cmdline,
        timestamp_ns: event.timestamp_ns,
        agent_type: &event.agent_type,
        discovered_agent_id: &event.discovered_agent_id,
        policy_version: event.policy_version,
        metadata: event.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Counters printed on exit.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    /// Records decoded, by kind (before the userspace filters).
    pub seen: BTreeMap<&'static str, u64>,
    /// Records the kernel could not emit, by kind.
    pub lost: BTreeMap<&'static str, u64>,
    /// Operations let through unchecked by policy (no scratch space), by kind.
    pub undecided: BTreeMap<&'static str, u64>,
    /// Records that did not decode.
    pub decode_failed: u64,
    /// Events written to stdout.
    pub printed: u64,
    /// TLS records whose ClientHello did not parse (still printed).
    pub tls_unparsed: u64,
    /// Processes looked up in /proc because they started before tyrd.
    pub proc_reads: u64,
    /// AI agents discovered on this host so far.
    pub agents_discovered: usize,
    /// Writes to the kernel's pid -> agent map that failed.
    pub agent_map_failures: u64,
    /// Saves of the discovered-agents file that failed.
    pub agent_save_failures: u64,
    /// Old policy slots that could not be emptied after a swap.
    pub policy_clear_failures: u64,
    /// Policy swaps that waited a fixed grace, not an RCU grace period,
    /// before emptying the old slot.
    pub policy_swaps_unsynchronised: u64,
}

/// Which events the userspace filters let through.
#[derive(Debug)]
struct Selection {
    kinds: KindSet,
    pids: Vec<i64>,
    comms: Vec<String>,
}

impl Selection {
    /// Policy decisions other than a plain allow (DENY, ALERT, and what
    /// policy would have wanted where it could not enforce) are always
    /// shown, as the kernel always reports them; everything else by filter.
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

/// Runs until SIGINT/SIGTERM or until stdout closes.
pub fn run(options: ObserveOptions) -> anyhow::Result<Counters> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload))
        .context("installing signal handlers")?;
    let seq = SeqAllocator::persistent(&options.state_dir)
        .with_context(|| format!("state directory {}", options.state_dir.display()))?;
    let mut raw_out = match &options.record_raw {
        Some(path) => {
            let mut out = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
            out.write_all(&crate::capture::record::recording_header())?;
            Some(out)
        }
        None => None,
    };

    let mut capture_config = options.capture.clone();
    // A policy file, or unregistered agents to restrict, need the enforcing hooks.
    let restriction = options.unregistered_agents.restriction();
    capture_config.enforce = options.policy.is_some() || restriction.is_some();
    let capture = Capture::start(&capture_config).context("starting kernel capture")?;
    let mut local_policy = if capture_config.enforce {
        let maps = capture.policy_maps()?.context("no enforcing hook attached: nothing could enforce the policy")?;
        let installer = PolicyInstaller::new(maps);
        if !installer.enforces_paths() {
            eprintln!(
                "tyrd: file and exec rules cannot be enforced on this kernel (no BPF LSM): they are evaluated in userspace and reported with enforced=false"
            );
        }
        let mut policy = LocalPolicy { path: options.policy.clone(), installer, version: 0, restriction };
        let version = policy.load()?;
        eprintln!("tyrd: policy version {version} in force");
        Some(policy)
    } else {
        None
    };
    for hook in capture.capabilities().hooks.iter().filter(|h| !h.attached) {
        let fallback = if hook.fallback.is_empty() { "none".to_owned() } else { hook.fallback.clone() };
        eprintln!("tyrd: hook {} not attached ({}); fallback: {fallback}", hook.name, hook.error);
    }

    let attached = capture.capabilities().hooks.iter().filter(|h| h.attached).count();
    eprintln!("tyrd: observing ({attached} hooks attached)");

    let (sender, receiver) = crossbeam_channel::bounded::<Event>(options.queue_capacity);
    let policy = options.batch;
    let writer = std::thread::Builder::new().name("tyrd-writer".into()).spawn(move || {
        let stdout = std::io::stdout();
        let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
        let mut printed = 0u64;
        batcher::run(&receiver, policy, |batch| {
            let written = batch.iter().try_for_each(|event| write_event(&mut out, event)).and_then(|()| out.flush());
            printed += batch.len() as u64;
            // A closed stdout (broken pipe) ends observation normally.
            written.is_ok()
        });
        printed
    })?;

    let selection = Selection {
        kinds: options.capture.kinds,
        pids: options.capture.pids.iter().map(|&p| i64::from(p)).collect(),
        comms: options.capture.comms.clone(),
    };
    let capacity = NonZeroUsize::new(PROCESS_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN);
    let registry = Registry::open(&options.state_dir).context("loading discovered agents")?;
    let tracker = AgentTracker::new(
        registry,
        Some(ExeHasher::start()),
        Some(capture.agent_map()?),
        PathBuf::from("/proc"),
        options.unregistered_agents,
    );
    let mut builder = EventBuilder::new(ProcessCache::new(capacity), BootClock::now(), seq, tracker);
    if let Some(policy) = &local_policy {
        builder = builder.with_policies(policy.installer.versions());
    }
    let mut seen = [0u64; KIND_COUNT];
    let mut decode_failed = 0u64;
    let output_closed = Cell::new(false);
    let mut raw_error = None;

    let ring = capture.ring()?;
    {
        let mut ring_builder = RingBufferBuilder::new();
        ring_builder.add(&ring, |raw: &[u8]| {
            if let Some(out) = raw_out.as_mut()
                && let Err(error) = out.write_all(&(raw.len() as u32).to_le_bytes()).and_then(|()| out.write_all(raw))
            {
                raw_error = Some(error);
            }
            match builder.build(raw) {
                Ok(event) => {
                    if let Some(count) = usize::try_from(event.kind).ok().and_then(|k| seen.get_mut(k)) {
                        *count += 1;
                    }
                    if selection.admits(&event) && sender.send(event).is_err() {
                        output_closed.set(true);
                        return -1;
                    }
                }
                Err(_) => decode_failed += 1,
            }
            0
        })?;
        let ring_buffer = ring_builder.build()?;
        let epoll = ring_buffer.epoll_fd();
        while !stop.load(Ordering::Relaxed) && !output_closed.get() {
            if reload.swap(false, Ordering::Relaxed)
                && let Some(policy) = local_policy.as_mut()
            {
                match policy.load() {
                    Ok(version) => eprintln!("tyrd: policy version {version} in force"),
                    Err(error) => {
                        eprintln!("tyrd: policy reload refused, version {} stays in force: {error:#}", policy.version)
                    }
                }
            }
            // Bounded bites, so signals and reloads are seen even when
            // records arrive as fast as they are consumed.
            let consumed = ring_buffer.consume_raw_n(CONSUME_BATCH);
            if consumed < 0 {
                if output_closed.get() {
                    break;
                }
                return Err(std::io::Error::from_raw_os_error(-consumed)).context("consuming the ring buffer");
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
    let printed = writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    if let Some(mut out) = raw_out {
        out.flush().context("writing raw records")?;
    }
    if let Some(error) = raw_error {
        return Err(error).context("writing raw records");
    }
    let lost = capture.lost()?;
    let undecided = capture.undecided()?;
    drop(capture);

    let named = |counts: &[u64; KIND_COUNT]| -> BTreeMap<&'static str, u64> {
        ALL_KINDS.iter().map(|&kind| (kind.as_str_name(), counts[kind as usize])).collect()
    };
    Ok(Counters {
        seen: named(&seen),
        lost: named(&lost),
        undecided: named(&undecided),
        decode_failed,
        printed,
        tls_unparsed: builder.tls_unparsed,
        proc_reads: builder.cache().proc_reads,
        agents_discovered: builder.agents().registry().agents().len(),
        agent_map_failures: builder.agents().kernel_update_failures,
        agent_save_failures: builder.agents().registry().save_failures,
        policy_clear_failures: local_policy.as_ref().map_or(0, |p| p.installer.clear_failures),
        policy_swaps_unsynchronised: local_policy.as_ref().map_or(0, |p| p.installer.unsynchronised_swaps),
    })
}
