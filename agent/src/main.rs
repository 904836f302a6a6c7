//! `tyrd` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;

use tokio_util::sync::CancellationToken;
use tyr_agent::capture::{AGENT_USERNS_ENV, AgentUserns, Capture, CaptureConfig};
use tyr_agent::capture_loop::CaptureLoopConfig;
use tyr_agent::config::{ConfigOverrides, DaemonConfig, Secret};
use tyr_agent::daemon;
use tyr_agent::detect::registry::Registry;
use tyr_agent::detect::tracker::UnregisteredAgents;
use tyr_agent::kinds::{KindSet, parse_kind};
use tyr_agent::observe::{self, ObserveOptions};
use tyr_agent::pipeline::batcher::BatchPolicy;
use tyr_common::policy::compile::bytes::LAYOUT_VERSION;
use tyr_common::policy::{
    Action, CEDAR_SCHEMA, CedarEvaluator, CompiledPolicy, PolicySet, compile, parse_policy, to_cedar,
};
use tyr_proto::EventKind;

/// Events are a handful of short strings each, allocated and freed in
/// batches at up to a million a second: mimalloc keeps that cheap (about
/// 1.7x glibc's malloc in `cargo bench --bench capture_pipeline`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tyr host daemon: watches and governs AI agents on this host from the kernel.
#[derive(Debug, Parser)]
#[command(name = "tyrd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load every hook this kernel allows, print the capability report as JSON, detach.
    Probe,
    /// Run as the fleet daemon (systemd mode): enroll on first boot, capture
    /// and enforce, stream events to tyr-server, apply its policies.
    Run(Box<RunArgs>),
    /// Capture with no server: print events as JSON lines until SIGINT/SIGTERM,
    /// then print counters (seen and lost, by kind) to stderr.
    Observe(ObserveArgs),
    /// List the AI agents discovered on this host so far, as JSON lines.
    Agents(StateDirArg),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate and compile a policy file and print a summary of its rules
    /// and of the compiled kernel entries and Cedar text as JSON; exit 2
    /// with every problem (document, rule, field, line) on stderr.
    Check {
        /// The policy YAML file.
        file: PathBuf,
        /// Print the Cedar text (and schema) instead of the summary.
        #[arg(long)]
        cedar: bool,
    },
}

#[derive(Debug, Args)]
struct ObserveArgs {
    /// Only this event kind (repeatable): file_read, file_write, exec,
    /// net_connect, tls, exit, fork. Policy decisions other than allow
    /// (DENY, ALERT, and what policy wanted where it could not enforce) are
    /// always shown, whatever the filters.
    #[arg(long = "kind", value_parser = parse_kind)]
    kinds: Vec<EventKind>,
    /// Only this process id (repeatable; filtered in the kernel).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Only processes with this command name (repeatable; filtered in the kernel).
    #[arg(long = "comm")]
    comms: Vec<String>,
    /// Size of the kernel ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 32)]
    ring_mb: u32,
    /// Events per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_max_events: u32,
    /// Longest a batch waits for more events, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    batch_max_ms: u64,
    /// Events queued between the ring reader and the output.
    #[arg(long, default_value_t = 65_536)]
    queue_capacity: usize,
    #[command(flatten)]
    state: StateDirArg,
    /// Also write every raw kernel record to this file (u32 length + bytes).
    #[arg(long)]
    record_raw: Option<PathBuf>,
    /// Enforce this policy file: connect rules in the kernel, file and exec
    /// rules in the kernel where BPF LSM is available (reported as not
    /// enforced elsewhere), TLS rules in userspace. SIGHUP reloads it.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// What happens to unregistered agents (agent signals, no known agent
    /// matched): audit (the base policy), quarantine (the built-in strict
    /// policy), deny (every governed operation refused). Enforced with or
    /// without --policy.
    #[arg(long, env = "TYR_UNREGISTERED_AGENTS", value_enum, default_value_t = UnregisteredAgents::Audit)]
    unregistered_agents: UnregisteredAgents,
    /// Whether governed agents may create user namespaces (where they get
    /// mount and chroot rights): allow, or deny (needs BPF LSM). File rules
    /// hold inside namespaces either way.
    #[arg(long, env = AGENT_USERNS_ENV, value_enum, default_value_t = AgentUserns::Allow)]
    agent_userns: AgentUserns,
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// Directory for tyrd's state: sequence numbers, discovered agents.
    #[arg(long, env = "TYR_STATE_DIR", default_value = "/var/lib/tyrd")]
    state_dir: PathBuf,
}

