//! Unit tests of the spool: replay order, acknowledgement, the bound,
//! recovery after reopen, damaged files, write failures, and a model check.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tyr-spool-{}", uuid::Uuid::new_v4().simple()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn events(n: usize, tag: &str) -> Vec<Event> {
    (0..n).map(|i| Event { resource: format!("{tag}-{i}"), ..Event::default() }).collect()
}

fn seqs(batch: &EventBatch) -> Vec<u64> {
    batch.events.iter().map(|e| e.seq).collect()
}

/// Bytes one batch file of `n` events tagged `tag` takes.
fn file_bytes(n: usize, tag: &str, first: u64) -> u64 {
    let mut events = events(n, tag);
    for (event, seq) in events.iter_mut().zip(first..) {
        event.seq = seq;
    }
    file::encode(&EventBatch { events, batch_id: first }).len() as u64
}

#[test]
fn replays_in_order_and_acknowledgement_deletes() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    let a = spool.append(events(3, "a")).expect("append");
    let b = spool.append(events(2, "b")).expect("append");
    assert_eq!((a.first_seq, a.last_seq, b.first_seq, b.last_seq), (1, 3, 4, 5));
    let first = spool.next_batch(0).expect("read").expect("a batch");
    assert_eq!((first.batch_id, seqs(&first)), (1, vec![1, 2, 3]));
    assert_eq!(first.events[0].resource, "a-0");
    let second = spool.next_batch(3).expect("read").expect("a batch");
    assert_eq!((second.batch_id, seqs(&second)), (4, vec![4, 5]));
    assert!(spool.next_batch(5).expect("read").is_none());
    // A position inside a batch moves to the next batch.
    assert_eq!(spool.next_batch(1).expect("read").expect("batch").batch_id, 4);

    spool.acknowledge(3).expect("ack");
    let stats = spool.stats();
    assert_eq!((stats.batches, stats.events, stats.acked_seq, stats.last_seq), (1, 2, 3, 5));
    assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 4);
    // Partially covered: the batch stays.
    spool.acknowledge(4).expect("ack");
    assert_eq!(spool.stats().batches, 1);
    spool.acknowledge(5).expect("ack");
    assert_eq!(spool.stats().batches, 0);
    assert_eq!(spool.stats().bytes, 0);
    let names: Vec<String> =
        fs::read_dir(&dir.0).expect("list").map(|e| e.expect("entry").file_name().to_string_lossy().into()).collect();
    assert_eq!(names, [ACKED_FILE], "only the state file is left");
}

#[test]
fn acknowledgement_beyond_the_last_number_is_clamped() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(2, "a")).expect("append");
    spool.acknowledge(1000).expect("ack");
    assert_eq!(spool.stats().acked_seq, 2);
    assert_eq!(spool.append(events(1, "b")).expect("append").first_seq, 3);
    // Older acknowledgements change nothing.
    spool.acknowledge(1).expect("ack");
    assert_eq!(spool.stats().acked_seq, 2);
    assert_eq!(spool.stats().batches, 1);
}

#[test]
fn bound_evicts_oldest_and_counts_exactly() {
    let dir = TempDir::new();
    let one = file_bytes(10, "x", 1);
    // Room for three batches of this size (all are the same size: the
    // sequence numbers 1..=50 encode to one byte each as varints).
    let spool = Spool::open(&dir.0, one * 3).expect("open");
    let mut evicted = 0;
    for _ in 0..5 {
        evicted += spool.append(events(10, "x")).expect("append").evicted_events;
    }
    let stats = spool.stats();
    assert_eq!(evicted, 20);
    assert_eq!((stats.evicted_batches, stats.evicted_events), (2, 20));
    assert_eq!((stats.batches, stats.events, stats.bytes), (3, 30, one * 3));
    assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 21);

    // A batch larger than the bound alone is kept; everything older goes.
    let small_dir = TempDir::new();
    let small = Spool::open(&small_dir.0, 1).expect("open");
    small.append(events(5, "y")).expect("append");
    let appended = small.append(events(5, "y")).expect("append");
    assert_eq!(appended.evicted_events, 5);
    assert_eq!(small.stats().batches, 1);
    assert_eq!(small.next_batch(0).expect("read").expect("batch").batch_id, 6);
}

