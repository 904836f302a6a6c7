//! Certificate → daemon: reads the identity the CA wrote into a client
//! certificate. The TLS layer has already checked the chain to the CA and the
//! validity period; this only names the daemon the stream belongs to.

use uuid::Uuid;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The daemon id (the certificate's common name).
    pub daemon_id: Uuid,
    /// The certificate's serial number, lowercase hex, as stored in the
    /// daemon's row.
    pub serial_hex: String,
}

/// Reads the daemon id and serial from a client certificate (DER) the CA
/// issued; `None` when the certificate does not name a daemon the way the CA
/// does (common name and `urn:uuid:` SAN agreeing on one UUID).
pub fn daemon_identity(cert_der: &[u8]) -> Option<CertIdentity> {
    let (rest, cert) = X509Certificate::from_der(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let mut names = cert.subject().iter_common_name();
    let common_name = names.next()?.as_str().ok()?;
    if names.next().is_some() {
        return None;
    }
    let daemon_id = Uuid::parse_str(common_name).ok()?;
    if daemon_id.hyphenated().to_string() != common_name {
        return None;
    }
    let san = cert.subject_alternative_name().ok()??;
    let urn = format!("urn:uuid:{daemon_id}");
    let names_daemon = san.value.general_names.iter().any(|name| matches!(name, GeneralName::URI(uri) if *uri == urn));
    if !names_daemon {
        return None;
    }
    Some(CertIdentity { daemon_id, serial_hex: hex::encode(cert.raw_serial()) })
}
