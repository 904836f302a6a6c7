//! Load harness: the cost of `open()`+`close()` in the kernel VM (real BPF
//! LSM, where tyrd decides every open) with `tyrd observe` enforcing a
//! 100-rule file policy vs without tyrd, in alternating rounds within one
//! boot; prints each round's ratio and the median. The VM is emulated
//! (TCG), so absolute times are far from a real host's; the ratio is the
//! figure.
//!
//!     cargo run --release -p tyr-bench --bin vm_open_overhead [PAIRS] [ROUNDS]

use std::fmt::Write as _;
use std::time::Duration;

use tyr_bench::kernel_vm::{Image, boot, compile_probe, debian_kernel, result_lines, tyrd_binary};

/// 100 file rules: directory prefixes, exact paths and globs spread over
/// the tree the benchmarked file lives in, so lookups walk a real trie.
fn hundred_rule_policy() -> String {
    let mut policy = String::from("name: bench-100\ndefault_verdict: allow\nrules:\n");
    for i in 0..100 {
        let (action, path) = match i % 4 {
            0 => ("file_read", format!("/work/d{i}/")),
            1 => ("file_write", format!("/work/bench/other-{i}")),
            2 => ("file_read", format!("/work/bench/*.secret{i}")),
            _ => ("exec", format!("/work/tools/t{i}")),
        };
        let verdict = if i % 3 == 0 { "alert" } else { "deny" };
        let _ =
            write!(policy, "  - name: r{i}\n    action: {action}\n    paths: [\"{path}\"]\n    verdict: {verdict}\n");
    }
    policy
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let pairs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);

    let work = std::env::temp_dir().join(format!("tyr-vm-open-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let image = Image::new(&work)?;
    image.add_executable(&tyrd_binary()?, "/bin/tyrd")?;
    image.add_file("/bin/probe", &std::fs::read(compile_probe(&work)?)?, 0o755)?;
    image.add_file("/policy.yaml", hundred_rule_policy().as_bytes(), 0o644)?;
    // /work/d4/ is denied by rule r4: each round with tyrd proves it was
    // enforcing in the kernel (a tyrd whose BPF LSM failed to load would
    // measure the tracepoint fallback instead).
    let mut script =
        String::from("mkdir -p /work/bench /work/d4 /var/lib/tyr; echo x > /work/bench/file; echo x > /work/d4/x\n");
    for round in 0..rounds {
        let _ = write!(
            script,
            "echo TYR-VM round n={round} mode=without; probe bench {pairs} /work/bench/file
tyrd observe --state-dir /var/lib/tyr --kind exec --policy /policy.yaml > /dev/null 2> /log{round}.txt &
T=$!; i=0; while ! grep -q 'tyrd: observing' /log{round}.txt && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done
echo TYR-VM round n={round} mode=with; probe bench {pairs} /work/bench/file; probe open /work/d4/x
kill -INT $T; wait $T\n"
        );
    }
    let initrd = work.join("initrd.gz");
    image.pack(&script, &initrd)?;
    let console = boot(&debian_kernel()?, &initrd, Duration::from_secs(600))?;

    // Lines alternate: a round marker, then its bench result.
    let lines = result_lines(&console);
    let mut ratios = Vec::new();
    let mut without = None;
    let mut mode = "";
    for line in &lines {
        match line.test.as_str() {
            "round" => mode = if line.fields.get("mode").is_some_and(|m| m == "with") { "with" } else { "without" },
            "bench" => {
                let ns = line.num("ns_per_pair").unwrap_or(0) as f64;
                if mode == "without" {
                    without = Some(ns);
                } else if let Some(base) = without.take() {
                    let ratio = ns / base;
                    println!(
                        "round {}: {base:.0} ns per open+close without tyrd, {ns:.0} with; ratio {ratio:.3}",
                        ratios.len()
                    );
                    ratios.push(ratio);
                }
            }
            _ => {}
        }
    }
    let enforced = lines.iter().filter(|l| l.test == "open" && l.num("errno") == Some(1)).count();
    if enforced != rounds {
        eprintln!("tyrd refused the denied open in {enforced} of {rounds} rounds: not enforcing; console:\n{console}");
        std::process::exit(1);
    }
    if ratios.is_empty() {
        eprintln!("no results; console:\n{console}");
        std::process::exit(1);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median cost ratio (open+close with tyrd enforcing 100 rules / without), in the VM: {:.3}",
        ratios[ratios.len() / 2]
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
