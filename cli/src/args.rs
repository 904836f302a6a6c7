//! The command line: clap definitions only. Each subcommand is carried out
//! by its module under [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::time_arg::parse_time_arg;

/// Tyr operator CLI: enrolled daemons, discovered AI agents, policies,
/// enrollment tokens, events, drift and the audit log, over tyr-server's
/// REST API.
///
/// Exit status: 0 ok, 1 nothing found (an empty list or query, a missing
/// item), 2 error.
#[derive(Debug, Parser)]
#[command(name = "tyr", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Base URL of tyr-server's REST API [default: the one `tyr login` saved].
    #[arg(long, global = true, env = "TYR_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// CA certificate (PEM) the server's certificate must chain to [default:
    /// the one `tyr login` saved].
    #[arg(long, global = true, env = "TYR_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Output: `table` (the default on a terminal) or `json` (one JSON
    /// object per line; the default when stdout is not a terminal).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,
}

/// How data is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line (JSON lines).
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to a server: trust its CA (by pin or file) and keep a session
    /// token in the config directory (0600).
    Login(LoginArgs),
    /// Forget the session token (the server and its CA stay saved).
    Logout,
    /// Show who the session belongs to.
    Whoami,
    /// Enrolled daemons (the hosts running tyrd).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// AI agents the daemons discovered, and operators' overrides of them.
    #[command(subcommand)]
    Discovered(DiscoveredCommand),
    /// Enrollment tokens for new daemons.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Policies: apply, check, assign, history.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Events the daemons reported: query and live tail.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Where the kernel and the server disagree (exit 1 when nothing drifted).
    Drift(DriftArgs),
    /// Operators' accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Changes operators made, newest first.
    Audit(AuditArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the CLI version and the server it talks to.
    Version,
}

/// `tyr login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The server CA's pin, `sha256:<hex>` as `tyr token create` and
    /// `tyr-server token create` print it: the CA is fetched over a
    /// connection whose certificate chain holds the pinned certificate.
    #[arg(long, value_name = "sha256:HEX")]
    pub ca_pin: Option<String>,
    /// The operator's name [default: asked on the terminal].
    #[arg(long, short = 'u')]
    pub username: Option<String>,
}

/// Which page of a list, and how far to follow the server's pages.
#[derive(Debug, Clone, Copy, Args)]
pub struct PageArgs {
    /// Print at most this many items.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
    /// Print every item, following the server's pages to the end (ignores --limit).
    #[arg(long)]
    pub all: bool,
    /// Items asked of the server per request (1-1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
}

/// `tyr agent ...`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List enrolled daemons: connected, last seen, assigned and applied
    /// policy version, drops, spool depth, sequence gaps.
    List {
        /// Only daemons that are (true) or are not (false) connected.
        #[arg(long)]
        connected: Option<bool>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one daemon.
    Show {
        /// The daemon id.
        id: Uuid,
    },
    /// Show a daemon's effective policy (what the server pushed to it).
    Policy {
        /// The daemon id.
        id: Uuid,
    },
    /// Delete (revoke) a daemon: its stream closes and its certificate is
    /// refused. It may enroll again with a new token.
    Delete {
        /// The daemon id.
        id: Uuid,
    },
}

/// Discovered-agent states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentStateArg {
    /// Neither merged nor archived.
    Active,
    /// Archived by an operator.
    Archived,
    /// Merged into another agent.
    Merged,
}

impl AgentStateArg {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
            Self::Merged => "merged",
        }
    }
}

