//! Policies from the server: a `PolicyPush` checked, restricted for
//! unregistered agents as this host is configured, and kept on disk so the
//! next start installs it before contacting the server (the kernel keeps
//! enforcing the last policy whatever happens to the server).
//!
//! The server sends the compiled entries (`bpf_entries`) and the document
//! they were compiled from (`policy_yaml`). tyrd recompiles the document
//! with its own compiler: when the bytes differ, the two compilers disagree
//! (version skew between tyrd and tyr-server); tyrd then installs the
//! server's entries, as the server will judge drift by them, and counts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::warn;
use tyr_common::policy::compile::CompiledPolicy;
use tyr_common::policy::unregistered::with_unregistered;
use tyr_common::policy::{CompileError, PolicyErrors, PolicySet, compile, parse_policy};
use tyr_proto::PolicyPush;

use super::identity::{IdentityError, write_atomic};
use crate::detect::tracker::UnregisteredAgents;

/// The last policy pushed, in the state directory.
pub const POLICY_FILE: &str = "policy.json";

/// Why a pushed or stored policy was refused (the policy in force stays).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `bpf_entries` do not decode.
    #[error("bpf_entries: {0}")]
    Entries(#[source] CompileError),
    /// `bpf_entries` carry another version than the push.
    #[error("bpf_entries are version {entries}, the push version {push}")]
    VersionMismatch {
        /// The version in the entries.
        entries: i64,
        /// The push's version.
        push: i64,
    },
    /// `policy_yaml` does not parse or validate.
    #[error("policy_yaml: {0}")]
    Document(#[from] PolicyErrors),
    /// The document does not compile here.
    #[error("compiling policy_yaml: {0}")]
    Compile(#[source] CompileError),
    /// The stored policy could not be read or written.
    #[error("{path}: {message}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The stored policy could not be written.
    #[error(transparent)]
    Write(#[from] IdentityError),
}

/// A policy ready for the capture loop.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    /// The server's version stamp.
    pub version: i64,
    /// What goes into the kernel maps.
    pub compiled: Arc<CompiledPolicy>,
    /// The rules userspace decides (TLS; file and exec without BPF LSM).
    pub set: Arc<PolicySet>,
    /// tyrd's compiler disagreed with the server's: the server's entries
    /// are installed.
    pub skew: bool,
}

/// A push as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPush {
    /// The policy version.
    pub version: i64,
    /// `bpf_entries`, hex.
    pub bpf_entries: String,
    /// `policy_yaml`.
    pub policy_yaml: String,
}

impl StoredPush {
    /// The stored form of a push.
    pub fn from_push(push: &PolicyPush) -> Self {
        Self {
            version: push.policy_version,
            bpf_entries: hex::encode(&push.bpf_entries),
            policy_yaml: push.policy_yaml.clone(),
        }
    }

    /// Writes it to `state_dir` (0600).
    pub fn save(&self, state_dir: &Path) -> Result<(), PolicyError> {
        let path = state_dir.join(POLICY_FILE);
        let bytes =
            serde_json::to_vec(self).map_err(|e| PolicyError::Store { path: path.clone(), message: e.to_string() })?;
        write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// The push stored in `state_dir`, if any.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, PolicyError> {
        let path = state_dir.join(POLICY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| PolicyError::Store { path, message: e.to_string() }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(PolicyError::Store { path, message: error.to_string() }),
        }
    }

    /// Verifies the stored push as if it had just arrived.
    pub fn verify(&self, unregistered: UnregisteredAgents) -> Result<VerifiedPolicy, PolicyError> {
        let entries = hex::decode(&self.bpf_entries).map_err(|e| PolicyError::Store {
            path: PathBuf::from(POLICY_FILE),
            message: format!("bpf_entries: {e}"),
        })?;
        verify(self.version, &entries, &self.policy_yaml, unregistered)
    }
}

/// Checks a push and derives what this host installs.
pub fn verify(
    version: i64,
    bpf_entries: &[u8],
    policy_yaml: &str,
    unregistered: UnregisteredAgents,
) -> Result<VerifiedPolicy, PolicyError> {
    let server = CompiledPolicy::from_bytes(bpf_entries).map_err(PolicyError::Entries)?;
    if server.version != version {
        return Err(PolicyError::VersionMismatch { entries: server.version, push: version });
    }
    let document = parse_policy(&format!("server policy version {version}"), policy_yaml)?;
    let local = compile(&document, version).map_err(PolicyError::Compile)?;
    let Some(restriction) = unregistered.restriction() else {
        let skew = local.to_bytes() != bpf_entries;
        if skew {
            warn!(
                version,
                "policy compiled here differs from the server's entries (version skew): installing the server's"
            );
        }
        let compiled = if skew { server } else { local };
        return Ok(VerifiedPolicy { version, compiled: Arc::new(compiled), set: Arc::new(document), skew });
    };
    let restricted_set = with_unregistered(&document, restriction)?;
    let restricted = compile(&restricted_set, version).map_err(PolicyError::Compile)?;
    let as_sent = restricted.to_bytes() == bpf_entries;
    // The server compiles either the document alone (tyrd adds the
    // unregistered-agents overlay) or with this host's restriction applied.
    if as_sent || local.to_bytes() == bpf_entries {
        return Ok(VerifiedPolicy {
            version,
            compiled: Arc::new(restricted),
            set: Arc::new(restricted_set),
            skew: false,
        });
    }
    warn!(version, "policy compiled here differs from the server's entries (version skew): installing the server's");
    Ok(VerifiedPolicy { version, compiled: Arc::new(server), set: Arc::new(restricted_set), skew: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "name: test\ndefault_verdict: allow\nrules:\n  - name: no-metadata\n    action: net_connect\n    cidr_deny: [\"169.254.169.254/32\"]\n    verdict: deny\n";

    fn entries(version: i64) -> Vec<u8> {
        let set = parse_policy("t", POLICY).expect("test policy parses");
        compile(&set, version).expect("test policy compiles").to_bytes()
    }

    #[test]
    fn a_matching_push_verifies_without_skew() {
        let verified = verify(7, &entries(7), POLICY, UnregisteredAgents::Audit).expect("verifies");
        assert_eq!((verified.version, verified.skew), (7, false));
        let quarantined = verify(7, &entries(7), POLICY, UnregisteredAgents::Quarantine).expect("verifies");
        assert!(!quarantined.skew);
        assert!(quarantined.set.overlays.contains_key(tyr_common::policy::compile::UNREGISTERED));
    }

    #[test]
    fn skew_installs_the_servers_entries() {
        let other = "name: other\ndefault_verdict: deny\nrules: []\n";
        let server_entries = compile(&parse_policy("o", other).expect("parses"), 3).expect("compiles").to_bytes();
        let verified = verify(3, &server_entries, POLICY, UnregisteredAgents::Audit).expect("verifies");
        assert!(verified.skew);
        assert_eq!(verified.compiled.to_bytes(), server_entries);
    }

    #[test]
    fn bad_pushes_are_refused() {
        assert!(matches!(
            verify(8, &entries(7), POLICY, UnregisteredAgents::Audit),
            Err(PolicyError::VersionMismatch { .. })
        ));
        assert!(matches!(verify(7, b"junk", POLICY, UnregisteredAgents::Audit), Err(PolicyError::Entries(_))));
        assert!(matches!(verify(7, &entries(7), "rules: [", UnregisteredAgents::Audit), Err(PolicyError::Document(_))));
    }
}
