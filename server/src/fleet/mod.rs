//! Connected daemons: one live session per daemon, closed when the daemon is
//! revoked, and told when its effective policy or its discovered agents'
//! overrides may have changed.
//!
//! Revocations, policy changes and agent overrides are announced through
//! PostgreSQL LISTEN/NOTIFY, so a `tyr-server daemon delete`, `policy set`
//! or `discovered reclassify` run as a separate process — or on another
//! replica — reaches the session holding the stream within moments. Sessions also re-check their daemon row
//! periodically, in case a notification was missed while the listening
//! connection was down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::control_db::daemons::DAEMON_REVOKED_CHANNEL;
use crate::control_db::discovered::AGENTS_CHANGED_CHANNEL;
use crate::control_db::policies::POLICY_CHANGED_CHANNEL;

/// Pause before listening again after the listening connection failed.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// Why a session was told to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The daemon was deleted: its certificate no longer identifies anyone.
    Revoked,
    /// The same daemon opened a newer stream.
    Superseded,
}

/// What a session holds of its registration.
#[derive(Debug)]
pub struct SessionSlot {
    daemon: Uuid,
    number: u64,
    /// Cancelled when the session must end.
    pub ended: CancellationToken,
    /// Bumped whenever the daemon's effective policy may have changed.
    pub policy_changed: watch::Receiver<u64>,
    /// Bumped whenever the daemon's agent overrides may have changed.
    pub agents_changed: watch::Receiver<u64>,
    fleet: Fleet,
}

impl SessionSlot {
    /// Why the session was ended, once `ended` is cancelled.
    pub fn end_reason(&self) -> Option<EndReason> {
        let sessions = self.fleet.inner.sessions.lock().ok()?;
        match sessions.get(&self.daemon) {
            Some(live) if live.number == self.number => live.reason,
            Some(_) => Some(EndReason::Superseded),
            None => Some(EndReason::Revoked),
        }
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.fleet.inner.sessions.lock()
            && sessions.get(&self.daemon).is_some_and(|live| live.number == self.number)
        {
            sessions.remove(&self.daemon);
        }
    }
}

#[derive(Debug)]
struct LiveSession {
    number: u64,
    ended: CancellationToken,
    policy_changed: watch::Sender<u64>,
    agents_changed: watch::Sender<u64>,
    reason: Option<EndReason>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: Mutex<HashMap<Uuid, LiveSession>>,
    next_number: AtomicU64,
    /// Notifications received (revocations and policy changes).
    notifications: AtomicU64,
    /// Times the listening connection had to be re-established.
    relistens: AtomicU64,
}

