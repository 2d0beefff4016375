//! Exit reports of top-level children kept behind their start reports: the controller
//! ignores the exit of a child it does not know started (it would keep the child's
//! assignment forever), so an exit that comes before the start report waits for it.

use crate::runtime::Pid;
use std::collections::{HashMap, HashSet};

/// Which top-level children had their start reported, and exits that came first.
#[derive(Default)]
pub struct StartGate {
    reported: HashSet<Pid>,
    early: HashMap<Pid, String>,
}

impl StartGate {
    /// `pid` exited with `reason`: the reason to report now, or None while its start report
    /// is still to come.
    pub fn exited(&mut self, pid: Pid, reason: String) -> Option<String> {
        if self.reported.remove(&pid) {
            return Some(reason);
        }
        self.early.insert(pid, reason);
        None
    }

    /// The start of `pid` was reported (or given up on): its exit to report now, if it came
    /// first.
    pub fn start_reported(&mut self, pid: Pid) -> Option<String> {
        let early = self.early.remove(&pid);
        if early.is_none() {
            self.reported.insert(pid);
        }
        early
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::NodeId;

    fn pid(n: u64) -> Pid {
        Pid {
            node: NodeId::intern("gate"),
            incarnation: 1,
            serial: n,
        }
    }

    #[test]
    fn an_exit_before_the_start_report_waits_for_it() {
        let mut gate = StartGate::default();
        assert_eq!(gate.exited(pid(1), "normal".into()), None);
        assert_eq!(gate.start_reported(pid(1)).as_deref(), Some("normal"));
        // Both ends are done: nothing of pid 1 stays behind.
        assert_eq!(gate.exited(pid(1), "again".into()), None);
        assert_eq!(gate.start_reported(pid(1)).as_deref(), Some("again"));
    }

    #[test]
    fn an_exit_after_the_start_report_goes_at_once() {
        let mut gate = StartGate::default();
        assert_eq!(gate.start_reported(pid(2)), None);
        assert_eq!(
            gate.exited(pid(2), "killed".into()).as_deref(),
            Some("killed")
        );
        assert!(gate.reported.is_empty() && gate.early.is_empty());
    }
}
