//! Enrollment: trade a one-time token and a CSR for a client certificate.
//!
//! First boot (no `client.pem` in the state directory): establish the
//! server's CA (`ca_file`, or a pin checked on a first handshake; see
//! [`super::trust`]), generate an ECDSA P-256 key, call Register over TLS
//! verified against that CA, check that the CA the server returns is the
//! one trusted, and store key (0600), certificate, CA and daemon id.
//!
//! When an identity exists, it is reused, except:
//! - `--reenroll` (with a token): enroll again with a new key;
//! - the server refuses the identity on Stream (`UNAUTHENTICATED`: revoked
//!   or unknown) and a token is configured that is NOT the token that
//!   enrolled this identity (its SHA-256 is kept in `enrollment_token`):
//!   `tyrd run --token NEW` re-enrolls. The token that enrolled a revoked
//!   identity never silently resurrects it (a deleted daemon stays
//!   deleted even when its config file still holds that token).

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tracing::info;
use tyr_proto::RegisterRequest;
use tyr_proto::agent_service_client::AgentServiceClient;

use super::channel::{ChannelError, ServerAddress, register_endpoint};
use super::identity::{CA_FILE, IdentityError, StoredIdentity, write_atomic};
use super::trust::{self, TrustError};
use crate::config::{DaemonConfig, Secret};

/// File holding the SHA-256 of the token that enrolled the current identity.
pub const TOKEN_HASH_FILE: &str = "enrollment_token";
/// Longest the trust handshake may take.
const TRUST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest Register may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No token is configured, and one is needed.
    #[error("this daemon is not enrolled: give an enrollment token (--token or TYR_TOKEN)")]
    NoToken,
    /// Nothing says which CA the server is.
    #[error(
        "no way to trust the server on first contact: give --ca-pin (printed by `tyr-server token create`) or --ca-file"
    )]
    NoTrustAnchor,
    /// The server's CA could not be established.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The channel could not be set up.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The server could not be reached.
    #[error("connecting to the server: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The server refused Register.
    #[error("register refused ({code:?}): {message}")]
    Refused {
        /// The gRPC status code (`Unauthenticated`: the token).
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server's answer is not usable.
    #[error("register answer: {0}")]
    BadResponse(&'static str),
    /// The key or CSR could not be made.
    #[error("generating the key and csr: {0}")]
    Key(#[from] rcgen::Error),
    /// The identity could not be stored.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The SHA-256 of a token, as kept in [`TOKEN_HASH_FILE`].
fn token_hash(token: &Secret) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

/// Was the identity in `state_dir` enrolled with `token`?
pub fn enrolled_with(state_dir: &Path, token: &Secret) -> bool {
    std::fs::read_to_string(state_dir.join(TOKEN_HASH_FILE)).is_ok_and(|stored| stored.trim() == token_hash(token))
}

/// Should a refused identity be replaced by enrolling with the configured
/// token? Only with a token that did not enroll it.
pub fn may_reenroll_after_refusal(config: &DaemonConfig) -> bool {
    config.token.as_ref().is_some_and(|token| !enrolled_with(&config.state_dir, token))
}

/// The CA certificate tyrd trusts for this server, checked on a handshake
/// that sends nothing else.
async fn trusted_ca(config: &DaemonConfig, server: &ServerAddress) -> Result<CertificateDer<'static>, EnrollError> {
    if let Some(path) = &config.ca_file {
        let ca = trust::read_ca_file(path)?;
        trust::check_ca(server, &ca, TRUST_TIMEOUT).await?;
        return Ok(ca);
    }
    if let Some(pin) = &config.ca_pin {
        return Ok(trust::fetch_pinned_ca(server, pin, TRUST_TIMEOUT).await?);
    }
    // Re-enrollment: the CA of the previous enrollment is still trusted.
    if let Ok(pem) = std::fs::read(config.state_dir.join(CA_FILE))
        && let Some(ca) = trust::certificates_in_pem(&pem).into_iter().next()
    {
        trust::check_ca(server, &ca, TRUST_TIMEOUT).await?;
        return Ok(ca);
    }
    Err(EnrollError::NoTrustAnchor)
}

/// Enrolls with the configured token and stores the new identity (a new
/// key, replacing any previous identity).
pub async fn enroll(config: &DaemonConfig, kernel_version: &str, arch: &str) -> Result<StoredIdentity, EnrollError> {
    let token = config.token.as_ref().ok_or(EnrollError::NoToken)?;
    let server = ServerAddress::parse(config.server.as_deref().unwrap_or_default())?;
    let ca = trusted_ca(config, &server).await?;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // The subject is ignored: the server names the daemon.
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let request = RegisterRequest {
        agent_name: config.host_name(),
        enrollment_token: token.expose().to_owned(),
        csr_pem: csr.pem()?.into_bytes(),
        kernel_version: kernel_version.to_owned(),
        arch: arch.to_owned(),
    };

    let endpoint = register_endpoint(&server, &ca)?.timeout(REGISTER_TIMEOUT);
    let channel = endpoint.connect().await.map_err(EnrollError::Connect)?;
    let response = AgentServiceClient::new(channel)
        .register(request)
        .await
        .map_err(|status| EnrollError::Refused { code: status.code(), message: status.message().to_owned() })?
        .into_inner();

    if response.agent_id.is_empty() {
        return Err(EnrollError::BadResponse("no agent id"));
    }
    if trust::certificates_in_pem(&response.client_cert_pem).is_empty() {
        return Err(EnrollError::BadResponse("no client certificate"));
    }
    // The CA the server hands out must be the one this enrollment trusted.
    if trust::certificates_in_pem(&response.ca_cert_pem).first() != Some(&ca) {
        return Err(EnrollError::BadResponse("the returned CA is not the CA the server was verified with"));
    }
    let identity = StoredIdentity {
        daemon_id: response.agent_id,
        key_pem: Secret::new(key.serialize_pem()),
        cert_pem: response.client_cert_pem,
        ca_pem: response.ca_cert_pem,
    };
    identity.save(&config.state_dir)?;
    write_atomic(&config.state_dir.join(TOKEN_HASH_FILE), format!("{}\n", token_hash(token)).as_bytes())?;
    info!(daemon_id = %identity.daemon_id, server = %server.uri, "enrolled");
    Ok(identity)
}