/// The daemons connected to this server.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Registers a new session for `daemon`; an older session of the same
    /// daemon is ended (a daemon streams once).
    pub fn join(&self, daemon: Uuid) -> SessionSlot {
        let number = self.inner.next_number.fetch_add(1, Ordering::Relaxed);
        let ended = CancellationToken::new();
        let (policy_changed, receiver) = watch::channel(0);
        let (agents_changed, agents_receiver) = watch::channel(0);
        let live = LiveSession { number, ended: ended.clone(), policy_changed, agents_changed, reason: None };
        if let Ok(mut sessions) = self.inner.sessions.lock()
            && let Some(old) = sessions.insert(daemon, live)
        {
            old.ended.cancel();
        }
        SessionSlot {
            daemon,
            number,
            ended,
            policy_changed: receiver,
            agents_changed: agents_receiver,
            fleet: self.clone(),
        }
    }

    /// Ends the live session of `daemon`, if any.
    pub fn revoke(&self, daemon: Uuid) {
        if let Ok(mut sessions) = self.inner.sessions.lock()
            && let Some(live) = sessions.get_mut(&daemon)
        {
            live.reason = Some(EndReason::Revoked);
            live.ended.cancel();
        }
    }

    /// Tells the sessions of `daemon` (every session when None) to
    /// re-derive their effective policy.
    pub fn policy_changed(&self, daemon: Option<Uuid>) {
        if let Ok(sessions) = self.inner.sessions.lock() {
            for (id, live) in sessions.iter() {
                if daemon.is_none_or(|d| d == *id) {
                    live.policy_changed.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Tells the session of `daemon` (every session when None) to send its
    /// agent overrides again if they changed.
    pub fn agents_changed(&self, daemon: Option<Uuid>) {
        if let Ok(sessions) = self.inner.sessions.lock() {
            for (id, live) in sessions.iter() {
                if daemon.is_none_or(|d| d == *id) {
                    live.agents_changed.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Daemons with a live session.
    pub fn connected(&self) -> Vec<Uuid> {
        self.inner.sessions.lock().map(|s| s.keys().copied().collect()).unwrap_or_default()
    }

    /// Whether `daemon` has a live session.
    pub fn is_connected(&self, daemon: Uuid) -> bool {
        self.inner.sessions.lock().is_ok_and(|s| s.contains_key(&daemon))
    }

    /// Ends every session (server shutdown).
    pub fn end_all(&self) {
        if let Ok(sessions) = self.inner.sessions.lock() {
            sessions.values().for_each(|live| live.ended.cancel());
        }
    }

    /// Follows revocations and policy changes announced in PostgreSQL until
    /// `shutdown`; re-listens (counted) when the connection drops.
    pub async fn follow_notifications(self, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.listen(&pool, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    self.inner.relistens.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "listening for fleet notifications failed; listening again");
                    // Anything may have changed while nobody listened.
                    self.policy_changed(None);
                    self.agents_changed(None);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RELISTEN_DELAY) => {}
                    }
                }
            }
        }
    }

    async fn listen(&self, pool: &PgPool, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen_all([DAEMON_REVOKED_CHANNEL, POLICY_CHANGED_CHANNEL, AGENTS_CHANGED_CHANNEL]).await?;
        loop {
            let notification = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                received = listener.recv() => received?,
            };
            self.inner.notifications.fetch_add(1, Ordering::Relaxed);
            let payload = notification.payload();
            match notification.channel() {
                DAEMON_REVOKED_CHANNEL => match Uuid::parse_str(payload) {
                    Ok(daemon) => self.revoke(daemon),
                    Err(_) => tracing::warn!(payload, "ignoring a revocation without a daemon id"),
                },
                AGENTS_CHANGED_CHANNEL => match Uuid::parse_str(payload) {
                    Ok(daemon) => self.agents_changed(Some(daemon)),
                    Err(_) => self.agents_changed(None),
                },
                _ => self.policy_changed(Uuid::parse_str(payload).ok()),
            }
        }
    }

    /// Notifications received and re-listens so far.
    pub fn notification_counts(&self) -> (u64, u64) {
        (self.inner.notifications.load(Ordering::Relaxed), self.inner.relistens.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_session_ends_the_older_and_revocation_ends_the_live_one() {
        let fleet = Fleet::default();
        let daemon = Uuid::new_v4();
        let first = fleet.join(daemon);
        let second = fleet.join(daemon);
        assert!(first.ended.is_cancelled());
        assert_eq!(first.end_reason(), Some(EndReason::Superseded));
        assert!(!second.ended.is_cancelled());
        drop(first);
        assert!(fleet.is_connected(daemon), "dropping the superseded slot keeps the live one");
        fleet.revoke(daemon);
        assert!(second.ended.is_cancelled());
        assert_eq!(second.end_reason(), Some(EndReason::Revoked));
        drop(second);
        assert!(!fleet.is_connected(daemon));
    }

    #[test]
    fn policy_changes_reach_the_sessions_they_concern() {
        let fleet = Fleet::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let sa = fleet.join(a);
        let sb = fleet.join(b);
        fleet.policy_changed(Some(a));
        assert_eq!(*sa.policy_changed.borrow(), 1);
        assert_eq!(*sb.policy_changed.borrow(), 0);
        fleet.policy_changed(None);
        assert_eq!(*sa.policy_changed.borrow(), 2);
        assert_eq!(*sb.policy_changed.borrow(), 1);
        assert_eq!(*sa.agents_changed.borrow(), 0, "policy changes are not override changes");
        fleet.agents_changed(Some(b));
        assert_eq!((*sa.agents_changed.borrow(), *sb.agents_changed.borrow()), (0, 1));
    }
}