#[test]
fn batches_sent_are_not_evicted_until_the_server_says_what_it_holds() {
    let dir = TempDir::new();
    let one = file_bytes(10, "x", 1);
    let spool = Spool::open(&dir.0, one * 2).expect("open");
    spool.begin_session();
    spool.append(events(10, "x")).expect("append"); // 1..=10
    spool.append(events(10, "x")).expect("append"); // 11..=20
    // Both are sent and not yet acknowledged: the server may be storing them.
    assert_eq!(spool.next_to_send(0).expect("read").expect("batch").batch_id, 1);
    assert_eq!(spool.next_to_send(10).expect("read").expect("batch").batch_id, 11);
    let appended = spool.append(events(10, "x")).expect("append"); // 21..=30
    assert_eq!(appended.evicted_events, 0, "sent batches are spared");
    assert_eq!(spool.stats().batches, 3);
    // Over the bound: the oldest unsent goes, never the newest.
    let appended = spool.append(events(10, "x")).expect("append"); // 31..=40
    assert_eq!(appended.evicted_events, 10);
    assert_eq!(spool.next_batch(20).expect("read").expect("batch").batch_id, 31, "21..=30 was evicted");
    // The stream broke without acks; still spared: the server may hold them.
    spool.begin_session();
    let appended = spool.append(events(10, "x")).expect("append"); // 41..=50
    assert_eq!(appended.evicted_events, 10, "31..=40 goes, 1..=20 stay");
    // The next stream learns the server holds up to 10: that batch is
    // acknowledged, 11..=20 never arrived and may now be evicted and counted.
    spool.resolve_sent(10).expect("resolve");
    assert_eq!(spool.stats().acked_seq, 10);
    let appended = spool.append(events(10, "x")).expect("append"); // 51..=60
    assert_eq!(appended.evicted_events, 10);
    assert_eq!(spool.next_batch(10).expect("read").expect("batch").batch_id, 41);
}

#[test]
fn reopen_resumes_the_sequence() {
    let dir = TempDir::new();
    {
        let spool = Spool::open(&dir.0, u64::MAX).expect("open");
        spool.append(events(4, "a")).expect("append");
        spool.append(events(3, "b")).expect("append");
        spool.acknowledge(4).expect("ack");
    }
    {
        let spool = Spool::open(&dir.0, u64::MAX).expect("reopen");
        let stats = spool.stats();
        assert_eq!((stats.last_seq, stats.acked_seq, stats.batches), (7, 4, 1));
        assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 5);
        spool.acknowledge(7).expect("ack everything");
    }
    // Every batch deleted: the acked state file still holds the last number.
    let spool = Spool::open(&dir.0, u64::MAX).expect("reopen");
    assert_eq!(spool.stats().last_seq, 7);
    assert_eq!(spool.append(events(1, "c")).expect("append").first_seq, 8);
}

#[test]
fn torn_final_file_is_ignored_counted_and_its_numbers_stay_used() {
    let dir = TempDir::new();
    {
        let spool = Spool::open(&dir.0, u64::MAX).expect("open");
        spool.append(events(3, "a")).expect("append");
        spool.append(events(3, "b")).expect("append");
    }
    let torn = dir.0.join(batch_name(4, 6));
    let bytes = fs::read(&torn).expect("read");
    fs::write(&torn, &bytes[..bytes.len() / 2]).expect("tear");
    // A temporary file from an append that never returned is not a batch.
    fs::write(dir.0.join(tmp_name(7)), b"partial").expect("tmp");
    let spool = Spool::open(&dir.0, u64::MAX).expect("reopen");
    let stats = spool.stats();
    assert_eq!((stats.torn_files, stats.torn_events, stats.batches, stats.last_seq), (1, 3, 1, 6));
    assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 1);
    assert!(spool.next_batch(1).expect("read").is_none());
    assert_eq!(spool.append(events(1, "c")).expect("append").first_seq, 7);
    assert!(!dir.0.join(tmp_name(7)).exists());
}

#[test]
fn damage_found_when_reading_is_skipped_and_counted() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(2, "a")).expect("append");
    spool.append(events(2, "b")).expect("append");
    let path = dir.0.join(batch_name(1, 2));
    let mut bytes = fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&path, bytes).expect("corrupt");
    assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 3);
    assert_eq!((spool.stats().torn_files, spool.stats().torn_events), (1, 2));
}

