//! Server ingest under load, end to end: a real server in this process,
//! N enrolled clients streaming over mTLS on loopback, beside a direct
//! Arrow `insert_batches` of the same rows; prints both rates, their ratio
//! and the server's stored counters, and fails unless ClickHouse holds
//! every event exactly once.
//!
//! `cargo run --release -p tyr-bench --bin fleet_ingest_load -- [--clients N] [--events-per-client M] [--batch B]`
//! (source /var/lib/tyr-dev/env first).

use anyhow::Context;
use clap::Parser;
use tyr_bench::ingest_load::{self, LoadOptions};

/// Flags of the harness.
#[derive(Debug, Parser)]
#[command(about = "Server ingest load through mTLS gRPC versus a direct ClickHouse insert")]
struct Args {
    /// Enrolled clients, one stream each.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// Events each client sends.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events_per_client: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = LoadOptions {
        clients: args.clients as usize,
        events_per_client: args.events_per_client,
        batch: args.batch as usize,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = runtime.block_on(ingest_load::run(options)).context("running the load")?;
    print!("{report}");
    report.check_exactly_once().context("checking what ClickHouse stored")?;
    println!("exactly once: {} rows, each (agent_id, seq) once", report.stored.rows);
    Ok(())
}
