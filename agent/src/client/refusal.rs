//! Batches the server refuses as malformed (the stream ends with
//! `INVALID_ARGUMENT` or `RESOURCE_EXHAUSTED` while they are in flight).
//! Replaying such a batch forever would blind the host's audit trail, so:
//! - after a refusal, batches go one at a time (window 1) until everything
//!   that was in flight is acknowledged, so the next refusal names its
//!   batch without doubt;
//! - a batch refused while alone in flight [`REFUSALS_TO_REJECT`] times in
//!   a row is set aside (see [`crate::spool::Spool::reject`]).
//!
//! The tracker lives across sessions (in the session context).

use super::session::MAX_IN_FLIGHT;

/// Refusals in a row, each with the batch alone in flight, before it is
/// set aside.
pub const REFUSALS_TO_REJECT: u32 = 2;

/// What the refusals so far say (kept across sessions).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refusals {
    /// Batches go one at a time while the spool's acknowledged position is
    /// below this (the newest sequence number in flight at a refusal).
    probe_until: u64,
    /// The batch last refused alone in flight (its first sequence number)
    /// and how many times in a row.
    suspect: Option<(u64, u32)>,
}

impl Refusals {
    /// Batches that may be in flight at once when the spool has
    /// acknowledged up to `acked_seq`.
    pub fn window(&self, acked_seq: u64) -> usize {
        if acked_seq < self.probe_until { 1 } else { MAX_IN_FLIGHT }
    }

    /// Records a refusal while `in_flight` ((first, last) sequence numbers,
    /// oldest first) was unacknowledged; returns the first sequence number
    /// of the batch to set aside, if the refusals now name one.
    pub fn refused(&mut self, in_flight: &[(u64, u64)]) -> Option<u64> {
        let &(_, newest) = in_flight.last()?;
        self.probe_until = self.probe_until.max(newest);
        let [(first, _)] = in_flight else {
            // Several in flight: which one was refused is not known.
            self.suspect = None;
            return None;
        };
        let count = match self.suspect {
            Some((suspect, count)) if suspect == *first => count + 1,
            _ => 1,
        };
        if count >= REFUSALS_TO_REJECT {
            self.suspect = None;
            return Some(*first);
        }
        self.suspect = Some((*first, count));
        None
    }

    /// The server acknowledged up to `acked_seq`: a suspect it covers was
    /// taken after all.
    pub fn acknowledged(&mut self, acked_seq: u64) {
        if self.suspect.is_some_and(|(first, _)| first <= acked_seq) {
            self.suspect = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_refused_alone_twice_in_a_row_is_named() {
        let mut refusals = Refusals::default();
        assert_eq!(refusals.window(0), MAX_IN_FLIGHT);
        // Three in flight: no batch named, one at a time up to 9.
        assert_eq!(refusals.refused(&[(1, 3), (4, 5), (6, 9)]), None);
        assert_eq!((refusals.window(0), refusals.window(8), refusals.window(9)), (1, 1, MAX_IN_FLIGHT));
        // 1..3 goes through; 4..5 refused alone twice.
        refusals.acknowledged(3);
        assert_eq!(refusals.refused(&[(4, 5)]), None);
        assert_eq!(refusals.refused(&[(4, 5)]), Some(4));
        // Named once: counting starts over.
        assert_eq!(refusals.refused(&[(4, 5)]), None);
    }

    #[test]
    fn an_acknowledgement_or_another_batch_breaks_the_run() {
        let mut refusals = Refusals::default();
        assert_eq!(refusals.refused(&[(4, 5)]), None);
        refusals.acknowledged(5);
        assert_eq!(refusals.refused(&[(4, 5)]), None, "acknowledged in between");
        assert_eq!(refusals.refused(&[(6, 7)]), None, "another batch");
        assert_eq!(refusals.refused(&[(6, 7), (8, 8)]), None, "ambiguous");
        assert_eq!(refusals.refused(&[(6, 7)]), None, "the ambiguous refusal broke the run");
        assert_eq!(refusals.refused(&[]), None, "nothing in flight: not a batch's fault");
        assert_eq!(refusals.refused(&[(6, 7)]), Some(6));
    }
}
