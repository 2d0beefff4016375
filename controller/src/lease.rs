//! Node leases, tracked in the leader's memory; a lapse is declared through the log.
//!
//! What a member saw of a node's lease is kept as facts ([`LeaseFacts`]: grant, renewals,
//! stream closes, time it could not renew) and the expiry follows from them in one pure
//! function, [`deadline`], so the rule can be read and tested in one place.
//!
//! The leader also measures how long renewals wait before it serves them ([`Transit`],
//! [`ServingLag`]): an overloaded leader serves live nodes' renewals late, and that lag is
//! not held against any node (it only postpones declaring a node dead, never advances it).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::core::Core;
use crate::types::Command;

/// Most stream closes remembered per node incarnation (the latest ones).
const MAX_CLOSES: usize = 4;

/// A watch stream of a node that closed on this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// When the stream opened.
    pub opened: Instant,
    /// The node's number for the stream (`WatchRequest.stream`); 0 when unnumbered.
    pub stream: u64,
    /// When this member saw it close.
    pub at: Instant,
    /// Nothing listened at the node's address any more once the stream closed (although
    /// something did while it was open): its process is gone and runs no code.
    pub process_gone: bool,
}

/// What this member saw of one node incarnation's lease while leading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFacts {
    /// The node incarnation the facts are about.
    pub incarnation: u64,
    /// The lease was granted here: the node joined, or this member began leading (a new
    /// leader does not know when nodes last renewed, so every node starts with a full lease).
    pub granted: Instant,
    /// The last renewal this member served.
    pub renewed: Option<Instant>,
    /// The last renewal served for a node that said its watch stream was broken.
    pub renewed_unwatched: Option<Instant>,
    /// The highest stream number the node said (in a renewal) it saw end or gave up on.
    pub streams_ended: u64,
    /// The latest stream closes.
    pub closes: Vec<Close>,
    /// Stretches this member could not renew leases (it stalled, or could not confirm its
    /// leadership): (when it noticed, how long). Not held against the node.
    pub held: Vec<(Instant, Duration)>,
    /// How this node's renewals travel to this member (against the node's own clock).
    pub transit: Transit,
}

/// How long one window of a node's fastest renewal transit lasts; the baseline is the
/// fastest of this window and the previous one, so it follows clock drift (100 ppm is 2 ms
/// over two windows) and forgets a lucky sample within 20 s.
const TRANSIT_WINDOW: Duration = Duration::from_secs(10);

/// One node's renewal transit: arrival here minus the node's send stamp (`sent_ms`), in
/// ms. That difference is the clocks' offset plus the time in flight and in queues; its
/// lowest value lately is the offset plus an unqueued transit, so a renewal's excess over
/// it is how long that renewal waited (on the way, or for this member to serve it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transit {
    /// The lowest difference in the current window and in the previous one.
    best: [Option<i64>; 2],
    /// When the current window began.
    since: Option<Instant>,
}

impl Transit {
    /// A renewal stamped `sent_ms` by the node arrived at `arrived_ms` (this member's
    /// clock, at `at`): how much longer than the fastest recent one it took.
    pub fn excess(&mut self, at: Instant, arrived_ms: i64, sent_ms: u64) -> Duration {
        // Saturating: the stamp is the node's word, any u64.
        let diff = arrived_ms.saturating_sub(i64::try_from(sent_ms).unwrap_or(i64::MAX));
        match self.since {
            Some(s) if at.saturating_duration_since(s) < TRANSIT_WINDOW => {}
            Some(_) => {
                self.best = [None, self.best[0]];
                self.since = Some(at);
            }
            None => self.since = Some(at),
        }
        self.best[0] = Some(self.best[0].map_or(diff, |b| b.min(diff)));
        let base = self.best.iter().flatten().copied().min().unwrap_or(diff);
        Duration::from_millis(diff.saturating_sub(base).max(0) as u64)
    }
}

/// Rounding of the millisecond stamps and clock drift within two transit windows, with room
/// to spare: a renewal is taken as given up by its node only when its excess passes the
/// node's attempt bound by more than this.
const LATE_MARGIN: Duration = Duration::from_millis(20);

/// True when a renewal that waited `excess` longer than its node's fastest recent one came
/// after the node gave up on it (`attempt_ms`, 0: never). Its real wait is at least its
/// excess (the fastest transit is not negative), so its answer reached the node after the
/// node's bound, and the node counts no such answer: counting it here would keep a lease
/// the node no longer holds (measured: nodes 5.7–24 s without an acknowledged renewal and
/// not declared dead, while a real node has fenced after 1.4 s).
pub fn late_for_the_node(excess: Duration, attempt_ms: u64) -> bool {
    attempt_ms > 0 && excess > Duration::from_millis(attempt_ms) + LATE_MARGIN
}

