//! Which processes of the gathered lists look stuck (see `rebeam_http::stuck`, the rules the
//! nodes' own `/metrics` judge by too).

use std::collections::BTreeMap;
use std::time::Instant;

use rebeam_http::stuck::{Observed, Stuck};
use rebeam_proto::v1 as pb;

use crate::http::api::pid_id;

pub use rebeam_http::stuck::STUCK_AFTER;

/// What a process list row shows of the process, as the rules need it.
fn observed(p: &pb::ProcessInfo) -> Observed {
    Observed {
        handled: p.messages_handled,
        mailbox: p.mailbox_len,
        running: p.current_function != "waiting",
        function: p.kind == "function",
    }
}

/// Observations of processes across lists.
#[derive(Default)]
pub struct StuckWatch(rebeam_http::stuck::StuckWatch);

impl StuckWatch {
    /// Records a freshly gathered list (taken at `now`).
    pub fn observe(&self, rows: &[pb::ProcessInfo], now: Instant) {
        let ids: Vec<(String, Observed)> = rows
            .iter()
            .filter_map(|p| Some((pid_id(p.pid.as_ref()?), observed(p))))
            .collect();
        self.0
            .observe(ids.iter().map(|(id, o)| (id.as_str(), *o)), now);
    }

    /// Whether `p` (as last observed) is stuck.
    pub fn judge(&self, p: &pb::ProcessInfo, now: Instant) -> Option<Stuck> {
        self.0.judge(&pid_id(p.pid.as_ref()?), observed(p), now)
    }

    /// The stuck processes among `rows`, counted by node, app and reason (for `/metrics`;
    /// one lock for the whole list).
    pub fn count(
        &self,
        rows: &[pb::ProcessInfo],
        now: Instant,
    ) -> BTreeMap<(String, String, &'static str), u64> {
        let with_pid: Vec<(&pb::ProcessInfo, String)> = rows
            .iter()
            .filter_map(|p| Some((p, pid_id(p.pid.as_ref()?))))
            .collect();
        let judged = self.0.judge_all(
            with_pid.iter().map(|(p, id)| (id.as_str(), observed(p))),
            now,
        );
        let mut out = BTreeMap::new();
        for ((p, _), stuck) in with_pid.iter().zip(judged) {
            if let (Some(stuck), Some(pid)) = (stuck, p.pid.as_ref()) {
                *out.entry((pid.node.clone(), p.app.clone(), stuck.reason))
                    .or_default() += 1;
            }
        }
        out
    }
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
