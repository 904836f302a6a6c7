//! What `tyr login` keeps between runs, in `$XDG_CONFIG_HOME/tyr/` (else
//! `~/.config/tyr/`): the server URL (`server.json`), the CA certificate
//! that server must chain to (`ca.pem`) and the session token
//! (`session.json`). The directory is 0700 and every file 0600, created
//! with that mode (never widened then narrowed) and replaced atomically.
//!
//! `TYR_SERVER` and `TYR_TOKEN` override the saved server and token.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming a session token to use instead of the saved one.
pub const TOKEN_ENV: &str = "TYR_TOKEN";

const SERVER_FILE: &str = "server.json";
const CA_FILE: &str = "ca.pem";
const SESSION_FILE: &str = "session.json";

/// Why the saved configuration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither XDG_CONFIG_HOME nor HOME names a directory.
    #[error("no config directory: set XDG_CONFIG_HOME or HOME")]
    NoDirectory,
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// A saved file is not what tyr wrote.
    #[error("{path}: not a tyr configuration file ({message}); run `tyr login` again")]
    Corrupt {
        /// The file.
        path: String,
        /// Why it does not parse.
        message: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io { path: path.display().to_string(), source }
}

/// The saved server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedServer {
    /// Base URL of the REST API.
    pub server: String,
    /// The name last logged in with (offered again by `tyr login`).
    #[serde(default)]
    pub username: Option<String>,
}

/// The saved session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The server the token is for.
    pub server: String,
    /// The bearer token (a secret: never printed).
    pub token: String,
    /// When the server stops accepting it (RFC 3339).
    pub expires_at: String,
    /// Who it is for.
    pub username: String,
    /// `admin` or `viewer`.
    pub role: String,
}

/// The configuration directory and what it holds.
#[derive(Debug, Clone)]
pub struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    /// `$XDG_CONFIG_HOME/tyr` when that is an absolute path, else `$HOME/.config/tyr`.
    pub fn locate() -> Result<Self, ConfigError> {
        let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|path| path.is_absolute());
        let base = match xdg {
            Some(base) => base,
            None => std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
                .ok_or(ConfigError::NoDirectory)?
                .join(".config"),
        };
        Ok(Self { dir: base.join("tyr") })
    }

    /// A configuration directory at `dir` (tests).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved server, if any.
    pub fn server(&self) -> Result<Option<SavedServer>, ConfigError> {
        self.read_json(SERVER_FILE)
    }

    /// The saved CA certificate (PEM), if any.
    pub fn ca_pem(&self) -> Result<Option<String>, ConfigError> {
        let path = self.dir.join(CA_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    /// The saved session, if any.
    pub fn session(&self) -> Result<Option<Session>, ConfigError> {
        self.read_json(SESSION_FILE)
    }

    /// Saves a login: the server, its CA (None: the system's roots are
    /// trusted, and a CA saved before is removed) and the session.
    pub fn save_login(&self, server: &SavedServer, ca_pem: Option<&str>, session: &Session) -> Result<(), ConfigError> {
        self.ensure_dir()?;
        self.write_json(SERVER_FILE, server)?;
        match ca_pem {
            Some(pem) => self.write_private(CA_FILE, pem.as_bytes())?,
            None => self.remove(CA_FILE).map(drop)?,
        }
        self.write_json(SESSION_FILE, session)
    }

    /// Forgets the session; true when there was one.
    pub fn logout(&self) -> Result<bool, ConfigError> {
        self.remove(SESSION_FILE)
    }

    fn remove(&self, name: &str) -> Result<bool, ConfigError> {
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, ConfigError> {
        let path = self.dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| ConfigError::Corrupt { path: path.display().to_string(), message: error.to_string() })
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ConfigError> {
        let path = self.dir.join(name);
        let mut text = serde_json::to_vec_pretty(value)
            .map_err(|error| ConfigError::Corrupt { path: path.display().to_string(), message: error.to_string() })?;
        text.push(b'\n');
        self.write_private(name, &text)
    }

    /// The directory, 0700: created with that mode, or narrowed when it
    /// exists and others may read it.
    fn ensure_dir(&self) -> Result<(), ConfigError> {
        DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io_error(&self.dir))?;
        let metadata = std::fs::metadata(&self.dir).map_err(io_error(&self.dir))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(&self.dir))?;
        }
        Ok(())
    }

    /// Writes `dir/name` atomically: a new 0600 file beside it, synced,
    /// renamed over the old one.
    fn write_private(&self, name: &str, bytes: &[u8]) -> Result<(), ConfigError> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        // A leftover from a crashed run would make create_new fail.
        let _ = std::fs::remove_file(&temporary);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written.map_err(io_error(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tyr-cli-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn login_files_are_private_and_round_trip() {
        let root = scratch();
        let config = ConfigDir::at(root.join("tyr"));
        let server = SavedServer { server: "https://tyr.example:7701".to_owned(), username: Some("ops".to_owned()) };
        let session = Session {
            server: server.server.clone(),
            token: "secret".to_owned(),
            expires_at: "2026-11-30T12:00:00Z".to_owned(),
            username: "ops".to_owned(),
            role: "admin".to_owned(),
        };
        config.save_login(&server, Some("PEM"), &session).expect("saved");
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(config.path()), 0o700);
        for name in [SERVER_FILE, CA_FILE, SESSION_FILE] {
            assert_eq!(mode(&config.path().join(name)), 0o600, "{name}");
        }
        assert_eq!(config.session().expect("read").map(|s| s.token).as_deref(), Some("secret"));
        assert_eq!(config.ca_pem().expect("read").as_deref(), Some("PEM"));
        assert!(config.logout().expect("logout"));
        assert!(config.session().expect("read").is_none());
        assert!(!config.logout().expect("logout twice"));
        assert_eq!(config.server().expect("read").map(|s| s.server), Some(server.server.clone()));

        config.save_login(&server, None, &session).expect("saved without a CA");
        assert!(config.ca_pem().expect("read").is_none(), "a CA saved before is removed");
        std::fs::write(config.path().join(SESSION_FILE), "{").expect("corrupt");
        assert!(matches!(config.session(), Err(ConfigError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(root);
    }
}
