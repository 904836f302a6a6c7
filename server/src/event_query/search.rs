//! Filtered event search, newest first, in keyset-paginated pages, and the
//! exact count of the same selection.
//!
//! Pages are ordered by `(timestamp, event_id)` descending; a cursor holds
//! the last row's pair and the next page starts strictly below it, so rows
//! stored meanwhile never shift a page and no row is repeated or skipped.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::filter::{ResolvedFilter, TimeScope};
use super::sql::{Param, Statement};
use super::{EVENT_COLUMNS, EventRow, Page, QueryError, RawEvent};
use crate::event_store::EventStore;

/// The most rows one page holds.
pub const MAX_PAGE: u32 = 1_000;
/// Version byte of the cursor layout.
const CURSOR_V1: u8 = 1;
/// Encoded length of a v1 cursor: version, timestamp (8), event id (16).
const CURSOR_BYTES: usize = 1 + 8 + 16;
/// Longest cursor text accepted before decoding.
const MAX_CURSOR_TEXT: usize = 64;

/// A position in the newest-first order: the last row a page returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The row's timestamp, nanoseconds since the epoch.
    pub(crate) timestamp_ns: i64,
    /// The row's event id.
    pub(crate) event_id: Uuid,
}

impl Cursor {
    /// Opaque text: URL-safe base64 of a version byte, the timestamp and the id.
    pub(crate) fn encode(&self) -> String {
        let mut bytes = [0u8; CURSOR_BYTES];
        bytes[0] = CURSOR_V1;
        bytes[1..9].copy_from_slice(&self.timestamp_ns.to_be_bytes());
        bytes[9..].copy_from_slice(self.event_id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor made by [`encode`](Self::encode).
    pub(crate) fn decode(text: &str) -> Result<Self, QueryError> {
        if text.len() > MAX_CURSOR_TEXT {
            return Err(QueryError::BadCursor);
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| QueryError::BadCursor)?;
        let bytes: [u8; CURSOR_BYTES] = bytes.try_into().map_err(|_| QueryError::BadCursor)?;
        if bytes[0] != CURSOR_V1 {
            return Err(QueryError::BadCursor);
        }
        let mut timestamp = [0u8; 8];
        timestamp.copy_from_slice(&bytes[1..9]);
        let event_id = Uuid::from_slice(&bytes[9..]).map_err(|_| QueryError::BadCursor)?;
        Ok(Self { timestamp_ns: i64::from_be_bytes(timestamp), event_id })
    }
}

/// The search statement: one page after `cursor` (none: the newest), at most `rows` rows.
pub(crate) fn search_statement(filter: &ResolvedFilter, cursor: Option<Cursor>, rows: u32) -> Statement {
    let mut sql = Statement::new("SELECT ");
    sql.push(EVENT_COLUMNS).push(" FROM events FINAL");
    filter.write_where(&mut sql, TimeScope::Range);
    if let Some(cursor) = cursor {
        // Spelled out rather than a tuple comparison so that the timestamp
        // bound can prune by the table's sorting key.
        sql.push(
            " AND timestamp <= fromUnixTimestamp64Nano({c_ts:Int64}, 'UTC') \
             AND (timestamp < fromUnixTimestamp64Nano({c_ts:Int64}, 'UTC') OR event_id < {c_id:UUID})",
        )
        .bind("c_ts", Param::I64(cursor.timestamp_ns))
        .bind("c_id", Param::Str(cursor.event_id.to_string()));
    }
    sql.push(" ORDER BY timestamp DESC, event_id DESC LIMIT {limit:UInt32}").bind("limit", Param::U32(rows));
    sql
}

/// The count statement for `filter`.
pub(crate) fn count_statement(filter: &ResolvedFilter) -> Statement {
    let mut sql = Statement::new("SELECT count() FROM events FINAL");
    filter.write_where(&mut sql, TimeScope::Range);
    sql
}

/// One page of events matching `filter`, newest first.
///
/// `cursor` is the previous page's `next_cursor` (None: the first page);
/// `limit` is clamped to 1..=[`MAX_PAGE`].
pub async fn search(
    store: &EventStore,
    filter: &ResolvedFilter,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Page<EventRow>, QueryError> {
    let cursor = cursor.map(Cursor::decode).transpose()?;
    let limit = limit.clamp(1, MAX_PAGE);
    // One row more than asked tells whether another page follows.
    let statement = search_statement(filter, cursor, limit + 1);
    let mut rows: Vec<RawEvent> = statement.query(store.client()).fetch_all().await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let items: Vec<EventRow> = rows.into_iter().map(EventRow::from).collect();
    let next_cursor = match items.last() {
        Some(last) if more => Some(Cursor { timestamp_ns: last.timestamp_ns, event_id: last.event_id }.encode()),
        _ => None,
    };
    Ok(Page { items, next_cursor })
}

/// The exact number of events matching `filter` (replays counted once).
pub async fn count(store: &EventStore, filter: &ResolvedFilter) -> Result<u64, QueryError> {
    Ok(count_statement(filter).query(store.client()).fetch_one::<u64>().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_query::EventFilter;

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor { timestamp_ns: -5, event_id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&cursor.encode()).expect("valid"), cursor);
        let cursor = Cursor { timestamp_ns: 1_790_000_000_123_456_789, event_id: Uuid::max() };
        let text = cursor.encode();
        assert!(text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{text}");
        assert_eq!(Cursor::decode(&text).expect("valid"), cursor);
    }

    #[test]
    fn bad_cursors_are_refused() {
        let good = Cursor { timestamp_ns: 1, event_id: Uuid::now_v7() }.encode();
        for bad in [
            "",
            "not base64!",
            "'; DROP TABLE events; --",
            &good[..good.len() - 2],
            &format!("{good}AA"),
            &URL_SAFE_NO_PAD.encode([2u8; CURSOR_BYTES]),
            &"A".repeat(10_000),
        ] {
            assert!(matches!(Cursor::decode(bad), Err(QueryError::BadCursor)), "{bad:?}");
        }
    }

    #[test]
    fn statements_bind_every_value() {
        let filter = EventFilter { resource: Some("x".to_owned()), ..EventFilter::default() }
            .resolve(Vec::new())
            .expect("valid");
        let cursor = Cursor { timestamp_ns: 123_456, event_id: Uuid::now_v7() };
        let sql = search_statement(&filter, Some(cursor), 11);
        assert!(sql.text().contains("FROM events FINAL WHERE"), "{}", sql.text());
        assert!(sql.text().ends_with("ORDER BY timestamp DESC, event_id DESC LIMIT {limit:UInt32}"));
        assert!(!sql.text().contains("123456") && !sql.text().contains(&cursor.event_id.to_string()));
        assert_eq!(sql.param("c_ts"), Some(&Param::I64(123_456)));
        assert_eq!(sql.param("c_id"), Some(&Param::Str(cursor.event_id.to_string())));
        assert_eq!(sql.param("f_resource"), Some(&Param::Str("x".to_owned())));
        assert_eq!(sql.param("limit"), Some(&Param::U32(11)));
    }
}
