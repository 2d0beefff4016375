//! Node leases, tracked in the leader's memory; a lapse is declared through the log.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::core::Core;
use crate::types::Command;

/// Deadlines of the nodes' leases on this member (meaningful only while it leads).
#[derive(Default)]
pub struct Leases {
    deadlines: Mutex<HashMap<String, (u64, Instant)>>,
    declaring: Mutex<HashSet<(String, u64)>>,
    /// Watch streams closed since the last tick: (node, incarnation, shortened deadline).
    closed: Mutex<Vec<(String, u64, Instant)>>,
    /// When this member last confirmed with a quorum that it leads: (term, start of the check).
    confirmed: Mutex<Option<(u64, Instant)>>,
}

impl Leases {
    /// A heartbeat from a live node incarnation pushes its deadline out by `lease`.
    pub fn renew(&self, node: &str, incarnation: u64, lease: std::time::Duration) {
        self.deadlines
            .lock()
            .insert(node.to_string(), (incarnation, Instant::now() + lease));
    }

    /// The node's watch stream closed: the node fences itself within `stream_fence`, so it may
    /// be declared dead once that has passed rather than after the whole lease.
    pub fn stream_closed(&self, node: &str, incarnation: u64, stream_fence: std::time::Duration) {
        // Also kept aside until the lease task's next tick: a leader that just took over
        // resets every deadline on its first tick, which must not erase this.
        self.closed
            .lock()
            .push((node.to_string(), incarnation, Instant::now() + stream_fence));
        let mut d = self.deadlines.lock();
        tracing::debug!(node, incarnation, known = ?d.get(node), "shortening lease after stream close");
        if let Some((inc, deadline)) = d.get_mut(node) {
            let soon = Instant::now() + stream_fence;
            if *inc == incarnation && *deadline > soon {
                *deadline = soon;
            }
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
            .map(|(n, (inc, d))| {
                (
                    n.clone(),
                    (*inc, d.saturating_duration_since(now).as_millis() as u64),
                )
            })
            .collect()
    }

    fn clear(&self) {
        self.deadlines.lock().clear();
    }

    /// Applies the stream closes seen since the last tick to the deadlines.
    fn apply_closed(&self, d: &mut HashMap<String, (u64, Instant)>) {
        for (node, incarnation, soon) in self.closed.lock().drain(..) {
            if let Some((inc, deadline)) = d.get_mut(&node) {
                if *inc == incarnation && *deadline > soon {
                    *deadline = soon;
                }
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
        // If this task could not run for a while (an overloaded or paused leader), heartbeats
        // were probably not served either: do not blame the nodes for the leader's stall.
        let stalled = last_tick.elapsed().saturating_sub(tick);
        last_tick = Instant::now();
        if stalled > tick {
            for (_, deadline) in core.leases.deadlines.lock().values_mut() {
                *deadline += stalled;
            }
        }
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
            d.retain(|node, (inc, _)| alive.iter().any(|(n, i)| n == node && i == inc));
            for (node, inc) in &alive {
                let e = d.entry(node.clone()).or_insert((*inc, now + lease));
                if e.0 != *inc {
                    *e = (*inc, now + lease);
                }
            }
            core.leases.apply_closed(&mut d);
            for (node, inc) in &alive {
                let Some(e) = d.get(node) else { continue };
                if e.0 == *inc && now >= e.1 {
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
