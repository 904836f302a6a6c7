//! Live tail: a stream of events stored after the tail started that match a
//! filter, read by polling ClickHouse.
//!
//! Progress follows `(inserted_at, event_id)` (the ingest time ClickHouse
//! stamps on each insert), so each poll asks only for rows past the last
//! one seen. An insert can become visible a little after its `inserted_at`
//! (it is stamped when the insert starts and visible once it commits), so
//! each poll also re-checks an overlap window behind that position: it
//! compares the number of distinct ids stored there with the ids already
//! yielded, and only when ClickHouse holds more fetches the missing ones.
//! Ids are remembered only inside the window and never more than
//! [`TailOptions::max_remembered`]; past that the window is shortened (and
//! logged). A row that becomes visible later than the window is not tailed
//! (search still finds it).
//!
//! A live tail applies only the time bounds its filter names: the default
//! 24-hour start of searches would hide replayed events a daemon spooled
//! during a long outage.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use clickhouse::Row;
use futures_util::Stream;
use serde::Deserialize;
use tracing::warn;
use uuid::Uuid;

use super::filter::{ResolvedFilter, TimeScope};
use super::sql::{Param, Statement};
use super::{EVENT_COLUMNS, EventRow, QueryError, RawEvent};
use crate::event_store::EventStore;

/// Ids per statement when fetching late rows by id.
const LATE_FETCH_CHUNK: usize = 1_000;
/// The longest wait between polls after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Window shortenings between two warnings (the first one always warns).
const SHORTENED_WARN_EVERY: u64 = 1_000;

/// How a tail polls.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Pause between polls that found nothing more to read.
    pub poll_interval: Duration,
    /// How far behind the newest row seen late-visible rows are looked for.
    pub overlap: Duration,
    /// Rows read per poll.
    pub page: u32,
    /// The most event ids remembered for de-duplication.
    pub max_remembered: usize,
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            overlap: Duration::from_secs(5),
            page: 500,
            max_remembered: 100_000,
        }
    }
}

/// New events matching `filter`, as they are stored, with the default
/// [`TailOptions`]. The stream does not end; a ClickHouse failure is
/// yielded as an error and polling resumes after a backoff.
pub fn tail(
    store: EventStore,
    filter: ResolvedFilter,
) -> impl Stream<Item = Result<EventRow, QueryError>> + Send + 'static {
    tail_with(store, filter, TailOptions::default())
}

/// [`tail`] with chosen options.
pub fn tail_with(
    store: EventStore,
    filter: ResolvedFilter,
    options: TailOptions,
) -> impl Stream<Item = Result<EventRow, QueryError>> + Send + 'static {
    let state = Tail {
        store,
        filter,
        created: Instant::now(),
        position: None,
        floor_ms: 0,
        seen: Seen::default(),
        buffer: VecDeque::new(),
        more: false,
        wait: None,
        failures: 0,
        shortened: 0,
        options,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next().await;
        Some((item, state))
    })
}

/// A tail's state between polls.
struct Tail {
    store: EventStore,
    filter: ResolvedFilter,
    options: TailOptions,
    /// When [`tail`] was called: the tail covers rows stored from then on.
    created: Instant,
    /// The last row read, by `(inserted_at ms, event_id)`; None before the first poll.
    position: Option<(i64, Uuid)>,
    /// Rows stored before this (ms) are never looked at again.
    floor_ms: i64,
    seen: Seen,
    buffer: VecDeque<EventRow>,
    /// The last poll read a full page: read again without pausing.
    more: bool,
    /// Pause before the next poll.
    wait: Option<Duration>,
    failures: u32,
    /// How often the overlap window was cut to respect `max_remembered`.
    shortened: u64,
}

#[derive(Debug, Row, Deserialize)]
struct StoredId {
    #[serde(with = "clickhouse::serde::uuid")]
    event_id: Uuid,
}

impl Tail {
    async fn next(&mut self) -> Result<EventRow, QueryError> {
        loop {
            if let Some(row) = self.buffer.pop_front() {
                return Ok(row);
            }
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            match self.poll().await {
                Ok(()) => {
                    self.failures = 0;
                    if !self.more {
                        self.wait = Some(self.options.poll_interval);
                    }
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    let backoff = self.options.poll_interval.saturating_mul(1u32 << self.failures.min(5));
                    self.wait = Some(backoff.min(MAX_BACKOFF));
                    return Err(error);
                }
            }
        }
    }