/// Renewals served within this long count towards the serving lag.
const LAG_WINDOW: Duration = Duration::from_secs(1);
/// Fewer renewals than this in the window tell nothing about the leader (a handful of
/// nodes, one of them just thawed from a pause).
const LAG_MIN_SAMPLES: usize = 10;
/// Most renewals remembered for the lag (a second's worth at 10,000 nodes).
const LAG_MAX_SAMPLES: usize = 50_000;

/// How late this member serves renewals lately: the 90th percentile of the renewals served
/// in the last second, by how much longer each took than its node's fastest recent one.
/// A single slow or paused node moves it only with one sample in ten; an overloaded leader
/// moves every sample.
#[derive(Debug, Default)]
pub struct ServingLag {
    samples: VecDeque<(Instant, Duration)>,
}

impl ServingLag {
    /// A renewal served at `at` had waited `excess`.
    pub fn record(&mut self, at: Instant, excess: Duration) {
        if self.samples.len() >= LAG_MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, excess));
    }

    /// The lag at `now` (zero with too few samples), at most `cap`.
    pub fn at(&mut self, now: Instant, cap: Duration) -> Duration {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > LAG_WINDOW)
        {
            self.samples.pop_front();
        }
        if self.samples.len() < LAG_MIN_SAMPLES {
            return Duration::ZERO;
        }
        let mut v: Vec<Duration> = self.samples.iter().map(|(_, d)| *d).collect();
        let k = (v.len() - 1) * 9 / 10;
        let (_, p90, _) = v.select_nth_unstable(k);
        (*p90).min(cap)
    }
}

/// The two durations the expiry depends on.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimes {
    /// A lease lasts this long after its grant or last renewal.
    pub lease: Duration,
    /// A node fences this long after its watch stream broke unless it renews saying so.
    pub stream_fence: Duration,
}

/// When the lease described by `f` ends on this member; a node whose lease ended may be
/// declared dead.
///
/// - A full `lease` from the later of the grant and the last renewal,
/// - pushed out by the time this member could not renew since then,
/// - cut to `stream_fence` after a watch stream closed (pushed out likewise), unless the
///   node saw that stream end: it holds its lease by renewals alone. A numbered stream
///   ended for the node when a renewal named it (or a later one) in `streams_ended`. For an
///   unnumbered one (an older node) the rule is weaker: the node renewed after that stream
///   opened saying its stream was broken; such a renewal may be about the time before the
///   stream opened, so that close is then moot too. A renewal that said the stream was
///   open proves nothing once the close is seen: the node sent it before the break (a
///   crashed node's last renewal can land after the close).
/// - cut to the close itself when the node's process was found gone (it cannot run code).
///
/// On a member that serves renewals `lag` late a renewal a live node sent up to `lag` ago
/// may still be waiting to be served, so every end is pushed out by `lag` (but for a
/// process found gone, which ends at its close).
pub fn deadline(f: &LeaseFacts, t: LeaseTimes, lag: Duration) -> Instant {
    let held_since = |from: Instant| -> Duration {
        f.held
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, d)| *d)
            .sum()
    };
    let base = f.renewed.map_or(f.granted, |r| r.max(f.granted));
    let mut end = base + t.lease + held_since(base) + lag;
    for c in &f.closes {
        let seen_by_node = if c.stream > 0 {
            f.streams_ended >= c.stream
        } else {
            f.renewed_unwatched.is_some_and(|u| u >= c.opened)
        };
        let cut = if c.process_gone {
            c.at
        } else if seen_by_node {
            continue;
        } else {
            c.at + t.stream_fence + held_since(c.at) + lag
        };
        end = end.min(cut);
    }
    end
}

/// True when the lease described by `f` has ended at `now` on a member serving renewals
/// `lag` late (see [`deadline`]).
pub fn expired(f: &LeaseFacts, t: LeaseTimes, now: Instant, lag: Duration) -> bool {
    now >= deadline(f, t, lag)
}

impl LeaseFacts {
    /// A lease granted at `at`.
    pub fn granted(incarnation: u64, at: Instant) -> LeaseFacts {
        LeaseFacts {
            incarnation,
            granted: at,
            renewed: None,
            renewed_unwatched: None,
            streams_ended: 0,
            closes: Vec::new(),
            held: Vec::new(),
            transit: Transit::default(),
        }
    }

