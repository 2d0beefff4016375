//! Node leases, tracked in the leader's memory; a lapse is declared through the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::core::Core;
use crate::types::Command;

/// One node incarnation's lease on this member.
struct Lease {
    incarnation: u64,
    deadline: Instant,
    /// When this member last renewed it for a node that said its watch stream was broken.
    renewed_unwatched: Option<Instant>,
}

/// A watch stream of a node closed on this member (see `Leases::stream_closed`).
struct Closed {
    node: String,
    incarnation: u64,
    opened: Instant,
    soon: Instant,
}

/// Deadlines of the nodes' leases on this member (meaningful only while it leads).
#[derive(Default)]
pub struct Leases {
    deadlines: Mutex<HashMap<String, Lease>>,
    declaring: Mutex<HashSet<(String, u64)>>,
    /// Watch streams closed since the last tick.
    closed: Mutex<Vec<Closed>>,
    /// When this member last confirmed with a quorum that it leads: (term, start of the check).
    confirmed: Mutex<Option<(u64, Instant)>>,
}

impl Lease {
    /// A stream close shortens the lease to `c.soon` unless the node renewed saying its
    /// stream was broken after that stream opened (it saw the break and holds its lease by
    /// renewals alone; the close may reach this member after such a renewal, or before it).
    /// A renewal that says the stream was open proves nothing once the close is seen: the
    /// node sent it before the break (a crashed node's last renewal can land just after).
    fn close(&mut self, c: &Closed) {
        if self.incarnation != c.incarnation {
            return;
        }
        if self.renewed_unwatched.is_some_and(|t| t >= c.opened) {
            return;
        }
        if self.deadline > c.soon {
            self.deadline = c.soon;
        }
    }
}

impl Leases {
    /// A heartbeat from a live node incarnation pushes its deadline out by `lease`;
    /// `watching` is false when the node said its watch stream is broken.
    pub fn renew(&self, node: &str, incarnation: u64, lease: std::time::Duration, watching: bool) {
        let now = Instant::now();
        let mut d = self.deadlines.lock();
        let unwatched = d
            .get(node)
            .filter(|l| l.incarnation == incarnation)
            .and_then(|l| l.renewed_unwatched);
        d.insert(
            node.to_string(),
            Lease {
                incarnation,
                deadline: now + lease,
                renewed_unwatched: if watching { unwatched } else { Some(now) },
            },
        );
    }

    /// The node's watch stream (opened at `opened`) closed: a node whose stream breaks
    /// fences itself within `stream_fence` unless it renews, so it may be declared dead once
    /// that has passed rather than after the whole lease.
    pub fn stream_closed(
        &self,
        node: &str,
        incarnation: u64,
        opened: Instant,
        stream_fence: std::time::Duration,
    ) {
        let now = Instant::now();
        let c = Closed {
            node: node.to_string(),
            incarnation,
            opened,
            soon: now + stream_fence,
        };
        let mut d = self.deadlines.lock();
        if let Some(l) = d.get_mut(node) {
            l.close(&c);
        }
        drop(d);
        // Also kept aside until the lease task's next tick: a leader that just took over
        // resets every deadline on its first tick, which must not erase this.
        self.closed.lock().push(c);
    }

    /// Pushes every deadline out by `by`: time this member could not renew leases (it
    /// stalled, or could not confirm its leadership) is not held against the nodes.
    fn hold(&self, by: std::time::Duration) {
        for l in self.deadlines.lock().values_mut() {
            l.deadline += by;
        }
    }

    /// True when this member confirmed its leadership of `term` with a quorum less than
    /// `within` ago: only then may it renew leases (see `Timings::confirm_within`).
    pub fn confirmed_within(&self, term: u64, within: std::time::Duration) -> bool {
        matches!(*self.confirmed.lock(), Some((t, at)) if t == term && at.elapsed() < within)
    }

    /// Milliseconds left on each node's lease, with its incarnation (empty unless leading).
    pub fn remaining(&self) -> HashMap<String, (u64, u64)> {
        let now = Instant::now();
        self.deadlines
            .lock()
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    (
                        l.incarnation,
                        l.deadline.saturating_duration_since(now).as_millis() as u64,
                    ),
                )
            })
            .collect()
    }

    fn clear(&self) {
        self.deadlines.lock().clear();
    }

    /// Applies the stream closes seen since the last tick to the deadlines.
    fn apply_closed(&self, d: &mut HashMap<String, Lease>) {
        for c in self.closed.lock().drain(..) {
            if let Some(l) = d.get_mut(&c.node) {
                l.close(&c);
            }
        }
    }
}

/// Runs on every member: while it leads, confirms its leadership with a quorum every Raft
/// heartbeat interval, so heartbeats are renewed only by a leader that still is one.
pub async fn confirm(core: Arc<Core>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = core.config.timings.raft_heartbeat;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let term = {
            let m = core.raft.metrics();
            let m = m.borrow();
            if !(m.current_leader == Some(core.id) && m.state.is_leader()) {
                continue;
            }
            m.current_term
        };
        let start = Instant::now();
        let checked = tokio::time::timeout(every * 4, core.raft.get_read_log_id()).await;
        if matches!(checked, Ok(Ok(_))) {
            let mut c = core.leases.confirmed.lock();
            if c.is_none_or(|(t, at)| t < term || (t == term && at < start)) {
                *c = Some((term, start));
            }
        }
    }
}

