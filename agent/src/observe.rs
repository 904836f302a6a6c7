//! `tyrd observe`: capture with no server, events as JSON lines on stdout.
//!
//! A thin layer over the [capture loop](crate::capture_loop): the local
//! policy file (and the unregistered-agents restriction) compiled into
//! policy updates, one signal thread turning SIGINT/SIGTERM into the
//! loop's cancellation and SIGHUP into a reload, and a [`StdoutSink`]
//! numbering events from the persistent sequence. The counters go to
//! stderr on exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tyr_common::policy::unregistered::{Restriction, with_unregistered};
use tyr_common::policy::{Policy, PolicySet, Verdict as PolicyVerdict, compile, parse_policy};

use crate::capture_loop::{self, CaptureLoopConfig, LiveCounters, PolicyUpdate};
use crate::pipeline::seq::SeqAllocator;
use crate::sink::StdoutSink;

pub use crate::capture_loop::Counters;

/// What `tyrd observe` was asked for.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Hooks, filters, batching and state for the capture loop (`enforce`
    /// is set here: from the policy file and the unregistered-agents mode).
    pub capture_loop: CaptureLoopConfig,
    /// A local policy file to enforce (reloaded on SIGHUP).
    pub policy: Option<PathBuf>,
}

/// A local policy file, compiled into updates for the capture loop.
#[derive(Debug)]
struct LocalPolicy {
    /// The policy file; None: no file, only the unregistered-agents
    /// restriction over an allow-everything base.
    path: Option<PathBuf>,
    /// The last version handed out.
    version: i64,
    /// The unregistered-agents overlay added to the file's policy.
    restriction: Option<Restriction>,
}

impl LocalPolicy {
    /// Reads, validates and compiles the file into the next version.
    fn load(&mut self) -> anyhow::Result<PolicyUpdate> {
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
        self.version = version;
        Ok(PolicyUpdate { version, compiled: Arc::new(compiled), set: Arc::new(set) })
    }
}

/// Turns SIGINT/SIGTERM into `shutdown` and SIGHUP into a policy reload,
/// until the signals' handle is closed.
fn watch_signals(
    mut signals: Signals,
    shutdown: CancellationToken,
    mut local: Option<LocalPolicy>,
    updates: Sender<PolicyUpdate>,
    counters: Arc<LiveCounters>,
) {
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                let Some(local) = local.as_mut() else { continue };
                match local.load() {
                    // The loop says "in force" once it is installed.
                    Ok(update) => {
                        if updates.send(update).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let in_force = counters.applied_policy_version.load(Ordering::Relaxed);
                        warn!(error = format!("{error:#}"), in_force, "policy reload refused");
                        eprintln!("tyrd: policy reload refused, version {in_force} stays in force: {error:#}");
                    }
                }
            }
            _ => shutdown.cancel(),
        }
    }
}

/// Runs until SIGINT/SIGTERM or until stdout closes.
pub fn run(options: ObserveOptions) -> anyhow::Result<Counters> {
    let mut config = options.capture_loop;
    let seq = SeqAllocator::persistent(&config.state_dir)
        .with_context(|| format!("state directory {}", config.state_dir.display()))?;
    if crate::private_fs::exposed_dirs() > 0 {
        // The log says so only at warn level; a console user sees it here.
        eprintln!("tyrd: state directory {} is open to other users (left unchanged)", config.state_dir.display());
    }
    let restriction = config.unregistered_agents.restriction();
    // A policy file, or unregistered agents to restrict, need the enforcing hooks.
    config.capture.enforce = options.policy.is_some() || restriction.is_some();
    config.console = true;
    let (updates, policies) = crossbeam_channel::unbounded();
    let local = if config.capture.enforce {
        let mut local = LocalPolicy { path: options.policy.clone(), version: 0, restriction };
        // Installed by the loop before it reports capture started.
        updates.send(local.load()?).context("queueing the policy")?;
        Some(local)
    } else {
        None
    };

    let shutdown = CancellationToken::new();
    let counters = Arc::new(LiveCounters::default());
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let watcher = {
        let (shutdown, counters) = (shutdown.clone(), Arc::clone(&counters));
        std::thread::Builder::new()
            .name("tyrd-signals".into())
            .spawn(move || watch_signals(signals, shutdown, local, updates, counters))
            .context("starting the signal thread")?
    };

    // Nothing waits for the capability report here.
    let result =
        capture_loop::run(config, Box::new(StdoutSink::stdout(seq)), policies, counters, shutdown, |_report| {});
    signal_handle.close();
    if watcher.join().is_err() {
        warn!("signal thread panicked");
    }
    result
}
