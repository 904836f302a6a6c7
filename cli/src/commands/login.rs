//! `tyr login`, `tyr logout`, `tyr whoami`: establishing which CA the
//! server is (pin, file, or what was saved), signing in, and keeping the
//! session in the config directory.

use std::io::{BufRead, IsTerminal, Write};

use super::{CommandError, Context, Outcome};
use crate::args::LoginArgs;
use crate::client::{Client, Trust};
use crate::config::{SavedServer, Session};
use crate::trust::PinnedLogin;

/// Longest password line read from stdin.
const MAX_PASSWORD_BYTES: u64 = 1024;

/// `tyr login`.
pub async fn login(ctx: &mut Context, args: LoginArgs) -> Result<Outcome, CommandError> {
    let server = ctx.server()?;
    if args.ca_pin.is_some() && ctx.global.ca_file.is_some() {
        return Err(CommandError::Usage("give --ca-pin or --ca-file, not both".to_owned()));
    }
    let saved = ctx.config.server()?;
    // Asked before connecting: a missing name fails without touching the network.
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(name) => name,
        None if stdin_is_terminal => prompt_username(saved.as_ref().and_then(|s| s.username.as_deref()))?,
        None => {
            return Err(CommandError::Usage("--username is needed when the password comes from stdin".to_owned()));
        }
    };

    // Which CA the server is, before any credential is sent.
    let (client, ca_pem) = match &args.ca_pin {
        Some(pin) => {
            let verifier = PinnedLogin::new(pin)?;
            let client = Client::new(&server, Trust::Config(Box::new(verifier.client_config()?)), None)?;
            let served = client.ca_pem().await?;
            verifier.check_served(&served)?;
            (client, Some(served))
        }
        None => {
            let ca = ctx.ca_pem_for(&server)?;
            let trust = ctx.trust_for(&server)?;
            let client = Client::new(&server, trust, None)?;
            (client, ca.map(|(pem, _)| pem))
        }
    };

    let password = if stdin_is_terminal {
        rpassword::prompt_password(format!("password for {username}: "))?
    } else {
        read_password_line(std::io::stdin().lock())?
    };
    if password.is_empty() {
        return Err(CommandError::Usage("no password given".to_owned()));
    }

    let session = client.login(&username, &password).await.map_err(|error| match error {
        error if error.is_unauthenticated() => CommandError::LoginRefused(error.to_string()),
        error => CommandError::Client(error),
    })?;
    ctx.config.save_login(
        &SavedServer { server: server.clone(), username: Some(session.user.username.clone()) },
        ca_pem.as_deref(),
        &Session {
            server: server.clone(),
            token: session.token,
            expires_at: session.expires_at.clone(),
            username: session.user.username.clone(),
            role: session.user.role.clone(),
        },
    )?;
    let trusted = if ca_pem.is_some() { "its CA saved" } else { "trusted by the system's roots" };
    eprintln!(
        "logged in to {server} as {} ({}) until {}; {trusted} in {}",
        session.user.username,
        session.user.role,
        session.expires_at,
        ctx.config.path().display()
    );
    Ok(Outcome::Done)
}

/// Asks for the user name on the terminal (the saved one by default).
fn prompt_username(default: Option<&str>) -> Result<String, CommandError> {
    let mut stderr = std::io::stderr();
    match default {
        Some(name) => write!(stderr, "username [{name}]: ")?,
        None => write!(stderr, "username: ")?,
    }
    stderr.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let name = line.trim();
    match (name.is_empty(), default) {
        (false, _) => Ok(name.to_owned()),
        (true, Some(default)) => Ok(default.to_owned()),
        (true, None) => Err(CommandError::Usage("no username given".to_owned())),
    }
}

/// One line of `input`, its newline removed; at most [`MAX_PASSWORD_BYTES`] read.
fn read_password_line(input: impl BufRead) -> Result<String, CommandError> {
    let mut line = String::new();
    input.take(MAX_PASSWORD_BYTES + 2).read_line(&mut line)?;
    if let Some(stripped) = line.strip_suffix('\n') {
        line.truncate(stripped.strip_suffix('\r').unwrap_or(stripped).len());
    }
    Ok(line)
}

/// A new password: one line of stdin when it is not a terminal, else typed
/// twice without echo.
pub fn read_new_password() -> Result<String, CommandError> {
    if !std::io::stdin().is_terminal() {
        let password = read_password_line(std::io::stdin().lock())?;
        if password.is_empty() {
            return Err(CommandError::Usage("no password given on stdin".to_owned()));
        }
        return Ok(password);
    }
    let first = rpassword::prompt_password("new password: ")?;
    let second = rpassword::prompt_password("again: ")?;
    if first != second {
        return Err(CommandError::Usage("the passwords do not match".to_owned()));
    }
    if first.is_empty() {
        return Err(CommandError::Usage("no password given".to_owned()));
    }
    Ok(first)
}

/// `tyr logout`.
pub fn logout(ctx: &Context) -> Result<Outcome, CommandError> {
    if ctx.config.logout()? {
        eprintln!("logged out (the session token was removed)");
        Ok(Outcome::Done)
    } else {
        eprintln!("no session to remove");
        Ok(Outcome::Done)
    }
}

/// `tyr whoami`.
pub async fn whoami(ctx: &mut Context) -> Result<Outcome, CommandError> {
    let client = ctx.client()?;
    let me = client.whoami().await?;
    let fields = [
        ("username", me.username.clone()),
        ("role", me.role.clone()),
        ("id", me.id.to_string()),
        ("server", client.base().to_string()),
    ];
    ctx.out.object(&me, &fields)?;
    ctx.out.finish()?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lines() {
        assert_eq!(read_password_line(&b"secret\r\nmore"[..]).expect("read"), "secret");
        assert_eq!(read_password_line(&b"secret"[..]).expect("read"), "secret");
        let long = vec![b'x'; 5000];
        assert!(read_password_line(&long[..]).expect("read").len() <= 1026);
    }
}
