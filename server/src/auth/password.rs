//! argon2id hashing (m=19456 KiB, t=2, p=1: OWASP's recommended minimum) of
//! operators' passwords and of enrollment-token secrets, the one definition
//! of those parameters, and the password strength rule.
//!
//! Hashing costs tens of milliseconds of CPU, so the async entry points run
//! it on the blocking pool.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use super::AuthError;

/// Argon2id memory cost in KiB.
pub const ARGON2_M_COST: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id parallelism.
pub const ARGON2_P_COST: u32 = 1;
/// The start of every PHC string this module makes.
pub const PHC_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";
/// Fewest characters in an operator's password.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Most bytes in an operator's password.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The argon2id hasher with the project's parameters.
pub fn argon2id() -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(ARGON2_M_COST, ARGON2_T_COST, ARGON2_P_COST, None)
        .map_err(|error| AuthError::Hash(error.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id PHC string of `secret` with a fresh random 16-byte salt. Blocks
/// for the length of one hash: call it off the async runtime.
pub fn hash_blocking(secret: &[u8]) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|error| AuthError::Hash(error.to_string()))?;
    let hash = argon2id()?.hash_password(secret, &salt).map_err(|error| AuthError::Hash(error.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `secret` matches the PHC string `phc` (with the parameters the
/// string names). A malformed `phc` is an error, not a mismatch. Blocks for
/// the length of one hash: call it off the async runtime.
pub fn verify_blocking(secret: &[u8], phc: &str) -> Result<bool, AuthError> {
    let parsed = PasswordHash::new(phc).map_err(|error| AuthError::Hash(format!("stored hash: {error}")))?;
    match argon2id()?.verify_password(secret, &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(error) => Err(AuthError::Hash(error.to_string())),
    }
}

/// argon2id PHC string of `password`, computed on the blocking pool.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_blocking(password.as_bytes())).await?
}

/// Whether `password` matches the PHC string `phc`, computed on the blocking
/// pool.
pub async fn verify_password(password: String, phc: String) -> Result<bool, AuthError> {
    tokio::task::spawn_blocking(move || verify_blocking(password.as_bytes(), &phc)).await?
}

/// Refuses passwords that are too short (fewer than 12 characters), too long
/// (more than 1024 bytes) or one character repeated; the message says which.
pub fn check_password_strength(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!("password has {chars} characters, at least {MIN_PASSWORD_CHARS} are required"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password has {} bytes, at most {MAX_PASSWORD_BYTES} are accepted", password.len()));
    }
    let mut distinct = password.chars();
    if let Some(first) = distinct.next()
        && distinct.all(|c| c == first)
    {
        return Err("password is one character repeated".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_the_project_parameters() {
        let hash = hash_password("correct horse battery".to_owned()).await.expect("hashes");
        assert!(hash.starts_with(PHC_PREFIX), "{hash}");
        assert!(verify_password("correct horse battery".to_owned(), hash.clone()).await.expect("verifies"));
        assert!(!verify_password("correct horse batterY".to_owned(), hash.clone()).await.expect("verifies"));
        let other = hash_password("correct horse battery".to_owned()).await.expect("hashes");
        assert_ne!(hash, other, "every hash has its own salt");
        assert!(verify_password("x".to_owned(), "not a hash".to_owned()).await.is_err());
    }

    #[test]
    fn strength_rule() {
        assert!(check_password_strength("short").is_err());
        assert!(check_password_strength("elevenchars").is_err());
        assert!(check_password_strength("twelve chars").is_ok());
        assert!(check_password_strength(&"a".repeat(40)).unwrap_err().contains("repeated"));
        assert!(check_password_strength(&"ab".repeat(512)).is_ok());
        assert!(check_password_strength(&"ab".repeat(513)).unwrap_err().contains("1024"));
        // Characters, not bytes, count towards the minimum.
        assert!(check_password_strength("ééééééééééé").is_err());
        assert!(check_password_strength("éèêëéèêëéèêë").is_ok());
    }
}
