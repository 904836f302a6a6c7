//! The server's certificate authority and serving certificate: made on first
//! boot in the data directory, reused on later boots, the serving certificate
//! re-issued when the configured names change or it nears its end.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use uuid::Uuid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::csr::{self, IssuedCert, ValidatedCsr, Validity};
use super::{IdentityError, files};

/// The CA's private key (PKCS#8 PEM, mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA certificate (PEM); what daemons trust and pin.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The serving certificate (PEM) the gRPC listener presents.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// The serving certificate's private key (PKCS#8 PEM, mode 0600).
pub const SERVER_KEY_FILE: &str = "server.key";

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// How long a new serving certificate is valid.
const SERVING_VALIDITY: Duration = Duration::from_secs(825 * 24 * 3600);
/// A serving certificate with less than this left is re-issued at boot.
const SERVING_RENEW_BEFORE: time::Duration = time::Duration::days(30);
/// Common name of the CA certificate.
const CA_COMMON_NAME: &str = "Tyr fleet CA";
/// Organisation written in the CA and serving certificates.
const ORGANIZATION: &str = "Tyr";

/// The server CA with its serving certificate, loaded from (or made in) the
/// data directory.
pub struct CertificateAuthority {
    /// Signs serving and client certificates with the CA key.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    ca_pem: String,
    /// The CA certificate, DER.
    ca_der: Vec<u8>,
    /// `sha256:<hex>` of the CA certificate DER.
    ca_pin: String,
    /// The serving certificate, PEM.
    serving_cert_pem: String,
    /// The serving certificate's private key, PEM (secret).
    serving_key_pem: String,
    /// The names (DNS names, IP addresses) the serving certificate is for.
    server_names: Vec<String>,
    /// Where the files live.
    data_dir: PathBuf,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("ca_pin", &self.ca_pin)
            .field("server_names", &self.server_names)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA and serving certificate from `data_dir`, making whatever
    /// is missing: a new CA on first boot, a new serving certificate when
    /// `server_names` differ from the stored one's (the CA is kept).
    pub fn load_or_create(data_dir: &Path, server_names: &[String]) -> Result<Self, IdentityError> {
        let names = ServerNames::parse(server_names)?;
        files::ensure_dir(data_dir)?;
        let _lock = files::lock_dir(data_dir)?;
        let (issuer, ca_pem, ca_der) = load_or_create_ca(data_dir)?;
        let (serving_cert_pem, serving_key_pem) = load_or_issue_serving(data_dir, &issuer, &ca_der, &names)?;
        let ca_pin = Self::pin_of(&ca_der);
        Ok(Self {
            issuer,
            ca_pem,
            ca_der,
            ca_pin,
            serving_cert_pem,
            serving_key_pem,
            server_names: names.display,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The kubeadm-style pin of a CA certificate: `sha256:` and the lowercase
    /// hex SHA-256 of its DER.
    pub fn pin_of(ca_der: &[u8]) -> String {
        tyr_common::pin::pin_of(ca_der)
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The pin a fresh tyrd checks the server's CA against.
    pub fn ca_pin(&self) -> String {
        self.ca_pin.clone()
    }

    /// The serving certificate, PEM (for tonic's `Identity::from_pem`).
    pub fn serving_cert_pem(&self) -> &str {
        &self.serving_cert_pem
    }

    /// The serving certificate's private key, PEM. Secret: never log it.
    pub fn serving_key_pem(&self) -> &str {
        &self.serving_key_pem
    }

    /// The names the serving certificate is for.
    pub fn server_names(&self) -> &[String] {
        &self.server_names
    }

    /// The data directory holding the CA.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Checks a daemon's CSR and signs a client certificate naming
    /// `daemon_id`, valid for `validity`.
    pub fn sign_csr(&self, csr_pem: &[u8], daemon_id: Uuid, validity: Validity) -> Result<IssuedCert, IdentityError> {
        let csr = ValidatedCsr::parse(csr_pem)?;
        self.sign(&csr, daemon_id, validity)
    }

    /// Signs a client certificate for an already validated CSR.
    pub fn sign(&self, csr: &ValidatedCsr, daemon_id: Uuid, validity: Validity) -> Result<IssuedCert, IdentityError> {
        let (params, serial_hex) = csr::client_params(daemon_id, validity)?;
        let cert = params.signed_by(csr.public_key(), &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), serial_hex, not_after: validity.not_after })
    }
}

/// The configured server names, checked and in a canonical form to compare.
struct ServerNames {
    /// As configured (trimmed, deduplicated), in order.
    display: Vec<String>,
    /// `dns:<lowercase>` / `ip:<address>` for comparison with a certificate.
    canonical: BTreeSet<String>,
}

impl ServerNames {
    fn parse(names: &[String]) -> Result<Self, IdentityError> {
        let mut display = Vec::new();
        let mut canonical = BTreeSet::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let key = if let Ok(ip) = name.parse::<IpAddr>() {
                format!("ip:{ip}")
            } else if is_dns_name(name) {
                format!("dns:{}", name.to_ascii_lowercase())
            } else {
                return Err(IdentityError::InvalidServerName(name.to_owned()));
            };
            if canonical.insert(key) {
                display.push(name.to_owned());
            }
        }
        if display.is_empty() {
            return Err(IdentityError::NoServerNames);
        }
        Ok(Self { display, canonical })
    }
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn invalid(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::InvalidStoredFile { path: path.to_path_buf(), reason: reason.into() }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}

fn pem_to_der(path: &Path, pem: &str, label: &str) -> Result<Vec<u8>, IdentityError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| invalid(path, "not PEM"))?;
    if block.label != label {
        return Err(invalid(path, format!("expected a {label} PEM block")));
    }
    Ok(block.contents)
}

