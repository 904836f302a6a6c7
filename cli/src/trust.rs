//! Which server certificates `tyr` accepts. After `tyr login` it trusts
//! exactly one CA: the one saved in the config directory (or `--ca-file`).
//! At login with `--ca-pin`, the CA is established kubeadm-style, as tyrd
//! does at enrollment: the connection's verifier looks in the chain the
//! server presents for the certificate whose SHA-256 (of its DER, or of its
//! public key) matches the pin and verifies the server's certificate
//! against it as the only root; `/api/v1/ca.pem` is then read over that
//! verified connection and must be that same certificate. Without a CA the
//! platform's roots are used (a server behind a publicly trusted proxy).

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

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

/// The message a pin mismatch fails the handshake with (shown to the operator).
const PIN_MISMATCH: &str = "no certificate the server presented matches --ca-pin";

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

/// Parses `sha256:<hex>` into the digest.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], TrustError> {
    let digits = pin.trim().strip_prefix("sha256:").ok_or(TrustError::BadPin)?;
    let bytes = hex::decode(digits).map_err(|_| TrustError::BadPin)?;
    bytes.try_into().map_err(|_| TrustError::BadPin)
}

/// Does `pin` name this certificate: its DER, or (as kubeadm pins) its
/// SubjectPublicKeyInfo?
pub fn matches_pin(certificate: &[u8], pin: &[u8; 32]) -> bool {
    if Sha256::digest(certificate)[..] == pin[..] {
        return true;
    }
    x509_parser::parse_x509_certificate(certificate)
        .is_ok_and(|(_, parsed)| Sha256::digest(parsed.public_key().raw)[..] == pin[..])
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

/// A verifier that trusts only the certificate of the presented chain
/// matching a pin, and remembers it.
#[derive(Debug)]
pub struct PinVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
    /// The pinned CA, once a chain verified.
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl PinVerifier {
    /// A verifier for `pin` (`sha256:<hex>`).
    pub fn new(pin: &str) -> Result<Arc<Self>, TrustError> {
        Ok(Arc::new(Self { pin: parse_pin(pin)?, provider: provider(), found: Mutex::new(None) }))
    }

    /// A TLS client configuration verifying with this verifier.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, TrustError> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth())
    }

    /// The pinned CA the server presented, once a handshake verified.
    pub fn found(&self) -> Option<CertificateDer<'static>> {
        self.found.lock().ok().and_then(|found| found.clone())
    }

    /// Checks that the PEM the server served at `/api/v1/ca.pem` is the
    /// pinned CA the verified handshake presented.
    pub fn check_served(&self, served_pem: &str) -> Result<(), TrustError> {
        let served = certificates(served_pem, "/api/v1/ca.pem")?;
        let found = self.found().ok_or(TrustError::ServedCaMismatch)?;
        if served.len() == 1 && served[0] == found && matches_pin(served[0].as_ref(), &self.pin) {
            Ok(())
        } else {
            Err(TrustError::ServedCaMismatch)
        }
    }
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
        let Some(ca) = intermediates.iter().find(|c| matches_pin(c.as_ref(), &self.pin)) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let digest: [u8; 32] = Sha256::digest(b"not a certificate").into();
        let pin = format!("sha256:{}", hex::encode(digest));
        assert_eq!(parse_pin(&pin).ok(), Some(digest));
        assert!(matches_pin(b"not a certificate", &digest));
        assert!(!matches_pin(b"another", &digest));
        for bad in ["sha256:abcd", "md5:00", &pin.replace("sha256:", ""), "sha256:zz"] {
            assert!(matches!(parse_pin(bad), Err(TrustError::BadPin)), "{bad}");
        }
        assert!(matches!(certificates("no pem here", "x"), Err(TrustError::NoCertificate(_))));
    }
}
