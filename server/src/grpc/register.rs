//! Register: a fresh tyrd trades an enrollment token and a CSR for a client
//! certificate naming its new daemon id. Cheap checks (fields, CSR) run
//! before the token's argon2 work; the token use is consumed in the same
//! transaction that stores the daemon, so a failed Register burns no use.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tonic::Status;
use tyr_proto::{RegisterRequest, RegisterResponse};
use uuid::Uuid;

use crate::control_db::daemons::{self, NewDaemon};
use crate::control_db::tokens::{self, TokenError};
use crate::error::ServiceError;
use crate::identity::{CertificateAuthority, ValidatedCsr, Validity};

/// The one message for every token problem: it never says which check failed.
pub const TOKEN_REFUSED: &str = "enrollment token is invalid, expired or used up";
/// The one message for every CSR problem.
pub const CSR_REFUSED: &str = "certificate signing request is not a valid PKCS#10 request with an allowed key";
/// Longest host name accepted (a DNS name's limit).
const MAX_NAME_CHARS: usize = 253;
/// Longest kernel release string accepted.
const MAX_KERNEL_VERSION_CHARS: usize = 256;
/// Architectures tyrd is built for.
const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// What Register needs from the server.
#[derive(Debug, Clone)]
pub struct RegisterContext {
    /// The control database (tokens, daemons).
    pub pool: PgPool,
    /// The CA that signs client certificates.
    pub ca: Arc<CertificateAuthority>,
    /// How long an issued client certificate is valid.
    pub client_cert_validity: Duration,
}

/// Token checks (argon2) running at once, across every Register.
static TOKEN_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
/// Longest a Register waits for a token-check slot.
const TOKEN_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Enrolls a daemon: validates the request, verifies and consumes the token,
/// signs the CSR for a new daemon id and stores the daemon.
pub async fn register(context: &RegisterContext, request: RegisterRequest) -> Result<RegisterResponse, Status> {
    Ok(enroll(context, request).await?)
}

async fn enroll(context: &RegisterContext, request: RegisterRequest) -> Result<RegisterResponse, ServiceError> {
    let RegisterRequest { agent_name, enrollment_token, csr_pem, kernel_version, arch } = request;
    check_name(&agent_name)?;
    check_kernel_version(&kernel_version)?;
    check_arch(&arch)?;
    if enrollment_token.is_empty() {
        return Err(ServiceError::Unauthenticated(TOKEN_REFUSED));
    }
    // Signature verification of a large RSA key is not free: keep it off the
    // async runtime like the argon2 work below.
    let csr = tokio::task::spawn_blocking(move || ValidatedCsr::parse(&csr_pem))
        .await
        .map_err(ServiceError::internal)?
        .map_err(|error| {
            tracing::debug!(%error, name = %agent_name, "register refused: bad csr");
            ServiceError::InvalidArgument(CSR_REFUSED.to_owned())
        })?;

    // argon2 costs 19 MiB and tens of milliseconds per check, and anyone can
    // send a well-formed token: a bounded number run at once, the rest wait
    // a while and are then told to come back.
    let Ok(Ok(_slot)) = tokio::time::timeout(TOKEN_CHECK_WAIT, TOKEN_CHECKS.acquire()).await else {
        tracing::warn!("register refused: too many token checks at once");
        return Err(ServiceError::Unavailable("enrollment is busy; retry later"));
    };
    let token_id = tokens::verify(&context.pool, &enrollment_token).await.map_err(token_error)?;

    let daemon_id = Uuid::new_v4();
    let issued = context
        .ca
        .sign(&csr, daemon_id, Validity::starting_now(context.client_cert_validity))
        .map_err(ServiceError::internal)?;
    let daemon = NewDaemon {
        id: daemon_id,
        name: agent_name,
        kernel_version,
        arch,
        cert_serial: issued.serial_hex,
        cert_not_after: issued.not_after,
        enrolled_with: Some(token_id),
    };

    let mut tx = context.pool.begin().await.map_err(ServiceError::internal)?;
    tokens::consume_use(&mut tx, token_id).await.map_err(token_error)?;
    daemons::insert(&mut tx, &daemon).await.map_err(ServiceError::internal)?;
    tx.commit().await.map_err(ServiceError::internal)?;

    tracing::info!(daemon_id = %daemon_id, name = %daemon.name, token_id = %token_id, "daemon enrolled");
    Ok(RegisterResponse {
        agent_id: daemon_id.to_string(),
        client_cert_pem: issued.cert_pem.into_bytes(),
        ca_cert_pem: context.ca.ca_pem().as_bytes().to_vec(),
    })
}

fn token_error(error: TokenError) -> ServiceError {
    match error {
        TokenError::Invalid => {
            tracing::info!("register refused: enrollment token not accepted");
            ServiceError::Unauthenticated(TOKEN_REFUSED)
        }
        other => ServiceError::internal(other),
    }
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let length_ok = !name.is_empty() && name.len() <= MAX_NAME_CHARS;
    let charset_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if length_ok && charset_ok && !name.starts_with(['.', '-']) {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(
            "agent_name must be 1 to 253 characters of letters, digits, '.', '-' and '_', not starting with '.' or '-'"
                .to_owned(),
        ))
    }
}

fn check_kernel_version(kernel_version: &str) -> Result<(), ServiceError> {
    let ok = !kernel_version.is_empty()
        && kernel_version.len() <= MAX_KERNEL_VERSION_CHARS
        && kernel_version.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument("kernel_version must be 1 to 256 printable ASCII characters".to_owned()))
    }
}

fn check_arch(arch: &str) -> Result<(), ServiceError> {
    if ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument("arch must be \"x86_64\" or \"aarch64\"".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_checks() {
        assert!(check_name("web-01.example.com").is_ok());
        assert!(check_name("host_1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(254)).is_err());
        assert!(check_name(&"a".repeat(253)).is_ok());
        assert!(check_name("bad name").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("héllo").is_err());
        assert!(check_kernel_version("6.8.0-45-generic #45-Ubuntu SMP").is_ok());
        assert!(check_kernel_version("").is_err());
        assert!(check_kernel_version("6.8\n").is_err());
        assert!(check_kernel_version(&"1".repeat(257)).is_err());
        assert!(check_arch("x86_64").is_ok());
        assert!(check_arch("aarch64").is_ok());
        assert!(check_arch("i686").is_err());
        assert!(check_arch("").is_err());
    }
}