/// `tyrd run` flags: each overrides the same key of `/etc/tyr/tyrd.toml`
/// and its `TYR_*` environment variable.
#[derive(Debug, Args)]
struct RunArgs {
    /// Configuration file (default /etc/tyr/tyrd.toml, which may be missing).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The server, https://host:7700.
    #[arg(long)]
    server: Option<String>,
    /// Enrollment token, needed on first boot (prefer TYR_TOKEN: flags show in ps).
    #[arg(long)]
    token: Option<Secret>,
    /// Pin of the server CA, sha256:<hex>, as `tyr-server token create` prints it.
    #[arg(long)]
    ca_pin: Option<String>,
    /// The server CA's PEM file (instead of --ca-pin).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// This host's name in the fleet (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// Directory for the identity, the spool and state.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Most MiB the spool of unacknowledged batches holds.
    #[arg(long)]
    spool_max_mb: Option<u64>,
    /// Events per batch.
    #[arg(long)]
    batch_max_events: Option<u32>,
    /// Longest a batch waits for more events, in milliseconds.
    #[arg(long)]
    batch_max_ms: Option<u64>,
    /// Seconds between heartbeats.
    #[arg(long)]
    heartbeat_interval_s: Option<u64>,
    /// What happens to unregistered agents: audit, quarantine, deny.
    #[arg(long, value_enum)]
    unregistered_agents: Option<UnregisteredAgents>,
    /// Capture TLS ClientHello (SNI): true or false.
    #[arg(long)]
    tls_capture: Option<bool>,
    /// Serve Prometheus metrics on this address (plain HTTP, `GET /metrics`),
    /// e.g. 127.0.0.1:7703; off unless given (here, in tyrd.toml or TYRD_METRICS_ADDR).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Enroll again with a new key (needs a token) even if an identity exists.
    #[arg(long)]
    reenroll: bool,
}

impl RunArgs {
    fn overrides(self) -> ConfigOverrides {
        ConfigOverrides {
            server: self.server,
            token: self.token,
            ca_pin: self.ca_pin,
            ca_file: self.ca_file,
            name: self.name,
            state_dir: self.state_dir,
            spool_max_mb: self.spool_max_mb,
            batch_max_events: self.batch_max_events,
            batch_max_ms: self.batch_max_ms,
            heartbeat_interval_s: self.heartbeat_interval_s,
            unregistered_agents: self.unregistered_agents,
            tls_capture: self.tls_capture,
            metrics_addr: self.metrics_addr,
            reenroll: self.reenroll,
        }
    }
}

