//! `tyr` command line.

use clap::{Parser, Subcommand};

/// Tyr operator CLI: agents, policies, tokens, events and drift, over the
/// server's REST API.
#[derive(Debug, Parser)]
#[command(name = "tyr", version)]
struct Cli {
    /// Base URL of tyr-server's REST API.
    #[arg(long, global = true, env = "TYR_SERVER", default_value = "https://127.0.0.1:7701")]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CLI version and the server it talks to.
    Version,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("{}", tyr_cli::version_line(&cli.server));
        }
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
