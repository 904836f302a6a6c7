//! CA pins and the TLS verifier that trusts a server by one, shared by tyrd
//! (enrollment, `--ca-pin`) and `tyr login --ca-pin`.
//!
//! # Pin format
//!
//! A pin is `sha256:` followed by 64 hex digits (either case; surrounding
//! whitespace is ignored): the SHA-256 of a CA certificate's DER, as
//! `tyr-server token create` and `tyr token create` print it (see
//! [`pin_of`]). As kubeadm pins do, the SHA-256 of the certificate's
//! SubjectPublicKeyInfo is accepted too, so a CA re-issued with the same key
//! keeps its pin.
//!
//! # Trust on first contact
//!
//! [`PinVerifier`] looks in the chain the server presents (leaf + CA) for the
//! certificate matching the pin, then verifies the leaf against that
//! certificate as the only root, with the server's name (webpki). It
//! remembers the CA it found, and whether no presented certificate matched,
//! so the caller can tell a wrong pin from a chain that does not verify.

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// The prefix every pin starts with.
pub const PIN_PREFIX: &str = "sha256:";

/// The message a handshake fails with when no presented certificate matches
/// the pin (what an operator sees through a TLS client's error).
pub const PIN_MISMATCH: &str = "no certificate the server presented matches --ca-pin";

/// Why a pin was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The pin is not `sha256:<64 hex digits>`.
    #[error("ca pin must be sha256:<64 hex digits>")]
    BadPin,
}

/// Parses `sha256:<hex>` into the digest.
pub fn parse_pin(pin: &str) -> Result<[u8; 32], PinError> {
    let digits = pin.trim().strip_prefix(PIN_PREFIX).ok_or(PinError::BadPin)?;
    let bytes = hex::decode(digits).map_err(|_| PinError::BadPin)?;
    bytes.try_into().map_err(|_| PinError::BadPin)
}

/// The pin of a certificate: `sha256:` and the hex SHA-256 of its DER.
pub fn pin_of(certificate_der: &[u8]) -> String {
    format!("{PIN_PREFIX}{}", hex::encode(Sha256::digest(certificate_der)))
}

/// Does `pin` name this certificate (DER): the SHA-256 of its DER, or (as
/// kubeadm pins) of its SubjectPublicKeyInfo?
pub fn matches_pin(certificate: &[u8], pin: &[u8; 32]) -> bool {
    if Sha256::digest(certificate)[..] == pin[..] {
        return true;
    }
    x509_parser::parse_x509_certificate(certificate)
        .is_ok_and(|(_, parsed)| Sha256::digest(parsed.public_key().raw)[..] == pin[..])
}

/// A verifier that trusts only the certificate of the presented chain
/// matching a pin, and remembers it.
#[derive(Debug)]
pub struct PinVerifier {
    /// The digest a presented certificate must match.
    pin: [u8; 32],
    /// The provider whose algorithms verify signatures.
    provider: Arc<CryptoProvider>,
    /// The pinned CA, once a chain verified.
    found: Mutex<Option<CertificateDer<'static>>>,
    /// A handshake was refused because no presented certificate matched.
    mismatch: Mutex<bool>,
}

