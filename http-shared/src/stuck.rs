//! Which processes look stuck, judged from successive observations of them: a server whose
//! handler has been running (seen running, its handled count unchanged) longer than
//! [`STUCK_AFTER`], or any process whose mailbox grew over that time while it handled
//! nothing. A function process runs one function for its whole life, so only the mailbox
//! rule applies to it. The controller judges its gathered process lists with it, a node
//! its own processes at each scrape of its `/metrics`.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a handler may run, or a mailbox grow unhandled, before the process is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// A process not seen for this long is forgotten (it exited, or nobody asks for it).
const FORGET_AFTER: Duration = Duration::from_secs(120);

/// One process as an observation shows it.
#[derive(Clone, Copy, Debug)]
pub struct Observed {
    /// Messages handled so far.
    pub handled: u64,
    /// Messages waiting.
    pub mailbox: u64,
    /// Its code runs now (a handler, or a function process's function).
    pub running: bool,
    /// A function process (not a server or supervisor).
    pub function: bool,
}

/// What was last seen of one process.
struct Seen {
    handled: u64,
    /// When `handled` last changed (or the process was first seen).
    handled_since: Instant,
    /// The mailbox length then.
    mailbox_then: u64,
    /// First seen running with this handled count; `None` while seen waiting.
    running_since: Option<Instant>,
    last_seen: Instant,
}

/// Why a process is stuck, and since when.
#[derive(Clone, Debug, PartialEq)]
pub struct Stuck {
    /// "handler running" or "mailbox growing".
    pub reason: &'static str,
    /// How long it has been so, as far as the observations show.
    pub for_ms: u64,
}

/// Observations of processes, by pid (its text, or a node's own pid type).
pub struct StuckWatch<K = String> {
    seen: Mutex<HashMap<K, Seen>>,
}

impl<K> Default for StuckWatch<K> {
    fn default() -> Self {
        StuckWatch {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> StuckWatch<K> {
    /// Records the processes of one observation (taken at `now`), by pid, and forgets those
    /// not seen for a while.
    pub fn observe<'a, Q>(&self, rows: impl IntoIterator<Item = (&'a Q, Observed)>, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized + 'a,
    {
        self.record(rows, now);
        self.forget_unseen(now);
    }

    /// Records part of an observation taken at `now` (a large one in parts, so judging is
    /// never held up for long); [`StuckWatch::forget_unseen`] ends it.
    pub fn record<'a, Q>(&self, rows: impl IntoIterator<Item = (&'a Q, Observed)>, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized + 'a,
    {
        let mut seen = self.seen.lock();
        for (pid, p) in rows {
            let s = match seen.get_mut(pid) {
                Some(s) => s,
                None => seen.entry(pid.to_owned()).or_insert(Seen {
                    handled: p.handled,
                    handled_since: now,
                    mailbox_then: p.mailbox,
                    running_since: None,
                    last_seen: now,
                }),
            };
            if s.handled != p.handled {
                s.handled = p.handled;
                s.handled_since = now;
                s.mailbox_then = p.mailbox;
                s.running_since = None;
            }
            s.running_since = match (p.running, s.running_since) {
                (false, _) => None,
                (true, Some(t)) => Some(t),
                (true, None) => Some(now),
            };
            s.last_seen = now;
        }
    }

    /// Forgets processes not seen for a while before `now` (they exited, or nobody asks).
    pub fn forget_unseen(&self, now: Instant) {
        self.seen
            .lock()
            .retain(|_, s| now.duration_since(s.last_seen) < FORGET_AFTER);
    }

    /// Whether the process `pid`, now `p`, is stuck.
    pub fn judge<Q>(&self, pid: &Q, p: Observed, now: Instant) -> Option<Stuck>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        judge_seen(p, self.seen.lock().get(pid)?, now)
    }

    /// [`StuckWatch::judge`] of many processes under one lock.
    pub fn judge_all<'a, Q>(
        &self,
        rows: impl IntoIterator<Item = (&'a Q, Observed)>,
        now: Instant,
    ) -> Vec<Option<Stuck>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        let seen = self.seen.lock();
        rows.into_iter()
            .map(|(pid, p)| judge_seen(p, seen.get(pid)?, now))
            .collect()
    }
}

/// Whether `p`, last seen as `s`, is stuck at `now`.
fn judge_seen(p: Observed, s: &Seen, now: Instant) -> Option<Stuck> {
    if !p.function {
        if let Some(t) = s.running_since {
            let d = now.duration_since(t);
            if d >= STUCK_AFTER {
                return Some(Stuck {
                    reason: "handler running",
                    for_ms: d.as_millis() as u64,
                });
            }
        }
    }
    let d = now.duration_since(s.handled_since);
    if p.mailbox > s.mailbox_then && d >= STUCK_AFTER {
        return Some(Stuck {
            reason: "mailbox growing",
            for_ms: d.as_millis() as u64,
        });
    }
    None
}
