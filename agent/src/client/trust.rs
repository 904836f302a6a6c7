//! Trust on first contact (kubeadm-style): before tyrd sends its enrollment
//! token, it establishes which CA the server is, either from a `ca_file`
//! the operator gave it or from a pin of the CA certificate.
//!
//! With a pin, tyrd makes one TLS handshake whose verifier looks in the
//! chain the server presents (leaf + CA) for the certificate whose SHA-256
//! matches the pin, then verifies the leaf against that certificate as the
//! only root, with the server's name. No other bytes are exchanged on that
//! connection, so a wrong pin refuses before anything reaches the server.
//! The pin format and the verifier are [`tyr_common::pin`]'s, shared with
//! `tyr login --ca-pin`.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
pub use tyr_common::pin::pin_of;
use tyr_common::pin::{PinError, PinVerifier};

use super::channel::ServerAddress;

/// Why the server's CA could not be established.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The pin is not `sha256:<64 hex digits>`.
    #[error("ca pin must be sha256:<64 hex digits>")]
    BadPin,
    /// No certificate the server presented matches the pin.
    #[error("server CA does not match --ca-pin")]
    PinMismatch,
    /// The pinned CA did not sign the server's certificate for this name.
    #[error("the server certificate does not verify against the pinned CA: {0}")]
    Untrusted(String),
    /// The CA file could not be read or holds no certificate.
    #[error("reading the CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The server could not be reached or the handshake failed otherwise.
    #[error("connecting to {server}: {message}")]
    Connect {
        /// The server address.
        server: String,
        /// What went wrong.
        message: String,
    },
    /// A TLS configuration could not be built.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Parses `sha256:<hex>` into the digest ([`tyr_common::pin::parse_pin`]).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TrustError> {
    tyr_common::pin::parse_pin(pin).map_err(|PinError::BadPin| TrustError::BadPin)
}

/// The crypto provider tyrd uses (ring), whatever the process default is.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Makes one TLS handshake with `server` under `verifier`, then closes.
async fn handshake(
    server: &ServerAddress,
    verifier: Arc<dyn ServerCertVerifier>,
    timeout: Duration,
) -> Result<(), TrustError> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let connect_error = |message: String| TrustError::Connect { server: server.uri.clone(), message };
    let name = ServerName::try_from(server.host.clone()).map_err(|error| connect_error(error.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = TcpStream::connect((server.host.as_str(), server.port)).await?;
        let mut tls = connector.connect(name, tcp).await?;
        // Close politely; nothing else goes over this connection.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(connect_error(format!("no tls handshake within {timeout:?}"))),
        Ok(Err(error)) => match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(reason)) => Err(TrustError::Untrusted(format!("{reason:?}"))),
            _ => Err(connect_error(error.to_string())),
        },
        Ok(Ok(())) => Ok(()),
    }
}

/// Connects to `server`, verifies it with the pinned CA and returns that
/// CA's certificate. Refuses ([`TrustError::PinMismatch`]) before any
/// application byte is sent when nothing in the chain matches the pin.
pub async fn fetch_pinned_ca(
    server: &ServerAddress,
    pin: &str,
    timeout: Duration,
) -> Result<CertificateDer<'static>, TrustError> {
    let verifier = Arc::new(PinVerifier::new(parse_pin(pin)?, provider()));
    let outcome = handshake(server, Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>, timeout).await;
    if verifier.mismatch_seen() {
        return Err(TrustError::PinMismatch);
    }
    outcome?;
    verifier.found().ok_or_else(|| TrustError::Connect {
        server: server.uri.clone(),
        message: "the handshake did not present a certificate chain".to_owned(),
    })
}

/// Checks that `server` presents a certificate for its name signed by
/// `ca` (webpki), with one handshake that sends nothing else.
pub async fn check_ca(
    server: &ServerAddress,
    ca: &CertificateDer<'static>,
    timeout: Duration,
) -> Result<(), TrustError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|error| TrustError::Untrusted(error.to_string()))?;
    handshake(server, verifier, timeout).await
}

/// The first certificate of a PEM file.
pub fn read_ca_file(path: &std::path::Path) -> Result<CertificateDer<'static>, TrustError> {
    let bytes = std::fs::read(path)
        .map_err(|error| TrustError::CaFile { path: path.display().to_string(), message: error.to_string() })?;
    CertificateDer::from_pem_slice(&bytes)
        .map_err(|error| TrustError::CaFile { path: path.display().to_string(), message: error.to_string() })
}

/// The DER of each certificate in a PEM bundle.
pub fn certificates_in_pem(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pin checks themselves are tested in `tyr_common::pin`; here, that
    /// a bad pin is tyrd's [`TrustError::BadPin`].
    #[test]
    fn a_bad_pin_is_a_trust_error() {
        let pin = pin_of(b"not really a certificate");
        assert!(parse_pin(&pin).is_ok());
        for bad in ["sha256:abcd", "md5:00", &pin.replace("sha256:", "")] {
            assert!(matches!(parse_pin(bad), Err(TrustError::BadPin)), "{bad}");
        }
    }
}
