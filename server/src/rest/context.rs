//! What every REST handler shares: the stores, the fleet registry, the CA,
//! the JWT keys and the login limiter.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::jwt::JwtKeys;
use crate::auth::rate_limit::LoginLimiter;
use crate::event_store::EventStore;
use crate::fleet::Fleet;
use crate::identity::CertificateAuthority;

/// Password checks at once.
pub const LOGIN_CHECKS: usize = 4;
/// Live tails at once, over all operators.
pub const MAX_TAILS: usize = 64;

/// The REST API's shared state (cheap to clone).
#[derive(Debug, Clone)]
pub struct ApiContext {
    /// PostgreSQL: control data and the audit log.
    pub pool: PgPool,
    /// ClickHouse: events.
    pub store: EventStore,
    /// Daemons with a live stream on this replica.
    pub fleet: Fleet,
    /// The server CA (its certificate is public: `GET /api/v1/ca.pem`).
    pub ca: Arc<CertificateAuthority>,
    /// Signs and checks operators' tokens.
    pub jwt: Arc<JwtKeys>,
    /// Refuses logins after repeated failures.
    pub limiter: Arc<LoginLimiter>,
    /// Password checks running at once (argon2id: 19 MiB and ~20 ms each);
    /// a login finding none free is told to retry rather than queued.
    pub login_checks: Arc<Semaphore>,
    /// Live tails open at once (each polls ClickHouse).
    pub tails: Arc<Semaphore>,
    /// Seconds between daemon heartbeats: a daemon silent for two of them
    /// (and not streaming to this replica) is shown as disconnected.
    pub heartbeat_interval_s: u32,
    /// Cancelled at shutdown: ends live tails.
    pub shutdown: CancellationToken,
}