    /// A renewal served at `at`; `watching` and `streams_ended` are what the node said of
    /// its streams.
    pub fn renew(&mut self, at: Instant, watching: bool, streams_ended: u64) {
        self.renewed = Some(self.renewed.map_or(at, |r| r.max(at)));
        self.streams_ended = self.streams_ended.max(streams_ended);
        if !watching {
            self.renewed_unwatched = Some(self.renewed_unwatched.map_or(at, |r| r.max(at)));
        }
        // Holds before both the renewal and every close no longer matter: keep the facts small.
        let from = self.closes.iter().map(|c| c.at).fold(at, Instant::min);
        self.held.retain(|(h, _)| *h >= from);
    }

    /// A watch stream of the node closed.
    pub fn close(&mut self, c: Close) {
        self.closes.push(c);
        if self.closes.len() > MAX_CLOSES {
            self.closes.remove(0);
        }
    }

    /// This member could not renew for `by`, noticed at `at`.
    pub fn hold(&mut self, at: Instant, by: Duration) {
        self.held.push((at, by));
    }
}

/// A stream close waiting for the lease task's next tick.
struct Closed {
    node: String,
    incarnation: u64,
    close: Close,
}

/// The nodes' leases on this member (meaningful only while it leads).
pub struct Leases {
    times: LeaseTimes,
    facts: Mutex<HashMap<String, LeaseFacts>>,
    declaring: Mutex<HashSet<(String, u64)>>,
    /// Watch streams closed since the last tick.
    closed: Mutex<Vec<Closed>>,
    /// Wakes the lease task before its next tick (a node found gone).
    wake: tokio::sync::Notify,
    /// When this member last confirmed with a quorum that it leads: (term, start of the check).
    confirmed: Mutex<Option<(u64, Instant)>>,
    /// Wakes renewals waiting for a new leader's first confirmation.
    confirmed_now: tokio::sync::Notify,
    /// The start of this member's millisecond clock for renewal transits.
    epoch: Instant,
    /// How late this member serves renewals.
    lag: Mutex<ServingLag>,
}

impl Leases {
    /// Leases lasting `lease`, cut to `stream_fence` after a stream close.
    pub fn new(lease: Duration, stream_fence: Duration) -> Leases {
        Leases {
            times: LeaseTimes {
                lease,
                stream_fence,
            },
            facts: Mutex::new(HashMap::new()),
            declaring: Mutex::new(HashSet::new()),
            closed: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            confirmed: Mutex::new(None),
            confirmed_now: tokio::sync::Notify::new(),
            epoch: Instant::now(),
            lag: Mutex::new(ServingLag::default()),
        }
    }

    /// A node incarnation joined here: its lease starts now.
    pub fn grant(&self, node: &str, incarnation: u64) {
        self.facts.lock().insert(
            node.to_string(),
            LeaseFacts::granted(incarnation, Instant::now()),
        );
    }

    /// A heartbeat from a live node incarnation renews its lease; `watching` is false when
    /// the node said its watch stream is broken, `streams_ended` the highest stream number
    /// it saw end, `sent_ms` when it sent the heartbeat by its own clock (0: unknown),
    /// `attempt_ms` how long it waits for the answer (0: unbounded). False when the renewal
    /// is not counted: it waited here longer than the node waits for it (see
    /// [`late_for_the_node`]); it still counts towards the serving lag.
    pub fn renew(
        &self,
        node: &str,
        incarnation: u64,
        watching: bool,
        streams_ended: u64,
        sent_ms: u64,
        attempt_ms: u64,
    ) -> bool {
        let now = Instant::now();
        let (counted, excess) = {
            let mut facts = self.facts.lock();
            let f = facts
                .entry(node.to_string())
                .or_insert_with(|| LeaseFacts::granted(incarnation, now));
            if f.incarnation != incarnation {
                *f = LeaseFacts::granted(incarnation, now);
            }
            let arrived = now.saturating_duration_since(self.epoch).as_millis() as i64;
            let excess = (sent_ms > 0).then(|| f.transit.excess(now, arrived, sent_ms));
            let counted = !excess.is_some_and(|e| late_for_the_node(e, attempt_ms));
            if counted {
                f.renew(now, watching, streams_ended);
            }
            (counted, excess)
        };
        if let Some(excess) = excess {
            self.lag.lock().record(now, excess);
        }
        counted
    }