    /// Reads new rows, then late ones, then forgets what left the window.
    async fn poll(&mut self) -> Result<(), QueryError> {
        let (after_ms, after_id) = match self.position {
            Some(position) => position,
            None => self.start().await?,
        };
        let mut sql = Statement::new("SELECT ");
        sql.push(EVENT_COLUMNS).push(" FROM events");
        self.filter.write_where(&mut sql, TimeScope::ExplicitOnly);
        sql.push(
            " AND (inserted_at, event_id) > (fromUnixTimestamp64Milli({t_after_ms:Int64}, 'UTC'), {t_after_id:UUID}) \
             ORDER BY inserted_at, event_id LIMIT {t_page:UInt32}",
        )
        .bind("t_after_ms", Param::I64(after_ms))
        .bind("t_after_id", Param::Str(after_id.to_string()))
        .bind("t_page", Param::U32(self.options.page.max(1)));
        let rows: Vec<RawEvent> = sql.query(self.store.client()).fetch_all().await?;
        self.more = rows.len() >= self.options.page.max(1) as usize;
        for raw in rows {
            self.position = Some((raw.inserted_ms(), raw.event_id()));
            self.accept(raw);
        }
        self.catch_late().await?;
        self.forget();
        Ok(())
    }

    /// Fixes the start on ClickHouse's clock (which stamps `inserted_at`),
    /// backdated by the time since [`tail`] was called up to the answer:
    /// never later than the call, but up to one round trip earlier, so a
    /// row stored just before the call may be yielded too.
    async fn start(&mut self) -> Result<(i64, Uuid), QueryError> {
        let now_ms: i64 = self.store.client().query("SELECT toUnixTimestamp64Milli(now64(3))").fetch_one().await?;
        let since_created = i64::try_from(self.created.elapsed().as_millis()).unwrap_or(i64::MAX);
        let start = now_ms.saturating_sub(since_created);
        self.floor_ms = start;
        self.position = Some((start, Uuid::nil()));
        Ok((start, Uuid::nil()))
    }

    /// Queues a row unless its id was already yielded.
    fn accept(&mut self, raw: RawEvent) {
        if self.seen.insert(raw.event_id(), raw.inserted_ms()) {
            self.buffer.push_back(raw.into());
        }
    }

    /// Looks for rows that became visible behind the position.
    async fn catch_late(&mut self) -> Result<(), QueryError> {
        let Some((at_ms, at_id)) = self.position else { return Ok(()) };
        let overlap_ms = i64::try_from(self.options.overlap.as_millis()).unwrap_or(i64::MAX);
        let low_ms = at_ms.saturating_sub(overlap_ms).max(self.floor_ms);
        if low_ms > at_ms {
            return Ok(());
        }
        let window = |select: &str| {
            let mut sql = Statement::new(select);
            sql.push(" FROM events");
            self.filter.write_where(&mut sql, TimeScope::ExplicitOnly);
            sql.push(
                " AND inserted_at >= fromUnixTimestamp64Milli({t_low_ms:Int64}, 'UTC') \
                 AND (inserted_at, event_id) <= (fromUnixTimestamp64Milli({t_at_ms:Int64}, 'UTC'), {t_at_id:UUID})",
            )
            .bind("t_low_ms", Param::I64(low_ms))
            .bind("t_at_ms", Param::I64(at_ms))
            .bind("t_at_id", Param::Str(at_id.to_string()));
            sql
        };
        let stored: u64 = window("SELECT uniqExact(event_id)").query(self.store.client()).fetch_one().await?;
        if stored <= self.seen.count_since(low_ms) {
            return Ok(());
        }
        let mut ids = window("SELECT event_id");
        let limit = u32::try_from(self.options.max_remembered.saturating_add(LATE_FETCH_CHUNK)).unwrap_or(u32::MAX);
        ids.push(" ORDER BY inserted_at, event_id LIMIT {t_ids_limit:UInt32}").bind("t_ids_limit", Param::U32(limit));
        let stored_ids: Vec<StoredId> = ids.query(self.store.client()).fetch_all().await?;
        let missing: Vec<Uuid> =
            stored_ids.iter().filter(|s| !self.seen.contains(s.event_id)).map(|s| s.event_id).collect();
        let select_rows = format!("SELECT {EVENT_COLUMNS}");
        for chunk in missing.chunks(LATE_FETCH_CHUNK) {
            let mut sql = window(&select_rows);
            sql.push(" AND has({t_ids:Array(UUID)}, event_id) ORDER BY inserted_at, event_id")
                .bind("t_ids", Param::Uuids(chunk.iter().map(Uuid::to_string).collect()));
            let rows: Vec<RawEvent> = sql.query(self.store.client()).fetch_all().await?;
            for raw in rows {
                // Field by field: `window` still borrows the filter.
                if self.seen.insert(raw.event_id(), raw.inserted_ms()) {
                    self.buffer.push_back(raw.into());
                }
            }
        }
        Ok(())
    }