#[test]
fn failed_write_uses_no_numbers() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(2, "a")).expect("append");
    fs::remove_dir_all(&dir.0).expect("pull the directory away");
    assert!(spool.append(events(2, "lost")).is_err());
    assert_eq!(spool.stats().write_failures, 1);
    assert_eq!(spool.stats().last_seq, 2);
    fs::create_dir_all(&dir.0).expect("recreate");
    assert_eq!(spool.append(events(2, "b")).expect("append").first_seq, 3);
}

#[test]
fn corrupt_state_file_is_refused() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).expect("dir");
    fs::write(dir.0.join(ACKED_FILE), "garbage").expect("write");
    assert!(matches!(Spool::open(&dir.0, u64::MAX), Err(SpoolError::BadState { .. })));
}

#[test]
fn empty_append_writes_nothing() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    let appended = spool.append(Vec::new()).expect("append");
    assert_eq!((appended.first_seq, appended.last_seq), (1, 0));
    assert_eq!(spool.stats().batches, 0);
    assert_eq!(spool.append(events(1, "a")).expect("append").first_seq, 1);
}

/// One step of the model check.
#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Ack(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..6).prop_map(Op::Append),
        2 => (0u64..40).prop_map(Op::Ack),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The spool against a model: a list of (first, last) batches, the last
    /// number used, the acknowledged number, a byte bound.
    #[test]
    fn matches_the_model(ops in proptest::collection::vec(op(), 1..40), bound_batches in 1u64..6) {
        let dir = TempDir::new();
        let max_bytes = file_bytes(5, "m", 1) * bound_batches;
        let mut spool = Spool::open(&dir.0, max_bytes).expect("open");
        let mut model: Vec<(u64, u64, u64)> = Vec::new();
        let (mut last, mut acked, mut evicted) = (0u64, 0u64, 0u64);
        for op in ops {
            match op {
                Op::Append(n) => {
                    let appended = spool.append(events(n, "m")).expect("append");
                    prop_assert_eq!(appended.first_seq, last + 1);
                    let bytes = file_bytes(n, "m", last + 1);
                    last += n as u64;
                    model.push((appended.first_seq, last, bytes));
                    let mut total: u64 = model.iter().map(|b| b.2).sum();
                    let mut gone = 0;
                    while total > max_bytes && model.len() > 1 {
                        let (f, l, b) = model.remove(0);
                        total -= b;
                        gone += l - f + 1;
                    }
                    evicted += gone;
                    prop_assert_eq!(appended.evicted_events, gone);
                }
                Op::Ack(seq) => {
                    spool.acknowledge(seq).expect("ack");
                    acked = acked.max(seq.min(last));
                    model.retain(|&(_, l, _)| l > acked);
                }
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open(&dir.0, max_bytes).expect("reopen");
                    evicted = 0;
                }
            }
            let stats = spool.stats();
            prop_assert_eq!(stats.last_seq, last);
            prop_assert_eq!(stats.batches, model.len() as u64);
            prop_assert_eq!(stats.events, model.iter().map(|b| b.1 - b.0 + 1).sum::<u64>());
            prop_assert_eq!(stats.evicted_events, evicted);
            let mut after = 0;
            for &(first, last, _) in &model {
                let batch = spool.next_batch(after).expect("read").expect("a batch");
                prop_assert_eq!(batch.batch_id, first);
                prop_assert_eq!(seqs(&batch), (first..=last).collect::<Vec<_>>());
                after = last;
            }
            prop_assert!(spool.next_batch(after).expect("read").is_none());
        }
    }
}

