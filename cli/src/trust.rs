//! Which server certificates `tyr` accepts. After `tyr login` it trusts
//! exactly one CA: the one saved in the config directory (or `--ca-file`).
//! At login with `--ca-pin`, the CA is established kubeadm-style, as tyrd
//! does at enrollment: the connection's verifier looks in the chain the
//! server presents for the certificate whose SHA-256 (of its DER, or of its
//! public key) matches the pin and verifies the server's certificate
//! against it as the only root (the verifier and the pin format are
//! [`tyr_common::pin`]'s, shared with tyrd); `/api/v1/ca.pem` is then read
//! over that verified connection and must be that same certificate. Without
//! a CA the platform's roots are used (a server behind a publicly trusted
//! proxy).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tyr_common::pin::{PinError, PinVerifier, matches_pin};

/// Why a CA could not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The pin is not `sha256:<64 hex digits>`.
    #[error("--ca-pin must be sha256:<64 hex digits> (as `tyr token create` prints it)")]
    BadPin,
    /// The PEM holds no certificate.
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(String),
    /// The CA the server serves at `/api/v1/ca.pem` is not the pinned one.
    #[error("the CA the server serves is not the certificate matching --ca-pin")]
    ServedCaMismatch,
    /// A TLS configuration could not be built.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The crypto provider (ring; never aws-lc-rs or OpenSSL).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide provider, which reqwest uses for clients
/// built without a preconfigured TLS setup (platform roots).
pub fn install_provider() {
    // Err: a provider is already installed, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of a PEM bundle; an error when it holds none.
pub fn certificates(pem: &str, source: &str) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect();
    if certificates.is_empty() {
        return Err(TrustError::NoCertificate(source.to_owned()));
    }
    Ok(certificates)
}

/// A TLS client configuration trusting only the CA certificates of `ca_pem`.
pub fn only_ca(ca_pem: &str, source: &str) -> Result<rustls::ClientConfig, TrustError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_pem, source)? {
        roots.add(certificate)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Parses `sha256:<hex>` into the digest ([`tyr_common::pin::parse_pin`]).
fn parse_pin(pin: &str) -> Result<[u8; 32], TrustError> {
    tyr_common::pin::parse_pin(pin).map_err(|PinError::BadPin| TrustError::BadPin)
}

/// `tyr login --ca-pin`: the shared pin verifier for the connection, then
/// the check of the CA the server serves.
#[derive(Debug)]
pub struct PinnedLogin {
    /// The verifier the login connection uses.
    verifier: Arc<PinVerifier>,
}

impl PinnedLogin {
    /// A login trusting the CA matching `pin` (`sha256:<hex>`).
    pub fn new(pin: &str) -> Result<Self, TrustError> {
        Ok(Self { verifier: Arc::new(PinVerifier::new(parse_pin(pin)?, provider())) })
    }

    /// A TLS client configuration verifying with the pin.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TrustError> {
        Ok(self.verifier.client_config()?)
    }

    /// Checks that the PEM the server served at `/api/v1/ca.pem` is the
    /// pinned CA the verified handshake presented.
    pub fn check_served(&self, served_pem: &str) -> Result<(), TrustError> {
        let served = certificates(served_pem, "/api/v1/ca.pem")?;
        let found = self.verifier.found().ok_or(TrustError::ServedCaMismatch)?;
        if served.len() == 1 && served[0] == found && matches_pin(served[0].as_ref(), self.verifier.pin()) {
            Ok(())
        } else {
            Err(TrustError::ServedCaMismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pin checks themselves are tested in `tyr_common::pin`; here, that
    /// a bad pin is the CLI's [`TrustError::BadPin`] and a PEM without a
    /// certificate is refused.
    #[test]
    fn bad_pins_and_empty_pems_are_refused() {
        let pin = tyr_common::pin::pin_of(b"not a certificate");
        assert!(PinnedLogin::new(&pin).is_ok());
        for bad in ["sha256:abcd", "md5:00", &pin.replace("sha256:", ""), "sha256:zz"] {
            assert!(matches!(PinnedLogin::new(bad), Err(TrustError::BadPin)), "{bad}");
        }
        assert!(matches!(certificates("no pem here", "x"), Err(TrustError::NoCertificate(_))));
    }

    #[test]
    fn nothing_served_matches_before_a_handshake() {
        let login = PinnedLogin::new(&tyr_common::pin::pin_of(b"not a certificate")).expect("pin");
        let pem = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(login.check_served(pem), Err(TrustError::ServedCaMismatch)));
    }
}