    /// How late this member serves renewals now (see [`ServingLag`]), at most a lease.
    pub fn serving_lag(&self) -> Duration {
        self.lag.lock().at(Instant::now(), self.times.lease)
    }

    /// The node's watch stream number `stream` (opened at `opened`) closed; `process_gone`
    /// when its process was found gone. Applied at the lease task's next tick (woken at once
    /// for a gone one).
    pub fn stream_closed(
        &self,
        node: &str,
        incarnation: u64,
        opened: Instant,
        stream: u64,
        process_gone: bool,
    ) {
        self.closed.lock().push(Closed {
            node: node.to_string(),
            incarnation,
            close: Close {
                opened,
                stream,
                at: Instant::now(),
                process_gone,
            },
        });
        if process_gone {
            self.wake.notify_one();
        }
    }

    /// Time this member could not renew leases is not held against the nodes.
    fn hold(&self, by: Duration) {
        let now = Instant::now();
        for f in self.facts.lock().values_mut() {
            f.hold(now, by);
        }
    }

    /// True when this member confirmed its leadership of `term` with a quorum less than
    /// `within` ago: only then may it renew leases (see `Timings::confirm_within`).
    pub fn confirmed_within(&self, term: u64, within: Duration) -> bool {
        matches!(*self.confirmed.lock(), Some((t, at)) if t == term && at.elapsed() < within)
    }

    /// Waits until `until` for [`Leases::confirmed_within`] to hold: a leader elected a moment
    /// ago confirms within a Raft round trip, and a renewal that waits for it is served
    /// instead of sending its node into another round of backoff.
    pub async fn confirmed_by(&self, term: u64, within: Duration, until: Instant) -> bool {
        loop {
            let notified = self.confirmed_now.notified();
            if self.confirmed_within(term, within) {
                return true;
            }
            if tokio::time::timeout_at(until.into(), notified)
                .await
                .is_err()
            {
                return self.confirmed_within(term, within);
            }
        }
    }

    /// Milliseconds left on each node's lease, with its incarnation (empty unless leading).
    pub fn remaining(&self) -> HashMap<String, (u64, u64)> {
        let lag = self.serving_lag();
        let now = Instant::now();
        self.facts
            .lock()
            .iter()
            .map(|(n, f)| {
                let left = deadline(f, self.times, lag).saturating_duration_since(now);
                (n.clone(), (f.incarnation, left.as_millis() as u64))
            })
            .collect()
    }

    fn clear(&self) {
        self.facts.lock().clear();
        *self.lag.lock() = ServingLag::default();
    }

