//! The server ingest load harness: a real server in this process (scratch
//! PostgreSQL and ClickHouse databases, `serve::run` on a loopback port),
//! N enrolled clients streaming M events each over mTLS as tyrd does
//! (contiguous seq, up to 64 unacknowledged batches), a 100-rule fleet
//! policy so drift evaluation does real work, and then, in the same run,
//! the direct baseline: the same number of rows built into Arrow and written
//! with `EventStore::insert_batches` into a second scratch database.
//!
//! The throughput counts from the first batch sent to the last BatchAck
//! (acknowledged means committed in ClickHouse). Afterwards ClickHouse must
//! hold exactly N×M rows, each (agent_id, seq) once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tyr_proto::agent_message::Payload as Up;
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::server_message::Payload as Down;
use tyr_proto::{AgentMessage, CapabilityReport, Event, EventBatch, EventKind, RegisterRequest, Verdict};
use tyr_server::config::EventStoreConfig;
use tyr_server::event_store::arrow_batch::{EventBatchBuilder, StoredEvent};
use tyr_server::event_store::{EventStore, EventStoreError, schema};
use tyr_server::serve::{Listeners, ServeConfig};
use uuid::Uuid;

mod report;

use report::stored_counts;
pub use report::{LoadReport, StoredCounts};

