//! Exactly once across the fleet link, with the real binaries on this host
//! (issue 10, acceptance "Exactly once", cases a–e): a `tyrd run` streams
//! under load (this process opens a file thousands of times a second, and
//! tyrd captures every process) while one part of the chain fails, and
//! afterwards ClickHouse holds the daemon's per-host sequence exactly:
//! every number from 1 up to the last one tyrd used before the check, once,
//! with distinct event ids — except, in (e), exactly the events tyrd's
//! bounded spool evicted, which the server counts as the daemon's gap.
//!
//! Merges of the events table are stopped in every scenario: it is a
//! ReplacingMergeTree, and a background merge would hide a stored duplicate.
//!
//! The scenarios run one at a time (a process-wide lock): (c) restarts the
//! shared PostgreSQL cluster, and every scenario loads the host. Loopback only.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tyr_bench::fleet::{
    ClickHouseEndpoint, Daemon, Scratch, Server, Token, clickhouse_url, daemon_row, wait_until, wait_until_async,
    work_dir, write_file,
};
use tyr_bench::load::{OpenLoad, SeqCoverage, SpoolPosition, seq_coverage};
use tyr_server::event_store::EventStore;
use uuid::Uuid;

/// One scenario at a time in this process.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// File opens per second the load thread makes.
const LOAD_PER_SECOND: u64 = 3000;

/// Sequence numbers acknowledged before a scenario breaks something: the
/// stream is really flowing.
const WARM_UP_SEQ: u64 = 1500;

/// How long the daemon may take to have everything up to the chosen last
/// seq acknowledged once the failure is over.
const SETTLE: Duration = Duration::from_secs(90);

