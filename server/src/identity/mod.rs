//! The server CA, its serving certificate, CSR signing and certificate → daemon identity.
//!
//! The CA lives in the data directory (`ca.key` 0600, `ca.pem`) and is made on
//! first boot; it signs the server's own serving certificate and every
//! daemon's client certificate. A daemon's identity is the certificate the CA
//! issued to it: its common name is the daemon id and its serial is stored in
//! the daemon's row, so a certificate maps back to exactly one live daemon.

mod ca;
mod csr;
mod files;
mod peer;

pub use ca::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, SERVER_CERT_FILE, SERVER_KEY_FILE};
pub use csr::{IssuedCert, ValidatedCsr, Validity};
pub use peer::{CertIdentity, daemon_identity};

/// Errors of the server identity: the CA files, the serving certificate and
/// the certificates it signs.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file of the identity could not be read, written or synced.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "reading".
        action: &'static str,
        /// The file or directory concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The CA key file can be read by other users than the server's.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600` on it")]
    InsecureKeyFile {
        /// The key file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Only one half of the CA (key or certificate) exists.
    #[error("{present} exists but {missing} does not; restore it or remove both to make a new CA")]
    IncompleteCa {
        /// The file that exists.
        present: std::path::PathBuf,
        /// The file that is missing.
        missing: std::path::PathBuf,
    },
    /// A stored key or certificate does not parse, or the CA key does not
    /// match the CA certificate.
    #[error("{path} is not valid: {reason}")]
    InvalidStoredFile {
        /// The file concerned.
        path: std::path::PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A configured server name is neither a DNS name nor an IP address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    InvalidServerName(String),
    /// No server name was configured for the serving certificate.
    #[error("at least one server name is needed for the serving certificate")]
    NoServerNames,
    /// The certificate signing request is malformed, badly signed or uses a
    /// key type that is not allowed.
    #[error("certificate signing request refused: {0}")]
    InvalidCsr(String),
    /// The requested validity period is empty.
    #[error("certificate validity ends before it starts")]
    InvalidValidity,
    /// Generating a key or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}