/// Unacknowledged batches one stream keeps in flight, as tyrd does.
pub const IN_FLIGHT_BATCHES: usize = 64;
/// Rows per INSERT of the direct baseline (the server's `max_insert_rows`).
pub const DIRECT_INSERT_ROWS: usize = 50_000;
/// Rules in the fleet base policy.
pub const POLICY_RULES: usize = 100;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Enrolled clients, one stream each.
    pub clients: usize,
    /// Events each client sends.
    pub events_per_client: u64,
    /// Events per batch.
    pub batch: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { clients: 8, events_per_client: 50_000, batch: 1_000 }
    }
}

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A development service setting is missing.
    #[error("{0} is not set: source /var/lib/tyr-dev/env (deploy/dev/setup.sh)")]
    MissingEnv(&'static str),
    /// The options cannot run.
    #[error("invalid options: {0}")]
    Options(&'static str),
    /// PostgreSQL refused a request.
    #[error("postgresql: {0}")]
    Postgres(#[from] sqlx::Error),
    /// ClickHouse refused a request.
    #[error("clickhouse: {0}")]
    EventStore(#[from] EventStoreError),
    /// A ClickHouse query failed.
    #[error("clickhouse query: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The server did not start or stopped with an error.
    #[error("server: {0}")]
    Server(String),
    /// The fleet policy was refused.
    #[error("setting the fleet policy: {0}")]
    Policy(#[from] tyr_server::control_db::policies::PolicyStoreError),
    /// A key or CSR could not be made.
    #[error("client key: {0}")]
    Key(#[from] rcgen::Error),
    /// A TLS channel could not be opened.
    #[error("connecting: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server answered an RPC with an error.
    #[error("rpc: {0}")]
    Status(Box<tonic::Status>),
    /// The server broke the protocol (an unexpected message or ack).
    #[error("protocol: {0}")]
    Protocol(String),
    /// A client task failed to run to its end.
    #[error("client task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// ClickHouse does not hold exactly what was sent.
    #[error("stored events do not match what was sent: {0}")]
    Mismatch(String),
}

impl From<tonic::Status> for LoadError {
    fn from(status: tonic::Status) -> Self {
        LoadError::Status(Box::new(status))
    }
}

/// `serve`'s flags, parsed as the binary parses them.
#[derive(Debug, Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: ServeConfig,
}

/// The server of one run and its scratch databases.
#[derive(Debug)]
struct Harness {
    addr: SocketAddr,
    data_dir: PathBuf,
    pool: PgPool,
    store: EventStore,
    admin: PgPool,
    name: String,
    shutdown: CancellationToken,
    /// `serve::run`, its error flattened to text (no anyhow in this module's API).
    task: tokio::task::JoinHandle<Result<(), String>>,
}

fn env(name: &'static str) -> Result<String, LoadError> {
    std::env::var(name).map_err(|_| LoadError::MissingEnv(name))
}

fn clickhouse_url() -> String {
    std::env::var("TYR_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

fn event_store(database: &str) -> Result<EventStore, LoadError> {
    Ok(EventStore::new(&EventStoreConfig {
        url: clickhouse_url(),
        database: database.to_owned(),
        user: None,
        password: None,
        retention_days: 90,
    })?)
}

impl Harness {
    async fn start() -> Result<Self, LoadError> {
        let base_url = env("TYR_DATABASE_URL")?;
        let admin_options = PgConnectOptions::from_str(&base_url)?;
        let admin = PgPoolOptions::new().max_connections(1).connect_with(admin_options.clone()).await?;
        let name = format!("tyr_load_{}", Uuid::new_v4().simple());
        // Identifiers cannot be bound; the name is generated above.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        let Some((server_part, _)) = base_url.rsplit_once('/') else {
            return Err(LoadError::Options("TYR_DATABASE_URL has no database part"));
        };
        let data_dir = std::env::temp_dir().join(format!("tyr-load-{}", Uuid::new_v4().simple()));
        let args = [
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--database-url",
            &format!("{server_part}/{name}"),
            "--clickhouse-url",
            &clickhouse_url(),
            "--clickhouse-database",
            &name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--tls-names",
            "localhost,127.0.0.1",
        ]
        .map(str::to_owned);
        let config = ServeArgs::try_parse_from(args).map_err(|e| LoadError::Server(e.to_string()))?.config;
        let listeners = Listeners::bind(&config).await.map_err(|e| LoadError::Server(format!("{e:#}")))?;
        let addr = listeners.grpc.local_addr().map_err(|e| LoadError::Server(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let serve_shutdown = shutdown.clone();
        let task = tokio::spawn(async move {
            tyr_server::serve::run(config, listeners, serve_shutdown).await.map_err(|e| format!("{e:#}"))
        });
        let pool = PgPoolOptions::new().max_connections(4).connect_with(admin_options.database(&name)).await?;
        let store = event_store(&name)?;
        let harness = Self { addr, data_dir, pool, store, admin, name, shutdown, task };
        // Ready once the CA exists (schema and migrations come before it) and the port answers.
        for _ in 0..600 {
            if harness.task.is_finished() {
                return Err(LoadError::Server("the server stopped while starting".to_owned()));
            }
            if harness.data_dir.join("ca.pem").exists() && tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(harness);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(LoadError::Server("the server did not start within 30 s".to_owned()))
    }

    async fn channel(&self, identity: Option<(&str, &str)>) -> Result<Channel, LoadError> {
        let ca = std::fs::read_to_string(self.data_dir.join("ca.pem")).map_err(|e| LoadError::Server(e.to_string()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?)
    }

    /// Enrolls one daemon with a fresh token: (id, certificate, key).
    async fn enroll(&self, index: usize) -> Result<(Uuid, String, String), LoadError> {
        let token = tyr_server::control_db::tokens::create(
            &self.pool,
            &tyr_server::control_db::audit::Actor::local_admin(),
            Duration::from_secs(3600),
            1,
            "load harness",
        )
        .await
        .map_err(|e| LoadError::Server(e.to_string()))?
        .token;
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        let response = AgentServiceClient::new(self.channel(None).await?)
            .register(RegisterRequest {
                agent_name: format!("load-{index}"),
                enrollment_token: token,
                csr_pem: csr.pem()?.into_bytes(),
                kernel_version: "6.18.0-load".to_owned(),
                arch: "x86_64".to_owned(),
            })
            .await?
            .into_inner();
        let id = Uuid::parse_str(&response.agent_id).map_err(|e| LoadError::Protocol(e.to_string()))?;
        let cert = String::from_utf8(response.client_cert_pem).map_err(|e| LoadError::Protocol(e.to_string()))?;
        Ok((id, cert, key.serialize_pem()))
    }

    async fn stop_and_drop(self, extra_clickhouse: &str) -> Result<(), LoadError> {
        self.shutdown.cancel();
        let served = self.task.await?;
        self.pool.close().await;
        // A client with no database selected: the scoped one fails once its database is gone.
        let server = clickhouse::Client::default().with_url(clickhouse_url());
        for database in [self.name.as_str(), extra_clickhouse] {
            server.query(&format!("DROP DATABASE IF EXISTS `{database}`")).execute().await?;
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
            .execute(&self.admin)
            .await?;
        let _ = std::fs::remove_dir_all(&self.data_dir);
        served.map_err(LoadError::Server)
    }
}

/// A fleet base policy of [`POLICY_RULES`] rules over every action, some of
/// which the synthetic events hit (so drift is found), most of which they
/// do not (so Cedar looks at them all).
pub fn fleet_policy() -> String {
    let mut yaml = String::from("name: load-fleet\ndefault_verdict: allow\nrules:\n");
    let per_action = POLICY_RULES / 5;
    for i in 0..per_action {
        yaml.push_str(&format!(
            "  - name: no-secret-{i}\n    action: file_read\n    paths: [\"/etc/secret_{i}\", \"/srv/keys_{i}/\"]\n    verdict: deny\n    severity: high\n"
        ));
        yaml.push_str(&format!(
            "  - name: no-write-{i}\n    action: file_write\n    paths: [\"/opt/vendor_{i}/\", \"/home/dev/project/src/module_{}.rs\"]\n    verdict: {}\n    severity: medium\n",
            // Writes of the synthetic events hit modules 1, 6, 11, …: these rules match some.
            i * 5 + 1,
            if i % 2 == 0 { "deny" } else { "alert" }
        ));
        yaml.push_str(&format!(
            "  - name: no-tool-{i}\n    action: exec\n    paths: [\"/usr/local/bin/tool_{i}\"]\n    verdict: deny\n    severity: high\n"
        ));
        yaml.push_str(&format!(
            "  - name: no-net-{i}\n    action: net_connect\n    cidr_deny: [\"10.{i}.0.0/16\", \"127.0.0.{}/32\"]\n    verdict: deny\n    severity: high\n",
            200 + i
        ));
        // The last one watches the provider the synthetic TLS events talk to.
        let sni = if i + 1 == per_action {
            "*.openai.com".to_owned()
        } else {
            format!("*.provider{i}.example|api{i}.example.com")
        };
        yaml.push_str(&format!(
            "  - name: watch-llm-{i}\n    action: tls_connect\n    sni_pattern: \"{sni}\"\n    verdict: alert\n    severity: low\n"
        ));
    }
    yaml
}

/// `count` events of one client from seq `first`, stamped now, decided
/// under `policy_version`: the synthetic shapes, with the connect metadata
/// Cedar needs.
pub fn client_events(first: u64, count: usize, policy_version: i64) -> Vec<Event> {
    let now = now_ns();
    let mut events = crate::synthetic_events(count);
    for (offset, event) in (0u64..).zip(events.iter_mut()) {
        let seq = first + offset;
        event.seq = seq;
        event.timestamp_ns = now + i64::try_from(offset).unwrap_or(0) * 1_000;
        event.policy_version = policy_version;
        if event.kind == EventKind::NetConnect as i32
            && let Some((ip, port)) = event.resource.rsplit_once(':')
        {
            event.metadata.insert("remote_ip".to_owned(), ip.to_owned());
            event.metadata.insert("remote_port".to_owned(), port.to_owned());
        }
    }
    events
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn capabilities() -> CapabilityReport {
    CapabilityReport {
        kernel_version: "6.18.0-load".to_owned(),
        arch: "x86_64".to_owned(),
        agent_version: "load-harness".to_owned(),
        hooks: Vec::new(),
        bpf_lsm: true,
        tls_capture: true,
        enforce_file: true,
        enforce_exec: true,
        enforce_net: true,
    }
}

/// When one client sent its first batch and received its last ack.
#[derive(Debug, Clone, Copy)]
struct ClientTimes {
    first_send: Instant,
    last_ack: Instant,
}

/// A client's open stream and its batches, ready to send.
struct Prepared {
    up: mpsc::Sender<AgentMessage>,
    down: tonic::Streaming<tyr_proto::ServerMessage>,
    batches: Vec<EventBatch>,
    /// Expected acks, in order: (batch_id, last seq).
    expected: Vec<(u64, u64)>,
}

/// Opens a client's stream, takes the policy push and builds its batches.
async fn prepare_client(channel: Channel, options: LoadOptions) -> Result<Prepared, LoadError> {
    let (up, receiver) = mpsc::channel::<AgentMessage>(IN_FLIGHT_BATCHES + 4);
    up.send(AgentMessage { payload: Some(Up::Capabilities(capabilities())) })
        .await
        .map_err(|_| LoadError::Protocol("stream closed before the CapabilityReport".to_owned()))?;
    let mut down = AgentServiceClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .stream(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let version = loop {
        match down.message().await?.and_then(|m| m.payload) {
            Some(Down::Policy(push)) => break push.policy_version,
            Some(Down::Ping(_) | Down::Config(_)) => continue,
            other => return Err(LoadError::Protocol(format!("expected a PolicyPush, got {other:?}"))),
        }
    };
    let total = usize::try_from(options.events_per_client).map_err(|_| LoadError::Options("too many events"))?;
    let mut batches = Vec::with_capacity(total.div_ceil(options.batch));
    let mut first = 1u64;
    for (batch_id, chunk_start) in (1u64..).zip((0..total).step_by(options.batch)) {
        let count = options.batch.min(total - chunk_start);
        batches.push(EventBatch { batch_id, events: client_events(first, count, version) });
        first += count as u64;
    }
    let expected = batches.iter().map(|b| (b.batch_id, b.events.last().map_or(0, |e| e.seq))).collect();
    Ok(Prepared { up, down, batches, expected })
}

/// One client: prepares its stream and batches, waits for every client,
/// then streams with up to [`IN_FLIGHT_BATCHES`] unacknowledged batches and
/// checks every ack (in order, covering the batch's last seq).
async fn run_client(channel: Channel, options: LoadOptions, start: Arc<Barrier>) -> Result<ClientTimes, LoadError> {
    // Every client reaches the barrier, failed or not, so that none waits forever.
    let prepared = prepare_client(channel, options).await;
    start.wait().await;
    let Prepared { up, mut down, batches, expected } = prepared?;

    let first_send = Instant::now();
    let mut to_send = batches.into_iter();
    let (mut sent, mut acked) = (0usize, 0usize);
    while acked < expected.len() {
        let may_send = sent < expected.len() && sent - acked < IN_FLIGHT_BATCHES;
        tokio::select! {
            permit = up.reserve(), if may_send => {
                let permit = permit.map_err(|_| LoadError::Protocol("stream closed while sending".to_owned()))?;
                if let Some(batch) = to_send.next() {
                    permit.send(AgentMessage { payload: Some(Up::EventBatch(batch)) });
                    sent += 1;
                }
            }
            message = down.message() => match message?.and_then(|m| m.payload) {
                Some(Down::Ack(ack)) => {
                    let (batch_id, last_seq) = expected[acked];
                    if ack.batch_id != batch_id || ack.acked_seq < last_seq {
                        return Err(LoadError::Protocol(format!(
                            "ack {ack:?} where batch {batch_id} up to seq {last_seq} was next"
                        )));
                    }
                    acked += 1;
                }
                Some(Down::Ping(_) | Down::Config(_) | Down::Policy(_) | Down::Overrides(_)) => {}
                None => return Err(LoadError::Protocol(format!("stream ended after {acked} acks"))),
            },
        }
    }
    Ok(ClientTimes { first_send, last_ack: Instant::now() })
}

/// Builds the same number of rows into Arrow and writes them directly,
/// [`DIRECT_INSERT_ROWS`] per INSERT; returns the time spent building and
/// inserting (generating the events is not counted) and the INSERTs made.
async fn direct_baseline(store: &EventStore, options: LoadOptions) -> Result<(Duration, u64), LoadError> {
    schema::apply(store, 90).await?;
    let mut elapsed = Duration::ZERO;
    let mut inserts = 0u64;
    for _ in 0..options.clients {
        let agent_id = Uuid::now_v7();
        let mut first = 1u64;
        while first <= options.events_per_client {
            let count = (options.events_per_client - first + 1).min(DIRECT_INSERT_ROWS as u64);
            let events = client_events(first, usize::try_from(count).unwrap_or(DIRECT_INSERT_ROWS), 1);
            let started = Instant::now();
            let mut builder = EventBatchBuilder::with_capacity(events.len());
            for event in &events {
                builder
                    .push(StoredEvent { agent_id, event, server_verdict: Verdict::Allow, drift_detected: false })
                    .map_err(|e| LoadError::Mismatch(format!("synthetic event refused by the Arrow builder: {e}")))?;
            }
            let batch = builder.finish();
            store.insert_batches(std::slice::from_ref(&batch)).await?;
            elapsed += started.elapsed();
            inserts += 1;
            first += count;
        }
    }
    Ok((elapsed, inserts))
}

/// Runs the whole harness: server load, then the direct baseline, then the
/// stored counts. The scratch databases are dropped on the way out; the
/// caller checks [`LoadReport::check_exactly_once`].
pub async fn run(options: LoadOptions) -> Result<LoadReport, LoadError> {
    if options.clients == 0 || options.events_per_client == 0 || options.batch == 0 {
        return Err(LoadError::Options("clients, events per client and batch must be positive"));
    }
    if options.batch > 10_000 {
        return Err(LoadError::Options("the server accepts at most 10,000 events per batch"));
    }
    let harness = Harness::start().await?;
    let direct_database = format!("{}_direct", harness.name);
    let outcome = load(&harness, options, &direct_database).await;
    let dropped = harness.stop_and_drop(&direct_database).await;
    let report = outcome?;
    dropped?;
    Ok(report)
}

async fn load(harness: &Harness, options: LoadOptions, direct_database: &str) -> Result<LoadReport, LoadError> {
    // A merge could fold a stored duplicate away: keep every part as inserted.
    harness.store.client().query("SYSTEM STOP MERGES events").execute().await?;
    tyr_server::control_db::policies::set_base(&harness.pool, "fleet-base", &fleet_policy(), None).await?;
    let mut daemons = Vec::with_capacity(options.clients);
    let mut channels = Vec::with_capacity(options.clients);
    for index in 0..options.clients {
        let (id, cert, key) = harness.enroll(index).await?;
        channels.push(harness.channel(Some((&cert, &key))).await?);
        daemons.push(id);
    }
    let rejected_before: u64 = tyr_server::ingest::rejection_counts().iter().map(|(_, n)| n).sum();
    let start = Arc::new(Barrier::new(options.clients));
    let clients: Vec<_> =
        channels.into_iter().map(|channel| tokio::spawn(run_client(channel, options, Arc::clone(&start)))).collect();
    let mut times = Vec::with_capacity(clients.len());
    for client in clients {
        times.push(client.await??);
    }
    let first_send = times.iter().map(|t| t.first_send).min();
    let last_ack = times.iter().map(|t| t.last_ack).max();
    let server_elapsed = match (first_send, last_ack) {
        (Some(first), Some(last)) => last.duration_since(first),
        _ => Duration::ZERO,
    };
    let rejected_batches =
        tyr_server::ingest::rejection_counts().iter().map(|(_, n)| n).sum::<u64>().saturating_sub(rejected_before);

    let direct_store = event_store(direct_database)?;
    let (direct_elapsed, direct_inserts) = direct_baseline(&direct_store, options).await?;
    let direct_rows = schema::event_count(&direct_store).await?;
    let events = options.events_per_client * options.clients as u64;
    if direct_rows != events {
        return Err(LoadError::Mismatch(format!("the direct baseline stored {direct_rows} rows of {events}")));
    }
    let stored = stored_counts(&harness.store, &harness.pool).await?;
    Ok(LoadReport {
        options,
        events,
        server_elapsed,
        direct_elapsed,
        direct_inserts,
        stored,
        daemons,
        rejected_batches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_policy_loads_with_its_hundred_rules() {
        let set = tyr_common::policy::parse_policy("load-fleet", &fleet_policy()).expect("valid policy");
        tyr_common::policy::compile(&set, 1).expect("within kernel limits");
        assert_eq!(fleet_policy().matches("  - name: ").count(), POLICY_RULES);
    }

    #[test]
    fn client_events_are_contiguous_and_evaluable() {
        let events = client_events(101, 50, 3);
        assert!(events.iter().zip(101u64..).all(|(e, seq)| e.seq == seq && e.policy_version == 3));
        let connects: Vec<&Event> = events.iter().filter(|e| e.kind == EventKind::NetConnect as i32).collect();
        assert!(!connects.is_empty());
        assert!(
            connects.iter().all(|e| e.metadata.contains_key("remote_ip") && e.metadata.contains_key("remote_port"))
        );
    }
}
