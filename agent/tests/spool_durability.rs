//! The spool across `kill -9`: a child process (this test binary, in the
//! child role selected by an environment variable) appends and acknowledges
//! batches in a loop and is killed with SIGKILL at a random moment; the
//! spool it leaves must reopen with contiguous sequence numbers, every
//! append the child saw return still on disk, and numbering resuming after
//! the highest number used — no number reused, none skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tyr_agent::spool::Spool;
use tyr_proto::Event;

/// Set (to the spool directory) in the child process.
const CHILD_ENV: &str = "TYR_SPOOL_DURABILITY_CHILD";

fn events(n: usize) -> Vec<Event> {
    (0..n).map(|i| Event { resource: format!("event-{i}"), ..Event::default() }).collect()
}

/// The child role: append (and sometimes acknowledge) until killed,
/// printing each append's range once it returned.
#[test]
fn child_role() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let spool = Spool::open(Path::new(&dir), u64::MAX).expect("open spool");
    let mut appended = Vec::new();
    for round in 0u64.. {
        let size = 1 + (round * 7 + 3) as usize % 13;
        let batch = spool.append(events(size)).expect("append");
        println!("appended {} {}", batch.first_seq, batch.last_seq);
        appended.push(batch.last_seq);
        if round % 3 == 2 {
            // Acknowledge up to an older batch's end, sometimes all of them.
            let upto = if round % 9 == 8 { batch.last_seq } else { appended[appended.len() / 2] };
            spool.acknowledge(upto).expect("acknowledge");
            println!("acked {upto}");
        }
    }
}

/// Runs the child until it reported `appends` appends, then SIGKILLs it.
/// Returns the ranges it reported.
fn run_child_and_kill(dir: &Path, appends: usize) -> Vec<(u64, u64)> {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_role", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut ranges = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        // libtest prints "test child_role ... " before the first line, unterminated.
        if let Some(range) = line.split_once("appended ").map(|(_, range)| range) {
            let (first, last) = range.split_once(' ').expect("two numbers");
            ranges.push((first.parse().expect("first"), last.parse().expect("last")));
            if ranges.len() >= appends {
                break;
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    assert!(!status.success(), "the child was killed, not finished");
    ranges
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tyr-spool-kill-{}", uuid::Uuid::new_v4().simple()))
}

#[test]
fn sigkill_mid_append_neither_reuses_nor_skips_numbers() {
    let dir = scratch_dir();
    let mut reported: Vec<(u64, u64)> = Vec::new();
    // Kill after varying numbers of appends (the kill lands at a different
    // point of the append/acknowledge cycle each time).
    for appends in (1..=24).map(|i: usize| (i * 37) % 97 + 1) {
        let before = Spool::open(&dir, u64::MAX).expect("open").stats().last_seq;
        let ranges = run_child_and_kill(&dir, appends);
        assert_eq!(ranges.first().map(|r| r.0), Some(before + 1), "numbering resumes right after the last number");
        for pair in ranges.windows(2) {
            assert_eq!(pair[1].0, pair[0].1 + 1, "contiguous within one run: {pair:?}");
        }
        reported.extend(&ranges);

        let spool = Spool::open(&dir, u64::MAX).expect("reopen after SIGKILL");
        let stats = spool.stats();
        let seen = ranges.last().expect("one append at least").1;
        // Every append that returned is durable; at most one more (in
        // flight when killed, its result never printed) may have landed.
        assert!(stats.last_seq >= seen, "append {seen} returned but last_seq is {}", stats.last_seq);
        assert!(stats.last_seq <= seen + 13, "last_seq {} beyond one batch past {seen}", stats.last_seq);
        assert_eq!(stats.torn_files, 0);

        // What is spooled runs contiguously from the acknowledged number to the last.
        let mut next = stats.acked_seq + 1;
        let mut after = 0;
        while let Some(batch) = spool.next_batch(after).expect("read") {
            assert_eq!(batch.batch_id, next, "no gap between spooled batches");
            for event in &batch.events {
                assert_eq!(event.seq, next, "contiguous within a batch");
                next += 1;
            }
            after = next - 1;
        }
        assert_eq!(next - 1, stats.last_seq, "spooled batches end at the last number used");
        assert_eq!(stats.events, stats.last_seq - stats.acked_seq);
    }
    // Across all runs: no number handed out twice.
    for pair in reported.windows(2) {
        assert!(pair[1].0 > pair[0].1, "number reused across a kill: {pair:?}");
    }
    let spool = Spool::open(&dir, u64::MAX).expect("reopen");
    let last = spool.stats().last_seq;
    assert_eq!(spool.append(events(1)).expect("append").first_seq, last + 1);
    std::fs::remove_dir_all(&dir).expect("clean up");
}
