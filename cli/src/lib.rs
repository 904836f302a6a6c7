//! The `tyr` operator CLI over tyr-server's REST API: clap definitions in
//! [`args`], one module per subcommand under `commands`, one typed client
//! ([`client`]), output as tables or JSON lines ([`output`]), and the saved
//! server, CA and session ([`config`]).
//!
//! Exit status: 0 ok, 1 nothing found (an empty list or query, a 404),
//! 2 error (bad arguments, authentication, network, any other refusal).
//! A closed stdout (`tyr ... | head`) ends the command quietly with 0.

pub mod args;
pub mod client;
mod commands;
pub mod config;
pub mod model;
pub mod output;
pub mod time_arg;
pub mod trust;

use std::process::ExitCode;

pub use args::Cli;
pub use commands::{CommandError, Outcome};

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status when nothing was found.
pub const EXIT_NOTHING_FOUND: u8 = 1;
/// Exit status for errors.
pub const EXIT_ERROR: u8 = 2;

/// The line `tyr version` prints.
pub fn version_line(server: &str) -> String {
    format!("tyr {} (server {server})", env!("CARGO_PKG_VERSION"))
}

/// Runs a parsed command line; the process exit status.
pub fn run(cli: Cli) -> ExitCode {
    trust::install_provider();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tyr: cannot start: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(commands::run(cli));
    ExitCode::from(exit_status(result))
}

/// Reports the result on stderr and turns it into an exit status.
fn exit_status(result: Result<Outcome, CommandError>) -> u8 {
    match result {
        Ok(Outcome::Done) => EXIT_OK,
        Ok(Outcome::NothingFound) => EXIT_NOTHING_FOUND,
        Err(error) if error.is_broken_pipe() => EXIT_OK,
        Err(error) => {
            let message = error.to_string();
            for (index, line) in message.lines().enumerate() {
                let prefix = if index == 0 { "tyr: " } else { "  " };
                eprintln!("{prefix}{}", output::safe(line));
            }
            if let CommandError::Client(client) = &error {
                // The server's message may already list the policy errors.
                for detail in client.policy_details().iter().map(ToString::to_string) {
                    if !message.contains(&detail) {
                        eprintln!("  {}", output::safe(&detail));
                    }
                }
                if client.is_unauthenticated() {
                    eprintln!("  (log in again with `tyr login`)");
                }
                if client.is_untrusted_certificate() {
                    eprintln!("  (trust the server's CA: `tyr login --ca-pin sha256:HEX` or `--ca-file CA.pem`)");
                }
            }
            if error.is_not_found() { EXIT_NOTHING_FOUND } else { EXIT_ERROR }
        }
    }
}
