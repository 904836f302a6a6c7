//! `tyr-server` command line.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tyr_server::admin;
use tyr_server::config::{ControlDbConfig, EventStoreConfig};

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
    /// Print the state of PostgreSQL and ClickHouse as JSON.
    Status {
        #[command(flatten)]
        control_db: ControlDbConfig,
        #[command(flatten)]
        event_store: EventStoreConfig,
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
        Command::Status { control_db, event_store } => {
            let status = admin::status(&control_db, &event_store).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
