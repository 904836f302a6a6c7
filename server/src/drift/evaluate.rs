//! The drift rules for one event (DESIGN "Drift"): the request tyrd's
//! kernel decided, rebuilt from the event as tyrd built it, decided again
//! with Cedar under the policy the server assigned, and compared.
//!
//! Decisions this module takes, beyond the design text:
//!
//! - Lifecycle events (EXIT, FORK) and events of no known kind are governed
//!   by no rule: their `server_verdict` is ALLOW (the operation is never
//!   refused, as the kernel's own verdict says) and they are never drift.
//! - An event whose request cannot be rebuilt (a connect without a parsable
//!   `remote_ip`/`remote_port`, a TLS event without `sni`, an empty path)
//!   or that Cedar cannot evaluate is *not evaluable*: `server_verdict` is
//!   UNSPECIFIED and its verdict is not compared. The version check below
//!   still applies: it needs no request.
//! - Version 0 means the kernel decided nothing: no policy was in force yet
//!   (tyrd captures from its start, before its first policy arrives). Such
//!   an event is unenforced — counted apart, never drift — and its server
//!   verdict is still the assigned policy's. Comparing it would call every
//!   host's start-up drift, judged by a policy assigned after the event.
//! - With no version pushed yet (`sent_versions` empty) no version is stale.
//! - An event decided under an earlier version the server did send is
//!   judged by that version's policy (see [`DriftContext::earlier`]).
//! - `enforced=false` (tyrd knows it could not enforce) makes the event
//!   unenforced and never drift, whatever its version or verdict.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tyr_common::policy::compile::UNREGISTERED;
use tyr_common::policy::{Request, Verdict as PolicyVerdict};
use tyr_proto::{Event, EventKind, Verdict};
use uuid::Uuid;

use super::cache::DriftPolicy;

/// Metadata key tyrd sets to `"false"` when it could not enforce the policy.
pub const ENFORCED_KEY: &str = "enforced";
/// Metadata key tyrd sets to `"true"` on events of an unregistered AI agent.
pub const UNREGISTERED_AGENT_KEY: &str = "unregistered_agent";
/// Metadata key of the destination address of connects and TLS.
pub const REMOTE_IP_KEY: &str = "remote_ip";
/// Metadata key of the destination port of connects and TLS.
pub const REMOTE_PORT_KEY: &str = "remote_port";
/// Metadata key of the TLS server name.
pub const SNI_KEY: &str = "sni";
/// Metadata key tyrd sets to `subtree` on a directory's rename or mount,
/// decided in the kernel as everything below the directory.
pub const SCOPE_KEY: &str = "scope";
/// Metadata key tyrd sets on a refusal the kernel made without deciding.
pub const FAILSAFE_KEY: &str = "failsafe";
/// Agent type of processes no known agent matched.
pub const UNKNOWN_AGENT_TYPE: &str = "unknown";

/// What the server knows about one daemon when it re-evaluates its events.
/// Cheap to clone: the stream session hands one to every batch.
#[derive(Debug, Clone)]
pub struct DriftContext {
    /// The daemon, from its certificate.
    pub daemon_id: Uuid,
    /// The effective policy the server assigned to this daemon (its latest push).
    pub policy: Arc<DriftPolicy>,
    /// Every policy version the server ever pushed to this daemon.
    pub sent_versions: Arc<BTreeSet<i64>>,
    /// Recent versions pushed to this daemon, parsed: an event decided
    /// under one of them (a replay from the daemon's spool after a policy
    /// change) is judged by the policy the daemon was running, not by a
    /// newer one it had not received yet.
    pub earlier: Arc<BTreeMap<i64, Arc<DriftPolicy>>>,
}

impl DriftContext {
    /// The context of `daemon_id` running `policy`, having been sent `sent_versions`.
    pub fn new(daemon_id: Uuid, policy: Arc<DriftPolicy>, sent_versions: Arc<BTreeSet<i64>>) -> Self {
        Self { daemon_id, policy, sent_versions, earlier: Arc::default() }
    }

    /// The policy an event decided under `version` is judged by.
    pub fn policy_for(&self, version: i64) -> &DriftPolicy {
        match self.earlier.get(&version) {
            Some(earlier) if self.sent_versions.contains(&version) => earlier,
            _ => &self.policy,
        }
    }
}

/// The server's view of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftOutcome {
    /// Cedar's verdict under the assigned policy (UNSPECIFIED: not evaluable).
    pub server_verdict: Verdict,
    /// The kernel was more permissive than the server, or decided under a
    /// version the server never sent.
    pub drift_detected: bool,
    /// tyrd reported the policy as not enforceable for this event.
    pub unenforced: bool,
    /// The request could not be rebuilt or evaluated.
    pub not_evaluable: bool,
}

