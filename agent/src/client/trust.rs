//! Trust on first contact (kubeadm-style): before tyrd sends its enrollment
//! token, it establishes which CA the server is, either from a `ca_file`
//! the operator gave it or from a pin of the CA certificate.
//!
//! With a pin, tyrd makes one TLS handshake whose verifier looks in the
//! chain the server presents (leaf + CA) for the certificate whose SHA-256
//! matches the pin, then verifies the leaf against that certificate as the
//! only root, with the server's name. No other bytes are exchanged on that
//! connection, so a wrong pin refuses before anything reaches the server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use super::channel::ServerAddress;

/// The message a pin mismatch is reported with.
const PIN_MISMATCH: &str = "server CA does not match --ca-pin";

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

/// Parses `sha256:<hex>` into the digest.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TrustError> {
    let hex_digits = pin.trim().strip_prefix("sha256:").ok_or(TrustError::BadPin)?;
    let bytes = hex::decode(hex_digits).map_err(|_| TrustError::BadPin)?;
    bytes.try_into().map_err(|_| TrustError::BadPin)
}

/// The pin of a certificate: `sha256:` and the hex SHA-256 of its DER.
pub fn pin_of(certificate_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(certificate_der)))
}

/// Does `pin` name this certificate? Its DER, or (as kubeadm pins) its
/// SubjectPublicKeyInfo.
fn matches_pin(certificate: &CertificateDer<'_>, pin: &[u8; 32]) -> bool {
    if Sha256::digest(certificate.as_ref())[..] == pin[..] {
        return true;
    }
    x509_parser::parse_x509_certificate(certificate.as_ref())
        .is_ok_and(|(_, parsed)| Sha256::digest(parsed.public_key().raw)[..] == pin[..])
}

/// The crypto provider tyrd uses (ring), whatever the process default is.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A verifier that trusts only the certificate of the presented chain
/// matching a pin, and remembers it.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The pinned CA, once a chain verified.
    found: Mutex<Option<CertificateDer<'static>>>,
    /// No presented certificate matched the pin.
    mismatch: Mutex<bool>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| matches_pin(c, &self.pin)) else {
            if let Ok(mut mismatch) = self.mismatch.lock() {
                *mismatch = true;
            }
            return Err(rustls::Error::General(PIN_MISMATCH.to_owned()));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> = intermediates.iter().filter(|c| *c != ca).cloned().collect();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        let verified = webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)?;
        if let Ok(mut found) = self.found.lock() {
            *found = Some(ca.clone().into_owned());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
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
    let pin = parse_pin(pin)?;
    let verifier =
        Arc::new(PinVerifier { pin, provider: provider(), found: Mutex::new(None), mismatch: Mutex::new(false) });
    let outcome = handshake(server, Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>, timeout).await;
    if verifier.mismatch.lock().map(|m| *m).unwrap_or(false) {
        return Err(TrustError::PinMismatch);
    }
    outcome?;
    verifier.found.lock().ok().and_then(|found| found.clone()).ok_or_else(|| TrustError::Connect {
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

    #[test]
    fn pins_parse_and_round_trip() {
        let pin = pin_of(b"not really a certificate");
        assert_eq!(parse_pin(&pin).map(hex::encode).ok(), pin.strip_prefix("sha256:").map(str::to_owned));
        assert!(parse_pin("sha256:abcd").is_err());
        assert!(parse_pin("md5:00").is_err());
        assert!(parse_pin(&pin.replace("sha256:", "")).is_err());
    }
}
