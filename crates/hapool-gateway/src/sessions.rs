//! The session table: which PE a client's session is bound to, and the
//! state cookie the PE last handed out for it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hapool_wire::PoolElementId;
use tokio::time::Instant;

/// What identifies a client's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionKey {
    /// The value of the gateway's affinity cookie (HTTP).
    Cookie(u128),
    /// The client's address (TCP).
    Client(IpAddr),
    /// A TLS session id carried in the gateway's session tickets (TCP).
    Tls(u128),
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cookie(id) => write!(f, "cookie:{id:032x}"),
            Self::Client(ip) => write!(f, "client:{ip}"),
            Self::Tls(id) => write!(f, "tls:{id:032x}"),
        }
    }
}

/// One session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The PE it is bound to.
    pub member: PoolElementId,
    /// The state cookie the PE last sent for it, handed on when the session
    /// has to move to another PE.
    pub state: Option<Bytes>,
    /// When it was last used.
    pub last_seen: Instant,
    /// Requests (HTTP) or connections (TCP) it has made.
    pub requests: u64,
}

/// Sessions of one pool, bounded in number and forgotten after an idle
/// time.
pub struct SessionTable {
    map: Mutex<HashMap<SessionKey, Session>>,
    /// The idle time in nanoseconds, and the capacity: a reload may change
    /// them ([`SessionTable::set_bounds`]).
    idle: AtomicU64,
    capacity: AtomicUsize,
}

impl SessionTable {
    /// A table keeping at most `capacity` sessions, each until it has been
    /// idle for `idle`.
    pub fn new(idle: Duration, capacity: usize) -> Self {
        let this = Self {
            map: Mutex::new(HashMap::new()),
            idle: AtomicU64::new(0),
            capacity: AtomicUsize::new(0),
        };
        this.set_bounds(idle, capacity);
        this
    }

    /// From now on, sessions are kept until idle for `idle`, and at most
    /// `capacity` of them (those already kept beyond it stay until they
    /// expire).
    pub fn set_bounds(&self, idle: Duration, capacity: usize) {
        let idle = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.idle.store(idle, Ordering::Relaxed);
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// How long a session is kept unused.
    fn idle(&self) -> Duration {
        Duration::from_nanos(self.idle.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Session>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The session of `key`, if it is known and not idle for too long;
    /// counts a use.
    pub fn touch(&self, key: SessionKey, now: Instant) -> Option<Session> {
        let mut map = self.lock();
        let session = map.get_mut(&key)?;
        if now.saturating_duration_since(session.last_seen) > self.idle() {
            map.remove(&key);
            return None;
        }
        session.last_seen = now;
        session.requests += 1;
        Some(session.clone())
    }

    /// Binds `key` to `member` (a new session, or one that moved), with the
    /// state cookie `state` when the PE sent one. `was` is the member the
    /// session was bound to when the request began: an answer that comes
    /// back after another request has moved the session does not move it
    /// back. `false` when the table is full and the session is not kept.
    pub fn bind(
        &self,
        key: SessionKey,
        member: PoolElementId,
        was: Option<PoolElementId>,
        state: Option<Bytes>,
        now: Instant,
    ) -> bool {
        let mut map = self.lock();
        if let Some(session) = map.get_mut(&key) {
            if session.member == member || Some(session.member) == was {
                session.member = member;
                if state.is_some() {
                    session.state = state;
                }
            }
            session.last_seen = now;
            return true;
        }
        if map.len() >= self.capacity.load(Ordering::Relaxed) {
            return false;
        }
        map.insert(
            key,
            Session {
                member,
                state,
                last_seen: now,
                requests: 1,
            },
        );
        true
    }

    /// Forgets sessions idle for longer than the idle time; returns how
    /// many.
    pub fn sweep(&self, now: Instant) -> usize {
        let idle = self.idle();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, s| now.saturating_duration_since(s.last_seen) <= idle);
        before - map.len()
    }

    /// How many sessions are bound to `member`.
    pub fn bound_to(&self, member: PoolElementId) -> usize {
        self.lock().values().filter(|s| s.member == member).count()
    }

    /// The number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `limit` sessions, most recently used first.
    pub fn list(&self, limit: usize) -> Vec<(SessionKey, Session)> {
        let mut all: Vec<_> = self.lock().iter().map(|(k, s)| (*k, s.clone())).collect();
        all.sort_by_key(|(_, s)| std::cmp::Reverse(s.last_seen));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_bind_move_and_expire() {
        let t0 = Instant::now();
        let table = SessionTable::new(Duration::from_secs(10), 2);
        let a = SessionKey::Cookie(1);
        let b = SessionKey::Client("127.0.0.1".parse().unwrap());
        let pe1 = PoolElementId(1);
        let pe2 = PoolElementId(2);
        assert!(table.bind(a, pe1, None, None, t0));
        assert!(table.bind(b, pe1, None, Some(Bytes::from_static(b"s1")), t0));
        assert!(
            !table.bind(SessionKey::Cookie(3), pe1, None, None, t0),
            "full"
        );
        assert_eq!(table.bound_to(pe1), 2);
        // Moving keeps the state when the new PE sends none.
        assert!(table.bind(b, pe2, Some(pe1), None, t0 + Duration::from_secs(5)));
        // A late answer from PE 1 (its request began before the move) does
        // not move it back, nor change its state.
        let late = Some(Bytes::from_static(b"old"));
        assert!(table.bind(b, pe1, Some(pe1), late, t0 + Duration::from_secs(5)));
        let s = table.touch(b, t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(
            (s.member, s.state.as_deref(), s.requests),
            (pe2, Some(&b"s1"[..]), 2)
        );
        // `a` has been idle for 11 s: gone when touched, and swept otherwise.
        assert!(table.touch(a, t0 + Duration::from_secs(11)).is_none());
        assert_eq!(table.sweep(t0 + Duration::from_secs(17)), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn new_bounds_apply_to_the_sessions_already_kept() {
        let t0 = Instant::now();
        let table = SessionTable::new(Duration::from_secs(10), 1);
        let (a, b) = (SessionKey::Cookie(1), SessionKey::Cookie(2));
        assert!(table.bind(a, PoolElementId(1), None, None, t0));
        assert!(!table.bind(b, PoolElementId(1), None, None, t0), "full");
        table.set_bounds(Duration::from_secs(2), 2);
        assert!(table.bind(b, PoolElementId(1), None, None, t0));
        // Idle for 3 s: kept under the old idle time, not under the new.
        assert!(table.touch(a, t0 + Duration::from_secs(3)).is_none());
        assert_eq!(table.sweep(t0 + Duration::from_secs(3)), 1);
        assert!(table.is_empty());
    }
}
