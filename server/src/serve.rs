//! `tyr-server serve`: prepares both stores and the identity, then serves
//! AgentService on the gRPC listener until shutdown.
//!
//! TLS is always on. Register is the one RPC a daemon may call without a
//! client certificate (it has none yet), so the TLS layer asks for one but
//! does not require it; a certificate that is presented must chain to the
//! server CA and be within its validity, and Stream refuses any stream
//! whose certificate does not name a live daemon.
//!
//! Shutdown drains: sessions stop reading, wait (bounded) for their
//! in-flight batches to be stored and acknowledged, and end; the writer
//! then flushes what it holds; daemons replay anything unacknowledged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tyr_proto::agent_service_server::AgentServiceServer;

use crate::auth::jwt::JwtKeys;
use crate::auth::rate_limit::LoginLimiter;
use crate::config::{ControlDbConfig, EventStoreConfig, IdentityConfig};
use crate::control_db;
use crate::drift::{DriftPool, PolicyCache};
use crate::event_store::{EventStore, schema};
use crate::fleet::Fleet;
use crate::grpc::AgentServiceImpl;
use crate::grpc::register::RegisterContext;
use crate::grpc::stream::{SessionSettings, StreamContext, StreamStats};
use crate::identity::CertificateAuthority;
use crate::ingest::{BatchLimits, Ingest, IngestConfig};
use crate::metrics::{self, Metrics};
use crate::rest::{self, ApiContext, RestTls};

