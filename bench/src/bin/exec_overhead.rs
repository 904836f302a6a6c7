//! Load harness: exec throughput with `tyrd observe` running vs without,
//! alternating rounds in one run so machine noise hits both sides alike.
//! Needs root (tyrd loads eBPF programs).
//!
//! Usage: cargo run --release -p tyr-bench --bin exec_overhead -- [TYRD_PATH] [EXECS_PER_ROUND] [ROUNDS]
//! (defaults: target/release/tyrd, 2000, 5)

use std::process::Command;
use std::time::Instant;

use tyr_bench::tyrd_process;

fn execs_per_second(execs: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..execs {
        // Under `cargo run`, LD_LIBRARY_PATH lists cargo's build directories:
        // every exec would probe them for its libraries, opens a plain exec
        // does not make, and the harness would measure cargo's environment.
        let status = Command::new("/bin/true").env_remove("LD_LIBRARY_PATH").status().expect("run /bin/true");
        assert!(status.success());
    }
    f64::from(execs) / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tyrd = args.get(1).cloned().unwrap_or_else(|| "target/release/tyrd".to_owned());
    let execs: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: u32 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5);
    let state_dir = std::env::temp_dir().join(format!("tyr-exec-overhead-{}", std::process::id()));

    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let without = execs_per_second(execs);
        let tyrd_process = tyrd_process::start(&tyrd, &state_dir, &[]);
        let with = execs_per_second(execs);
        tyrd_process::stop(tyrd_process);
        let ratio = without / with;
        println!("round {round}: {without:.0} execs/s without tyrd, {with:.0} with; cost ratio {ratio:.3}");
        ratios.push(ratio);
    }
    println!("median cost ratio (time per exec with tyrd / without): {:.3}", median(&mut ratios));
    let _ = std::fs::remove_dir_all(&state_dir);
}