/// Loads `ca.key`/`ca.pem`, or makes both when neither exists.
fn load_or_create_ca(dir: &Path) -> Result<(Issuer<'static, KeyPair>, String, Vec<u8>), IdentityError> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    match (files::exists(&key_path)?, files::exists(&cert_path)?) {
        (true, true) => {
            let key_pem = files::read_secret(&key_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
            let cert_pem = files::read_text(&cert_path)?;
            let cert_der = pem_to_der(&cert_path, &cert_pem, "CERTIFICATE")?;
            let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| invalid(&cert_path, e.to_string()))?;
            if !cert.is_ca() {
                return Err(invalid(&cert_path, "not a CA certificate"));
            }
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(invalid(&key_path, "does not match the CA certificate"));
            }
            let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
                .map_err(|e| invalid(&cert_path, e.to_string()))?;
            tracing::debug!(path = %cert_path.display(), "server ca loaded");
            Ok((issuer, cert_pem, cert_der))
        }
        (false, false) => {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = distinguished_name(CA_COMMON_NAME);
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            let validity = Validity::starting_now(CA_VALIDITY);
            params.not_before = validity.not_before;
            params.not_after = validity.not_after;
            params.serial_number = Some(SerialNumber::from_slice(&csr::random_serial()));
            let cert = params.self_signed(&key)?;
            files::write_atomic(&key_path, key.serialize_pem().as_bytes(), files::SECRET_MODE)?;
            files::write_atomic(&cert_path, cert.pem().as_bytes(), files::PUBLIC_MODE)?;
            tracing::info!(path = %cert_path.display(), "server ca created");
            let cert_der = cert.der().to_vec();
            Ok((Issuer::new(params, key), cert.pem(), cert_der))
        }
        (true, false) => Err(IdentityError::IncompleteCa { present: key_path, missing: cert_path }),
        (false, true) => Err(IdentityError::IncompleteCa { present: cert_path, missing: key_path }),
    }
}

/// Reuses `server.pem`/`server.key` when they are for `names`, signed by
/// this CA and not near their end; otherwise issues new ones.
fn load_or_issue_serving(
    dir: &Path,
    issuer: &Issuer<'static, KeyPair>,
    ca_der: &[u8],
    names: &ServerNames,
) -> Result<(String, String), IdentityError> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    if files::exists(&cert_path)? && files::exists(&key_path)? {
        let key_pem = files::read_secret(&key_path)?;
        let cert_pem = files::read_text(&cert_path)?;
        match serving_reusable(&cert_path, &cert_pem, &key_pem, ca_der, names) {
            Ok(()) => return Ok((cert_pem, key_pem)),
            Err(reason) => {
                tracing::info!(%reason, path = %cert_path.display(), "re-issuing the serving certificate");
            }
        }
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&names.display[0]);
    params.subject_alt_names = names
        .display
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(name.to_ascii_lowercase().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let validity = Validity::starting_now(SERVING_VALIDITY);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(SerialNumber::from_slice(&csr::random_serial()));
    let cert = params.signed_by(&key, issuer)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    files::write_atomic(&key_path, key_pem.as_bytes(), files::SECRET_MODE)?;
    files::write_atomic(&cert_path, cert_pem.as_bytes(), files::PUBLIC_MODE)?;
    tracing::info!(names = ?names.display, path = %cert_path.display(), "serving certificate issued");
    Ok((cert_pem, key_pem))
}

/// Why a stored serving certificate cannot be reused, if it cannot.
fn serving_reusable(
    cert_path: &Path,
    cert_pem: &str,
    key_pem: &str,
    ca_der: &[u8],
    names: &ServerNames,
) -> Result<(), String> {
    let der = pem_to_der(cert_path, cert_pem, "CERTIFICATE").map_err(|e| e.to_string())?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| format!("unparsable certificate: {e}"))?;
    let (_, ca) = X509Certificate::from_der(ca_der).map_err(|e| format!("unparsable ca: {e}"))?;
    cert.verify_signature(Some(ca.public_key())).map_err(|_| "not signed by the current ca".to_owned())?;
    let key = KeyPair::from_pem(key_pem).map_err(|_| "unparsable key".to_owned())?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err("key does not match the certificate".to_owned());
    }
    let renew_at = OffsetDateTime::now_utc() + SERVING_RENEW_BEFORE;
    if cert.validity().not_after.to_datetime() < renew_at {
        return Err("certificate expires soon".to_owned());
    }
    let stored = certificate_names(&cert);
    if stored != names.canonical {
        return Err("configured names changed".to_owned());
    }
    Ok(())
}

/// The SANs of a certificate in [`ServerNames`]' canonical form.
fn certificate_names(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return BTreeSet::new();
    };
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("dns:{}", dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => match <[u8; 4]>::try_from(*bytes) {
                Ok(v4) => format!("ip:{}", IpAddr::from(v4)),
                Err(_) => match <[u8; 16]>::try_from(*bytes) {
                    Ok(v6) => format!("ip:{}", IpAddr::from(v6)),
                    Err(_) => "other".to_owned(),
                },
            },
            _ => "other".to_owned(),
        })
        .collect()
}
