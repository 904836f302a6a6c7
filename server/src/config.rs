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