    /// Forgets ids older than the window, then the oldest ones past the cap.
    fn forget(&mut self) {
        let Some((at_ms, _)) = self.position else { return };
        let overlap_ms = i64::try_from(self.options.overlap.as_millis()).unwrap_or(i64::MAX);
        self.seen.forget_before(at_ms.saturating_sub(overlap_ms));
        if let Some(dropped_ms) = self.seen.shrink_to(self.options.max_remembered) {
            self.floor_ms = self.floor_ms.max(dropped_ms.saturating_add(1));
            self.shortened += 1;
            if self.shortened % SHORTENED_WARN_EVERY == 1 {
                warn!(
                    shortened_total = self.shortened,
                    max_remembered = self.options.max_remembered,
                    "event tail overlap window shortened: late-visible rows before it will not be tailed"
                );
            }
        }
    }
}

/// Event ids already yielded, by the millisecond they were stored in.
#[derive(Debug, Default)]
struct Seen {
    ids: HashMap<Uuid, i64>,
    by_ms: BTreeMap<i64, Vec<Uuid>>,
}

impl Seen {
    /// Remembers `id`; false when it was already known.
    fn insert(&mut self, id: Uuid, ms: i64) -> bool {
        match self.ids.entry(id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(ms);
                self.by_ms.entry(ms).or_default().push(id);
                true
            }
        }
    }

    fn contains(&self, id: Uuid) -> bool {
        self.ids.contains_key(&id)
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// Ids remembered with a time at or after `ms`.
    fn count_since(&self, ms: i64) -> u64 {
        self.by_ms.range(ms..).map(|(_, ids)| ids.len() as u64).sum()
    }

    /// Forgets ids stored before `ms`.
    fn forget_before(&mut self, ms: i64) {
        let kept = self.by_ms.split_off(&ms);
        for id in std::mem::replace(&mut self.by_ms, kept).into_values().flatten() {
            self.ids.remove(&id);
        }
    }

    /// Forgets the oldest milliseconds until at most `max` ids remain;
    /// returns the last millisecond forgotten, if any.
    fn shrink_to(&mut self, max: usize) -> Option<i64> {
        let mut dropped = None;
        while self.len() > max {
            let Some((ms, ids)) = self.by_ms.pop_first() else { break };
            for id in ids {
                self.ids.remove(&id);
            }
            dropped = Some(ms);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_forgets_by_time_and_by_size() {
        let mut seen = Seen::default();
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        for (i, id) in ids.iter().enumerate() {
            assert!(seen.insert(*id, 100 + (i as i64 / 2)));
        }
        assert!(!seen.insert(ids[0], 999), "an id is yielded once");
        assert_eq!(seen.len(), 6);
        assert_eq!(seen.count_since(101), 4);
        seen.forget_before(101);
        assert_eq!(seen.len(), 4);
        assert!(!seen.contains(ids[0]) && seen.contains(ids[2]));
        assert_eq!(seen.shrink_to(4), None);
        assert_eq!(seen.shrink_to(3), Some(101), "whole milliseconds go");
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.count_since(0), 2);
    }
}
