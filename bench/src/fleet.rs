//! The fleet on one machine, for end-to-end tests and load tools: scratch
//! databases in the development services, a real `tyr-server serve`
//! process, real `tyrd run` processes, and what ClickHouse stored.
//!
//! Everything listens and connects on 127.0.0.1 only.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tyr_server::config::EventStoreConfig;
use tyr_server::event_store::EventStore;

use crate::kernel_vm::workspace_binary;

/// PostgreSQL URL of the development cluster (deploy/dev/setup.sh). Missing
/// is a failure, not a skip.
pub fn database_url() -> String {
    std::env::var("TYR_DATABASE_URL")
        .expect("TYR_DATABASE_URL must be set: run the tests through deploy/test.sh (or source /var/lib/tyr-dev/env)")
}

/// ClickHouse HTTP endpoint (the dev endpoint or a real server).
pub fn clickhouse_url() -> String {
    std::env::var("TYR_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// A free loopback port (bound and released; the race with other
/// processes is accepted in tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A PostgreSQL database and a ClickHouse database no other test uses.
#[derive(Debug)]
pub struct Scratch {
    admin: PgPool,
    /// PostgreSQL URL of the scratch database.
    pub database_url: String,
    postgres_name: String,
    /// ClickHouse database name (created by the server's schema step).
    pub clickhouse_database: String,
}

impl Scratch {
    /// Creates both (the ClickHouse one is created by `tyr-server serve`).
    pub async fn create(prefix: &str) -> Self {
        let admin_options = PgConnectOptions::from_str(&database_url()).expect("valid TYR_DATABASE_URL");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin_options.clone())
            .await
            .expect("PostgreSQL must be running (deploy/dev/setup.sh starts it)");
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        // Identifiers cannot be bound; the name is generated above.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create scratch database");
        let base = database_url();
        let database_url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("TYR_DATABASE_URL has no database part: {base}"),
        };
        Self { admin, database_url, postgres_name: name.clone(), clickhouse_database: name }
    }

    /// A pool on the scratch PostgreSQL database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new().max_connections(4).connect(&self.database_url).await.expect("connect to scratch database")
    }

    /// The ClickHouse database as a store.
    pub fn event_store(&self) -> EventStore {
        self.event_store_at(&clickhouse_url())
    }

    /// The ClickHouse database as a store, on the endpoint at `url` (a
    /// private [`ClickHouseEndpoint`] rather than the shared one).
    pub fn event_store_at(&self, url: &str) -> EventStore {
        EventStore::new(&EventStoreConfig {
            url: url.to_owned(),
            database: self.clickhouse_database.clone(),
            user: None,
            password: None,
            retention_days: 90,
        })
        .expect("event store")
    }

    /// Drops both databases.
    pub async fn drop_now(self) {
        let store = self.event_store();
        let _ =
            store.client().query(&format!("DROP DATABASE IF EXISTS `{}`", self.clickhouse_database)).execute().await;
        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.postgres_name)))
            .execute(&self.admin)
            .await;
    }
}

/// Lines a child process wrote to stderr, kept for assertions and failure messages.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn follow(&self, child: &mut Child, prefix: &'static str) {
        let Some(stderr) = child.stderr.take() else { return };
        let lines = Arc::clone(&self.0);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("TYR_TEST_VERBOSE").is_some() {
                    eprintln!("[{prefix}] {line}");
                }
                lines.lock().expect("log lock").push(line);
            }
        });
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        self.0.lock().expect("log lock").join("\n")
    }

    /// Waits until a line contains `needle`; false on timeout.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.0.lock().expect("log lock").iter().any(|l| l.contains(needle)))
    }
}

/// Polls an async `done` every 200 ms until it holds or `timeout` passes.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh directory under the system temp dir.
pub fn work_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// Writes `text` to `dir/name`; the path as a string (for command lines).
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

/// Polls `done` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process of the harness, killed when dropped (a leftover tyrd
/// would go on enforcing its policy on this host).
#[derive(Debug, Default)]
struct Running(Option<Child>);

