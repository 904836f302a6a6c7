//! `tyrd` command line.

use clap::{Parser, Subcommand};
use tyr_agent::host::HostFacts;

/// Tyr host daemon: watches and governs AI agents on this host from the kernel.
#[derive(Debug, Parser)]
#[command(name = "tyrd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what this kernel offers to Tyr's eBPF programs, as JSON.
    Probe,
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
            println!("{}", serde_json::to_string_pretty(&HostFacts::read())?);
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
