//! The typed REST client: one method per API route, JSON in and out, the
//! server's error shape turned into [`ClientError::Api`], and an HTTPS
//! connection that trusts only the saved CA (or, without one, the
//! platform's roots). The live tail's server-sent events are read by [`sse`].

mod sse;

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use sse::{EventStream, StreamItem};

use crate::model::{
    AppliedPolicy, ApplyPolicy, Assignment, CheckPolicy, CheckResult, CreateToken, CreateUser, CreatedToken, Daemon,
    DiscoveredAgent, ErrorBody, LoginRequest, LoginResponse, Page, Placement, PolicyErrorDetail, User, Whoami,
};
use crate::trust::TrustError;

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of an answer that is not the API's JSON repeated in a message.
const ECHO_BYTES: usize = 200;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The stable error code (`not_found`, `unauthenticated`, ...).
        code: String,
        /// The server's message.
        message: String,
        /// Policy errors, for `invalid_policy`.
        details: Vec<PolicyErrorDetail>,
    },
    /// The server could not be reached or the connection failed.
    #[error("{url}: {message}")]
    Transport {
        /// What was asked for.
        url: String,
        /// What failed, with its causes.
        message: String,
    },
    /// The answer is not what the API sends.
    #[error("unexpected answer from {url}: {message}")]
    Decode {
        /// What was asked for.
        url: String,
        /// Why it does not parse.
        message: String,
    },
    /// The server URL cannot be used.
    #[error("invalid server url {url:?}: {message}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why.
        message: String,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl ClientError {
    /// True for a 404: the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// True for a 401: the session is missing, expired or invalid.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, Self::Api { status, .. } if *status == StatusCode::UNAUTHORIZED)
    }

    /// True when the server's certificate did not verify.
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self, Self::Transport { message, .. } if message.contains("certificate"))
    }

    /// The policy errors of an `invalid_policy` answer.
    pub fn policy_details(&self) -> &[PolicyErrorDetail] {
        match self {
            Self::Api { details, .. } => details,
            _ => &[],
        }
    }
}

/// The message of an error and of each of its causes, joined with `: `.
/// reqwest's own wrappers ("error sending request for url (...)", hyper's
/// "client error (Connect)") repeat the URL or say nothing; they are left out.
fn error_chain(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.starts_with("client error (") && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() { error.to_string() } else { parts.join(": ") }
}

/// How the client verifies the server.
#[derive(Debug)]
pub enum Trust {
    /// Only this TLS configuration (a saved CA, or a pin verifier).
    Config(Box<rustls::ClientConfig>),
    /// The platform's roots.
    Platform,
}

