//! The subcommands, one module each, and what they share: the server and
//! session to use, the authenticated client, and lists that follow the
//! server's pages.

mod agent;
mod audit;
mod completions;
mod discovered;
mod drift;
mod events;
mod login;
mod policy;
mod token;
mod user;

use serde::de::DeserializeOwned;

use crate::args::{Cli, Command, GlobalArgs, PageArgs};
use crate::client::{Client, ClientError, Query, Trust};
use crate::config::{ConfigDir, ConfigError, TOKEN_ENV};
use crate::model::Page;
use crate::output::{Format, Output, Row};
use crate::trust::{self, TrustError};

/// The largest page asked of the server.
const MAX_PAGE: u64 = 1000;

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (exit 0).
    Done,
    /// Nothing was found: an empty list or query (exit 1).
    NothingFound,
}

impl Outcome {
    /// [`Outcome::NothingFound`] when `count` is zero.
    pub fn found(count: usize) -> Self {
        if count == 0 { Self::NothingFound } else { Self::Done }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The API call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The saved configuration could not be read or written.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA could not be trusted.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The server refused the username and password.
    #[error("{0}")]
    LoginRefused(String),
    /// No session for this server.
    #[error("not logged in to {0}: run `tyr login` (or set TYR_TOKEN)")]
    NotLoggedIn(String),
    /// No server named anywhere.
    #[error("no server: run `tyr login --server https://HOST:7701 --ca-pin sha256:HEX`, or set TYR_SERVER")]
    NoServer,
    /// The command cannot run as asked.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// Writing to stdout (or reading the terminal) failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CommandError {
    /// True for a closed stdout (`tyr ... | head`): a normal end.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Io(error) if error.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// True when what was asked for does not exist (exit 1).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Client(error) if error.is_not_found())
    }
}

/// What every command works with.
#[derive(Debug)]
pub struct Context {
    /// The global options.
    pub global: GlobalArgs,
    /// The configuration directory.
    pub config: ConfigDir,
    /// Where data goes.
    pub out: Output,
}

