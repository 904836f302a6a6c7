//! The REST API's request and response shapes, as the CLI reads them.
//!
//! Responses keep every field the server sent (`rest`), so `--format json`
//! prints the server's objects whole, while tables use the typed fields.
//! Fields the tables need are typed; a server that omits one gets its
//! default rather than a refusal.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// One page of a list.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The cursor of the next page; None on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The body of every error response.
#[derive(Debug, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `invalid_policy`, ...).
    pub code: String,
    /// For a person.
    pub message: String,
    /// For `invalid_policy`: each error with its place.
    #[serde(default)]
    pub details: Option<Vec<PolicyErrorDetail>>,
}

/// One policy validation error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyErrorDetail {
    /// The document's name.
    pub document: String,
    /// The rule's name (or `#N`).
    #[serde(default)]
    pub rule: Option<String>,
    /// The field.
    #[serde(default)]
    pub field: Option<String>,
    /// 1-based line; 0 when unknown.
    #[serde(default)]
    pub line: usize,
    /// 1-based column; 0 when unknown.
    #[serde(default)]
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyErrorDetail {
    /// `document:line:column: rule R: field F: message`, exactly as `tyrd
    /// policy check` prints errors (one formatter, in tyr-common).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let error = tyr_common::policy::PolicyError {
            document: self.document.clone(),
            rule: self.rule.clone(),
            field: self.field.clone(),
            line: self.line,
            column: self.column,
            message: self.message.clone(),
        };
        error.fmt(f)
    }
}

/// `POST /api/v1/login`.
#[derive(Debug, Serialize)]
pub struct LoginRequest<'a> {
    /// The operator's name.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
}

/// A session.
#[derive(Debug, Deserialize)]
pub struct LoginResponse {
    /// The bearer token.
    pub token: String,
    /// When it stops being accepted.
    pub expires_at: String,
    /// Who logged in.
    pub user: Whoami,
}

/// The authenticated operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    /// The user's id.
    pub id: Uuid,
    /// The user's name.
    pub username: String,
    /// `admin` or `viewer`.
    pub role: String,
}

/// An enrolled daemon and its live state.
#[derive(Debug, Serialize, Deserialize)]
pub struct Daemon {
    /// The daemon id.
    pub id: Uuid,
    /// Host name.
    #[serde(default)]
    pub name: String,
    /// Streaming now.
    #[serde(default)]
    pub connected: bool,
    /// Last heartbeat (RFC 3339).
    #[serde(default)]
    pub last_seen_at: Option<String>,
    /// The newest effective policy version computed for it.
    #[serde(default)]
    pub assigned_policy_version: Option<i64>,
    /// The version its kernel runs.
    #[serde(default)]
    pub applied_policy_version: i64,
    /// Events in its spool at the last heartbeat.
    #[serde(default)]
    pub spooled_events: i64,
    /// Sequence numbers never received (lost on the host).
    #[serde(default)]
    pub seq_gap_events: i64,
    /// Drop counters of its last heartbeat.
    #[serde(default)]
    pub drops: Value,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Daemon {
    /// The sum of its drop counters.
    pub fn total_drops(&self) -> u64 {
        match &self.drops {
            Value::Object(counters) => counters.values().filter_map(Value::as_u64).sum(),
            other => other.as_u64().unwrap_or(0),
        }
    }
}

/// A discovered AI agent.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiscoveredAgent {
    /// tyrd's id for it.
    pub id: Uuid,
    /// The daemon that discovered it.
    pub daemon_id: Uuid,
    /// The type tyrd detected.
    #[serde(default)]
    pub agent_type: String,
    /// The type it is governed as.
    #[serde(default)]
    pub effective_type: String,
    /// The operators' name for it.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Executable path.
    #[serde(default)]
    pub exe_path: String,
    /// Classification confidence (0-100).
    #[serde(default)]
    pub confidence: i64,
    /// `active`, `archived` or `merged`.
    #[serde(default)]
    pub state: String,
    /// When tyrd last saw it (RFC 3339).
    #[serde(default)]
    pub last_seen_at: String,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Serialize)]
pub struct CreateToken<'a> {
    /// Hours until it expires.
    pub expires_hours: u32,
    /// Enrollments it allows.
    pub max_uses: u32,
    /// What it is for.
    pub description: &'a str,
}

