//! `tyrd` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;

use tyr_agent::capture::{Capture, CaptureConfig};
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
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// Directory for tyrd's state: sequence numbers, discovered agents.
    #[arg(long, env = "TYR_STATE_DIR", default_value = "/var/lib/tyrd")]
    state_dir: PathBuf,
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
                capture: CaptureConfig { kinds, comms: args.comms, pids: args.pids, ring_bytes, enforce: false },
                batch: BatchPolicy {
                    max_events: args.batch_max_events as usize,
                    max_delay: Duration::from_millis(args.batch_max_ms),
                },
                queue_capacity: args.queue_capacity.max(1),
                state_dir: args.state.state_dir,
                record_raw: args.record_raw,
                unregistered_agents: args.unregistered_agents,
                policy: args.policy,
            };
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
