//! Certificate signing requests from daemons: parsed, signature-verified and
//! checked for an allowed key, then turned into a client certificate whose
//! identity the server chooses (the requester's subject and extensions are
//! ignored).

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::IdentityError;

/// PEM labels a certificate signing request may carry.
const CSR_PEM_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (bounds the cost of verification).
const MAX_RSA_BITS: usize = 8192;
/// Largest CSR accepted, in bytes of PEM.
const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// How far back a new certificate's validity starts, to absorb clock skew.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// Client certificate lifetime when nothing else is configured.
pub const DEFAULT_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago (clock skew) until `lifetime` from now.
    pub fn starting_now(lifetime: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        let lifetime = time::Duration::try_from(lifetime).unwrap_or(time::Duration::MAX);
        Self { not_before: now - BACKDATE, not_after: now.saturating_add(lifetime) }
    }
}

impl Default for Validity {
    /// 365 days from now.
    fn default() -> Self {
        Self::starting_now(DEFAULT_CLIENT_CERT_VALIDITY)
    }
}

/// A certificate the CA issued to a daemon.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM encoded.
    pub cert_pem: String,
    /// Its serial number, lowercase hex (as stored in the daemon's row).
    pub serial_hex: String,
    /// Last instant it is valid.
    pub not_after: OffsetDateTime,
}

/// A CSR whose signature verified and whose key type is allowed: ECDSA
/// P-256/P-384, Ed25519 or RSA of 2048 to 8192 bits.
#[derive(Debug, Clone)]
pub struct ValidatedCsr {
    /// The requester's public key; the only part of the CSR that is used.
    public_key: SubjectPublicKeyInfo,
}

impl ValidatedCsr {
    /// Parses a PEM CSR, verifies its self-signature and checks its key.
    pub fn parse(csr_pem: &[u8]) -> Result<Self, IdentityError> {
        let refuse = |reason: &str| IdentityError::InvalidCsr(reason.to_owned());
        if csr_pem.len() > MAX_CSR_PEM_BYTES {
            return Err(refuse("too large"));
        }
        let (rest, pem) = x509_parser::pem::parse_x509_pem(csr_pem).map_err(|_| refuse("not PEM"))?;
        if !CSR_PEM_LABELS.contains(&pem.label.as_str()) {
            return Err(refuse("PEM block is not a certificate request"));
        }
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(refuse("trailing data after the request"));
        }
        Self::from_der(&pem.contents)
    }

    /// Parses a DER CSR, verifies its self-signature and checks its key.
    pub fn from_der(csr_der: &[u8]) -> Result<Self, IdentityError> {
        let refuse = |reason: &str| IdentityError::InvalidCsr(reason.to_owned());
        let (rest, csr) = X509CertificationRequest::from_der(csr_der).map_err(|_| refuse("not a PKCS#10 request"))?;
        if !rest.is_empty() {
            return Err(refuse("trailing bytes after the request"));
        }
        check_key(&csr)?;
        csr.verify_signature().map_err(|_| refuse("signature does not verify"))?;
        let spki_der = csr.certification_request_info.subject_pki.raw;
        let public_key = SubjectPublicKeyInfo::from_der(spki_der).map_err(|_| refuse("unsupported public key"))?;
        Ok(Self { public_key })
    }

    /// The public key the certificate will certify.
    pub fn public_key(&self) -> &SubjectPublicKeyInfo {
        &self.public_key
    }
}

/// Refuses every key type but the allowed ones, before any signature work.
fn check_key(csr: &X509CertificationRequest<'_>) -> Result<(), IdentityError> {
    let spki = &csr.certification_request_info.subject_pki;
    let algorithm = &spki.algorithm.algorithm;
    let allowed = if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        matches!(curve, Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384)
    } else if *algorithm == OID_SIG_ED25519 {
        spki.subject_public_key.data.len() == 32
    } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&rsa.key_size()),
            _ => false,
        }
    } else {
        false
    };
    if allowed { Ok(()) } else { Err(IdentityError::InvalidCsr("key type or size not allowed".to_owned())) }
}

/// Certificate parameters of a daemon's client certificate: CN and a
/// `urn:uuid:` URI SAN naming the daemon, clientAuth only, not a CA.
pub(super) fn client_params(daemon_id: Uuid, validity: Validity) -> Result<(CertificateParams, String), IdentityError> {
    if validity.not_after <= validity.not_before {
        return Err(IdentityError::InvalidValidity);
    }
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, daemon_id.to_string());
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(format!("urn:uuid:{daemon_id}").try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok((params, hex::encode(serial)))
}

/// 16 random bytes, positive and without a leading zero byte, so the DER
/// encoding is exactly these bytes and the hex in the database matches what
/// a parser reads back.
pub(super) fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

#[cfg(test)]
mod tests {
    use rcgen::KeyPair;

    use super::*;

    fn csr_for(key: &KeyPair) -> String {
        CertificateParams::new(vec!["ignored.example".to_owned()])
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn allowed_keys_pass() {
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = KeyPair::generate_for(alg).unwrap();
            ValidatedCsr::parse(csr_for(&key).as_bytes()).unwrap();
        }
    }

    #[test]
    fn garbage_and_tampering_are_refused() {
        assert!(ValidatedCsr::parse(b"not a csr").is_err());
        assert!(ValidatedCsr::parse(b"").is_err());
        let key = KeyPair::generate().unwrap();
        let pem = csr_for(&key);
        let mut der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        // Flip a bit of the signature's last byte: it still parses, but no
        // longer verifies.
        let last = der.len() - 1;
        der[last] ^= 0x01;
        ValidatedCsr::from_der(&der).unwrap_err();
        let good = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents;
        ValidatedCsr::from_der(&good).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap().cert.pem();
        assert!(ValidatedCsr::parse(cert.as_bytes()).is_err(), "a certificate is not a request");
    }

    #[test]
    fn serials_are_positive_and_full_length() {
        for _ in 0..64 {
            let serial = random_serial();
            assert!(serial[0] != 0 && serial[0] < 0x80);
        }
    }
}
