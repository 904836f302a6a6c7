//! The `tyr` operator CLI: one module per subcommand, clap definitions in
//! `main.rs`.

/// The line `tyr version` prints.
pub fn version_line(server: &str) -> String {
    format!("tyr {} (server {server})", env!("CARGO_PKG_VERSION"))
}