impl PinVerifier {
    /// A verifier for the digest `pin` (see [`parse_pin`]) verifying with
    /// `provider`'s algorithms.
    pub fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider, found: Mutex::new(None), mismatch: Mutex::new(false) }
    }

    /// The pinned digest.
    pub fn pin(&self) -> &[u8; 32] {
        &self.pin
    }

    /// The pinned CA the server presented, once a handshake verified.
    pub fn found(&self) -> Option<CertificateDer<'static>> {
        self.found.lock().ok().and_then(|found| found.clone())
    }

    /// Whether a handshake was refused because no certificate the server
    /// presented matched the pin.
    pub fn mismatch_seen(&self) -> bool {
        self.mismatch.lock().map(|mismatch| *mismatch).unwrap_or(false)
    }

    /// A TLS client configuration (this verifier's provider, safe default
    /// protocol versions, no client certificate) verifying with this verifier.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, rustls::Error> {
        Ok(rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::clone(self) as Arc<dyn ServerCertVerifier>)
            .with_no_client_auth())
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

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        PublicKeyData,
    };
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// A CA: its certificate, its SubjectPublicKeyInfo pin and what signs with it.
    struct TestCa {
        der: CertificateDer<'static>,
        spki_pin: [u8; 32],
        issuer: Issuer<'static, KeyPair>,
    }

    fn new_ca(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        let spki_pin = Sha256::digest(key.subject_public_key_info()).into();
        TestCa { der: cert.der().clone(), spki_pin, issuer: Issuer::new(params, key) }
    }

    /// A serving certificate for `host` signed by `ca`, and its key.
    fn new_leaf(ca: &TestCa, host: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![host.to_owned()]).expect("leaf params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca.issuer).expect("leaf cert");
        (cert.der().clone(), PrivatePkcs8KeyDer::from(key.serialize_der()).into())
    }

    fn ring() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn der_pin(ca: &TestCa) -> [u8; 32] {
        parse_pin(&pin_of(&ca.der)).expect("a pin parses")
    }

    fn verify(
        verifier: &PinVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        host: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(host.to_owned()).expect("server name");
        verifier.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
    }

    /// A full TLS handshake in memory between `client` (for `host`) and a
    /// server presenting `chain`; the client's error if it refuses.
    fn handshake(
        client: rustls::ClientConfig,
        host: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        let server = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let name = ServerName::try_from(host.to_owned()).expect("server name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server)).expect("server connection");
        for _ in 0..10 {
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).expect("in memory");
            }
            server.read_tls(&mut bytes.as_slice()).expect("in memory");
            // The server's own error shows as the client's alert below.
            let _ = server.process_new_packets();
            let mut bytes = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut bytes).expect("in memory");
            }
            client.read_tls(&mut bytes.as_slice()).expect("in memory");
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("the handshake did not finish".to_owned()))
    }

    #[test]
    fn pins_parse_and_round_trip() {
        let pin = pin_of(b"not really a certificate");
        assert_eq!(parse_pin(&pin).map(hex::encode).ok(), pin.strip_prefix("sha256:").map(str::to_owned));
        let digest: [u8; 32] = Sha256::digest(b"not really a certificate").into();
        assert_eq!(parse_pin(&pin).ok(), Some(digest));
        let upper = format!("  sha256:{}\n", hex::encode_upper(digest));
        assert_eq!(parse_pin(&upper).ok(), Some(digest), "case and surrounding whitespace do not matter");
        for bad in ["sha256:abcd", "md5:00", &pin.replace("sha256:", ""), "sha256:zz", &format!("{pin}00"), ""] {
            assert!(matches!(parse_pin(bad), Err(PinError::BadPin)), "{bad}");
        }
    }

    #[test]
    fn a_pin_matches_the_der_or_the_public_key() {
        let digest: [u8; 32] = Sha256::digest(b"not a certificate").into();
        assert!(matches_pin(b"not a certificate", &digest));
        assert!(!matches_pin(b"another", &digest));

        let ca = new_ca("pin test CA");
        let other = new_ca("another CA");
        assert!(matches_pin(&ca.der, &der_pin(&ca)));
        assert!(matches_pin(&ca.der, &ca.spki_pin), "the SubjectPublicKeyInfo pin matches");
        assert!(!matches_pin(&other.der, &der_pin(&ca)));
        assert!(!matches_pin(&other.der, &ca.spki_pin));
    }

    #[test]
    fn the_pinned_ca_verifies_the_server_and_is_remembered() {
        let ca = new_ca("pin test CA");
        let (leaf, _) = new_leaf(&ca, "tyr.example");
        for pin in [der_pin(&ca), ca.spki_pin] {
            let verifier = PinVerifier::new(pin, ring());
            assert_eq!(verifier.pin(), &pin);
            assert_eq!(verifier.found(), None);
            assert!(verify(&verifier, &leaf, std::slice::from_ref(&ca.der), "tyr.example").is_ok());
            assert_eq!(verifier.found(), Some(ca.der.clone()));
            assert!(!verifier.mismatch_seen());
        }
    }

    #[test]
    fn a_chain_without_the_pinned_ca_is_a_mismatch() {
        let ca = new_ca("pin test CA");
        let other = new_ca("another CA");
        let (leaf, _) = new_leaf(&ca, "tyr.example");
        let verifier = PinVerifier::new(der_pin(&other), ring());
        let error =
            verify(&verifier, &leaf, std::slice::from_ref(&ca.der), "tyr.example").expect_err("a wrong pin is refused");
        assert!(matches!(&error, rustls::Error::General(message) if message == PIN_MISMATCH), "{error:?}");
        assert!(verifier.mismatch_seen());
        assert_eq!(verifier.found(), None);
        // The leaf is never taken for the CA, even when pinned.
        let verifier = PinVerifier::new(parse_pin(&pin_of(&leaf)).expect("pin"), ring());
        assert!(verify(&verifier, &leaf, &[], "tyr.example").is_err());
        assert!(verifier.mismatch_seen());
    }

    #[test]
    fn the_pinned_ca_must_have_signed_the_server_for_its_name() {
        let ca = new_ca("pin test CA");
        let impostor = new_ca("impostor CA");

        // The pinned CA is presented, but another CA signed the leaf.
        let verifier = PinVerifier::new(der_pin(&ca), ring());
        let (leaf, _) = new_leaf(&impostor, "tyr.example");
        let error = verify(&verifier, &leaf, std::slice::from_ref(&ca.der), "tyr.example")
            .expect_err("a leaf the pinned CA did not sign is refused");
        assert!(matches!(error, rustls::Error::InvalidCertificate(_)), "{error:?}");
        assert!(!verifier.mismatch_seen());
        assert_eq!(verifier.found(), None);

        // The pinned CA signed the leaf, but for another name.
        let verifier = PinVerifier::new(der_pin(&ca), ring());
        let (leaf, _) = new_leaf(&ca, "other.example");
        let error = verify(&verifier, &leaf, std::slice::from_ref(&ca.der), "tyr.example")
            .expect_err("a leaf for another name is refused");
        assert!(matches!(error, rustls::Error::InvalidCertificate(_)), "{error:?}");
        assert_eq!(verifier.found(), None);
    }

    #[test]
    fn a_handshake_under_the_client_config_trusts_only_the_pinned_ca() {
        let ca = new_ca("pin test CA");
        let (leaf, key) = new_leaf(&ca, "tyr.example");
        let chain = vec![leaf, ca.der.clone()];

        let verifier = Arc::new(PinVerifier::new(der_pin(&ca), ring()));
        let config = verifier.client_config().expect("client config");
        handshake(config, "tyr.example", chain.clone(), key.clone_key()).expect("the pinned server is trusted");
        assert_eq!(verifier.found(), Some(ca.der.clone()));

        let verifier = Arc::new(PinVerifier::new(der_pin(&new_ca("another CA")), ring()));
        let config = verifier.client_config().expect("client config");
        let error = handshake(config, "tyr.example", chain, key).expect_err("a wrong pin refuses the handshake");
        assert!(error.to_string().contains(PIN_MISMATCH), "{error}");
        assert!(verifier.mismatch_seen());
        assert_eq!(verifier.found(), None);
    }
}
