//! This daemon's identity on disk, in the state directory: `client.key`
//! (the private key, mode 0600), `client.pem` (the certificate the server
//! signed), `ca.pem` (the server CA) and `daemon_id`.
//!
//! Every file is written atomically and private (mode 0600, in a 0700
//! directory; see [`crate::private_fs`]). `client.pem` is
//! written last and removed first: it marks a complete identity, so a crash
//! halfway through (re-)enrollment leaves "not enrolled", never a key that
//! does not match its certificate.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Secret;
use crate::private_fs;

/// The private key file.
pub const KEY_FILE: &str = "client.key";
/// The client certificate file; its presence means "enrolled".
pub const CERT_FILE: &str = "client.pem";
/// The server CA certificate file.
pub const CA_FILE: &str = "ca.pem";
/// The daemon id the server assigned.
pub const DAEMON_ID_FILE: &str = "daemon_id";

/// Why the identity could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file of the identity could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io { path: path.to_owned(), source }
}

/// Creates `dir` (mode 0700) if it is missing; an existing one is left as
/// it is (and reported when others can enter it).
pub fn ensure_dir(dir: &Path) -> Result<(), IdentityError> {
    private_fs::ensure_dir(dir).map_err(io_error(dir))
}

/// Writes `bytes` to `path` atomically, mode 0600 from its creation on (a
/// private key is never readable by others, not even briefly).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    private_fs::write_atomic(path, bytes).map_err(io_error(path))
}

/// A complete identity: key, certificate, CA and id.
#[derive(Debug, Clone)]
pub struct StoredIdentity {
    /// The id the server assigned (a UUID).
    pub daemon_id: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: Secret,
    /// The client certificate, PEM.
    pub cert_pem: Vec<u8>,
    /// The server CA certificate, PEM.
    pub ca_pem: Vec<u8>,
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path: path.to_owned(), source }),
    }
}

fn read_required(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(io_error(path))
}

impl StoredIdentity {
    /// The identity in `state_dir`, or `None` when this daemon is not
    /// enrolled (no `client.pem`).
    pub fn load(state_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let Some(cert_pem) = read_optional(&state_dir.join(CERT_FILE))? else { return Ok(None) };
        let key_path = state_dir.join(KEY_FILE);
        let key_pem = String::from_utf8(read_required(&key_path)?).map_err(|_| IdentityError::Io {
            path: key_path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "not PEM text"),
        })?;
        let ca_pem = read_required(&state_dir.join(CA_FILE))?;
        let id_path = state_dir.join(DAEMON_ID_FILE);
        let daemon_id = String::from_utf8_lossy(&read_required(&id_path)?).trim().to_owned();
        Ok(Some(Self { daemon_id, key_pem: Secret::new(key_pem), cert_pem, ca_pem }))
    }

    /// Writes the identity into `state_dir` (`client.pem` last).
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        ensure_dir(state_dir)?;
        Self::forget(state_dir)?;
        write_atomic(&state_dir.join(KEY_FILE), self.key_pem.expose().as_bytes())?;
        write_atomic(&state_dir.join(CA_FILE), &self.ca_pem)?;
        write_atomic(&state_dir.join(DAEMON_ID_FILE), format!("{}\n", self.daemon_id).as_bytes())?;
        write_atomic(&state_dir.join(CERT_FILE), &self.cert_pem)
    }

    /// Marks `state_dir` as not enrolled (removes `client.pem`).
    pub fn forget(state_dir: &Path) -> Result<(), IdentityError> {
        let path = state_dir.join(CERT_FILE);
        match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(IdentityError::Io { path, source: error }),
            _ => Ok(()),
        }
    }
}
