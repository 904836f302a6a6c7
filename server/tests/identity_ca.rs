//! The server CA on disk: made once with a private key only its owner can
//! read, reused on later boots (same pin), the serving certificate re-issued
//! when the configured names change, and client certificates that carry the
//! server's choice of identity whatever the CSR asked for.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};
use time::{Duration as TimeDuration, OffsetDateTime};
use tyr_server::identity::{
    CA_KEY_FILE, CertificateAuthority, IdentityError, SERVER_KEY_FILE, Validity, daemon_identity,
};
use uuid::Uuid;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tyr-ca-test-{}", Uuid::new_v4().simple()))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn der_of(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1.contents
}

fn san_strings(cert: &X509Certificate<'_>) -> Vec<String> {
    let san = cert.subject_alternative_name().expect("san parses").expect("san present");
    san.value.general_names.iter().map(|n| n.to_string()).collect()
}

/// A CSR that asks for everything the server must ignore: another subject,
/// server names, CA rights.
fn hostile_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(names(&["evil.example"])).expect("params");
    params.distinguished_name.push(DnType::CommonName, "00000000-0000-0000-0000-000000000000");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.serialize_request(key).expect("csr").pem().expect("pem")
}

#[test]
fn ca_is_made_once_and_reused() {
    let dir = temp_dir();
    let first = CertificateAuthority::load_or_create(&dir, &names(&["localhost", "127.0.0.1"])).expect("first boot");
    assert!(first.ca_pin().starts_with("sha256:"));
    assert_eq!(first.ca_pin().len(), "sha256:".len() + 64);
    assert_eq!(first.ca_pin(), CertificateAuthority::pin_of(first.ca_der()));
    for file in [CA_KEY_FILE, SERVER_KEY_FILE] {
        let mode = std::fs::metadata(dir.join(file)).expect("key file").mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} mode");
    }
    let ca = X509Certificate::from_der(first.ca_der()).expect("ca parses").1;
    assert!(ca.is_ca());

    let second = CertificateAuthority::load_or_create(&dir, &names(&["localhost", "127.0.0.1"])).expect("second boot");
    assert_eq!(second.ca_pin(), first.ca_pin(), "same CA on a later boot");
    assert_eq!(second.serving_cert_pem(), first.serving_cert_pem(), "serving certificate reused when names match");
    assert_eq!(second.serving_key_pem(), first.serving_key_pem());

    // The serving certificate is for the names, signed by the CA.
    let serving_der = der_of(first.serving_cert_pem());
    let serving = X509Certificate::from_der(&serving_der).expect("serving parses").1;
    serving.verify_signature(Some(ca.public_key())).expect("signed by the CA");
    let mut sans = san_strings(&serving);
    sans.sort();
    assert_eq!(sans, ["DNSName(localhost)", "IPAddress(7f:00:00:01)"]);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn changed_names_reissue_only_the_serving_certificate() {
    let dir = temp_dir();
    let first = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("first boot");
    let second =
        CertificateAuthority::load_or_create(&dir, &names(&["localhost", "tyr.example.com", "::1"])).expect("renamed");
    assert_eq!(second.ca_pin(), first.ca_pin(), "the CA is kept");
    assert_ne!(second.serving_cert_pem(), first.serving_cert_pem(), "the serving certificate is re-issued");
    let serving_der = der_of(second.serving_cert_pem());
    let serving = X509Certificate::from_der(&serving_der).expect("parses").1;
    let mut sans = san_strings(&serving);
    sans.sort();
    assert_eq!(
        sans,
        [
            "DNSName(localhost)",
            "DNSName(tyr.example.com)",
            "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)"
        ]
    );
    let ca = X509Certificate::from_der(second.ca_der()).expect("ca").1;
    serving.verify_signature(Some(ca.public_key())).expect("signed by the kept CA");
    // Same names in another order and case: nothing re-issued.
    let third =
        CertificateAuthority::load_or_create(&dir, &names(&["::1", "TYR.example.com", "localhost"])).expect("same");
    assert_eq!(third.serving_cert_pem(), second.serving_cert_pem());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn unsafe_or_broken_stores_are_refused() {
    let dir = temp_dir();
    CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("first boot");
    let key = dir.join(CA_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect_err("world-readable key");
    assert!(matches!(refused, IdentityError::InsecureKeyFile { .. }), "{refused}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("usable again");

    std::fs::remove_file(&key).expect("remove key");
    let refused = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect_err("lone certificate");
    assert!(matches!(refused, IdentityError::IncompleteCa { .. }), "{refused}");
    std::fs::remove_dir_all(&dir).expect("cleanup");

    let dir = temp_dir();
    let bad_name = CertificateAuthority::load_or_create(&dir, &names(&["bad name!"])).expect_err("bad name");
    assert!(matches!(bad_name, IdentityError::InvalidServerName(_)), "{bad_name}");
    let none = CertificateAuthority::load_or_create(&dir, &names(&[" "])).expect_err("no names");
    assert!(matches!(none, IdentityError::NoServerNames), "{none}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_certificates_carry_the_servers_identity() {
    let dir = temp_dir();
    let ca = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("ca");
    let daemon_id = Uuid::new_v4();
    let key = KeyPair::generate().expect("key");
    let issued = ca.sign_csr(hostile_csr(&key).as_bytes(), daemon_id, Validity::default()).expect("signed");
    let der = der_of(&issued.cert_pem);
    let cert = X509Certificate::from_der(&der).expect("parses").1;
    let ca_cert = X509Certificate::from_der(ca.ca_der()).expect("ca").1;
    cert.verify_signature(Some(ca_cert.public_key())).expect("signed by the CA");
    assert_eq!(cert.public_key().raw, key.subject_public_key_info().as_slice(), "certifies the CSR's key");

    let common_names: Vec<_> = cert.subject().iter_common_name().map(|cn| cn.as_str().expect("utf8")).collect();
    assert_eq!(common_names, [daemon_id.to_string()], "the CSR's subject is ignored");
    assert_eq!(san_strings(&cert), [format!("URI(urn:uuid:{daemon_id})")], "the CSR's SANs are ignored");
    assert!(!cert.is_ca(), "the CSR's CA request is ignored");
    let eku = cert.extended_key_usage().expect("eku parses").expect("eku present").value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty(), "clientAuth only");
    let basic = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::BasicConstraints(bc) => Some(bc.ca),
        _ => None,
    });
    assert_eq!(basic, Some(false));
    assert_eq!(issued.serial_hex.len(), 32, "16-byte serial");

    let identity = daemon_identity(&der).expect("names a daemon");
    assert_eq!(identity.daemon_id, daemon_id);
    assert_eq!(identity.serial_hex, issued.serial_hex);
    assert!(daemon_identity(ca.ca_der()).is_none(), "the CA certificate names no daemon");
    assert!(daemon_identity(b"garbage").is_none());

    // Every signature gets a fresh serial.
    let again = ca.sign_csr(hostile_csr(&key).as_bytes(), daemon_id, Validity::default()).expect("signed");
    assert_ne!(again.serial_hex, issued.serial_hex);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn validity_is_explicit_so_expired_certificates_can_be_made() {
    let dir = temp_dir();
    let ca = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("ca");
    let now = OffsetDateTime::now_utc();
    let expired = Validity { not_before: now - TimeDuration::days(2), not_after: now - TimeDuration::days(1) };
    let key = KeyPair::generate().expect("key");
    let issued = ca.sign_csr(hostile_csr(&key).as_bytes(), Uuid::new_v4(), expired).expect("signed");
    let der = der_of(&issued.cert_pem);
    let cert = X509Certificate::from_der(&der).expect("parses").1;
    assert!(!cert.validity().is_valid(), "already expired");
    assert_eq!(cert.validity().not_after.timestamp(), expired.not_after.unix_timestamp());
    let empty = Validity { not_before: now, not_after: now };
    assert!(matches!(
        ca.sign_csr(hostile_csr(&key).as_bytes(), Uuid::new_v4(), empty),
        Err(IdentityError::InvalidValidity)
    ));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn only_allowed_keys_are_signed() {
    let dir = temp_dir();
    let ca = CertificateAuthority::load_or_create(&dir, &names(&["localhost"])).expect("ca");
    let sign = |pem: &str| ca.sign_csr(pem.as_bytes(), Uuid::new_v4(), Validity::default());
    sign(include_str!("fixtures/rsa2048.csr")).expect("RSA 2048 is allowed");
    for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
        let key = KeyPair::generate_for(alg).expect("key");
        sign(&hostile_csr(&key)).expect("allowed key type");
    }
    for (what, pem) in [
        ("RSA 1024", include_str!("fixtures/rsa1024.csr")),
        ("secp256k1", include_str!("fixtures/secp256k1.csr")),
        ("garbage", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"),
        ("empty", ""),
    ] {
        let refused = sign(pem).expect_err(what);
        assert!(matches!(refused, IdentityError::InvalidCsr(_)), "{what}: {refused}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
