//! `tyr-server user create|list|disable`: operators' accounts managed on the
//! server host with the server's database credentials (the actor in the
//! audit log is `local-admin`). This is how the first admin is made: there
//! is no default password. Data goes to stdout as JSON, prompts and hints to
//! the terminal or stderr; a password is never printed.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use uuid::Uuid;

use crate::auth::Role;
use crate::auth::password::{MAX_PASSWORD_BYTES, check_password_strength};
use crate::config::ControlDbConfig;
use crate::control_db;
use crate::control_db::audit::Actor;
use crate::control_db::users::{self, MAX_LIST_LIMIT, User, UserError};
use crate::enrollment_admin::print_json;

/// Errors reading a new password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordInputError {
    /// Standard input or the terminal could not be read.
    #[error("reading the password: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing was given.
    #[error("no password given (pipe one line on stdin or type it at the prompt)")]
    Empty,
    /// The two entries at the prompt differ.
    #[error("the passwords do not match")]
    Mismatch,
}

/// Reads one line from `input`: the password, its trailing newline (`\n` or
/// `\r\n`) removed. Reads at most a little more than the longest password
/// accepted, so a huge input is refused by the strength check, not buffered.
pub fn read_password_line(input: impl BufRead) -> Result<String, PasswordInputError> {
    let mut line = String::new();
    input.take(MAX_PASSWORD_BYTES as u64 + 2).read_line(&mut line)?;
    if let Some(stripped) = line.strip_suffix('\n') {
        line.truncate(stripped.strip_suffix('\r').unwrap_or(stripped).len());
    }
    if line.is_empty() {
        return Err(PasswordInputError::Empty);
    }
    Ok(line)
}

/// The new user's password: one line of stdin when stdin is not a terminal,
/// else typed twice at a prompt without echo.
pub fn read_new_password() -> Result<String, PasswordInputError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_password_line(stdin.lock());
    }
    loop {
        let first = rpassword::prompt_password("password: ")?;
        if first.is_empty() {
            return Err(PasswordInputError::Empty);
        }
        if let Err(reason) = check_password_strength(&first) {
            eprintln!("tyr-server: {reason}; try again");
            continue;
        }
        let second = rpassword::prompt_password("password again: ")?;
        return if first == second { Ok(first) } else { Err(PasswordInputError::Mismatch) };
    }
}

/// Creates a user with `password`, migrating the database first (this can
/// be the first command run on a new server).
pub async fn create_user(
    control_db_config: &ControlDbConfig,
    username: &str,
    password: String,
    role: Role,
) -> anyhow::Result<User> {
    let pool = control_db::connect(control_db_config).await?;
    let created = async {
        control_db::migrate(&pool).await.context("migrating the control database")?;
        users::create(&pool, &Actor::local_admin(), username, password, role).await.map_err(anyhow::Error::from)
    }
    .await;
    pool.close().await;
    created
}

/// `tyr-server user create NAME [--role R]`: reads the password (stdin or
/// prompt), creates the user and prints it as JSON.
pub async fn user_create(control_db_config: &ControlDbConfig, username: &str, role: Role) -> anyhow::Result<()> {
    // Checked before the prompt so a typo in the name does not cost a password.
    if !users::is_valid_username(username) {
        return Err(UserError::InvalidName(username.to_owned()).into());
    }
    let password = read_new_password()?;
    let user = create_user(control_db_config, username, password, role).await?;
    print_json(&user)?;
    eprintln!("created {} {:?}", user.role, user.username);
    Ok(())
}

/// `tyr-server user list`: every user as a JSON array, oldest id first.
pub async fn user_list(control_db_config: &ControlDbConfig) -> anyhow::Result<()> {
    let pool = control_db::connect(control_db_config).await?;
    let listed = list_all(&pool).await;
    pool.close().await;
    print_json(&listed.context("listing users")?)
}

async fn list_all(pool: &sqlx::PgPool) -> Result<Vec<User>, UserError> {
    let mut all = Vec::new();
    loop {
        let page = users::list(pool, all.last().map(|user: &User| user.id), MAX_LIST_LIMIT).await?;
        let full = page.len() as i64 == MAX_LIST_LIMIT;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// `tyr-server user disable ID`: prints the disabled user; `false` (exit 1)
/// when there is no such user.
pub async fn user_disable(control_db_config: &ControlDbConfig, id: Uuid) -> anyhow::Result<bool> {
    let pool = control_db::connect(control_db_config).await?;
    let disabled = users::disable(&pool, &Actor::local_admin(), id).await;
    pool.close().await;
    match disabled {
        Ok(user) => {
            print_json(&user)?;
            Ok(true)
        }
        Err(UserError::NotFound(_)) => {
            eprintln!("tyr-server: no user {id}");
            Ok(false)
        }
        Err(error) => Err(error).context("disabling the user"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_strips_one_newline() {
        let read = |input: &str| read_password_line(input.as_bytes());
        assert_eq!(read("secret words here\n").ok().as_deref(), Some("secret words here"));
        assert_eq!(read("secret words here\r\n").ok().as_deref(), Some("secret words here"));
        assert_eq!(read("no newline at all").ok().as_deref(), Some("no newline at all"));
        assert_eq!(read("  spaces kept  \nsecond line").ok().as_deref(), Some("  spaces kept  "));
        assert!(matches!(read("\n"), Err(PasswordInputError::Empty)));
        assert!(matches!(read(""), Err(PasswordInputError::Empty)));
        let huge = "x".repeat(1_000_000);
        let line = read(&huge).expect("read");
        assert!(line.len() > MAX_PASSWORD_BYTES && line.len() < 2 * MAX_PASSWORD_BYTES, "bounded read");
    }
}