impl Running {
    /// SIGKILL: no drain, no flush.
    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` (SIGKILL after it); the exit status.
    fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        signal(&child, libc::SIGTERM);
        let status = wait_exit(&mut child, timeout);
        if status.is_none() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `tyr-server serve`.
#[derive(Debug)]
pub struct Server {
    binary: PathBuf,
    child: Running,
    env: Vec<(String, String)>,
    /// Where daemons connect.
    pub grpc_addr: SocketAddr,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Where operators (`tyr`) reach the REST API.
    pub rest_addr: SocketAddr,
    /// The server's data directory (CA, keys).
    pub data_dir: PathBuf,
    /// stderr of the current process.
    pub log: Log,
}

impl Server {
    /// Starts a server on a free loopback port with its data in `data_dir`.
    pub fn start(scratch: &Scratch, data_dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        let binary = workspace_binary("tyr-server", "tyr-server").expect("tyr-server binary");
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let rest_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let mut env = vec![
            ("TYR_DATABASE_URL".to_owned(), scratch.database_url.clone()),
            ("TYR_CLICKHOUSE_URL".to_owned(), clickhouse_url()),
            ("TYR_CLICKHOUSE_DATABASE".to_owned(), scratch.clickhouse_database.clone()),
            ("TYR_DATA_DIR".to_owned(), data_dir.display().to_string()),
            ("TYR_GRPC_ADDR".to_owned(), grpc_addr.to_string()),
            ("TYR_METRICS_ADDR".to_owned(), metrics_addr.to_string()),
            ("TYR_REST_ADDR".to_owned(), rest_addr.to_string()),
            ("TYR_TLS_NAMES".to_owned(), "localhost,127.0.0.1".to_owned()),
            ("TYR_LOG".to_owned(), "info,tyr_server=debug".to_owned()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut server = Self {
            binary,
            child: Running::default(),
            env,
            grpc_addr,
            metrics_addr,
            rest_addr,
            data_dir: data_dir.to_path_buf(),
            log: Log::default(),
        };
        server.spawn();
        server
    }

    /// A `tyr-server` command with this server's configuration.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs `tyr-server ARGS` and parses its stdout as JSON; panics on failure.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.command().args(args).output().expect("run tyr-server");
        assert!(out.status.success(), "tyr-server {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("tyr-server {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// The server URL daemons are given.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_addr.port())
    }

    /// The REST API's URL operators (`tyr login --server`) are given.
    pub fn rest_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.rest_addr.port())
    }

    fn spawn(&mut self) {
        self.log = Log::default();
        let mut child =
            self.command().arg("serve").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        self.log.follow(&mut child, "tyr-server");
        let ready = wait_until(Duration::from_secs(60), || {
            TcpStream::connect_timeout(&self.grpc_addr, Duration::from_millis(200)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        assert!(ready && child.try_wait().ok().flatten().is_none(), "tyr-server did not start:\n{}", self.log.text());
        self.child = Running(Some(child));
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGTERM and wait for the drain; the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.child.terminate(Duration::from_secs(60))
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

/// An enrollment token as `tyr-server token create` printed it.
#[derive(Debug, Clone)]
pub struct Token {
    /// `<id>.<secret>`.
    pub token: String,
    /// `sha256:<hex>` of the server CA.
    pub ca_pin: String,
}

impl Token {
    /// `tyr-server token create --expires-hours 1 --max-uses N`.
    pub fn create(server: &Server, max_uses: u32) -> Self {
        let created =
            server.cli_json(&["token", "create", "--expires-hours", "1", "--max-uses", &max_uses.to_string()]);
        let field = |name: &str| created[name].as_str().unwrap_or_else(|| panic!("no {name} in {created}")).to_owned();
        Self { token: field("token"), ca_pin: field("ca_pin") }
    }
}

/// A running `tyrd run`.
#[derive(Debug)]
pub struct Daemon {
    binary: PathBuf,
    child: Running,
    args: Vec<String>,
    /// tyrd's state directory (identity, spool, sequence).
    pub state_dir: PathBuf,
    /// stderr of the current process.
    pub log: Log,
}

impl Daemon {
    /// Starts `tyrd run --server URL --state-dir DIR ARGS...`.
    pub fn start(server: &Server, state_dir: &Path, args: &[&str]) -> Self {
        let binary = workspace_binary("tyr-agent", "tyrd").expect("tyrd binary");
        let mut all = vec!["run".to_owned(), "--server".to_owned(), server.url()];
        all.extend(["--state-dir".to_owned(), state_dir.display().to_string()]);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let mut daemon = Self {
            binary,
            child: Running::default(),
            args: all,
            state_dir: state_dir.to_path_buf(),
            log: Log::default(),
        };
        daemon.spawn();
        daemon
    }

    /// Starts it with an enrollment token and the CA pin it came with.
    pub fn enroll(server: &Server, state_dir: &Path, token: &Token, args: &[&str]) -> Self {
        let mut all = vec!["--token", &token.token, "--ca-pin", &token.ca_pin];
        all.extend_from_slice(args);
        Self::start(server, state_dir, &all)
    }

    fn spawn(&mut self) {
        self.log = Log::default();
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .env("TYR_LOG", "info,tyr_agent=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tyrd");
        self.log.follow(&mut child, "tyrd");
        self.child = Running(Some(child));
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.0.as_mut().and_then(|c| wait_exit(c, timeout))
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// SIGTERM and wait.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.child.terminate(Duration::from_secs(30))
    }

    /// Starts it again with the same arguments (and state).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// The daemon id tyrd stored after enrolling.
    pub fn daemon_id(&self) -> Option<uuid::Uuid> {
        let text = std::fs::read_to_string(self.state_dir.join("daemon_id")).ok()?;
        uuid::Uuid::parse_str(text.trim()).ok()
    }
}

/// The per-host sequence numbers ClickHouse holds for `daemon`, sorted,
/// duplicates kept (so a duplicate shows).
pub async fn stored_seqs(store: &EventStore, daemon: uuid::Uuid) -> Vec<u64> {
    store
        .client()
        .query("SELECT seq FROM events WHERE agent_id = toUUID(?) ORDER BY seq")
        .bind(daemon.to_string())
        .fetch_all::<u64>()
        .await
        .unwrap_or_default()
}

/// The daemon's row in `tyr-server daemon list` (None: not listed).
pub fn daemon_row(server: &Server, daemon: uuid::Uuid) -> Option<serde_json::Value> {
    let id = daemon.to_string();
    match server.cli_json(&["daemon", "list"]) {
        serde_json::Value::Array(rows) => rows.into_iter().find(|row| row["id"].as_str() == Some(id.as_str())),
        other => panic!("daemon list is not an array: {other}"),
    }
}

/// A private ClickHouse dev endpoint (`deploy/dev/clickhouse_dev_endpoint.py`)
/// on its own loopback port and data directory, for tests that stop
/// ClickHouse without disturbing the shared endpoint other tests use.
#[derive(Debug)]
pub struct ClickHouseEndpoint {
    child: Running,
    /// Its loopback port, kept across restarts.
    pub port: u16,
    /// Its chDB data directory, kept across restarts.
    pub data_dir: PathBuf,
    /// stderr of the current process.
    pub log: Log,
}

impl ClickHouseEndpoint {
    /// Starts one on a free port with its data in `data_dir`; returns once it accepts connections.
    pub fn start(data_dir: &Path) -> Self {
        std::fs::create_dir_all(data_dir).expect("clickhouse data dir");
        let mut endpoint = Self {
            child: Running::default(),
            port: free_port(),
            data_dir: data_dir.to_path_buf(),
            log: Log::default(),
        };
        endpoint.spawn();
        endpoint
    }

    /// Its HTTP URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let home = std::env::var("TYR_DEV_HOME").unwrap_or_else(|_| "/var/lib/tyr-dev".to_owned());
        let python = Path::new(&home).join("venv/bin/python");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev/clickhouse_dev_endpoint.py");
        self.log = Log::default();
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (deploy/dev/setup.sh installs it): {e}", python.display()));
        self.log.follow(&mut child, "clickhouse");
        // The engine opens its data before the HTTP server binds: a connect means ready.
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let ready = wait_until(Duration::from_secs(60), || {
            TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
                || child.try_wait().ok().flatten().is_some()
        });
        assert!(
            ready && child.try_wait().ok().flatten().is_none(),
            "the private ClickHouse dev endpoint did not start:\n{}",
            self.log.text()
        );
        self.child = Running(Some(child));
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.child.kill9();
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

/// The operators' CLI, `tyr`, with a private HOME and XDG_CONFIG_HOME: its
/// saved login (server, CA, session) lives in that directory only, and
/// `TYR_SERVER`/`TYR_TOKEN`/`TYR_CA_FILE` of the test's environment are
/// not passed on.
#[derive(Debug)]
pub struct OperatorCli {
    binary: PathBuf,
    /// The private home directory.
    pub home: PathBuf,
}

impl OperatorCli {
    /// A `tyr` whose home is `home` (created).
    pub fn new(home: &Path) -> Self {
        let binary = workspace_binary("tyr-cli", "tyr").expect("tyr binary");
        std::fs::create_dir_all(home.join(".config")).expect("tyr home");
        Self { binary, home: home.to_path_buf() }
    }

    /// A `tyr ARGS` command in the private home.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env_remove("TYR_SERVER")
            .env_remove("TYR_TOKEN")
            .env_remove("TYR_CA_FILE");
        command
    }

    /// Runs `tyr ARGS` with `stdin` as its standard input.
    pub fn run(&self, args: &[&str], stdin: &str) -> std::process::Output {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tyr");
        if let Some(mut input) = child.stdin.take() {
            // tyr may exit before reading (a login refused before the
            // password is asked for): a closed pipe is not a failure here.
            if let Err(error) = input.write_all(stdin.as_bytes()) {
                assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "write tyr's stdin: {error}");
            }
        }
        child.wait_with_output().expect("tyr runs")
    }

    /// Runs `tyr ARGS --format json`, asserts exit 0 and parses each line of
    /// stdout as JSON.
    pub fn json_lines(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let output = self.run(&all, "");
        assert_eq!(output.status.code(), Some(0), "tyr {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("tyr {args:?} printed no JSON ({e}): {line}"))
            })
            .collect()
    }
}