/// A policy in force (so tyrd reports a version once its stream is up); it
/// denies only an address nothing here connects to.
const POLICY: &str = "\
name: exactly-once
default_verdict: allow
rules:
  - name: deny-127-0-0-166
    action: net_connect
    cidr_deny: [\"127.0.0.166/32\"]
    verdict: deny
    severity: high
";

/// A server, one enrolled tyrd streaming to it, and where its events land.
struct Fleet {
    scratch: Scratch,
    work: PathBuf,
    server: Server,
    daemon: Daemon,
    daemon_id: Uuid,
    store: EventStore,
    clickhouse: Option<ClickHouseEndpoint>,
    started: Instant,
}

/// The last `n` lines of a log, without the per-batch debug lines.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.contains("batch acknowledged") && !l.contains("events committed")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops merges on the events table (retried until the server created it).
async fn stop_merges(store: &EventStore) {
    let stopped = wait_until_async(Duration::from_secs(30), || async {
        store.client().query("SYSTEM STOP MERGES events").execute().await.is_ok()
    })
    .await;
    assert!(stopped, "could not stop merges on the events table");
}

impl Fleet {
    /// A fresh server (heartbeats every second) on the shared ClickHouse or
    /// on `clickhouse`, a policy, and a tyrd enrolled with `tyrd_args`,
    /// streaming with that policy in force.
    async fn start(prefix: &str, clickhouse: Option<ClickHouseEndpoint>, tyrd_args: &[&str]) -> Self {
        let started = Instant::now();
        let scratch = Scratch::create(prefix).await;
        let work = work_dir(prefix);
        let url = clickhouse.as_ref().map_or_else(clickhouse_url, ClickHouseEndpoint::url);
        let server = Server::start(
            &scratch,
            &work.join("server"),
            &[("TYR_HEARTBEAT_INTERVAL_S", "1"), ("TYR_BATCH_MAX_EVENTS", "500"), ("TYR_CLICKHOUSE_URL", &url)],
        );
        let store = scratch.event_store_at(&url);
        stop_merges(&store).await;
        let token = Token::create(&server, 1);
        server.cli_json(&["policy", "set", "--file", &write_file(&work, "policy.yaml", POLICY)]);
        let mut args = vec!["--batch-max-events", "500"];
        args.extend_from_slice(tyrd_args);
        let daemon = Daemon::enroll(&server, &work.join("tyrd"), &token, &args);
        let streaming = wait_until(Duration::from_secs(90), || {
            daemon
                .daemon_id()
                .and_then(|id| daemon_row(&server, id))
                .is_some_and(|row| row["applied_policy_version"].as_i64().unwrap_or(0) > 0)
        });
        assert!(
            streaming,
            "tyrd never reported the policy in force\ntyrd:\n{}\nserver:\n{}",
            tail(&daemon.log.text(), 100),
            tail(&server.log.text(), 100)
        );
        let daemon_id = daemon.daemon_id().expect("daemon id stored");
        println!("{prefix}: streaming after {:?}", started.elapsed());
        Self { scratch, work, server, daemon, daemon_id, store, clickhouse, started }
    }

    /// The ends of the logs, for failure messages.
    fn logs(&self) -> String {
        let clickhouse = self.clickhouse.as_ref().map(|c| tail(&c.log.text(), 40)).unwrap_or_default();
        format!(
            "\n--- tyrd ---\n{}\n--- tyr-server ---\n{}\n--- clickhouse ---\n{clickhouse}",
            tail(&self.daemon.log.text(), 150),
            tail(&self.server.log.text(), 150)
        )
    }

    /// tyrd's spool as its files show it.
    fn spool(&self) -> SpoolPosition {
        SpoolPosition::read(&self.daemon.state_dir)
    }

    /// The daemon's row in `tyr-server daemon list`.
    fn row(&self) -> serde_json::Value {
        daemon_row(&self.server, self.daemon_id).unwrap_or_else(|| panic!("daemon not listed{}", self.logs()))
    }

    /// Waits until tyrd's acknowledged position reaches `seq`.
    fn wait_acked(&self, seq: u64, timeout: Duration, what: &str) {
        let reached = wait_until(timeout, || self.spool().acked >= seq);
        assert!(
            reached,
            "{what}: acked {} never reached {seq}; spool {:?}{}",
            self.spool().acked,
            self.spool(),
            self.logs()
        );
    }

    /// Once the load has stopped: picks the last seq tyrd used, waits until
    /// the server acknowledged it (so ClickHouse committed everything up to
    /// it), and reads what ClickHouse holds up to there.
    async fn settle(&self) -> (u64, SeqCoverage) {
        let last = self.spool().last_seq();
        self.wait_acked(last, SETTLE, "settling");
        let coverage = seq_coverage(&self.store, self.daemon_id, last)
            .await
            .unwrap_or_else(|e| panic!("reading ClickHouse: {e}{}", self.logs()));
        (last, coverage)
    }

    /// Asserts that `1..=last` is stored exactly once, with no gap reported.
    fn assert_exactly_once(&self, last: u64, coverage: &SeqCoverage, opens: u64) {
        println!("stored up to seq {last}: {coverage:?}; {opens} opens of load");
        assert!(last >= WARM_UP_SEQ && opens > 0, "the scenario ran under load: last seq {last}, {opens} opens");
        assert!(coverage.missing.is_empty(), "seqs missing in ClickHouse: {:?}{}", coverage.missing, self.logs());
        assert!(coverage.no_duplicates(), "duplicates in ClickHouse: {coverage:?}{}", self.logs());
        assert!(coverage.max_seq >= last, "{coverage:?}");
        let row = self.row();
        assert_eq!(row["seq_gap_events"].as_i64(), Some(0), "the server counted a gap: {row}{}", self.logs());
        assert_eq!(row["drops"]["spool_evicted"].as_u64().unwrap_or(0), 0, "tyrd evicted: {row}");
    }

    /// Stops the processes and drops the databases.
    async fn finish(mut self) {
        println!("scenario done after {:?}", self.started.elapsed());
        self.daemon.terminate();
        self.server.kill9();
        drop(self.clickhouse.take());
        self.scratch.drop_now().await;
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Starts the load against a file in the fleet's work directory.
fn load(fleet: &Fleet) -> OpenLoad {
    OpenLoad::start(&fleet.work.join("load.txt"), LOAD_PER_SECOND)
}

/// (a) `kill -9` of tyr-server mid-stream, restarted 10 s later on the same
/// port and data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_stream() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("tyr_eo_server", None, &[]).await;
    let mut load = load(&fleet);
    fleet.wait_acked(WARM_UP_SEQ, Duration::from_secs(60), "warm-up");
    // Mid-stream: batches spooled and not yet acknowledged.
    let mid = wait_until(Duration::from_secs(10), || !fleet.spool().batches.is_empty());
    assert!(mid, "nothing in flight under load{}", fleet.logs());
    fleet.server.kill9();
    let at_kill = fleet.spool();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before_restart = fleet.spool();
    assert!(before_restart.last_seq() > at_kill.last_seq(), "tyrd kept spooling while the server was down");
    fleet.server.restart();
    // The replay of what piled up, while the load goes on.
    fleet.wait_acked(before_restart.last_seq(), Duration::from_secs(60), "replay after the restart");
    let opens = load.stop();
    let (last, coverage) = fleet.settle().await;
    println!(
        "server killed with {} events unacknowledged, {} piled up while down",
        at_kill.spooled_events(),
        before_restart.spooled_events()
    );
    fleet.assert_exactly_once(last, &coverage, opens);
    fleet.finish().await;
}

/// (b) ClickHouse (a private dev endpoint) stopped for 30 s under load:
/// nothing is acknowledged while it is down, tyrd's spool grows, and after
/// it is back on the same port and data everything is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_30_s() {
    let _serial = SERIAL.lock().await;
    let clickhouse_dir = work_dir("tyr-eo-clickhouse");
    let endpoint = ClickHouseEndpoint::start(&clickhouse_dir);
    let mut fleet = Fleet::start("tyr_eo_clickhouse", Some(endpoint), &[]).await;
    let mut load = load(&fleet);
    fleet.wait_acked(WARM_UP_SEQ, Duration::from_secs(60), "warm-up");
    fleet.clickhouse.as_mut().expect("private endpoint").kill9();
    // Acknowledgements of inserts committed before the kill may still be on their way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down = fleet.spool();
    let mut highest_acked = down.acked;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(29);
    while tokio::time::Instant::now() < deadline {
        highest_acked = highest_acked.max(fleet.spool().acked);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_restart = fleet.spool();
    assert_eq!(
        highest_acked,
        down.acked,
        "acknowledged while ClickHouse was down (from {} to {highest_acked}){}",
        down.acked,
        fleet.logs()
    );
    assert!(
        before_restart.spooled_events() > down.spooled_events() + LOAD_PER_SECOND,
        "the spool grew while ClickHouse was down: {down:?} then {before_restart:?}"
    );
    assert!(fleet.server.log.text().contains("events insert failed"), "the server retried{}", fleet.logs());
    fleet.clickhouse.as_mut().expect("private endpoint").restart();
    stop_merges(&fleet.store).await;
    fleet.wait_acked(before_restart.last_seq(), Duration::from_secs(90), "catching up after ClickHouse came back");
    let opens = load.stop();
    let (last, coverage) = fleet.settle().await;
    println!("{} events unacknowledged when ClickHouse came back", before_restart.spooled_events());
    fleet.assert_exactly_once(last, &coverage, opens);
    fleet.finish().await;
    let _ = std::fs::remove_dir_all(&clickhouse_dir);
}

/// (c) PostgreSQL restarted while tyrd streams under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_while_streaming() {
    let _serial = SERIAL.lock().await;
    let fleet = Fleet::start("tyr_eo_postgres", None, &[]).await;
    let mut load = load(&fleet);
    fleet.wait_acked(WARM_UP_SEQ, Duration::from_secs(60), "warm-up");
    let restart = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", "15", "main", "restart"])
        .output()
        .expect("run pg_ctlcluster");
    assert!(restart.status.success(), "PostgreSQL restart failed: {}", String::from_utf8_lossy(&restart.stderr));
    let after_restart = fleet.spool();
    let last_seen = fleet.row()["last_seen_at"].clone();
    fleet.wait_acked(after_restart.last_seq(), Duration::from_secs(60), "streaming after the PostgreSQL restart");
    // Heartbeats are recorded again.
    let seen = wait_until(Duration::from_secs(30), || fleet.row()["last_seen_at"] != last_seen);
    assert!(seen, "no heartbeat recorded after the PostgreSQL restart{}", fleet.logs());
    let opens = load.stop();
    let (last, coverage) = fleet.settle().await;
    fleet.assert_exactly_once(last, &coverage, opens);
    fleet.finish().await;
}

/// (d) `kill -9` of tyrd under load, restarted with the same state: it
/// resumes its sequence (no number reused, none skipped) and replays its
/// spool, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tyrd_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("tyr_eo_tyrd", None, &[]).await;
    let mut load = load(&fleet);
    fleet.wait_acked(WARM_UP_SEQ, Duration::from_secs(60), "warm-up");
    let mid = wait_until(Duration::from_secs(10), || !fleet.spool().batches.is_empty());
    assert!(mid, "nothing in flight under load{}", fleet.logs());
    fleet.daemon.kill9();
    let at_kill = fleet.spool();
    fleet.daemon.restart();
    // Everything the killed process numbered is replayed and acknowledged,
    // and the new process streams on past it.
    fleet.wait_acked(at_kill.last_seq() + 1, Duration::from_secs(90), "after the tyrd restart");
    let opens = load.stop();
    let (last, coverage) = fleet.settle().await;
    println!("tyrd killed at seq {} with {} events unacknowledged", at_kill.last_seq(), at_kill.spooled_events());
    assert!(fleet.daemon.exited().is_none(), "the restarted tyrd runs{}", fleet.logs());
    assert_eq!(fleet.daemon.daemon_id(), Some(fleet.daemon_id), "same identity after the restart");
    fleet.assert_exactly_once(last, &coverage, opens);
    fleet.finish().await;
}

