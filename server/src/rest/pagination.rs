//! Cursor pagination: every list answers `{items, next_cursor}`; a client
//! passes `next_cursor` back as `cursor` until it is null. Cursors are
//! opaque to clients (a key of the last item returned).

use serde::Serialize;

use crate::error::ServiceError;

/// Items per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most items per page.
pub const MAX_LIMIT: u32 = 1000;

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The page size asked for, checked.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ServiceError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ServiceError::InvalidArgument("limit must be at least 1".to_owned())),
        n if n > MAX_LIMIT => Err(ServiceError::InvalidArgument(format!("limit must be at most {MAX_LIMIT}"))),
        n => Ok(n),
    }
}

impl<T> Page<T> {
    /// A page from `rows` fetched with `limit + 1`: the extra row only says
    /// that there is a next page, whose cursor is the key of the last item kept.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let limit = limit as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if more { rows.last().map(key) } else { None };
        Self { items: rows, next_cursor }
    }

    /// A page of an in-memory list sorted by `key`: the items after `cursor`.
    pub fn from_sorted(rows: Vec<T>, cursor: Option<&str>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let after: Vec<T> = match cursor {
            Some(cursor) => rows.into_iter().filter(|row| key(row).as_str() > cursor).collect(),
            None => rows,
        };
        let mut after = after;
        after.truncate(limit as usize + 1);
        Self::from_rows(after, limit, key)
    }
}

/// A UUID cursor, checked.
pub fn uuid_cursor(cursor: Option<&str>) -> Result<Option<uuid::Uuid>, ServiceError> {
    cursor
        .map(|text| uuid::Uuid::try_parse(text).map_err(|_| ServiceError::InvalidArgument("invalid cursor".to_owned())))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_with_a_null_cursor() {
        let page = Page::from_rows(vec![1, 2, 3], 2, ToString::to_string);
        assert_eq!(page.items, vec![1, 2]);
        assert_eq!(page.next_cursor.as_deref(), Some("2"));
        let page = Page::from_rows(vec![1, 2], 2, ToString::to_string);
        assert_eq!(page.next_cursor, None);
        let sorted = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let page = Page::from_sorted(sorted, Some("a"), 1, Clone::clone);
        assert_eq!(page.items, vec!["b".to_owned()]);
        assert_eq!(page.next_cursor.as_deref(), Some("b"));
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(1001)).is_err());
        assert_eq!(page_limit(None).ok(), Some(100));
        assert!(uuid_cursor(Some("nope")).is_err());
    }
}