/// Everything `tyr-server serve` is configured with.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address of the daemons' gRPC endpoint (mTLS).
    #[arg(long, env = "TYR_GRPC_ADDR", default_value = "0.0.0.0:7700")]
    pub grpc_addr: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP; loopback
    /// unless the operator opens it).
    #[arg(long, env = "TYR_METRICS_ADDR", default_value = "127.0.0.1:7702")]
    pub metrics_addr: SocketAddr,
    /// Address of the operators' REST API.
    #[arg(long, env = "TYR_REST_ADDR", default_value = "0.0.0.0:7701")]
    pub rest_addr: SocketAddr,
    /// Serve REST over plain HTTP: only behind a TLS-terminating proxy.
    #[arg(long, env = "TYR_REST_NO_TLS", default_value_t = false, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub rest_no_tls: bool,
    /// REST certificate chain (PEM) to use instead of the server CA's serving certificate.
    #[arg(long, env = "TYR_REST_TLS_CERT", requires = "rest_tls_key")]
    pub rest_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--rest-tls-cert`.
    #[arg(long, env = "TYR_REST_TLS_KEY", requires = "rest_tls_cert")]
    pub rest_tls_key: Option<PathBuf>,
    /// CA, serving certificate and the names it is valid for.
    #[command(flatten)]
    pub identity: IdentityConfig,
    /// PostgreSQL.
    #[command(flatten)]
    pub control_db: ControlDbConfig,
    /// ClickHouse.
    #[command(flatten)]
    pub event_store: EventStoreConfig,
    /// Seconds between daemon heartbeats (sent to daemons in ConfigUpdate).
    #[arg(long, env = "TYR_HEARTBEAT_INTERVAL_S", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub heartbeat_interval_s: u32,
    /// Events per batch daemons cut (ConfigUpdate).
    #[arg(long, env = "TYR_BATCH_MAX_EVENTS", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_max_events: u32,
    /// Longest a daemon's batch waits, in milliseconds (ConfigUpdate).
    #[arg(long, env = "TYR_BATCH_MAX_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=60_000))]
    pub batch_max_ms: u32,
    /// Longest an event waits in the server before its ClickHouse insert, in
    /// milliseconds (inserts are batched: fewer, larger parts).
    #[arg(long, env = "TYR_INGEST_FLUSH_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub ingest_flush_ms: u64,
    /// Days a daemon's client certificate is valid.
    #[arg(long, env = "TYR_CLIENT_CERT_DAYS", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub client_cert_days: u32,
    /// Cedar evaluator threads (default: one per core).
    #[arg(long, env = "TYR_DRIFT_WORKERS")]
    pub drift_workers: Option<usize>,
    /// Largest gRPC message accepted, in MiB.
    #[arg(long, env = "TYR_GRPC_MAX_MESSAGE_MB", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_message_mb: u32,
    /// On SIGTERM, how long streams may take to drain, in seconds.
    #[arg(long, env = "TYR_DRAIN_TIMEOUT_S", default_value_t = 10)]
    pub drain_timeout_s: u64,
}

impl ServeConfig {
    /// The data directory (CA, keys).
    pub fn data_dir(&self) -> &PathBuf {
        &self.identity.data_dir
    }
}

/// The sockets the server serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// AgentService (mTLS).
    pub grpc: TcpListener,
    /// Prometheus `/metrics` (plain HTTP).
    pub metrics: TcpListener,
    /// The operators' REST API.
    pub rest: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
        let metrics = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics address {}", config.metrics_addr))?;
        let rest = TcpListener::bind(config.rest_addr)
            .await
            .with_context(|| format!("binding the REST address {}", config.rest_addr))?;
        Ok(Self { grpc, metrics, rest })
    }
}

/// Serves until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: ServeConfig, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    let pool = control_db::connect(&config.control_db).await?;
    control_db::migrate(&pool).await.context("migrating the control database")?;
    let store = EventStore::new(&config.event_store)?;
    schema::apply(&store, config.event_store.retention_days)
        .await
        .with_context(|| format!("applying the events schema to {}", config.event_store.url))?;
    let ca = Arc::new(
        CertificateAuthority::load_or_create(&config.identity.data_dir, &config.identity.tls_names)
            .context("loading the server CA")?,
    );

    // The writer outlives the sessions so that their last batches can be stored.
    let writer_shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let (ingest, writer) = Ingest::start_with_metrics(
        store.clone(),
        pool.clone(),
        IngestConfig { flush_interval: Duration::from_millis(config.ingest_flush_ms), ..IngestConfig::default() },
        Arc::clone(&metrics),
        writer_shutdown.clone(),
    );
    let workers = config.drift_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let fleet = Fleet::default();
    let notifications = tokio::spawn(fleet.clone().follow_notifications(pool.clone(), shutdown.clone()));

    let drain_timeout = Duration::from_secs(config.drain_timeout_s);
    let settings = SessionSettings {
        heartbeat_interval_s: config.heartbeat_interval_s,
        batch_max_events: config.batch_max_events,
        batch_max_ms: config.batch_max_ms,
        drain_timeout,
        ..SessionSettings::default()
    };
    let service = AgentServiceImpl {
        register: Arc::new(RegisterContext {
            pool: pool.clone(),
            ca: Arc::clone(&ca),
            client_cert_validity: Duration::from_secs(u64::from(config.client_cert_days) * 86_400),
        }),
        stream: Arc::new(StreamContext {
            pool: pool.clone(),
            fleet: fleet.clone(),
            drift: DriftPool::start(workers),
            policies: PolicyCache::default(),
            ingest,
            store: store.clone(),
            limits: BatchLimits::default(),
            settings,
            shutdown: shutdown.clone(),
            stats: StreamStats::default(),
            metrics: Arc::clone(&metrics),
        }),
    };
    metrics.attach(&service.stream);
    let metrics_task = tokio::spawn(metrics::http::serve(listeners.metrics, metrics, shutdown.clone()));
    let rest_address = listeners.rest.local_addr().ok();
    let rest_task = {
        let tls = rest_tls(&config, &ca)?;
        let jwt = Arc::new(JwtKeys::load_or_create(config.data_dir()).context("loading the JWT signing key")?);
        let ctx = ApiContext {
            pool: pool.clone(),
            store: store.clone(),
            fleet: fleet.clone(),
            ca: Arc::clone(&ca),
            jwt,
            limiter: Arc::new(LoginLimiter::default()),
            login_checks: Arc::new(tokio::sync::Semaphore::new(crate::rest::LOGIN_CHECKS)),
            tails: Arc::new(tokio::sync::Semaphore::new(crate::rest::MAX_TAILS)),
            heartbeat_interval_s: config.heartbeat_interval_s,
            shutdown: shutdown.clone(),
        };
        let (app, _) = rest::router(ctx);
        tokio::spawn(rest::serve(listeners.rest, app, tls, shutdown.clone()))
    };
    let max_message = config.max_message_mb as usize * 1024 * 1024;
    let grpc =
        AgentServiceServer::new(service).max_decoding_message_size(max_message).max_encoding_message_size(max_message);
    // The chain (leaf, then CA) lets a fresh daemon check the CA against its pin.
    let chain = format!("{}{}", ca.serving_cert_pem(), ca.ca_pem());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, ca.serving_key_pem()))
        .client_ca_root(Certificate::from_pem(ca.ca_pem()))
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10));
    let address = listeners.grpc.local_addr().ok();
    tracing::info!(grpc = ?address, rest = ?rest_address, ca_pin = %ca.ca_pin(), "tyr-server serving");

    let server = Server::builder()
        .tls_config(tls)
        .context("configuring TLS")?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(grpc)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.grpc), shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served.context("serving gRPC")?,
        () = shutdown.cancelled() => {
            // Sessions drain within drain_timeout; connections that linger past it are cut.
            match tokio::time::timeout(drain_timeout + Duration::from_secs(2), &mut server).await {
                Ok(served) => served.context("serving gRPC")?,
                Err(_) => tracing::warn!("connections still open after the drain timeout; closing them"),
            }
        }
    }
    writer_shutdown.cancel();
    if writer.await.is_err() {
        tracing::error!("the event writer stopped abnormally");
    }
    notifications.abort();
    match tokio::time::timeout(Duration::from_secs(12), rest_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(error = format!("{error:#}"), "the REST API failed"),
        Ok(Err(_)) => tracing::error!("the REST API stopped abnormally"),
        Err(_) => tracing::warn!("the REST API did not stop in time"),
    }
    match tokio::time::timeout(Duration::from_secs(2), metrics_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(error = format!("{error:#}"), "the metrics endpoint failed"),
        Ok(Err(_)) => tracing::error!("the metrics endpoint stopped abnormally"),
        Err(_) => tracing::warn!("the metrics endpoint did not stop within 2 s"),
    }
    pool.close().await;
    tracing::info!("tyr-server stopped");
    Ok(())
}

/// How REST speaks: the operator's certificate, else the server's own
/// serving certificate (chained to the CA the CLI pins), unless TLS is off.
fn rest_tls(config: &ServeConfig, ca: &CertificateAuthority) -> anyhow::Result<RestTls> {
    if config.rest_no_tls {
        tracing::warn!("REST is served without TLS (TYR_REST_NO_TLS): only behind a TLS-terminating proxy");
        return Ok(RestTls::Off);
    }
    match (&config.rest_tls_cert, &config.rest_tls_key) {
        (Some(cert), Some(key)) => {
            let chain = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            RestTls::from_pem(&chain, &key_pem)
        }
        _ => {
            let chain = format!("{}{}", ca.serving_cert_pem(), ca.ca_pem());
            RestTls::from_pem(chain.as_bytes(), ca.serving_key_pem().as_bytes())
        }
    }
}