/// A created token: its secret, shown once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The token's id.
    pub id: Uuid,
    /// `<id>.<secret>`.
    pub token: String,
    /// The CA pin a new host checks.
    pub ca_pin: String,
    /// Expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: String,
    /// Enrollments it allows.
    #[serde(default)]
    pub max_uses: u64,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A token as listed.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenView {
    /// The token's id.
    pub id: Uuid,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Expiry (RFC 3339).
    #[serde(default)]
    pub expires_at: String,
    /// Enrollments it allows.
    #[serde(default)]
    pub max_uses: i64,
    /// Enrollments made.
    #[serde(default)]
    pub uses: i64,
    /// `active`, `expired` or `exhausted`.
    #[serde(default)]
    pub state: String,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /api/v1/policies`.
#[derive(Debug, Serialize)]
pub struct ApplyPolicy<'a> {
    /// The policy's name.
    pub name: &'a str,
    /// The document.
    pub yaml: &'a str,
    /// What the change is.
    pub description: &'a str,
}

/// What `apply` stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppliedPolicy {
    /// The policy's name.
    pub name: String,
    /// The version of this change.
    pub version: i64,
    /// False when nothing changed.
    pub changed: bool,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A policy as listed (and, with its document, as shown).
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicySummary {
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// The version of its last change.
    #[serde(default)]
    pub version: i64,
    /// When it last changed (RFC 3339).
    #[serde(default)]
    pub updated_at: String,
    /// How many assignments use it.
    #[serde(default)]
    pub assignments: i64,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One version of a policy.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// The version.
    pub version: i64,
    /// Who wrote it.
    #[serde(default)]
    pub changed_by: String,
    /// When (RFC 3339).
    #[serde(default)]
    pub changed_at: String,
    /// The description given with it.
    #[serde(default)]
    pub description: String,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /api/v1/policies/check`.
#[derive(Debug, Serialize)]
pub struct CheckPolicy<'a> {
    /// The document.
    pub yaml: &'a str,
    /// The name errors are reported under.
    pub name: &'a str,
}

/// Whether a document is valid.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// True when it parses, validates and compiles.
    pub valid: bool,
    /// Each error.
    #[serde(default)]
    pub errors: Vec<PolicyErrorDetail>,
    /// Rules in the document, when valid.
    #[serde(default)]
    pub rules: Option<usize>,
}

/// Where to assign a policy (`POST` body; `DELETE` query).
#[derive(Debug, Serialize)]
pub struct Placement {
    /// `base` or `overlay`.
    pub scope: &'static str,
    /// For an overlay: the agent type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_type: Option<String>,
    /// One daemon; None: the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_id: Option<Uuid>,
}

/// An assignment.
#[derive(Debug, Serialize, Deserialize)]
pub struct Assignment {
    /// Its id.
    pub id: Uuid,
    /// The policy's name.
    pub policy: String,
    /// `base` or `overlay`.
    pub scope: String,
    /// For an overlay: the agent type.
    #[serde(default)]
    pub agent_type: Option<String>,
    /// One daemon; None: the fleet.
    #[serde(default)]
    pub daemon_id: Option<Uuid>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One stored event.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// The event's id.
    pub event_id: Uuid,
    /// The daemon that reported it.
    pub daemon_id: Uuid,
    /// The discovered agent that acted.
    #[serde(default)]
    pub discovered_agent_id: Option<Uuid>,
    /// Its agent type.
    #[serde(default)]
    pub agent_type: String,
    /// What happened.
    #[serde(default)]
    pub kind: String,
    /// What was touched.
    #[serde(default)]
    pub resource: String,
    /// The kernel's verdict.
    #[serde(default)]
    pub verdict: String,
    /// The server's verdict.
    #[serde(default)]
    pub server_verdict: String,
    /// Kernel and server disagree.
    #[serde(default)]
    pub drift: bool,
    /// Process id.
    #[serde(default)]
    pub pid: i64,
    /// When it happened (RFC 3339).
    #[serde(default)]
    pub timestamp: String,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// An audit log entry.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id.
    pub id: Uuid,
    /// When (RFC 3339).
    #[serde(default)]
    pub at: String,
    /// The operator's name.
    #[serde(default)]
    pub actor_name: String,
    /// The client's address.
    #[serde(default)]
    pub source: Option<String>,
    /// The dotted verb.
    #[serde(default)]
    pub action: String,
    /// The target.
    #[serde(default)]
    pub target: String,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `POST /api/v1/users`.
#[derive(Debug, Serialize)]
pub struct CreateUser<'a> {
    /// The user name.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
    /// `admin` or `viewer`.
    pub role: &'a str,
}

/// An operator account.
#[derive(Debug, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// The name.
    pub username: String,
    /// `admin` or `viewer`.
    #[serde(default)]
    pub role: String,
    /// When created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// When disabled, if it is.
    #[serde(default)]
    pub disabled_at: Option<String>,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_kept_for_json_output() {
        let text = r#"{"id":"0190b6d2-0000-7000-8000-000000000001","name":"host","connected":true,
            "applied_policy_version":3,"assigned_policy_version":3,"drops":{"a":2,"b":5},"kernel_version":"6.1"}"#;
        let daemon: Daemon = serde_json::from_str(text).expect("parses");
        assert_eq!(daemon.total_drops(), 7);
        let back = serde_json::to_value(&daemon).expect("serialises");
        assert_eq!(back["kernel_version"], "6.1");
        assert_eq!(back["applied_policy_version"], 3);
        let detail = PolicyErrorDetail {
            document: "base".to_owned(),
            rule: Some("deny-ssh".to_owned()),
            field: Some("cidr_deny".to_owned()),
            line: 7,
            column: 5,
            message: "not a CIDR".to_owned(),
        };
        assert_eq!(detail.to_string(), "base:7:5: rule deny-ssh: field cidr_deny: not a CIDR");
    }
}
