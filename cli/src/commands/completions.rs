//! `tyr completions SHELL`: a completion script for bash, zsh, fish,
//! elvish or PowerShell on stdout.

use std::io::Write;

use clap::CommandFactory;

use super::{CommandError, Outcome};
use crate::args::Cli;

/// Prints the script. It is generated in memory first: clap_complete
/// panics when a write fails, and a closed pipe is a normal end here.
pub fn run(shell: clap_complete::Shell) -> Result<Outcome, CommandError> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tyr", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(Outcome::Done)
}