/// (e) A 4 MiB spool overflowing while the server is down (stopped, load
/// generated, load stopped, restarted): after the drain the server's gap
/// count for the daemon equals the evictions tyrd reports in its
/// heartbeat, and ClickHouse holds exactly `1..=last` minus them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_overflow_while_server_down() {
    spool_overflow(false).await;
}

/// (e), stricter: the load goes on while the overflowed spool drains, so
/// the spool stays over its bound while batches are on the wire: tyrd must
/// evict only batches not sent, and count exactly what the server never got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_overflow_with_load_during_drain() {
    spool_overflow(true).await;
}

/// File opens per second in (e): the spool must not reach its bound while
/// the server is up, only while it is down.
const SPOOL_LOAD_PER_SECOND: u64 = 1000;

async fn spool_overflow(load_during_drain: bool) {
    let _serial = SERIAL.lock().await;
    let mut fleet = Fleet::start("tyr_eo_spool", None, &["--spool-max-mb", "4"]).await;
    let mut load = OpenLoad::start(&fleet.work.join("load.txt"), SPOOL_LOAD_PER_SECOND);
    fleet.wait_acked(WARM_UP_SEQ, Duration::from_secs(60), "warm-up");
    // SIGTERM: the server drains, so every batch it stored was acknowledged.
    // (After a kill -9 a batch stored but not yet acknowledged could be
    // evicted later and counted by tyrd as lost although it is stored.)
    fleet.server.terminate();
    let at_stop = fleet.spool();
    // Overflow: the oldest batches not on the wire go, so a hole opens in the
    // spool after the acknowledged position (batches sent before the stop
    // are spared until the server says whether it holds them).
    let overflowed = wait_until(Duration::from_secs(60), || {
        let spool = fleet.spool();
        let mut next = spool.acked + 1;
        spool.batches.iter().any(|&(first, last)| {
            let hole = first > next + 2 * SPOOL_LOAD_PER_SECOND;
            next = last + 1;
            hole
        })
    });
    assert!(overflowed, "the 4 MiB spool never overflowed: {:?}{}", fleet.spool(), fleet.logs());
    let mut opens = load.opens();
    if !load_during_drain {
        // No more load, so nothing is evicted while the spool drains.
        opens = load.stop();
    }
    fleet.server.restart();
    if load_during_drain {
        let backlog = fleet.spool().last_seq();
        fleet.wait_acked(backlog, Duration::from_secs(60), "draining under load");
        opens = load.stop();
    }
    let (last, coverage) = fleet.settle().await;
    let lost = coverage.missing_events();
    println!("server stopped at acked {}; stored up to {last}: {coverage:?}", at_stop.acked);
    assert!(lost > 0 && opens > 0, "evictions happened under load: {coverage:?}");
    assert!(coverage.no_duplicates(), "duplicates in ClickHouse: {coverage:?}{}", fleet.logs());
    assert!(
        coverage.missing.iter().all(|&(first, _)| first > at_stop.acked),
        "only unacknowledged events are missing (acked {} at the stop): {:?}",
        at_stop.acked,
        coverage.missing
    );
    // The heartbeat after the drain, the server's bookkeeping and ClickHouse
    // say the same. The host goes on producing events while the spool
    // drains, so evictions may go on past `last` until it is under its
    // bound: wait until tyrd's count and the server's gap agree and hold
    // still, then compare them with everything ClickHouse holds.
    let counted = |row: &serde_json::Value| {
        (row["seq_gap_events"].as_u64().unwrap_or(0), row["drops"]["spool_evicted"].as_u64().unwrap_or(0))
    };
    let mut previous = None;
    let mut steady = 0;
    let agreed = wait_until(Duration::from_secs(90), || {
        let now = counted(&fleet.row());
        steady = if now.0 == now.1 && previous == Some(now) { steady + 1 } else { 0 };
        previous = Some(now);
        steady >= 3
    });
    let row = fleet.row();
    let (gap, evicted) = counted(&row);
    assert!(agreed, "the server counts {gap} as gap, tyrd {evicted} as evicted: {row}{}", fleet.logs());
    let read = |upto| seq_coverage(&fleet.store, fleet.daemon_id, upto);
    let stored_up_to = read(0).await.unwrap_or_else(|e| panic!("reading ClickHouse: {e}{}", fleet.logs())).max_seq;
    let everything = read(stored_up_to).await.unwrap_or_else(|e| panic!("reading ClickHouse: {e}{}", fleet.logs()));
    assert!(everything.no_duplicates(), "duplicates in ClickHouse: {everything:?}{}", fleet.logs());
    assert_eq!(
        everything.missing_events(),
        gap,
        "ClickHouse lacks exactly what was evicted ({:?} up to {stored_up_to}): {row}{}",
        everything.missing,
        fleet.logs()
    );
    fleet.finish().await;
}
