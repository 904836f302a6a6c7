//! `tyr-server` command line.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tyr_server::admin;
use tyr_server::config::{ControlDbConfig, EventStoreConfig};
use tyr_server::enrollment_admin;
use tyr_server::serve::ServeConfig;
use tyr_server::user_admin;

/// Tyr control plane: agents over mTLS gRPC (:7700), operators over REST
/// (:7701), control data in PostgreSQL, events in ClickHouse.
#[derive(Debug, Parser)]
#[command(name = "tyr-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending PostgreSQL migrations (control data).
    Migrate {
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Create the ClickHouse events table, or bring its retention in line.
    Schema {
        #[command(flatten)]
        event_store: EventStoreConfig,
    },
    /// Serve daemons over mTLS gRPC until SIGTERM/SIGINT, then drain.
    Serve(Box<ServeConfig>),
    /// Policies (until the REST API lands).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Enrollment tokens for new daemons (until the REST API lands).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled daemons (until the REST API lands).
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Operators' accounts for the REST API; `user create NAME --admin`
    /// makes the first admin (there is no default password).
    #[command(subcommand)]
    User(UserCommand),
    /// AI agents the daemons discovered, and the operators' overrides:
    /// rename, merge, reclassify, archive, promote.
    #[command(subcommand)]
    Discovered(tyr_server::discovered_admin::DiscoveredCommand),
    /// Print drift counts per daemon and per discovered agent as JSON.
    Drift {
        /// Only this daemon.
        #[arg(long)]
        daemon: Option<uuid::Uuid>,
        /// Only events of the last H hours.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=876_000))]
        since_hours: Option<u32>,
        #[command(flatten)]
        event_store: EventStoreConfig,
    },
    /// Print the state of PostgreSQL and ClickHouse as JSON.
    Status {
        #[command(flatten)]
        control_db: ControlDbConfig,
        #[command(flatten)]
        event_store: EventStoreConfig,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy document (base rules and overlays, as `tyrd observe
    /// --policy` reads it) and make it the base policy of the fleet, or of
    /// one daemon; connected daemons it concerns receive it at once.
    Set {
        /// The policy YAML file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Only this daemon (its own base policy, before the fleet's).
        #[arg(long)]
        daemon: Option<uuid::Uuid>,
        /// Name to store the policy under (default: `fleet-base`, or
        /// `daemon-<ID>` with --daemon); setting a name again makes a new version.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it once (JSON), with the CA pin a new host
    /// checks; makes the CA in the data directory if it does not exist yet.
    Create {
        /// Hours until the token expires.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=87_600))]
        expires_hours: u32,
        /// How many daemons may enroll with it.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
        max_uses: u32,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        identity: tyr_server::config::IdentityConfig,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// List tokens as JSON (never their secrets).
    List {
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Delete a token; exit 1 when there is none with this id.
    Delete {
        /// The token's id.
        id: uuid::Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// List enrolled daemons as JSON.
    List {
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Delete (revoke) a daemon: its live stream is closed and its
    /// certificate refused; exit 1 when there is none with this id.
    Delete {
        /// The daemon's id.
        id: uuid::Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print it as JSON. The password is one line of
    /// stdin when stdin is not a terminal, else typed twice at a prompt;
    /// at least 12 characters.
    Create {
        /// The user name: 1 to 64 letters, digits and `_ . @ -`, unique
        /// ignoring case.
        name: String,
        /// What the user may do: `admin` (everything) or `viewer` (read only).
        #[arg(long, default_value_t = tyr_server::auth::Role::Viewer, conflicts_with = "admin")]
        role: tyr_server::auth::Role,
        /// Same as `--role admin`.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// List users as JSON (never their password hashes).
    List {
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
    /// Disable a user (it can no longer log in); the last enabled admin
    /// cannot be disabled; exit 1 when there is no user with this id.
    Disable {
        /// The user's id.
        id: uuid::Uuid,
        #[command(flatten)]
        control_db: ControlDbConfig,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TYR_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")))
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tyr-server: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate { control_db } => {
            let applied = admin::migrate(&control_db).await?;
            tracing::info!(applied, "control database migrated");
        }
        Command::Schema { event_store } => {
            let outcome = admin::apply_event_schema(&event_store).await?;
            tracing::info!(
                created = outcome.created,
                retention_changed = outcome.retention_changed,
                kinds_extended = outcome.kinds_extended,
                retention_days = event_store.retention_days,
                "events schema applied"
            );
        }
        Command::Serve(config) => {
            let listeners = tyr_server::serve::Listeners::bind(&config).await?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            tyr_server::serve::run(*config, listeners, shutdown).await?;
        }
        Command::Policy(PolicyCommand::Set { file, daemon, name, control_db }) => {
            let stored = admin::set_policy(&control_db, &file, daemon, name).await?;
            println!("{}", serde_json::to_string_pretty(&stored)?);
        }
        Command::Token(TokenCommand::Create { expires_hours, max_uses, description, identity, control_db }) => {
            enrollment_admin::token_create(&control_db, &identity, expires_hours, max_uses, &description).await?;
        }
        Command::Token(TokenCommand::List { control_db }) => enrollment_admin::token_list(&control_db).await?,
        Command::Token(TokenCommand::Delete { id, control_db }) => {
            if !enrollment_admin::token_delete(&control_db, id).await? {
                std::process::exit(1);
            }
        }
        Command::Daemon(DaemonCommand::List { control_db }) => enrollment_admin::daemon_list(&control_db).await?,
        Command::Daemon(DaemonCommand::Delete { id, control_db }) => {
            if !enrollment_admin::daemon_delete(&control_db, id).await? {
                std::process::exit(1);
            }
        }
        Command::User(UserCommand::Create { name, role, admin, control_db }) => {
            let role = if admin { tyr_server::auth::Role::Admin } else { role };
            user_admin::user_create(&control_db, &name, role).await?;
        }
        Command::User(UserCommand::List { control_db }) => user_admin::user_list(&control_db).await?,
        Command::User(UserCommand::Disable { id, control_db }) => {
            if !user_admin::user_disable(&control_db, id).await? {
                std::process::exit(1);
            }
        }
        Command::Discovered(command) => {
            if tyr_server::discovered_admin::run(command).await? == tyr_server::discovered_admin::Outcome::NotFound {
                std::process::exit(1);
            }
        }
        Command::Drift { daemon, since_hours, event_store } => {
            let filter = tyr_server::drift::counts::DriftFilter::last_hours(daemon, since_hours);
            let store = tyr_server::event_store::EventStore::new(&event_store)?;
            let counts = tyr_server::drift::counts::query(&store, filter).await?;
            println!("{}", serde_json::to_string_pretty(&counts)?);
        }
        Command::Status { control_db, event_store } => {
            let status = admin::status(&control_db, &event_store).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    }
    Ok(())
}

/// The one signal handler: SIGTERM or SIGINT starts the drain.
async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: draining streams");
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