    /// Records the stream closes seen since the last tick.
    fn apply_closed(&self, facts: &mut HashMap<String, LeaseFacts>) {
        for c in self.closed.lock().drain(..) {
            if let Some(f) = facts.get_mut(&c.node) {
                if f.incarnation == c.incarnation {
                    f.close(c.close);
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
    let mut metrics = core.raft.metrics();
    let leading = |m: &openraft::RaftMetrics<u64, crate::types::MemberNode>| {
        (m.current_leader == Some(core.id) && m.state.is_leader()).then_some(m.current_term)
    };
    let mut led = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // A new leader confirms at once rather than at its next tick: every node's
            // renewal waits for that first confirmation after a leader change.
            r = metrics.changed() => {
                if r.is_err() {
                    return;
                }
                let now = leading(&metrics.borrow_and_update());
                let fresh = now.is_some() && now != led;
                led = now;
                if !fresh {
                    continue;
                }
            }
            _ = shutdown.changed() => return,
        }
        let Some(term) = leading(&core.raft.metrics().borrow()) else {
            continue;
        };
        led = Some(term);
        let start = Instant::now();
        let checked = tokio::time::timeout(every * 4, core.raft.get_read_log_id()).await;
        if matches!(checked, Ok(Ok(_))) {
            let mut c = core.leases.confirmed.lock();
            if c.is_none_or(|(t, at)| t < term || (t == term && at < start)) {
                *c = Some((term, start));
                core.leases.confirmed_now.notify_waiters();
            }
        }
    }
}

/// Member `id`'s membership entry when it must still be given `lease_addr` (`Ok(None)` when
/// it has it; `Err` when `id` is no member). It must while the membership is the initial
/// one too: every initial member writes that (log index 0) with its own address details and
/// Raft never replaces it, so the others' copies may lack an address this member's copy has.
fn lacking_lease_address(
    config: &openraft::StoredMembership<u64, crate::types::MemberNode>,
    id: u64,
    lease_addr: &str,
) -> std::result::Result<Option<crate::types::MemberNode>, ()> {
    let entry = config.membership().get_node(&id).ok_or(())?;
    let initial = config.log_id().is_none_or(|l| l.index == 0);
    Ok((entry.lease_addr != lease_addr || initial).then(|| entry.clone()))
}

/// Records `lease_addr` as member `id`'s lease address in the membership (the leader only;
/// a refusal names the leader); nothing is written when it is there already.
pub async fn record_lease_address(
    core: &Core,
    id: u64,
    lease_addr: &str,
) -> std::result::Result<(), tonic::Status> {
    core.ensure_leader()?;
    let lacking = lacking_lease_address(
        &core.raft.metrics().borrow().membership_config,
        id,
        lease_addr,
    );
    let Ok(lacking) = lacking else {
        return Err(tonic::Status::not_found(format!(
            "member {id} is not in the membership; add it before it advertises a lease address"
        )));
    };
    let Some(mut entry) = lacking else {
        return Ok(());
    };
    entry.lease_addr = lease_addr.to_string();
    let change = openraft::ChangeMembers::SetNodes([(id, entry)].into());
    crate::api::change_membership(core, change).await?;
    tracing::info!(member = id, lease = %lease_addr, "lease address recorded");
    Ok(())
}

/// Keeps this member's lease address in the membership as it advertises it now, on every
/// member and under every leader: a leader records its own, a follower asks the leader
/// (`RaftPeer.Advertise`). Members given as `--peer`, found through `--seeds` or added with
/// `AddController` have none until then; a kernel-picked port changes on restart. Without it
/// followers redirected renewals after a leader change to the new leader's API address, beside
/// the watch streams every node reopens at that moment, and nodes stayed there.
pub async fn advertise(
    core: Arc<Core>,
    net: crate::network::Network,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mine = core.me.lease_addr.clone();
    if mine.is_empty() {
        return;
    }
    let mut metrics = core.raft.metrics();
    // The (term, leader) under which the address was last recorded.
    let mut recorded: Option<(u64, u64)> = None;
    loop {
        let todo = {
            let m = metrics.borrow_and_update();
            let config = &m.membership_config;
            m.current_leader
                .filter(|l| recorded != Some((m.current_term, *l)))
                .filter(|_| matches!(lacking_lease_address(config, core.id, &mine), Ok(Some(_))))
                .and_then(|l| Some((l, config.membership().get_node(&l)?)))
                .map(|(l, leader)| (m.current_term, l, leader.raft_addr.clone()))
        };
        let Some((term, leader, raft_addr)) = todo else {
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            continue;
        };
        let done = if leader == core.id {
            record_lease_address(&core, core.id, &mine).await
        } else {
            let ask = crate::api::raft::Advertised {
                id: core.id,
                lease_addr: mine.clone(),
            };
            net.advertise(&raft_addr, &ask, Duration::from_secs(2))
                .await
        };
        match done {
            Ok(()) => recorded = Some((term, leader)),
            Err(e) => {
                tracing::debug!(error = %e.message(), "could not advertise the lease address yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// Runs on every member; acts only while this member leads.
pub async fn run(core: Arc<Core>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let lease = core.config.timings.lease;
    let tick = (lease / 20).max(Duration::from_millis(5));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led_term: Option<u64> = None;
    let mut last_tick = Instant::now();
    let mut last_lag_log = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = core.leases.wake.notified() => {}
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
        // Renewals live nodes sent up to this long ago may still wait to be served here.
        let lag = core.leases.serving_lag();
        if lag >= tick * 2 && last_lag_log.elapsed() >= Duration::from_secs(1) {
            last_lag_log = Instant::now();
            tracing::warn!(
                lag_ms = lag.as_millis() as u64,
                "serving lease renewals late; not held against the nodes"
            );
        }
        let now = Instant::now();
        let mut expired_nodes = Vec::new();
        {
            let mut facts = core.leases.facts.lock();
            facts.retain(|node, f| alive.iter().any(|(n, i)| n == node && *i == f.incarnation));
            for (node, inc) in &alive {
                let f = facts
                    .entry(node.clone())
                    .or_insert_with(|| LeaseFacts::granted(*inc, now));
                if f.incarnation != *inc {
                    *f = LeaseFacts::granted(*inc, now);
                }
            }
            core.leases.apply_closed(&mut facts);
            for (node, inc) in &alive {
                let Some(f) = facts.get(node) else { continue };
                if f.incarnation == *inc && expired(f, core.leases.times, now, lag) {
                    expired_nodes.push((node.clone(), *inc));
                }
            }
        }
        for (node, incarnation) in expired_nodes {
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
                match core2.proposer.propose(cmd).await {
                    Ok(_) => tracing::debug!(node, incarnation, "node declared dead"),
                    Err(e) => {
                        tracing::warn!(node, incarnation, error = %e, "could not declare node dead; will retry")
                    }
                }
                core2.leases.declaring.lock().remove(&(node, incarnation));
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(2);
    const FENCE: Duration = Duration::from_millis(300);
    const TIMES: LeaseTimes = LeaseTimes {
        lease: LEASE,
        stream_fence: FENCE,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// One step of a node's lease history, `at` milliseconds after the grant.
    enum Step {
        Renew(u64, bool),
        /// A renewal (saying "watching") naming the highest stream the node saw end.
        Ended(u64, u64),
        /// A stream opened at the first time closed at the second.
        Close(u64, u64),
        /// Stream number n, opened at the second time, closed at the third.
        Numbered(u64, u64, u64),
        /// Closed, and the process was found gone.
        Gone(u64, u64),
        Hold(u64, u64),
    }
    use Step::*;

    fn facts(t0: Instant, steps: &[Step]) -> LeaseFacts {
        let at = |n: u64| t0 + ms(n);
        let mut f = LeaseFacts::granted(1, t0);
        for s in steps {
            match *s {
                Renew(t, watching) => f.renew(at(t), watching, 0),
                Ended(t, n) => f.renew(at(t), true, n),
                Numbered(n, o, c) => f.close(super::Close {
                    opened: at(o),
                    stream: n,
                    at: at(c),
                    process_gone: false,
                }),
                Close(o, c) | Gone(o, c) => f.close(super::Close {
                    opened: at(o),
                    stream: 0,
                    at: at(c),
                    process_gone: matches!(s, Gone(..)),
                }),
                Hold(t, by) => f.hold(at(t), ms(by)),
            }
        }
        f
    }

    #[test]
    fn the_deadline_follows_from_the_facts() {
        // (what happened, when the lease ends, in ms after the grant)
        let table: &[(&str, &[Step], u64)] = &[
            ("granted only: a full lease", &[], 2000),
            (
                "renewed: a full lease from the renewal",
                &[Renew(500, true)],
                2500,
            ),
            (
                "renewals out of order: the latest counts",
                &[Renew(900, true), Renew(400, true)],
                2900,
            ),
            (
                "a crashed node's stream close: the stream fence",
                &[Renew(100, true), Close(0, 1000)],
                1300,
            ),
            (
                "the node saw the break and renewed without its stream: close moot",
                &[Renew(100, true), Renew(1010, false), Close(0, 1000)],
                3010,
            ),
            (
                "...also when the leader saw the close after that renewal",
                &[Renew(1010, false), Close(0, 1200)],
                3010,
            ),
            (
                "a renewal sent before the break, served after the close, does not undo it",
                &[Close(0, 1000), Renew(1100, true)],
                1300,
            ),
            (
                "...nor one served after the close was recorded and time passed",
                &[Renew(100, true), Close(0, 1000), Renew(1250, true)],
                1300,
            ),
            (
                "an unwatched renewal before the stream opened does not protect it",
                &[Renew(100, false), Renew(300, true), Close(200, 1000)],
                1300,
            ),
            (
                "a later stream's close counts even if an earlier one's was moot",
                &[Renew(500, false), Close(0, 400), Close(600, 1500)],
                1800,
            ),
            (
                "time the leader could not renew is not held against the node",
                &[Renew(100, true), Hold(600, 700)],
                2800,
            ),
            (
                "holds before the last renewal do not count",
                &[Hold(100, 700), Renew(500, true)],
                2500,
            ),
            (
                "a hold after a close pushes its cut out too",
                &[Close(0, 1000), Hold(1100, 200)],
                1500,
            ),
            (
                "numbered: the first renewal, served after stream 1 opened, does not make \
                 its close moot (it said 'not watching' only because the stream was not open \
                 yet when it was sent)",
                &[Renew(150, false), Numbered(1, 100, 1000)],
                1300,
            ),
            (
                "numbered: a renewal naming the stream as ended makes its close moot, also \
                 when the close is seen later",
                &[Ended(1010, 1), Numbered(1, 0, 1200)],
                3010,
            ),
            (
                "numbered: the break of stream 1 told does not cover stream 2",
                &[Ended(500, 1), Numbered(1, 0, 400), Numbered(2, 600, 1500)],
                1800,
            ),
            (
                "numbered: the highest number told counts, whatever the order",
                &[Ended(900, 2), Ended(950, 1), Numbered(2, 600, 1500)],
                2950,
            ),
            (
                "a gone process ends the lease at the close",
                &[Renew(900, false), Gone(0, 1000)],
                1000,
            ),
        ];
        let t0 = Instant::now();
        for (what, steps, end) in table {
            let f = facts(t0, steps);
            assert_eq!(deadline(&f, TIMES, Duration::ZERO), t0 + ms(*end), "{what}");
            assert!(
                !expired(&f, TIMES, t0 + ms(*end) - ms(1), Duration::ZERO),
                "{what}"
            );
            assert!(expired(&f, TIMES, t0 + ms(*end), Duration::ZERO), "{what}");
        }
    }

    fn left(l: &Leases) -> Duration {
        ms(l.remaining()["n"].1)
    }

    fn tick(l: &Leases) {
        let mut f = l.facts.lock();
        l.apply_closed(&mut f);
    }

    #[test]
    fn a_crashed_nodes_stream_close_shortens_its_lease() {
        let l = Leases::new(LEASE, FENCE);
        let opened = Instant::now();
        l.renew("n", 1, true, 0, 0, 0);
        l.stream_closed("n", 1, opened, 0, false);
        tick(&l);
        assert!(left(&l) <= FENCE);
    }

    #[test]
    fn a_renewal_sent_before_the_break_does_not_undo_a_close_after_a_tick() {
        // Before the facts were kept, a tick between the close and a crashed node's last
        // renewal forgot the close, and the renewal restored the full lease.
        let l = Leases::new(LEASE, FENCE);
        let opened = Instant::now();
        l.renew("n", 1, true, 0, 0, 0);
        l.stream_closed("n", 1, opened, 0, false);
        tick(&l);
        std::thread::sleep(ms(2));
        l.renew("n", 1, true, 0, 0, 0);
        tick(&l);
        assert!(left(&l) <= FENCE, "{:?}", left(&l));
    }

    #[test]
    fn a_renewal_saying_the_stream_broke_is_not_undone_at_the_next_tick() {
        let l = Leases::new(LEASE, FENCE);
        let opened = Instant::now();
        l.renew("n", 1, true, 0, 0, 0);
        l.stream_closed("n", 1, opened, 0, false);
        std::thread::sleep(ms(2));
        l.renew("n", 1, false, 0, 0, 0);
        tick(&l);
        assert!(left(&l) > LEASE - ms(500), "{:?}", left(&l));
    }

    #[test]
    fn a_gone_process_has_no_lease_left() {
        let l = Leases::new(LEASE, FENCE);
        let opened = Instant::now();
        l.renew("n", 1, true, 0, 0, 0);
        l.stream_closed("n", 1, opened, 0, true);
        tick(&l);
        assert_eq!(left(&l), Duration::ZERO);
    }

    #[test]
    fn a_renewals_excess_is_measured_against_its_nodes_fastest_recent_one() {
        let t0 = Instant::now();
        let mut tr = Transit::default();
        // The node's clock is 5 s behind this member's: the offset cancels out.
        assert_eq!(tr.excess(t0, 10_000, 5_000), ms(0));
        assert_eq!(tr.excess(t0 + ms(200), 10_203, 5_200), ms(3));
        assert_eq!(tr.excess(t0 + ms(400), 10_900, 5_400), ms(500));
        // A faster one becomes the baseline.
        assert_eq!(tr.excess(t0 + ms(600), 10_598, 5_600), ms(0));
        assert_eq!(tr.excess(t0 + ms(800), 10_800, 5_800), ms(2));
        // The baseline is kept for the current window and the next...
        assert_eq!(
            tr.excess(t0 + TRANSIT_WINDOW + ms(1), 20_600, 15_500),
            ms(102)
        );
        // ...and forgotten after that (a drifting clock is followed).
        assert_eq!(
            tr.excess(t0 + TRANSIT_WINDOW * 2 + ms(2), 30_600, 25_500),
            ms(0)
        );
        // Any stamp a node sends is arithmetic, not a panic.
        for wild in [u64::MAX, 1 << 63, 0] {
            let _ = Transit::default().excess(t0, i64::MAX, wild);
            let _ = tr.excess(t0 + TRANSIT_WINDOW * 2 + ms(3), -5, wild);
        }
    }

    #[test]
    fn the_serving_lag_is_the_90th_percentile_of_the_last_second() {
        let t0 = Instant::now();
        let mut l = ServingLag::default();
        for _ in 0..LAG_MIN_SAMPLES - 1 {
            l.record(t0, ms(500));
        }
        assert_eq!(l.at(t0, LEASE), ms(0), "too few renewals to tell");
        for _ in 0..91 {
            l.record(t0, ms(500));
        }
        assert_eq!(l.at(t0, LEASE), ms(500));
        assert_eq!(l.at(t0, ms(300)), ms(300), "capped");
        assert_eq!(l.at(t0 + ms(1001), LEASE), ms(0), "older than a second");
        // One node's late renewal (a node thawed after a pause) among prompt ones: nothing.
        let mut l = ServingLag::default();
        for _ in 0..50 {
            l.record(t0, ms(2));
        }
        l.record(t0, ms(1500));
        assert_eq!(l.at(t0, LEASE), ms(2));
    }

    #[test]
    fn a_lagging_leader_pushes_every_end_out_but_a_gone_processs() {
        let t0 = Instant::now();
        let lag = ms(700);
        let f = facts(t0, &[Renew(500, true)]);
        assert_eq!(deadline(&f, TIMES, lag), t0 + ms(3200));
        let f = facts(t0, &[Renew(100, true), Numbered(1, 0, 1000)]);
        assert_eq!(deadline(&f, TIMES, lag), t0 + ms(2000));
        let f = facts(t0, &[Renew(900, false), Gone(0, 1000)]);
        assert_eq!(deadline(&f, TIMES, lag), t0 + ms(1000));
    }

    #[test]
    fn renewals_served_late_push_every_lease_out_by_the_lag() {
        let l = Leases::new(LEASE, FENCE);
        // The nodes' clocks run 1 s ahead of this member's.
        let clock = |l: &Leases| l.epoch.elapsed().as_millis() as u64 + 1_000;
        for i in 0..20 {
            l.renew(&format!("n{i}"), 1, true, 0, clock(&l), 0);
        }
        assert!(l.serving_lag() < ms(50), "{:?}", l.serving_lag());
        // Every renewal now arrives 800 ms after its node sent it.
        for i in 0..20 {
            l.renew(&format!("n{i}"), 1, true, 0, clock(&l) - 800, 0);
        }
        let lag = l.serving_lag();
        assert!(lag >= ms(790) && lag < ms(900), "{lag:?}");
        // Without a stamp a renewal leaves the lag alone, and its lease gets the lag on top.
        l.renew("n", 1, true, 0, 0, 0);
        assert!(left(&l) > LEASE + ms(700), "{:?}", left(&l));
    }

    #[test]
    fn a_renewal_later_than_the_node_waits_is_not_counted_but_sets_the_lag() {
        let l = Leases::new(LEASE, FENCE);
        let clock = |l: &Leases| l.epoch.elapsed().as_millis() as u64 + 1_000;
        for i in 0..20 {
            assert!(l.renew(&format!("n{i}"), 1, true, 0, clock(&l), 250));
        }
        let renewed = |l: &Leases, n: &str| l.facts.lock().get(n).and_then(|f| f.renewed);
        let before = renewed(&l, "n0");
        // 400 ms on the way: the node gave up on it after 250 ms.
        for i in 0..20 {
            assert!(!l.renew(&format!("n{i}"), 1, true, 0, clock(&l) - 400, 250));
        }
        assert_eq!(renewed(&l, "n0"), before);
        assert!(l.serving_lag() >= ms(390), "{:?}", l.serving_lag());
        // Within the bound (and its margin) it counts; an older node (no bound) always does.
        assert!(l.renew("n0", 1, true, 0, clock(&l) - 260, 250));
        assert!(renewed(&l, "n0") > before);
        assert!(l.renew("n1", 1, true, 0, clock(&l) - 900, 0));
        assert!(!late_for_the_node(ms(270), 250));
        assert!(late_for_the_node(ms(271), 250));
        assert!(!late_for_the_node(ms(5_000), 0));
    }

    #[test]
    fn time_a_leader_could_not_renew_is_not_held_against_nodes() {
        let l = Leases::new(ms(100), FENCE);
        l.renew("n", 1, true, 0, 0, 0);
        l.hold(LEASE);
        assert!(left(&l) > LEASE);
    }
}
