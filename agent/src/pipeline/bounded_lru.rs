//! A least-recently-used map bounded in entries and in bytes, counting what
//! it evicts: the per-process caches of the ring reader, which a local
//! process can flood with forks, execs and long command lines.

use std::hash::Hash;
use std::num::NonZeroUsize;

use lru::LruCache;

/// The map. Sizes are what the caller says an entry holds (its heap
/// strings, mostly), fixed when the entry is put.
#[derive(Debug)]
pub struct BoundedLru<K: Hash + Eq, V> {
    entries: LruCache<K, (V, usize)>,
    bytes: usize,
    max_bytes: usize,
    /// Entries evicted to stay within the bounds (not those removed by the caller).
    pub evicted: u64,
}

impl<K: Hash + Eq, V> BoundedLru<K, V> {
    /// At most `capacity` entries and `max_bytes` bytes of them.
    pub fn new(capacity: NonZeroUsize, max_bytes: usize) -> Self {
        Self { entries: LruCache::new(capacity), bytes: 0, max_bytes, evicted: 0 }
    }

    /// The entry for `key`, marked recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// The entry for `key`, to change in place (its size stays as put).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(value, _)| value)
    }

    /// The entry for `key`, leaving the order alone.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.entries.peek(key).map(|(value, _)| value)
    }

    /// Puts `value` of `size` bytes under `key`, evicting the least recently
    /// used entries while over a bound.
    pub fn put(&mut self, key: K, value: V, size: usize) {
        let replacing = self.entries.contains(&key);
        if let Some((_, (_, old))) = self.entries.push(key, (value, size)) {
            // The replaced value of the same key, or the least recently used one.
            self.bytes -= old;
            self.evicted += u64::from(!replacing);
        }
        self.bytes += size;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some((_, (_, old))) = self.entries.pop_lru() else { break };
            self.bytes -= old;
            self.evicted += 1;
        }
    }

    /// Removes and returns the entry for `key`.
    pub fn pop(&mut self, key: &K) -> Option<V> {
        let (value, size) = self.entries.pop(key)?;
        self.bytes -= size;
        Some(value)
    }

    /// Every entry, to change in place.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, (value, _))| value)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held, as the entries' sizes say.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_entries_and_bytes_with_evictions_counted() {
        let mut lru = BoundedLru::new(NonZeroUsize::new(3).expect("nonzero"), 100);
        for key in 0..3 {
            lru.put(key, key, 10);
        }
        lru.put(1, 1, 20);
        assert_eq!((lru.len(), lru.bytes(), lru.evicted), (3, 40, 0), "a replacement is no eviction");
        lru.put(3, 3, 10);
        assert_eq!((lru.len(), lru.bytes(), lru.evicted), (3, 40, 1), "0 went: least recently used");
        assert!(lru.peek(&0).is_none());
        assert_eq!(lru.get(&2), Some(&2));
        lru.put(4, 4, 85);
        assert_eq!((lru.len(), lru.bytes(), lru.evicted), (2, 95, 3), "full, then over 100 bytes: 1 and 3 went");
        assert_eq!(lru.pop(&2), Some(2));
        assert_eq!((lru.len(), lru.bytes(), lru.evicted), (1, 85, 3), "a pop is no eviction");
        lru.put(5, 5, 500);
        assert_eq!((lru.len(), lru.bytes()), (1, 500), "one entry over the budget is kept alone");
        assert_eq!(lru.evicted, 4);
    }
}