/// `tyrd run`: configuration, logging to stderr (`TYR_LOG`), one handler
/// for SIGINT and SIGTERM cancelling the daemon's token.
fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TYR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
    let config_path = args.config.clone();
    let config = DaemonConfig::load(config_path.as_deref(), |key| std::env::var(key).ok(), args.overrides())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down");
            on_signal.cancel();
        });
        daemon::run(config, shutdown).await
    })
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tyrd: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_daemon(*args)?,
        Command::Probe => {
            let capture = Capture::start(&CaptureConfig::default()).context("probing kernel hooks")?;
            println!("{}", serde_json::to_string_pretty(capture.capabilities())?);
        }
        Command::Observe(args) => {
            let ring_bytes = args
                .ring_mb
                .checked_mul(1 << 20)
                .filter(|b| b.is_power_of_two())
                .with_context(|| format!("--ring-mb {} is not a power of two below 4096", args.ring_mb))?;
            let kinds = if args.kinds.is_empty() { KindSet::all() } else { args.kinds.iter().copied().collect() };
            let options = ObserveOptions {
                capture_loop: CaptureLoopConfig {
                    capture: CaptureConfig {
                        kinds,
                        comms: args.comms,
                        pids: args.pids,
                        ring_bytes,
                        enforce: false,
                        agent_userns_deny: args.agent_userns == AgentUserns::Deny,
                    },
                    batch: BatchPolicy {
                        max_events: args.batch_max_events as usize,
                        max_delay: Duration::from_millis(args.batch_max_ms),
                    },
                    queue_capacity: args.queue_capacity.max(1),
                    state_dir: args.state.state_dir,
                    record_raw: args.record_raw,
                    unregistered_agents: args.unregistered_agents,
                    console: true,
                    agents: None,
                },
                policy: args.policy,
            };
            // The `tyrd: ...` status lines speak to the console; the logs
            // only when asked for (TYR_LOG), so stderr reads as before.
            let filter = tracing_subscriber::EnvFilter::try_from_env("TYR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
            let counters = observe::run(options)?;
            eprintln!("{}", serde_json::to_string(&counters)?);
        }
        Command::Policy(PolicyCommand::Check { file, cedar }) => {
            let source = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let name =
                file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());
            let policy = parse_policy(&name, &source)?;
            // Version 0: a local check, not a version anything runs under.
            let compiled = compile(&policy, 0).with_context(|| format!("{name}: compiling for the kernel"))?;
            let cedar_text = to_cedar(&policy, 0);
            let evaluator = CedarEvaluator::new(&cedar_text).with_context(|| format!("{name}: compiling to Cedar"))?;
            if cedar {
                println!(
                    "// Schema:\n{}\n{cedar_text}",
                    CEDAR_SCHEMA.lines().map(|l| format!("// {l}")).collect::<Vec<_>>().join("\n")
                );
            } else {
                let mut summary = policy_summary(&policy);
                summary["compiled"] = compiled_summary(&compiled, evaluator.policies().policies().count());
                println!("{}", serde_json::to_string_pretty(&summary)?);
            }
        }
        Command::Agents(args) => {
            let registry = Registry::open(&args.state_dir).context("reading discovered agents")?;
            let mut out = std::io::stdout().lock();
            for agent in registry.agents() {
                serde_json::to_writer(&mut out, agent)?;
                writeln!(out)?;
            }
        }
    }
    Ok(())
}

/// What the compiled forms hold: kernel entries (and their serialised
/// size) and Cedar policies, and which rules the kernel cannot decide.
fn compiled_summary(compiled: &CompiledPolicy, cedar_policies: usize) -> serde_json::Value {
    let userspace: Vec<&str> =
        compiled.rules.iter().filter(|r| r.action == Action::TlsConnect).map(|r| r.name.as_str()).collect();
    serde_json::json!({
        "layout_version": LAYOUT_VERSION,
        "bpf_entries_bytes": compiled.to_bytes().len(),
        "net_prefixes": compiled.net_prefixes.len(),
        "net_lists": compiled.net_lists.len(),
        "path_prefixes": compiled.path_prefixes.len(),
        "path_lists": compiled.path_lists.len(),
        "globs": compiled.globs.len(),
        "cedar_policies": cedar_policies,
        "userspace_rules": userspace,
    })
}

/// What `tyrd policy check` prints about a valid policy.
fn policy_summary(policy: &PolicySet) -> serde_json::Value {
    let rules = |rules: &[tyr_common::policy::Rule]| -> Vec<serde_json::Value> {
        rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "action": r.action.as_str(),
                    "verdict": r.verdict.as_str(),
                    "severity": r.severity.as_str(),
                    "paths": r.paths.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
                    "cidrs": r.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": r.ports.iter().map(|p| format!("{}-{}", p.first, p.last)).collect::<Vec<_>>(),
                    "sni": r.server_names.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })
            })
            .collect()
    };
    serde_json::json!({
        "name": policy.name,
        "default_verdict": policy.base.default_verdict.as_str(),
        "rules": rules(&policy.base.rules),
        "overlays": policy.overlays.iter().map(|(agent, r)| (agent.clone(), serde_json::Value::from(rules(r)))).collect::<serde_json::Map<_, _>>(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