/// How an event's kind relates to policy.
enum Governed<'e> {
    /// A kind no rule governs.
    No,
    /// A policy request.
    Request(Request<'e>),
    /// A policy kind whose request could not be rebuilt.
    Garbled,
}

/// The policy request an event records, as tyrd's kernel and userspace decide it.
fn request_of(event: &Event) -> Governed<'_> {
    let network = || {
        let addr = event.metadata.get(REMOTE_IP_KEY)?.parse::<IpAddr>().ok()?;
        let port = event.metadata.get(REMOTE_PORT_KEY)?.parse::<u16>().ok()?;
        Some((addr, port))
    };
    // A directory renamed or mounted over is decided in the kernel as
    // everything below it, which a request for one path cannot express.
    // Likewise a refusal the kernel made without deciding (fail closed):
    // no rule was evaluated, so there is nothing to compare.
    if event.metadata.get(SCOPE_KEY).is_some_and(|scope| scope == "subtree")
        || event.metadata.contains_key(FAILSAFE_KEY)
    {
        return Governed::No;
    }
    let path = || (!event.resource.is_empty()).then_some(event.resource.as_str());
    let request = match EventKind::try_from(event.kind) {
        Ok(EventKind::FileRead) => path().map(|path| Request::File { write: false, path }),
        Ok(EventKind::FileWrite) => path().map(|path| Request::File { write: true, path }),
        Ok(EventKind::Exec) => path().map(|path| Request::Exec { path }),
        Ok(EventKind::NetConnect) => network().map(|(addr, port)| Request::Connect { addr, port }),
        Ok(EventKind::Tls) => match (event.metadata.get(SNI_KEY), network()) {
            (Some(server_name), Some((addr, port))) if !server_name.is_empty() => {
                Some(Request::Tls { server_name, addr, port })
            }
            _ => None,
        },
        Ok(EventKind::Exit | EventKind::Fork | EventKind::Unspecified) | Err(_) => return Governed::No,
    };
    request.map_or(Governed::Garbled, Governed::Request)
}

/// The agent type Cedar decides for: `unregistered` when tyrd marked the
/// process as an unregistered agent, else the event's type.
pub fn agent_type_of(event: &Event) -> &str {
    if event.metadata.get(UNREGISTERED_AGENT_KEY).is_some_and(|v| v == "true") {
        UNREGISTERED
    } else if event.agent_type.is_empty() {
        UNKNOWN_AGENT_TYPE
    } else {
        &event.agent_type
    }
}

fn wire_verdict(verdict: PolicyVerdict) -> Verdict {
    match verdict {
        PolicyVerdict::Allow => Verdict::Allow,
        PolicyVerdict::Deny => Verdict::Deny,
        PolicyVerdict::Alert => Verdict::Alert,
    }
}

/// How restrictive a verdict is: ALLOW < ALERT < DENY. A missing kernel
/// verdict let the operation through, as ALLOW does.
fn strictness(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Unspecified | Verdict::Allow => 0,
        Verdict::Alert => 1,
        Verdict::Deny => 2,
    }
}

/// The server's verdict on `event` and whether it reveals drift.
pub fn evaluate(ctx: &DriftContext, event: &Event) -> DriftOutcome {
    let unenforced = event.policy_version == 0 || event.metadata.get(ENFORCED_KEY).is_some_and(|v| v == "false");
    let (server_verdict, not_evaluable) = match request_of(event) {
        Governed::No => {
            return DriftOutcome {
                server_verdict: Verdict::Allow,
                drift_detected: false,
                unenforced,
                not_evaluable: false,
            };
        }
        Governed::Garbled => (Verdict::Unspecified, true),
        Governed::Request(request) => match ctx.policy_for(event.policy_version).decide(agent_type_of(event), &request)
        {
            Ok(decision) => (wire_verdict(decision.verdict), false),
            Err(_) => (Verdict::Unspecified, true),
        },
    };
    if unenforced {
        return DriftOutcome { server_verdict, drift_detected: false, unenforced, not_evaluable };
    }
    let stale_version = event.policy_version != 0
        && !ctx.sent_versions.is_empty()
        && !ctx.sent_versions.contains(&event.policy_version);
    let kernel = Verdict::try_from(event.verdict).unwrap_or(Verdict::Unspecified);
    let more_permissive = !not_evaluable && strictness(kernel) < strictness(server_verdict);
    DriftOutcome { server_verdict, drift_detected: stale_version || more_permissive, unenforced, not_evaluable }
}