#[test]
fn a_raised_floor_numbers_on_above_it_and_survives_reopen() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(10, "a")).expect("append");
    assert_eq!(spool.stats().last_seq, 10);
    assert!(!spool.raise_floor(5).expect("lower"), "a lower value changes nothing");
    assert!(!spool.raise_floor(10).expect("equal"));
    assert_eq!(spool.stats().last_seq, 10);
    assert!(spool.raise_floor(5_000).expect("raise"));
    assert_eq!(spool.stats().last_seq, 5_000);
    let next = spool.append(events(2, "b")).expect("append");
    assert_eq!((next.first_seq, next.last_seq), (5_001, 5_002));
    // The unacknowledged batch below the floor stays.
    assert_eq!(spool.next_batch(0).expect("read").expect("batch").batch_id, 1);

    // Across reopen, even once everything was acknowledged and deleted.
    spool.acknowledge(5_002).expect("ack");
    drop(spool);
    let spool = Spool::open(&dir.0, u64::MAX).expect("reopen");
    assert_eq!(spool.stats().last_seq, 5_002);
    let fresh = TempDir::new();
    let raised = Spool::open(&fresh.0, u64::MAX).expect("open");
    raised.raise_floor(7_000).expect("raise");
    drop(raised);
    let raised = Spool::open(&fresh.0, u64::MAX).expect("reopen");
    assert_eq!(raised.stats().last_seq, 7_000, "the floor file alone keeps the numbering");
    assert_eq!(raised.append(events(1, "c")).expect("append").first_seq, 7_001);
    assert!(!raised.raise_floor(6_000).expect("lower"));
    assert_eq!(raised.append(events(1, "d")).expect("append").first_seq, 7_002);
}

#[test]
fn a_rejected_batch_is_moved_aside_and_acknowledged_past() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(3, "a")).expect("append");
    spool.append(events(2, "b")).expect("append");
    assert_eq!(spool.reject(4).expect("reject"), None, "not the oldest unacknowledged batch");
    assert_eq!(spool.reject(9).expect("reject"), None, "no such batch");
    assert_eq!(spool.reject(1).expect("reject"), Some(3));
    let stats = spool.stats();
    assert_eq!((stats.acked_seq, stats.batches, stats.rejected_batches, stats.rejected_events), (3, 1, 1, 3));
    assert!(dir.0.join(REJECTED_DIR).join(file::batch_name(1, 3)).exists());
    assert_eq!(spool.next_batch(stats.acked_seq).expect("read").expect("batch").batch_id, 4);

    // The newest batch too: its numbers stay used across reopen.
    assert_eq!(spool.reject(4).expect("reject"), Some(2));
    drop(spool);
    let spool = Spool::open(&dir.0, u64::MAX).expect("reopen");
    let stats = spool.stats();
    assert_eq!((stats.last_seq, stats.acked_seq, stats.batches), (5, 5, 0));
    assert_eq!(spool.append(events(1, "c")).expect("append").first_seq, 6);
    let mode = fs::metadata(dir.0.join(REJECTED_DIR)).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn the_rejected_directory_is_bounded() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    let total = MAX_REJECTED_FILES + 3;
    for _ in 0..total {
        let appended = spool.append(events(1, "r")).expect("append");
        assert_eq!(spool.reject(appended.first_seq).expect("reject"), Some(1));
    }
    let aside: Vec<String> = fs::read_dir(dir.0.join(REJECTED_DIR))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(aside.len(), MAX_REJECTED_FILES);
    assert!(!aside.contains(&file::batch_name(1, 1)), "the oldest were deleted");
    assert!(aside.contains(&file::batch_name(total as u64, total as u64)));
    let stats = spool.stats();
    assert_eq!((stats.rejected_batches, stats.rejected_files_deleted), (total as u64, 3));
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("exists").permissions().mode() & 0o7777
}

#[test]
fn batches_and_state_files_are_private_in_a_private_directory() {
    let dir = TempDir::new();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    spool.append(events(2, "p")).expect("append");
    spool.acknowledge(1).expect("ack");
    spool.append(events(1, "q")).expect("append");
    assert_eq!(mode(&dir.0), 0o700, "created by the spool: 0700");
    for entry in fs::read_dir(&dir.0).expect("list") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn an_existing_open_directory_is_used_as_it_is() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).expect("create");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = crate::private_fs::exposed_dirs();
    let spool = Spool::open(&dir.0, u64::MAX).expect("open");
    assert!(crate::private_fs::exposed_dirs() > before, "reported");
    assert_eq!(mode(&dir.0), 0o755, "not chmod'ed: the spool did not create it");
    // A leftover temporary with a permissive mode must not lend it to a batch.
    let stale = dir.0.join(file::tmp_name(1));
    fs::write(&stale, b"stale").expect("stale");
    fs::set_permissions(&stale, fs::Permissions::from_mode(0o666)).expect("chmod");
    let appended = spool.append(events(1, "s")).expect("append");
    assert_eq!(mode(&dir.0.join(file::batch_name(appended.first_seq, appended.last_seq))), 0o600);
}
