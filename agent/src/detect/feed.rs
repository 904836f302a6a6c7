//! What the ring-reading thread tells the session about discovered agents,
//! without building anything for the wire there: a bounded queue of agents
//! newly discovered (or newly hashed), and one "seen" flag per agent that
//! the session collects once per heartbeat interval as last-seen refreshes.
//!
//! The ring thread never blocks on either: a full queue drops the notice
//! and counts it (the session then re-reads the registry file and reports
//! every agent again), and an agent past [`MAX_SEEN_FLAGS`] is not
//! refreshed (counted) — it was still reported when discovered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::overrides::OverrideSet;
use super::registry::DiscoveredAgent;

/// Notices waiting for the session, at most.
pub const NOTICE_QUEUE: usize = 1024;
/// Agents (by registry index) whose activity is tracked for refreshes.
pub const MAX_SEEN_FLAGS: usize = 8192;

/// What the capture loop shares with the session about agents.
#[derive(Debug, Clone)]
pub struct AgentLink {
    /// Discoveries and activity, to the session.
    pub feed: Arc<AgentFeed>,
    /// Override sets, from the session; the capture loop applies each
    /// between ring reads.
    pub overrides: Receiver<OverrideSet>,
}

/// The ring thread's side and the session's side of the feed.
#[derive(Debug)]
pub struct AgentFeed {
    sender: Sender<DiscoveredAgent>,
    receiver: Receiver<DiscoveredAgent>,
    seen: Box<[AtomicBool]>,
    /// Notices dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Sightings of agents past [`MAX_SEEN_FLAGS`], not refreshed.
    pub untracked: AtomicU64,
}

impl Default for AgentFeed {
    fn default() -> Self {
        let (sender, receiver) = crossbeam_channel::bounded(NOTICE_QUEUE);
        Self {
            sender,
            receiver,
            seen: (0..MAX_SEEN_FLAGS).map(|_| AtomicBool::new(false)).collect(),
            dropped: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }
}

impl AgentFeed {
    /// Ring thread: an agent was discovered or changed (its hash is known).
    pub fn notify(&self, agent: &DiscoveredAgent) {
        match self.sender.try_send(agent.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Ring thread: a process of agent `index` (1-based) was active. One
    /// relaxed load on the hot path; a store only when the flag was clear.
    #[inline]
    pub fn saw(&self, index: u32) {
        let Some(flag) = usize::try_from(index).ok().and_then(|i| i.checked_sub(1)).and_then(|i| self.seen.get(i))
        else {
            if index != 0 {
                self.untracked.fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        if !flag.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Session: the notices waiting, at most `max`.
    pub fn notices(&self, max: usize) -> Vec<DiscoveredAgent> {
        self.receiver.try_iter().take(max).collect()
    }

    /// Session: the indexes seen since the last call (their flags cleared).
    pub fn take_seen(&self) -> Vec<u32> {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, flag)| flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed))
            .filter_map(|(i, _)| u32::try_from(i + 1).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(index: u32) -> DiscoveredAgent {
        DiscoveredAgent {
            id: uuid::Uuid::new_v4(),
            index,
            agent_type: "cursor".into(),
            identity: "/opt/cursor".into(),
            exe: "/opt/cursor".into(),
            exe_sha256: None,
            confidence: 70,
            evidence: String::new(),
            first_seen: 1,
        }
    }

    #[test]
    fn notices_are_bounded_and_sightings_collected_once() {
        let feed = AgentFeed::default();
        for i in 0..(NOTICE_QUEUE as u32 + 5) {
            feed.notify(&agent(i + 1));
        }
        assert_eq!(feed.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(feed.notices(10).len(), 10);
        assert_eq!(feed.notices(usize::MAX).len(), NOTICE_QUEUE - 10);
        feed.saw(3);
        feed.saw(3);
        feed.saw(1);
        feed.saw(0);
        feed.saw(MAX_SEEN_FLAGS as u32 + 1);
        assert_eq!(feed.take_seen(), vec![1, 3]);
        assert!(feed.take_seen().is_empty());
        assert_eq!(feed.untracked.load(Ordering::Relaxed), 1);
    }
}
