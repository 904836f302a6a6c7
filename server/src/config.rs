//! Server configuration: command-line flags, each with a `TYR_*` environment
//! override.

use clap::Args;

/// Where the control data lives.
#[derive(Debug, Clone, Args)]
pub struct ControlDbConfig {
    /// PostgreSQL connection URL, e.g. `postgres://tyr:…@127.0.0.1/tyr`.
    #[arg(id = "database_url", long = "database-url", env = "TYR_DATABASE_URL", hide_env_values = true)]
    pub url: String,
    /// Most connections the server holds open to PostgreSQL.
    #[arg(long = "database-max-connections", env = "TYR_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub max_connections: u32,
}

/// Where events are stored.
#[derive(Debug, Clone, Args)]
pub struct EventStoreConfig {
    /// ClickHouse HTTP endpoint: a server or cluster in production, the dev
    /// endpoint in development.
    #[arg(
        id = "clickhouse_url",
        long = "clickhouse-url",
        env = "TYR_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub url: String,
    /// ClickHouse database holding the `events` table.
    #[arg(
        id = "clickhouse_database",
        long = "clickhouse-database",
        env = "TYR_CLICKHOUSE_DATABASE",
        default_value = "tyr"
    )]
    pub database: String,
    /// ClickHouse user.
    #[arg(id = "clickhouse_user", long = "clickhouse-user", env = "TYR_CLICKHOUSE_USER")]
    pub user: Option<String>,
    /// ClickHouse password.
    #[arg(
        id = "clickhouse_password",
        long = "clickhouse-password",
        env = "TYR_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Days an event is kept before ClickHouse drops it (the table's TTL).
    #[arg(long = "events-retention-days", env = "TYR_EVENTS_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub retention_days: u32,
}

/// The server's identity: where its CA lives and the names its serving
/// certificate is for.
#[derive(Debug, Clone, Args)]
pub struct IdentityConfig {
    /// Data directory holding the CA (`ca.key` 0600, `ca.pem`) and the
    /// serving certificate; created (0700) on first boot.
    #[arg(long = "data-dir", env = "TYR_DATA_DIR", default_value = "/var/lib/tyr")]
    pub data_dir: std::path::PathBuf,
    /// Names (DNS names and IP addresses, comma-separated) daemons reach the
    /// server by; the serving certificate is re-issued when they change.
    #[arg(long = "tls-names", env = "TYR_TLS_NAMES", value_delimiter = ',', default_values_t = default_tls_names())]
    pub tls_names: Vec<String>,
}

/// `localhost`, the loopback addresses and this machine's host name.
pub fn default_tls_names() -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).into();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hostname = hostname.trim().to_ascii_lowercase();
    // A host name that is not a valid DNS name is left out rather than
    // failing the boot; `--tls-names` can still name the server.
    let usable = hostname.len() <= 253
        && hostname.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if usable && !names.contains(&hostname) {
        names.push(hostname);
    }
    names
}
