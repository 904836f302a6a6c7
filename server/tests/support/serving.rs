//! A real server in this test process: scratch PostgreSQL and ClickHouse
//! databases, `serve::run` on a loopback port, and clients that enroll and
//! stream over TLS as tyrd does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tyr_proto::agent_service_client::AgentServiceClient;
use tyr_proto::{CapabilityReport, RegisterRequest};
use tyr_server::config::EventStoreConfig;
use tyr_server::event_store::EventStore;
use tyr_server::serve::{Listeners, ServeConfig};
use uuid::Uuid;

/// `serve`'s flags, parsed as the binary parses them.
#[derive(Debug, Parser)]
struct ServeArgs {
    #[command(flatten)]
    config: ServeConfig,
}

/// A server running in this process.
pub struct TestServer {
    /// Where daemons connect.
    pub addr: SocketAddr,
    /// Where `/metrics` is served (a new port after each restart).
    pub metrics_addr: SocketAddr,
    /// Where the REST API is served (a new port after each restart).
    pub rest_addr: SocketAddr,
    /// The data directory (CA).
    pub data_dir: PathBuf,
    /// The scratch control database.
    pub pool: PgPool,
    /// The scratch event store.
    pub store: EventStore,
    /// The configuration it runs with (to start it again).
    pub config: ServeConfig,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    db: super::ScratchDb,
}

impl TestServer {
    /// Starts a server on fresh databases; `extra` are `serve` flags.
    pub async fn start(extra: &[&str]) -> Self {
        let db = super::ScratchDb::create("tyr_serve").await;
        let name = db.name.clone();
        let data_dir = std::env::temp_dir().join(format!("tyr-serve-{}", Uuid::new_v4().simple()));
        let mut args = vec![
            "serve".to_owned(),
            "--grpc-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--metrics-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--rest-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--database-url".to_owned(),
            db.url.clone(),
            "--clickhouse-url".to_owned(),
            super::clickhouse_url(),
            "--clickhouse-database".to_owned(),
            name.clone(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--tls-names".to_owned(),
            "localhost,127.0.0.1".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let config = ServeArgs::try_parse_from(args).expect("serve flags").config;
        let pool = db.pool.clone();
        let store = EventStore::new(&EventStoreConfig {
            url: super::clickhouse_url(),
            database: name.clone(),
            user: None,
            password: None,
            retention_days: 90,
        })
        .expect("event store");
        let mut server = Self {
            addr: "127.0.0.1:0".parse().expect("address"),
            metrics_addr: "127.0.0.1:0".parse().expect("address"),
            rest_addr: "127.0.0.1:0".parse().expect("address"),
            data_dir,
            pool,
            store,
            config,
            shutdown: CancellationToken::new(),
            task: None,
            db,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut config = self.config.clone();
        if self.addr.port() != 0 {
            config.grpc_addr = self.addr;
        }
        let listeners = Listeners::bind(&config).await.expect("bind");
        self.addr = listeners.grpc.local_addr().expect("address");
        self.metrics_addr = listeners.metrics.local_addr().expect("metrics address");
        self.rest_addr = listeners.rest.local_addr().expect("REST address");
        self.shutdown = CancellationToken::new();
        let shutdown = self.shutdown.clone();
        self.task = Some(tokio::spawn(tyr_server::serve::run(config, listeners, shutdown)));
        // Ready once the CA exists and the port answers.
        for _ in 0..300 {
            if self.data_dir.join("ca.pem").exists() && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server did not start");
    }

    /// Stops (drain) and starts again on the same databases and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Cancels and waits for a clean stop (drain).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).expect("ca.pem")
    }

    /// A token for `max_uses` enrollments.
    pub async fn token(&self, max_uses: u32) -> String {
        tyr_server::control_db::tokens::create(
            &self.pool,
            &tyr_server::control_db::audit::Actor::local_admin(),
            Duration::from_secs(3600),
            max_uses,
            "test",
        )
        .await
        .expect("token")
        .token
    }

    /// A TLS channel to the server; with a client identity when given.
    pub async fn channel(&self, identity: Option<&ClientIdentity>) -> Result<Channel, tonic::transport::Error> {
        self.channel_trusting(&self.ca_pem(), identity).await
    }

    /// A TLS channel trusting `ca_pem` for the server.
    pub async fn channel_trusting(
        &self,
        ca_pem: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.addr.port()))
            .expect("endpoint")
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }

    /// Enrolls a daemon with a fresh token.
    pub async fn enroll(&self) -> ClientIdentity {
        let token = self.token(1).await;
        self.enroll_with(&token).await.expect("enroll")
    }

    /// Enrolls with `token`.
    pub async fn enroll_with(&self, token: &str) -> Result<ClientIdentity, tonic::Status> {
        let key = rcgen::KeyPair::generate().expect("key");
        let csr = rcgen::CertificateParams::default().serialize_request(&key).expect("csr");
        let channel = self.channel(None).await.expect("channel");
        let response = AgentServiceClient::new(channel)
            .register(RegisterRequest {
                agent_name: "test-host".to_owned(),
                enrollment_token: token.to_owned(),
                csr_pem: csr.pem().expect("pem").into_bytes(),
                kernel_version: "6.18.0-test".to_owned(),
                arch: "x86_64".to_owned(),
            })
            .await?
            .into_inner();
        Ok(ClientIdentity {
            daemon_id: Uuid::parse_str(&response.agent_id).expect("agent id"),
            cert_pem: String::from_utf8(response.client_cert_pem).expect("pem"),
            key_pem: key.serialize_pem(),
        })
    }

    /// Drops the scratch databases.
    pub async fn drop_now(mut self) {
        self.stop().await;
        self.pool.close().await;
        let _ = self.store.client().query(&format!("DROP DATABASE IF EXISTS `{}`", self.db.name)).execute().await;
        self.db.drop_now().await;
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// What an enrolled daemon holds.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Its id.
    pub daemon_id: Uuid,
    /// Its certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

/// A CapabilityReport as a host without BPF LSM sends it.
pub fn capabilities() -> CapabilityReport {
    CapabilityReport {
        kernel_version: "6.18.0-test".to_owned(),
        arch: "x86_64".to_owned(),
        agent_version: "test".to_owned(),
        hooks: Vec::new(),
        bpf_lsm: false,
        tls_capture: true,
        enforce_file: false,
        enforce_exec: false,
        enforce_net: true,
    }
}