/// `tyr discovered ...`.
#[derive(Debug, Subcommand)]
pub enum DiscoveredCommand {
    /// List discovered agents.
    List {
        /// Only agents governed as this type (`unknown` for unregistered ones).
        #[arg(long = "type", value_name = "AGENT_TYPE")]
        agent_type: Option<String>,
        /// Only agents of this daemon.
        #[arg(long, value_name = "ID")]
        daemon: Option<Uuid>,
        /// Only agents in this state.
        #[arg(long, value_enum)]
        state: Option<AgentStateArg>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one discovered agent.
    Show {
        /// The agent's id.
        id: Uuid,
    },
    /// Give an agent a display name.
    Rename {
        /// The agent's id.
        id: Uuid,
        /// The name (1 to 128 characters).
        name: String,
    },
    /// Merge a duplicate into another agent of the same daemon; events of
    /// both are then found under the survivor.
    Merge {
        /// The duplicate.
        id: Uuid,
        /// The survivor.
        #[arg(long, value_name = "ID")]
        into: Uuid,
    },
    /// Govern an agent as another type; its daemon applies the new type's
    /// overlay to the agent's processes.
    Reclassify {
        /// The agent's id.
        id: Uuid,
        /// The new type (a known agent type, or `unknown`).
        #[arg(long = "type", value_name = "AGENT_TYPE")]
        agent_type: String,
    },
    /// Archive a long-gone agent (a new sighting makes it active again).
    Archive {
        /// The agent's id.
        id: Uuid,
    },
    /// Promote an unregistered agent to a known type.
    Promote {
        /// The agent's id.
        id: Uuid,
        /// The type.
        #[arg(long = "type", value_name = "AGENT_TYPE")]
        agent_type: String,
    },
}

/// `tyr token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an enrollment token; its secret is shown this once, with the
    /// CA pin a new host checks.
    Create {
        /// Hours until the token stops being accepted (1-87600).
        #[arg(long, value_name = "H", value_parser = clap::value_parser!(u32).range(1..=87_600))]
        expires_hours: u32,
        /// How many daemons may enroll with it.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        max_uses: u32,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete a token; daemons that enrolled with it stay enrolled.
    Delete {
        /// The token id.
        id: Uuid,
    },
}

/// Where a policy is assigned.
#[derive(Debug, Clone, Args)]
pub struct PlacementArgs {
    /// As the overlay of this agent type (default: as the base policy).
    #[arg(long, value_name = "AGENT_TYPE")]
    pub overlay: Option<String>,
    /// On this daemon only (default: the whole fleet).
    #[arg(long, value_name = "ID")]
    pub daemon: Option<Uuid>,
}

/// `tyr policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy, or store a new version of it, from a YAML file.
    Apply {
        /// The policy document (YAML; `-` reads stdin).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// The policy's name [default: the document's `name:`, else the file stem].
        #[arg(long)]
        name: Option<String>,
        /// What the change is (kept in the history).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List policies.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a policy: its document and where it is assigned.
    Show {
        /// The policy's name.
        name: String,
    },
    /// A policy's versions, newest first, with who changed what.
    History {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete a policy (refused while it is assigned).
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Check a document as tyrd and the server do, without storing it
    /// (exit 1 when it is not valid).
    Check {
        /// The policy document (YAML; `-` reads stdin).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// Ask the server instead of checking here.
        #[arg(long)]
        remote: bool,
    },
    /// Assign a policy as the base (or an agent type's overlay), fleet-wide
    /// or on one daemon; the daemons concerned receive it at once.
    Assign {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// Remove an assignment of a policy.
    Unassign {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        placement: PlacementArgs,
    },
    /// List assignments (of every policy, or on one daemon).
    Assignments {
        /// Only assignments on this daemon.
        #[arg(long, value_name = "ID")]
        daemon: Option<Uuid>,
        #[command(flatten)]
        page: PageArgs,
    },
}

/// Event kinds, as the API names them.
pub const EVENT_KINDS: [&str; 7] = ["FILE_READ", "FILE_WRITE", "EXEC", "NET_CONNECT", "TLS", "EXIT", "FORK"];
/// Verdicts, as the API names them.
pub const VERDICTS: [&str; 3] = ["ALLOW", "DENY", "ALERT"];

/// Which events (every given filter must hold).
#[derive(Debug, Clone, Default, Args)]
pub struct EventFilterArgs {
    /// Events at or after this time: RFC 3339, or an age such as `30m`,
    /// `2h`, `7d` [default for queries: 24 h before --to].
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub from: Option<String>,
    /// Events before this time: RFC 3339, or an age such as `1h`.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub to: Option<String>,
    /// Only events of this daemon.
    #[arg(long, value_name = "ID")]
    pub daemon: Option<Uuid>,
    /// Only events of this discovered agent (and the agents merged into it).
    #[arg(long, value_name = "ID")]
    pub discovered_agent: Option<Uuid>,
    /// Only events of this agent type (`claude-code`, `cursor`, `unknown`, ...).
    #[arg(long, value_name = "AGENT_TYPE")]
    pub agent_type: Option<String>,
    /// Only events of this kind.
    #[arg(long, ignore_case = true, value_parser = clap::builder::PossibleValuesParser::new(EVENT_KINDS))]
    pub kind: Option<String>,
    /// Only events with this kernel verdict.
    #[arg(long, ignore_case = true, value_parser = clap::builder::PossibleValuesParser::new(VERDICTS))]
    pub verdict: Option<String>,
    /// Only events with this server (Cedar) verdict.
    #[arg(long, ignore_case = true, value_parser = clap::builder::PossibleValuesParser::new(VERDICTS))]
    pub server_verdict: Option<String>,
    /// Only drifting (true) or only non-drifting (false) events.
    #[arg(long, value_name = "BOOL")]
    pub drift: Option<bool>,
    /// Only events whose resource contains this text.
    #[arg(long, value_name = "TEXT")]
    pub resource: Option<String>,
    /// Only events whose resource starts with this text.
    #[arg(long, value_name = "TEXT")]
    pub resource_prefix: Option<String>,
    /// Only events of this process id.
    #[arg(long)]
    pub pid: Option<i64>,
}

/// `tyr events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Events matching the filters, newest first.
    Query {
        #[command(flatten)]
        filter: EventFilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// How many events match the filters (exit 1 when none).
    Count {
        #[command(flatten)]
        filter: EventFilterArgs,
    },
    /// The newest events, oldest of them first; with --follow, then every
    /// new event as it is stored, until interrupted.
    Tail {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// How many of the newest events to print first.
        #[arg(long, short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
        lines: u32,
        /// Keep printing new events as they are stored.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// `tyr drift`.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// Start of the range: RFC 3339 or an age such as `24h` [default: 24 h before --to].
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub from: Option<String>,
    /// End of the range: RFC 3339 or an age.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub to: Option<String>,
    /// Only this daemon.
    #[arg(long, value_name = "ID")]
    pub daemon: Option<Uuid>,
    /// How many of the latest drifting events to list.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub latest: u32,
}

/// Operator roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything.
    Admin,
    /// Read only.
    Viewer,
}

impl RoleArg {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// `tyr user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account; the password is read from stdin when it is not a
    /// terminal, else asked twice without echo.
    Create {
        /// The user name.
        name: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Disable an account: its sessions stop working at once.
    Disable {
        /// The user id.
        id: Uuid,
    },
}

/// `tyr audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only changes by this operator.
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action (`policy.apply`), or every action under a prefix
    /// ending in `.` (`policy.`).
    #[arg(long)]
    pub action: Option<String>,
    /// Only changes to this target (`policy:NAME`, `daemon:ID`).
    #[arg(long)]
    pub target: Option<String>,
    /// Only changes at or after this time: RFC 3339 or an age such as `1d`.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub from: Option<String>,
    /// Only changes before this time: RFC 3339 or an age.
    #[arg(long, value_parser = parse_time_arg, value_name = "TIME")]
    pub to: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn product_words_parse() {
        let cli = Cli::try_parse_from(["tyr", "token", "create", "--expires-hours", "24", "--max-uses", "3"])
            .expect("parses");
        assert!(matches!(cli.command, Command::Token(TokenCommand::Create { expires_hours: 24, max_uses: 3, .. })));
        let cli = Cli::try_parse_from(["tyr", "agent", "list", "--format", "json"]).expect("parses");
        assert_eq!(cli.global.format, Some(FormatArg::Json));
        let cli = Cli::try_parse_from(["tyr", "events", "query", "--kind", "net_connect", "--verdict", "deny"])
            .expect("parses");
        let Command::Events(EventsCommand::Query { filter, .. }) = cli.command else { panic!("events query") };
        assert_eq!(filter.kind.as_deref(), Some("net_connect"));
        assert!(Cli::try_parse_from(["tyr", "events", "query", "--kind", "nope"]).is_err());
        assert!(Cli::try_parse_from(["tyr", "token", "create", "--expires-hours", "0"]).is_err());
    }
}