/// A server URL without its trailing slashes, for comparing.
fn same_server(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

impl Context {
    /// The server: `--server`/`TYR_SERVER`, else the saved one.
    pub fn server(&self) -> Result<String, CommandError> {
        if let Some(server) = &self.global.server {
            return Ok(server.clone());
        }
        self.config.server()?.map(|saved| saved.server).ok_or(CommandError::NoServer)
    }

    /// Reads `--ca-file`, if given.
    pub fn ca_file_pem(&self) -> Result<Option<String>, CommandError> {
        let Some(path) = &self.global.ca_file else { return Ok(None) };
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|source| CommandError::Read { path: path.display().to_string(), source })
    }

    /// The CA `server` must chain to: `--ca-file`, else the saved CA when
    /// `server` is the saved server; None: the platform's roots.
    pub fn ca_pem_for(&self, server: &str) -> Result<Option<(String, String)>, CommandError> {
        if let Some(pem) = self.ca_file_pem()? {
            let source = self.global.ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            return Ok(Some((pem, source)));
        }
        let saved = self.config.server()?;
        if saved.is_some_and(|saved| same_server(&saved.server, server))
            && let Some(pem) = self.config.ca_pem()?
        {
            return Ok(Some((pem, self.config.path().join("ca.pem").display().to_string())));
        }
        Ok(None)
    }

    /// How to verify `server`.
    pub fn trust_for(&self, server: &str) -> Result<Trust, CommandError> {
        Ok(match self.ca_pem_for(server)? {
            Some((pem, source)) => Trust::Config(Box::new(trust::only_ca(&pem, &source)?)),
            None => Trust::Platform,
        })
    }

    /// A client for the server with the session's token: `TYR_TOKEN`, else
    /// the saved session when it is for this server (a token is never sent
    /// to another server).
    pub fn client(&self) -> Result<Client, CommandError> {
        let server = self.server()?;
        let token = match std::env::var(TOKEN_ENV).ok().filter(|token| !token.is_empty()) {
            Some(token) => token,
            None => match self.config.session()? {
                Some(session) if same_server(&session.server, &server) => session.token,
                _ => return Err(CommandError::NotLoggedIn(server)),
            },
        };
        Ok(Client::new(&server, self.trust_for(&server)?, Some(token))?)
    }

    /// Prints a list, following the server's pages up to `page.limit`
    /// items (or to the end with `page.all`); nothing found when empty.
    pub async fn list<T: Row + DeserializeOwned>(
        &mut self,
        client: &Client,
        path: &str,
        query: &Query,
        page: PageArgs,
    ) -> Result<Outcome, CommandError> {
        let mut cursor: Option<String> = None;
        let mut printed: u64 = 0;
        loop {
            let page_size = u64::from(page.page_size).min(MAX_PAGE);
            let want = if page.all { page_size } else { (page.limit - printed).min(page_size) };
            let want = u32::try_from(want).unwrap_or(page.page_size);
            let got: Page<T> = client.page(path, query, want, cursor.as_deref()).await?;
            for item in &got.items {
                if !page.all && printed >= page.limit {
                    break;
                }
                self.out.item(item)?;
                printed += 1;
            }
            match got.next_cursor {
                Some(next) if (page.all || printed < page.limit) && !got.items.is_empty() => {
                    if cursor.as_deref() == Some(next.as_str()) {
                        return Err(CommandError::Usage(format!("the server repeated the cursor of {path}")));
                    }
                    cursor = Some(next);
                }
                _ => break,
            }
        }
        self.finish_list()
    }

    /// Flushes a list; nothing found (and a note on stderr for people) when it was empty.
    pub fn finish_list(&mut self) -> Result<Outcome, CommandError> {
        self.out.finish()?;
        let outcome = Outcome::found(self.out.items());
        if outcome == Outcome::NothingFound && self.out.format() == Format::Table {
            eprintln!("nothing found");
        }
        Ok(outcome)
    }
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<Outcome, CommandError> {
    let Cli { global, command } = cli;
    let out = Output::new(global.format);
    let config = ConfigDir::locate();
    let mut ctx = match config {
        Ok(config) => Context { global, config, out },
        // Completions and the version need no configuration.
        Err(error) => match command {
            Command::Completions { shell } => return completions::run(shell),
            Command::Version => return version(global.server.as_deref(), None),
            _ => return Err(error.into()),
        },
    };
    match command {
        Command::Login(args) => login::login(&mut ctx, args).await,
        Command::Logout => login::logout(&ctx),
        Command::Whoami => login::whoami(&mut ctx).await,
        Command::Agent(command) => agent::run(&mut ctx, command).await,
        Command::Discovered(command) => discovered::run(&mut ctx, command).await,
        Command::Token(command) => token::run(&mut ctx, command).await,
        Command::Policy(command) => policy::run(&mut ctx, command).await,
        Command::Events(command) => events::run(&mut ctx, command).await,
        Command::Drift(args) => drift::run(&mut ctx, args).await,
        Command::User(command) => user::run(&mut ctx, command).await,
        Command::Audit(args) => audit::run(&mut ctx, args).await,
        Command::Completions { shell } => completions::run(shell),
        Command::Version => {
            let server = ctx.server().ok();
            version(server.as_deref(), Some(&mut ctx.out))
        }
    }
}

/// `tyr version`.
fn version(server: Option<&str>, out: Option<&mut Output>) -> Result<Outcome, CommandError> {
    let line = crate::version_line(server.unwrap_or("none"));
    match out {
        Some(out) => {
            out.text(&line)?;
            if out.format() == Format::Json {
                out.json_line(&serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "server": server }))?;
            }
            out.finish()?;
        }
        None => {
            use std::io::Write;
            writeln!(std::io::stdout(), "{line}")?;
        }
    }
    Ok(Outcome::Done)
}
