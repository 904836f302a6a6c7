//! `tyr`: parses the command line (bad arguments exit 2) and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tyr_cli::run(tyr_cli::Cli::parse())
}