/// Runs on every member; acts only while this member leads.
pub async fn run(core: Arc<Core>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let lease = core.config.timings.lease;
    let tick = (lease / 20).max(std::time::Duration::from_millis(5));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led_term: Option<u64> = None;
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
        let elapsed = last_tick.elapsed();
        last_tick = Instant::now();
        let (leader, term) = {
            let m = core.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader == Some(core.id) && m.state.is_leader(),
                m.current_term,
            )
        };
        if !leader {
            led_term = None;
            core.leases.clear();
            core.leases.closed.lock().clear();
            continue;
        }
        if led_term != Some(term) {
            // A new leader does not know when nodes last renewed: every node gets a full lease.
            led_term = Some(term);
            core.leases.clear();
        } else if !core
            .leases
            .confirmed_within(term, core.config.timings.confirm_within())
        {
            // Renewals are refused until this leader confirms its leadership again (a new
            // leader, or one whose quorum answers slowly under load): that time does not count.
            core.leases.hold(elapsed);
        } else if elapsed.saturating_sub(tick) > tick {
            // This task could not run for a while (an overloaded or paused leader), so
            // heartbeats were probably not served either: do not blame the nodes for the stall.
            core.leases.hold(elapsed.saturating_sub(tick));
        }
        let alive: Vec<(String, u64)> = {
            let a = core.shared.applied.read();
            a.state
                .nodes
                .values()
                .filter(|n| n.alive)
                .map(|n| (n.id.clone(), n.incarnation))
                .collect()
        };
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut d = core.leases.deadlines.lock();
            d.retain(|node, l| alive.iter().any(|(n, i)| n == node && *i == l.incarnation));
            for (node, inc) in &alive {
                let fresh = || Lease {
                    incarnation: *inc,
                    deadline: now + lease,
                    renewed_unwatched: None,
                };
                let e = d.entry(node.clone()).or_insert_with(fresh);
                if e.incarnation != *inc {
                    *e = fresh();
                }
            }
            core.leases.apply_closed(&mut d);
            for (node, inc) in &alive {
                let Some(l) = d.get(node) else { continue };
                if l.incarnation == *inc && now >= l.deadline {
                    expired.push((node.clone(), *inc));
                }
            }
        }
        for (node, incarnation) in expired {
            if !core
                .leases
                .declaring
                .lock()
                .insert((node.clone(), incarnation))
            {
                continue;
            }
            let core2 = core.clone();
            tokio::spawn(async move {
                tracing::warn!(node, incarnation, "lease lapsed; declaring the node dead");
                let cmd = Command::DeclareDead {
                    node: node.clone(),
                    incarnation,
                    reason: "lease expired".into(),
                };
                if let Err(e) = core2.proposer.propose(cmd).await {
                    tracing::warn!(node, incarnation, error = %e, "could not declare node dead; will retry");
                }
                core2.leases.declaring.lock().remove(&(node, incarnation));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LEASE: Duration = Duration::from_secs(2);
    const FENCE: Duration = Duration::from_millis(300);

    fn left(l: &Leases) -> Duration {
        Duration::from_millis(l.remaining()["n"].1)
    }

    fn tick(l: &Leases) {
        let mut d = l.deadlines.lock();
        l.apply_closed(&mut d);
    }

    #[test]
    fn a_crashed_nodes_stream_close_shortens_its_lease() {
        let l = Leases::default();
        let opened = Instant::now();
        l.renew("n", 1, LEASE, true);
        l.stream_closed("n", 1, opened, FENCE);
        tick(&l);
        assert!(left(&l) <= FENCE);
    }

    #[test]
    fn a_renewal_without_the_stream_outlives_a_close_seen_after_it() {
        // The node saw its stream break and renewed at once (it lifts its own bound); the
        // leader noticed the close only after serving that renewal.
        let l = Leases::default();
        let opened = Instant::now();
        l.renew("n", 1, LEASE, false);
        l.stream_closed("n", 1, opened, FENCE);
        tick(&l);
        assert!(
            left(&l) > LEASE - Duration::from_millis(500),
            "{:?}",
            left(&l)
        );
    }

    #[test]
    fn a_renewal_saying_the_stream_broke_is_not_undone_at_the_next_tick() {
        let l = Leases::default();
        let opened = Instant::now();
        l.renew("n", 1, LEASE, true);
        l.stream_closed("n", 1, opened, FENCE);
        std::thread::sleep(Duration::from_millis(2));
        l.renew("n", 1, LEASE, false);
        tick(&l);
        assert!(
            left(&l) > LEASE - Duration::from_millis(500),
            "{:?}",
            left(&l)
        );
    }

    #[test]
    fn a_renewal_sent_before_the_break_and_served_after_the_close_does_not_undo_it() {
        // A crashed node's last renewal, in flight when it died, lands after the close.
        let l = Leases::default();
        let opened = Instant::now();
        l.renew("n", 1, LEASE, true);
        l.stream_closed("n", 1, opened, FENCE);
        std::thread::sleep(Duration::from_millis(2));
        l.renew("n", 1, LEASE, true);
        tick(&l);
        assert!(left(&l) <= FENCE, "{:?}", left(&l));
    }

    #[test]
    fn an_unwatched_renewal_before_the_stream_opened_does_not_protect_it() {
        let l = Leases::default();
        l.renew("n", 1, LEASE, false);
        std::thread::sleep(Duration::from_millis(2));
        let opened = Instant::now();
        l.renew("n", 1, LEASE, true);
        std::thread::sleep(Duration::from_millis(2));
        l.stream_closed("n", 1, opened, FENCE);
        tick(&l);
        assert!(left(&l) <= FENCE);
    }

    #[test]
    fn time_a_leader_could_not_renew_is_not_held_against_nodes() {
        let l = Leases::default();
        l.renew("n", 1, Duration::from_millis(100), true);
        l.hold(LEASE);
        assert!(left(&l) > LEASE);
    }
}