/// Query parameters, in order.
pub type Query = Vec<(&'static str, String)>;

/// A REST client for one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `server` (`https://host:7701`), verifying
    /// it as `trust` says and sending `token` as the bearer.
    pub fn new(server: &str, trust: Trust, token: Option<String>) -> Result<Self, ClientError> {
        let base = server_url(server)?;
        let builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("tyr/", env!("CARGO_PKG_VERSION")));
        let builder = match trust {
            Trust::Config(config) => builder.tls_backend_preconfigured(*config),
            Trust::Platform => builder,
        };
        let http = builder
            .build()
            .map_err(|error| ClientError::Transport { url: base.to_string(), message: error_chain(&error) })?;
        Ok(Self { http, base, token })
    }

    /// The server's base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, path: &str, query: &[(&'static str, String)]) -> Url {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base_path}{path}"));
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request and returns the response when its status is a success.
    async fn send(&self, request: reqwest::RequestBuilder, url: &Url) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|error| ClientError::Transport { url: url.to_string(), message: error_chain(&error) })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                details: body.error.details.unwrap_or_default(),
            },
            Err(_) => ClientError::Api {
                status,
                code: status.as_str().to_owned(),
                message: format!("{status} from {url}: {}", echo(&text)),
                details: Vec::new(),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, response: reqwest::Response, url: &Url) -> Result<T, ClientError> {
        let bytes = response
            .bytes()
            .await
            .map_err(|error| ClientError::Transport { url: url.to_string(), message: error_chain(&error) })?;
        serde_json::from_slice(&bytes).map_err(|error| ClientError::Decode {
            url: url.to_string(),
            message: format!("{error}: {}", echo(&String::from_utf8_lossy(&bytes))),
        })
    }

    /// `GET path?query` → JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<T, ClientError> {
        let url = self.url(path, query);
        let response = self.send(self.request(Method::GET, url.clone()).timeout(REQUEST_TIMEOUT), &url).await?;
        self.json(response, &url).await
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path, &[]);
        let request = self.request(Method::POST, url.clone()).timeout(REQUEST_TIMEOUT).json(body);
        let response = self.send(request, &url).await?;
        self.json(response, &url).await
    }

    /// `DELETE path?query`; the body, if any, is ignored.
    pub async fn delete(&self, path: &str, query: &[(&'static str, String)]) -> Result<(), ClientError> {
        let url = self.url(path, query);
        self.send(self.request(Method::DELETE, url.clone()).timeout(REQUEST_TIMEOUT), &url).await.map(drop)
    }

    /// One page of a list route.
    pub async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&'static str, String)],
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page<T>, ClientError> {
        let mut query = query.to_vec();
        query.push(("limit", limit.to_string()));
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        self.get(path, &query).await
    }

    /// `POST /api/v1/login`.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse, ClientError> {
        self.post("/api/v1/login", &LoginRequest { username, password }).await
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        self.get("/api/v1/whoami", &[]).await
    }

    /// `GET /api/v1/ca.pem`: the server CA, PEM.
    pub async fn ca_pem(&self) -> Result<String, ClientError> {
        let url = self.url("/api/v1/ca.pem", &[]);
        let response = self.send(self.request(Method::GET, url.clone()).timeout(REQUEST_TIMEOUT), &url).await?;
        response
            .text()
            .await
            .map_err(|error| ClientError::Transport { url: url.to_string(), message: error_chain(&error) })
    }

    /// `GET /api/v1/daemons/{id}`.
    pub async fn daemon(&self, id: Uuid) -> Result<Daemon, ClientError> {
        self.get(&format!("/api/v1/daemons/{id}"), &[]).await
    }

    /// `DELETE /api/v1/daemons/{id}`.
    pub async fn delete_daemon(&self, id: Uuid) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/daemons/{id}"), &[]).await
    }

    /// `GET /api/v1/daemons/{id}/policy`.
    pub async fn daemon_policy(&self, id: Uuid) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/api/v1/daemons/{id}/policy"), &[]).await
    }

    /// `GET /api/v1/discovered-agents/{id}`.
    pub async fn discovered_agent(&self, id: Uuid) -> Result<DiscoveredAgent, ClientError> {
        self.get(&format!("/api/v1/discovered-agents/{id}"), &[]).await
    }

    /// `POST /api/v1/discovered-agents/{id}/{action}` with `body`.
    pub async fn discovered_action(
        &self,
        id: Uuid,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<DiscoveredAgent, ClientError> {
        self.post(&format!("/api/v1/discovered-agents/{id}/{action}"), body).await
    }

    /// `POST /api/v1/tokens`.
    pub async fn create_token(&self, request: &CreateToken<'_>) -> Result<CreatedToken, ClientError> {
        self.post("/api/v1/tokens", request).await
    }

    /// `DELETE /api/v1/tokens/{id}`.
    pub async fn delete_token(&self, id: Uuid) -> Result<(), ClientError> {
        self.delete(&format!("/api/v1/tokens/{id}"), &[]).await
    }

    /// `POST /api/v1/policies`.
    pub async fn apply_policy(&self, request: &ApplyPolicy<'_>) -> Result<AppliedPolicy, ClientError> {
        self.post("/api/v1/policies", request).await
    }

    /// `GET /api/v1/policies/{name}`: the summary, document and assignments.
    pub async fn policy(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.get(&policy_path(name, ""), &[]).await
    }

    /// `DELETE /api/v1/policies/{name}`.
    pub async fn delete_policy(&self, name: &str) -> Result<(), ClientError> {
        self.delete(&policy_path(name, ""), &[]).await
    }

    /// `POST /api/v1/policies/check`.
    pub async fn check_policy(&self, request: &CheckPolicy<'_>) -> Result<CheckResult, ClientError> {
        self.post("/api/v1/policies/check", request).await
    }

    /// `POST /api/v1/policies/{name}/assignments`.
    pub async fn assign(&self, name: &str, placement: &Placement) -> Result<Assignment, ClientError> {
        self.post(&policy_path(name, "/assignments"), placement).await
    }

    /// `DELETE /api/v1/policies/{name}/assignments?scope=..`.
    pub async fn unassign(&self, name: &str, placement: &Placement) -> Result<(), ClientError> {
        let mut query: Query = vec![("scope", placement.scope.to_owned())];
        if let Some(agent_type) = &placement.agent_type {
            query.push(("agent_type", agent_type.clone()));
        }
        if let Some(daemon) = placement.daemon_id {
            query.push(("daemon_id", daemon.to_string()));
        }
        self.delete(&policy_path(name, "/assignments"), &query).await
    }

    /// `GET /api/v1/drift`.
    pub async fn drift(&self, query: &[(&'static str, String)]) -> Result<serde_json::Value, ClientError> {
        self.get("/api/v1/drift", query).await
    }

    /// `POST /api/v1/users`.
    pub async fn create_user(&self, request: &CreateUser<'_>) -> Result<User, ClientError> {
        self.post("/api/v1/users", request).await
    }

    /// `POST /api/v1/users/{id}/disable`.
    pub async fn disable_user(&self, id: Uuid) -> Result<User, ClientError> {
        self.post(&format!("/api/v1/users/{id}/disable"), &serde_json::json!({})).await
    }

    /// `GET /api/v1/events/stream?filters`: new events as they are stored.
    pub async fn event_stream(&self, query: &[(&'static str, String)]) -> Result<EventStream, ClientError> {
        let url = self.url("/api/v1/events/stream", query);
        let request = self.request(Method::GET, url.clone()).header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.send(request, &url).await?;
        Ok(EventStream::new(response, url.to_string()))
    }
}

/// The list routes, by what they list.
pub mod routes {
    /// Enrolled daemons.
    pub const DAEMONS: &str = "/api/v1/daemons";
    /// Discovered agents.
    pub const DISCOVERED: &str = "/api/v1/discovered-agents";
    /// Enrollment tokens.
    pub const TOKENS: &str = "/api/v1/tokens";
    /// Policies.
    pub const POLICIES: &str = "/api/v1/policies";
    /// Every assignment.
    pub const ASSIGNMENTS: &str = "/api/v1/assignments";
    /// Events.
    pub const EVENTS: &str = "/api/v1/events";
    /// How many events match.
    pub const EVENT_COUNT: &str = "/api/v1/events/count";
    /// The audit log.
    pub const AUDIT: &str = "/api/v1/audit";
    /// Operators.
    pub const USERS: &str = "/api/v1/users";
}

/// The path of a policy (or of `suffix` under it), its name percent-encoded.
pub fn policy_path(name: &str, suffix: &str) -> String {
    format!("/api/v1/policies/{}{suffix}", encode_segment(name))
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The server URL, checked: `https://` (or `http://` to a loopback address,
/// for a server behind a proxy on the same host), with no query.
fn server_url(server: &str) -> Result<Url, ClientError> {
    let bad = |message: &str| ClientError::BadUrl { url: server.to_owned(), message: message.to_owned() };
    let url = Url::parse(server.trim()).map_err(|error| bad(&error.to_string()))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad("the scheme must be https"));
    }
    let Some(host) = url.host_str() else {
        return Err(bad("no host"));
    };
    // Passwords and tokens never cross a network in the clear: plain HTTP
    // only reaches a server (or its TLS-terminating proxy) on this host.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if url.scheme() == "http" && !loopback {
        return Err(bad("plain http is only for a server on this host (loopback); use https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a server url has no query or fragment"));
    }
    Ok(url)
}

/// At most [`ECHO_BYTES`] of a text, on one line.
fn echo(text: &str) -> String {
    let line = text.trim().replace(['\n', '\r'], " ");
    match line.char_indices().nth(ECHO_BYTES) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(server_url("https://tyr.example:7701").is_ok());
        assert!(server_url("ftp://tyr.example").is_err());
        assert!(server_url("https://tyr.example/?x=1").is_err());
        assert!(server_url("tyr.example:7701").is_err());
        assert!(server_url("http://tyr.example:7701").is_err(), "no clear text across a network");
        assert!(server_url("http://127.0.0.1:7701").is_ok());
        assert!(server_url("http://[::1]:7701").is_ok());
        assert!(server_url("http://localhost:7701").is_ok());
        assert_eq!(policy_path("base fleet/x", "/history"), "/api/v1/policies/base%20fleet%2Fx/history");
        crate::trust::install_provider();
        let client = Client::new("https://tyr.example:7701/prefix/", Trust::Platform, None).expect("client");
        let url = client.url("/api/v1/events", &[("resource", "a&b=c'".to_owned())]);
        assert_eq!(url.as_str(), "https://tyr.example:7701/prefix/api/v1/events?resource=a%26b%3Dc%27");
    }

    #[test]
    fn echo_is_short_and_one_line() {
        assert_eq!(echo(" a\nb "), "a b");
        assert!(echo(&"x".repeat(10_000)).chars().count() <= ECHO_BYTES + 1);
    }
}
