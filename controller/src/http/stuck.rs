//! Which processes look stuck, judged from successive process lists: a server whose handler
//! has been running (seen running, its handled count unchanged) longer than [`STUCK_AFTER`],
//! or any process whose mailbox grew over that time while it handled nothing. A function
//! process runs one function for its whole life, so only the mailbox rule applies to it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rebeam_proto::v1 as pb;

use crate::http::api::pid_id;

/// How long a handler may run, or a mailbox grow unhandled, before the process is stuck.
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// A process not seen for this long is forgotten (it exited, or nobody asks for it).
const FORGET_AFTER: Duration = Duration::from_secs(120);

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
    /// How long it has been so, as far as the lists show.
    pub for_ms: u64,
}

/// Observations of processes across lists.
#[derive(Default)]
pub struct StuckWatch {
    seen: Mutex<HashMap<String, Seen>>,
}

impl StuckWatch {
    /// Records a freshly gathered list (taken at `now`).
    pub fn observe(&self, rows: &[pb::ProcessInfo], now: Instant) {
        let mut seen = self.seen.lock();
        for p in rows {
            let Some(pid) = p.pid.as_ref() else { continue };
            let running = p.current_function != "waiting";
            let s = seen.entry(pid_id(pid)).or_insert(Seen {
                handled: p.messages_handled,
                handled_since: now,
                mailbox_then: p.mailbox_len,
                running_since: None,
                last_seen: now,
            });
            if s.handled != p.messages_handled {
                s.handled = p.messages_handled;
                s.handled_since = now;
                s.mailbox_then = p.mailbox_len;
                s.running_since = None;
            }
            s.running_since = match (running, s.running_since) {
                (false, _) => None,
                (true, Some(t)) => Some(t),
                (true, None) => Some(now),
            };
            s.last_seen = now;
        }
        seen.retain(|_, s| now.duration_since(s.last_seen) < FORGET_AFTER);
    }

    /// Whether `p` (as last observed) is stuck.
    pub fn judge(&self, p: &pb::ProcessInfo, now: Instant) -> Option<Stuck> {
        let pid = p.pid.as_ref()?;
        let seen = self.seen.lock();
        judge_seen(p, seen.get(&pid_id(pid))?, now)
    }

    /// The stuck processes among `rows`, counted by node, app and reason (for `/metrics`;
    /// one lock for the whole list).
    pub fn count(
        &self,
        rows: &[pb::ProcessInfo],
        now: Instant,
    ) -> BTreeMap<(String, String, &'static str), u64> {
        let seen = self.seen.lock();
        let mut out = BTreeMap::new();
        for p in rows {
            let Some(pid) = p.pid.as_ref() else { continue };
            let Some(s) = seen.get(&pid_id(pid)) else {
                continue;
            };
            if let Some(stuck) = judge_seen(p, s, now) {
                *out.entry((pid.node.clone(), p.app.clone(), stuck.reason))
                    .or_default() += 1;
            }
        }
        out
    }
}

/// Whether `p`, last seen as `s`, is stuck at `now`.
fn judge_seen(p: &pb::ProcessInfo, s: &Seen, now: Instant) -> Option<Stuck> {
    if p.kind != "function" {
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
    if p.mailbox_len > s.mailbox_then && d >= STUCK_AFTER {
        return Some(Stuck {
            reason: "mailbox growing",
            for_ms: d.as_millis() as u64,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(handled: u64, mailbox: u64, function: &str) -> pb::ProcessInfo {
        pb::ProcessInfo {
            pid: Some(pb::Pid {
                node: "a".into(),
                incarnation: 1,
                serial: 7,
            }),
            kind: "server".into(),
            current_function: function.into(),
            messages_handled: handled,
            mailbox_len: mailbox,
            ..Default::default()
        }
    }

    #[test]
    fn a_long_handler_is_stuck_and_a_moving_one_is_not() {
        let w = StuckWatch::default();
        let t0 = Instant::now();
        w.observe(&[row(3, 0, "app.slow:4")], t0);
        let later = t0 + STUCK_AFTER;
        w.observe(&[row(3, 0, "app.slow:4")], later);
        let s = w.judge(&row(3, 0, "app.slow:4"), later).expect("stuck");
        assert_eq!(s.reason, "handler running");
        w.observe(&[row(4, 0, "app.slow:4")], later);
        assert_eq!(w.judge(&row(4, 0, "app.slow:4"), later), None);
    }

    #[test]
    fn an_idle_process_is_not_stuck_but_a_growing_mailbox_is() {
        let w = StuckWatch::default();
        let t0 = Instant::now();
        w.observe(&[row(3, 0, "waiting")], t0);
        let later = t0 + STUCK_AFTER;
        w.observe(&[row(3, 0, "waiting")], later);
        assert_eq!(w.judge(&row(3, 0, "waiting"), later), None);
        w.observe(&[row(3, 9, "waiting")], later);
        let s = w.judge(&row(3, 9, "waiting"), later).expect("stuck");
        assert_eq!(s.reason, "mailbox growing");
    }

    #[test]
    fn stuck_processes_are_counted_by_node_app_and_reason() {
        let w = StuckWatch::default();
        let t0 = Instant::now();
        let mut other = row(1, 0, "waiting");
        other.pid = Some(pb::Pid {
            node: "b".into(),
            incarnation: 1,
            serial: 8,
        });
        other.app = "shop".into();
        let rows = [row(3, 0, "app.slow:4"), other.clone()];
        w.observe(&rows, t0);
        assert!(w.count(&rows, t0).is_empty());
        let later = t0 + STUCK_AFTER;
        other.mailbox_len = 4;
        let rows = [row(3, 0, "app.slow:4"), other];
        w.observe(&rows, later);
        let counted: Vec<_> = w.count(&rows, later).into_iter().collect();
        assert_eq!(
            counted,
            vec![
                (("a".into(), String::new(), "handler running"), 1),
                (("b".into(), "shop".into(), "mailbox growing"), 1),
            ]
        );
    }
}
