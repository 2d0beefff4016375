//! The node's side of the control plane: join, lease renewal, the watch stream, fencing,
//! top-level children, global names and exit reports.

use super::code::{self, Target};
use super::wire::{pid_from_pb, pid_to_pb, reason_report};
use super::Cluster;
use crate::python;
use crate::runtime::{Pid, Reason};
use futures::StreamExt;
use parking_lot::Mutex;
use pb::watch_event::Event;
use rebeam_grpc::BearerInjector;
use rebeam_grpc::Leaders;
use rebeam_proto as pb;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

type NodeClient =
    pb::node_service_client::NodeServiceClient<InterceptedService<Channel, BearerInjector>>;
type ClusterClient =
    pb::cluster_service_client::ClusterServiceClient<InterceptedService<Channel, BearerInjector>>;

/// The top-level children assigned to this node in one session (see `Slots`).
type Started = Arc<Mutex<Slots>>;

/// A top-level child's identity: (app, child).
type ChildKey = (String, String);

/// Where one top-level child assigned here stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Start number `start` (code load, `init`) is under way.
    Starting { generation: u64, start: u64 },
    /// It runs as `pid`.
    Running { generation: u64, pid: Pid },
}

impl Slot {
    fn generation(&self) -> u64 {
        match *self {
            Slot::Starting { generation, .. } | Slot::Running { generation, .. } => generation,
        }
    }
}

/// The top-level children of one session, by (app, child). The controller sends an
/// assignment again (a resumed stream repeats its last entry, a fresh view lists them all,
/// a reported start comes back with its pid), often while its start still runs: the slot is
/// taken before a start begins, so that a repeat never starts a second copy (which would
/// find the first holding its name).
#[derive(Debug, Default)]
struct Slots {
    slots: HashMap<ChildKey, Slot>,
    /// Starts begun so far: numbers them, so a start knows whether the slot is still its own.
    starts: u64,
}

impl Slots {
    /// Takes the slot for a start of `generation`, returning the start's number; `None` when
    /// that generation or a newer one is already starting or running here.
    fn claim(&mut self, key: &ChildKey, generation: u64) -> Option<u64> {
        if self
            .slots
            .get(key)
            .is_some_and(|slot| slot.generation() >= generation)
        {
            return None;
        }
        self.starts += 1;
        let start = self.starts;
        self.slots
            .insert(key.clone(), Slot::Starting { generation, start });
        Some(start)
    }

    /// Start `start` gave `pid`: true when the slot is still its own (now running), false
    /// when the assignment was removed or replaced meanwhile (that process must not run).
    fn started(&mut self, key: &ChildKey, start: u64, pid: Pid) -> bool {
        match self.slots.get(key) {
            Some(&Slot::Starting {
                generation,
                start: s,
            }) if s == start => {
                self.slots
                    .insert(key.clone(), Slot::Running { generation, pid });
                true
            }
            _ => false,
        }
    }

    /// Start `start` failed: frees its slot, so that the assignment may be tried again.
    fn failed(&mut self, key: &ChildKey, start: u64) {
        if matches!(self.slots.get(key), Some(&Slot::Starting { start: s, .. }) if s == start) {
            self.slots.remove(key);
        }
    }

    /// The controller refused `pid` (the child was placed elsewhere meanwhile): frees its slot.
    fn refused(&mut self, key: &ChildKey, pid: Pid) {
        if matches!(self.slots.get(key), Some(&Slot::Running { pid: p, .. }) if p == pid) {
            self.slots.remove(key);
        }
    }

    /// The assignment was removed: frees the slot, returning the process to stop if one runs
    /// (a start under way finds its slot gone and stops its process itself).
    fn remove(&mut self, key: &ChildKey) -> Option<Pid> {
        match self.slots.remove(key)? {
            Slot::Running { pid, .. } => Some(pid),
            Slot::Starting { .. } => None,
        }
    }
}

/// Largest message accepted from the controller (application code travels in one).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// How long one request to one controller member may take before the next one is tried.
const ATTEMPT: Duration = Duration::from_secs(1);
/// How long a request waits for a leader (an election, a hung leader) before it fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long a starting node waits for its first view before its code runs anyway.
const FIRST_VIEW: Duration = Duration::from_secs(5);

/// A connection to the controller group that follows the leader (see `rebeam_grpc::Leaders`).
pub struct Controller {
    leaders: Leaders,
    /// Where lease renewals go: the leader's lease address, served apart from its API.
    renewals: Leaders,
    channels: Mutex<HashMap<String, Channel>>,
    bearer: BearerInjector,
    dialer: rebeam_tls::Dialer,
}

impl Controller {
    /// A controller connection trying `addresses` in turn, dialed with `dialer` and
    /// authenticated with `bearer`.
    pub fn new(
        addresses: Vec<String>,
        bearer: BearerInjector,
        dialer: rebeam_tls::Dialer,
    ) -> Controller {
        Controller {
            leaders: Leaders::new(addresses.clone()),
            renewals: Leaders::for_renewals(addresses),
            channels: Mutex::new(HashMap::new()),
            bearer,
            dialer,
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        if let Some(c) = self.channels.lock().get(address) {
            return Ok(c.clone());
        }
        let channel = self
            .dialer
            .channel(address, |e| {
                e.connect_timeout(Duration::from_millis(500))
                    // A connection that silently stopped carrying anything is found and replaced.
                    .http2_keep_alive_interval(Duration::from_millis(500))
                    .keep_alive_timeout(Duration::from_millis(500))
                    .keep_alive_while_idle(true)
            })
            .map_err(|e| {
                Status::invalid_argument(format!("bad controller address {address}: {e}"))
            })?;
        self.channels
            .lock()
            .insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Calls a `NodeService` method on the leader, waiting out an election (up to
    /// `PATIENCE`): `controller.node(request, |mut c, r| async move { c.join(r).await })`.
    async fn node<Req, T, F, Fut>(&self, request: Req, rpc: F) -> Result<T, Status>
    where
        Req: Clone,
        F: Fn(NodeClient, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.node_until(
            &self.leaders,
            Instant::now() + PATIENCE,
            ATTEMPT,
            request,
            rpc,
        )
        .await
        .map(|(r, _)| r)
    }

    /// Like `node`, through `leaders` (`self.leaders`, or `self.renewals` for renewals: the
    /// leader's lease address, served on threads of its own, not behind the watch streams),
    /// until `deadline` with each attempt bounded by `attempt`; also returns the member
    /// that answered.
    async fn node_until<Req, T, F, Fut>(
        &self,
        leaders: &Leaders,
        deadline: Instant,
        attempt: Duration,
        request: Req,
        rpc: F,
    ) -> Result<(T, String), Status>
    where
        Req: Clone,
        F: Fn(NodeClient, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.follow(leaders, deadline, attempt, |ch, b| {
            rpc(node_client(ch, b), request.clone())
        })
        .await
    }

    /// Renewals go to `address` first from now on (the lease address a leader gave).
    fn renew_at(&self, address: String) {
        self.renewals.lead_to(address);
    }

    /// Calls a `ClusterService` method on the leader, waiting out an election (up to
    /// `PATIENCE`).
    async fn cluster<Req, T, F, Fut>(&self, request: Req, rpc: F) -> Result<T, Status>
    where
        Req: Clone,
        F: Fn(ClusterClient, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = |ch, b| rpc(cluster_client(ch, b), request.clone());
        self.follow(&self.leaders, Instant::now() + PATIENCE, ATTEMPT, client)
            .await
            .map(|(r, _)| r)
    }

    async fn follow<T, F, Fut>(
        &self,
        leaders: &Leaders,
        deadline: Instant,
        attempt: Duration,
        f: F,
    ) -> Result<(T, String), Status>
    where
        F: Fn(Channel, BearerInjector) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        leaders
            .follow(deadline, attempt, |address| {
                let call = self.channel(address).map(|ch| f(ch, self.bearer.clone()));
                async move { Ok(call?.await?.into_inner()) }
            })
            .await
    }
}

fn node_client(channel: Channel, bearer: BearerInjector) -> NodeClient {
    pb::node_service_client::NodeServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_MESSAGE)
}

fn cluster_client(channel: Channel, bearer: BearerInjector) -> ClusterClient {
    pb::cluster_service_client::ClusterServiceClient::with_interceptor(channel, bearer)
}

/// One life of this node in the cluster, as the controller granted it.
#[derive(Clone, Copy, Debug)]
struct Session {
    incarnation: u64,
    heartbeat: Duration,
    fence: Duration,
    stream_fence: Duration,
}

/// What the node knows of its lease, and the deadline the process gate follows from it.
///
/// The lease holds until the send time of the last acknowledged heartbeat plus the fence
/// (the controllers count their longer lease from a later moment, its arrival). While the
/// watch stream is broken it holds at most `stream_fence` past the break, because the member
/// that served the stream, if it leads, may declare this node dead that soon after seeing
/// the close; a heartbeat sent after the break, or finding that member's process gone,
/// lifts that bound.
struct LeaseKeeper {
    session: Session,
    state: Mutex<KeeperState>,
    renew_now: tokio::sync::Notify,
}

struct KeeperState {
    last_ok: Instant,
    broken_at: Option<Instant>,
    /// A watch stream is open (told to the leader with each renewal).
    watching: bool,
    /// The number of the latest attempt to open a watch stream (`WatchRequest.stream`).
    streams_asked: u64,
    /// That latest stream ended, or its attempt was given up.
    latest_over: bool,
}

impl LeaseKeeper {
    fn new(session: Session, joined_at: Instant) -> LeaseKeeper {
        LeaseKeeper {
            session,
            state: Mutex::new(KeeperState {
                last_ok: joined_at,
                broken_at: None,
                watching: false,
                streams_asked: 0,
                latest_over: false,
            }),
            renew_now: tokio::sync::Notify::new(),
        }
    }

    fn publish(&self, cluster: &Cluster, st: &KeeperState) {
        let mut until = st.last_ok + self.session.fence;
        if let Some(b) = st.broken_at {
            until = until.min(b + self.session.stream_fence);
        }
        cluster.rt.hold_lease_until(until);
    }

    fn last_ok(&self) -> Instant {
        self.state.lock().last_ok
    }

    /// A heartbeat sent at `sent` was acknowledged.
    fn renewed(&self, cluster: &Cluster, sent: Instant) {
        crate::observe::stats::STATS.lease_renewals.inc();
        let mut st = self.state.lock();
        st.last_ok = st.last_ok.max(sent);
        if st.broken_at.is_some_and(|b| sent > b) {
            st.broken_at = None;
        }
        self.publish(cluster, &st);
    }

    /// The watch stream broke at `at`: bound the lease and renew at once.
    fn stream_broke(&self, cluster: &Cluster, at: Instant) {
        let mut st = self.state.lock();
        st.broken_at.get_or_insert(at);
        st.watching = false;
        st.latest_over = true;
        self.publish(cluster, &st);
        drop(st);
        self.renew_now.notify_one();
    }

    /// What the next renewal says of the watch stream: open only if no break is still
    /// untold (a renewal sent after the break has not succeeded yet), even if a new stream
    /// opened meanwhile, so that the leader can tell the node saw the break.
    fn watching_for_renewal(&self) -> bool {
        let st = self.state.lock();
        st.watching && st.broken_at.is_none()
    }

    /// A watch stream is open again (the latest one asked for: attempts follow one another).
    fn stream_opened(&self) {
        self.state.lock().watching = true;
    }

    /// Numbers the next attempt to open a watch stream; every earlier one is over (an
    /// attempt given up inside the retries may still have opened a stream at a member).
    fn next_stream(&self) -> u64 {
        let mut st = self.state.lock();
        st.streams_asked += 1;
        st.latest_over = false;
        st.streams_asked
    }

    /// The number of the latest attempt to open a watch stream (the open one, once open).
    fn latest_stream(&self) -> u64 {
        self.state.lock().streams_asked
    }

    /// Every attempt to open a stream was given up.
    fn streams_given_up(&self) {
        self.state.lock().latest_over = true;
    }

    /// What the next renewal says of the numbered streams: every one up to this number is
    /// over for this node. The latest counts only once it ended: while it opens or is open,
    /// its close is what tells the leader this node crashed (a renewal sent before it
    /// opened, served after, no longer hides that, as `watching: false` did).
    fn streams_ended(&self) -> u64 {
        let st = self.state.lock();
        if st.latest_over {
            st.streams_asked
        } else {
            st.streams_asked.saturating_sub(1)
        }
    }

    /// The member that served the broken stream is not running: it cannot declare anything.
    fn member_gone(&self, cluster: &Cluster) {
        let mut st = self.state.lock();
        st.broken_at = None;
        self.publish(cluster, &st);
    }
}

/// Joins (retrying until a controller answers), then keeps the node's lease and follows
/// the watch stream; fences and rejoins whenever the lease cannot be kept. Runs forever.
pub async fn run(cluster: Arc<Cluster>, joined: tokio::sync::oneshot::Sender<u64>) {
    let mut joined = Some(joined);
    loop {
        if crate::shutdown::leaving() {
            // A node that left stays out: its children are being placed elsewhere.
            return;
        }
        let joined_at = Instant::now();
        let session = join(&cluster).await;
        let keeper = LeaseKeeper::new(session, joined_at);
        keeper.publish(&cluster, &keeper.state.lock());
        cluster.rt.set_incarnation(session.incarnation);
        tracing::info!(incarnation = session.incarnation, "joined the cluster");
        if let Some(tx) = joined.take() {
            // The node's code starts once the first view is in (or the wait is over): a
            // script's first call to a process on another node, made a millisecond after
            // joining, failed with `noconnection` when that node was not yet known here
            // (2 of 60 runs of the failover benchmark's caller).
            let mut loaded = cluster.view_loaded.subscribe();
            let incarnation = session.incarnation;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(FIRST_VIEW, loaded.wait_for(|l| *l)).await;
                let _ = tx.send(incarnation);
            });
        }
        let started = Arc::new(Mutex::new(Slots::default()));
        let reason = tokio::select! {
            r = keep_lease(&cluster, &keeper) => r,
            r = follow_watch(&cluster, &keeper, started.clone()) => r,
        };
        tracing::warn!("fencing: {reason}; stopping every process before rejoining");
        fence(&cluster).await;
    }
}

async fn join(cluster: &Arc<Cluster>) -> Session {
    let address = cluster
        .config
        .advertise
        .clone()
        .unwrap_or_else(|| cluster.config.listen.to_string());
    let request = pb::JoinRequest {
        node: cluster.rt.node().name().to_string(),
        address,
        labels: cluster.config.labels.clone(),
        capacity: cluster.config.capacity,
    };
    loop {
        let r = cluster
            .controller
            .node_until(
                &cluster.controller.leaders,
                Instant::now() + PATIENCE,
                ATTEMPT,
                request.clone(),
                |mut c, r| async move { c.join(r).await },
            )
            .await;
        match r {
            Ok((reply, member)) => {
                // The member that admitted the node leads: renew at its lease address, or
                // at its API address when it advertises none (an older member).
                let lease = Some(reply.lease_address).filter(|a| !a.is_empty());
                cluster.controller.renew_at(lease.unwrap_or(member));
                return Session {
                    incarnation: reply.incarnation,
                    heartbeat: Duration::from_millis(reply.heartbeat_ms.max(10)),
                    fence: Duration::from_millis(reply.fence_ms.max(50)),
                    stream_fence: Duration::from_millis(reply.stream_fence_ms.max(20)),
                };
            }
            Err(status) => {
                tracing::warn!("cannot join the cluster yet: {}", status.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn node_ref(cluster: &Cluster, session: Session) -> pb::NodeRef {
    pb::NodeRef {
        node: cluster.rt.node().name().to_string(),
        incarnation: session.incarnation,
    }
}

/// Milliseconds of this process's monotonic clock at `at` (`HeartbeatRequest.sent_ms`;
/// never 0, which means "unknown").
fn monotonic_ms(at: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_millis() as u64 + 1
}

/// Heartbeats; returns (to fence) once no renewal succeeded for the fence interval or the
/// controller refused this incarnation. A failed renewal is retried at once through any
/// member (each attempt bounded well under the fence), not at the next tick.
async fn keep_lease(cluster: &Arc<Cluster>, keeper: &LeaseKeeper) -> String {
    let session = keeper.session;
    let attempt = rebeam_grpc::renewal_attempt(session.fence);
    let mut tick = tokio::time::interval(session.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = keeper.renew_now.notified() => {}
        }
        let request = pb::HeartbeatRequest {
            node: Some(node_ref(cluster, session)),
            watching: keeper.watching_for_renewal(),
            streams_ended: keeper.streams_ended(),
            sent_ms: 0,
            attempt_ms: attempt.as_millis() as u64,
        };
        let tried = Mutex::new(Instant::now());
        let call = cluster.controller.node_until(
            &cluster.controller.renewals,
            keeper.last_ok() + session.fence,
            attempt,
            request,
            |mut c, mut r| {
                // Counted from the send of the attempt that succeeds: the controller's lease
                // started no earlier.
                let now = Instant::now();
                *tried.lock() = now;
                // Stamped per attempt: the leader measures how long renewals wait for it.
                r.sent_ms = monotonic_ms(now);
                async move { c.heartbeat(r).await }
            },
        );
        match call.await {
            Ok(_) => {
                let sent = *tried.lock();
                // An answer read after the attempt bound is not counted (the leader counts
                // no renewal that reached it that late: `attempt_ms`), even when this
                // process was too starved to give up on it in time.
                if sent.elapsed() <= attempt {
                    keeper.renewed(cluster, sent);
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
                ) =>
            {
                return format!(
                    "the controller refused this incarnation: {}",
                    status.message()
                );
            }
            Err(_) => {}
        }
        if keeper.last_ok().elapsed() >= session.fence {
            return format!("no lease renewal for {:?}", session.fence);
        }
    }
}

/// Follows the watch stream, reconnecting at once when it breaks; returns (to fence) when
/// no stream could be re-established within the stream fence interval.
async fn follow_watch(cluster: &Arc<Cluster>, keeper: &LeaseKeeper, started: Started) -> String {
    let session = keeper.session;
    let mut broken_since: Option<Instant> = None;
    let mut position = WatchPosition::default();
    loop {
        if let Some(since) = broken_since {
            if since.elapsed() >= session.stream_fence {
                return format!("no watch stream for {:?}", session.stream_fence);
            }
        }
        let request = pb::WatchRequest {
            node: Some(node_ref(cluster, session)),
            resume_from: position.resume_from(),
            stream: 0,
            batched: true,
            followed_names: true,
            follow: cluster.names_to_follow(),
        };
        // Any member serves the stream: after a break each one gets a third of the stream
        // fence, so a frozen member (connections open, nothing answers) cannot use it all.
        let (deadline, attempt) = match broken_since {
            Some(since) => (
                since + session.stream_fence,
                (session.stream_fence / 3).max(Duration::from_millis(20)),
            ),
            None => (Instant::now() + PATIENCE, ATTEMPT),
        };
        let opened = cluster
            .controller
            .node_until(
                &cluster.controller.leaders,
                deadline,
                attempt,
                request,
                |mut c, mut r| {
                    // Each attempt its own number: one abandoned here may still have opened a
                    // stream at a member, whose close must not count against this node.
                    r.stream = keeper.next_stream();
                    async move { c.watch(r).await }
                },
            )
            .await;
        let (mut stream, member) = match opened {
            Ok(s) => s,
            Err(status) => {
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
                ) {
                    return format!(
                        "the controller refused this incarnation: {}",
                        status.message()
                    );
                }
                keeper.streams_given_up();
                broken_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        keeper.stream_opened();
        cluster.following_on(session.incarnation, keeper.latest_stream());
        cluster.begin_view();
        while let Some(event) = stream.next().await {
            match event {
                Ok(pb::WatchEvent {
                    log_index,
                    event: Some(Event::Changes(bytes)),
                }) => match <pb::WatchChanges as prost::Message>::decode(&bytes[..]) {
                    Ok(changes) => {
                        for ev in changes.events {
                            apply_event(cluster, session, &started, ev);
                        }
                        position.saw_index(log_index);
                    }
                    Err(e) => {
                        // Its changes are lost to the cache: only a whole view mends it.
                        tracing::error!("undecodable batch of watch changes: {e}");
                        position = WatchPosition::default();
                        break;
                    }
                },
                Ok(ev) => {
                    position.saw(&ev);
                    apply_event(cluster, session, &started, ev)
                }
                Err(status) => {
                    tracing::info!("watch stream ended: {}", status.message());
                    break;
                }
            }
        }
        let now = Instant::now();
        broken_since = Some(now);
        keeper.stream_broke(cluster, now);
        cluster.controller.leaders.avoid(&member);
        if member_is_gone(&member).await {
            keeper.member_gone(cluster);
        }
    }
}

/// Where this node's cache stands in the controller's log, so that a broken watch stream
/// resumes there instead of pulling the whole view again (`WatchRequest.resume_from`).
#[derive(Default, Debug)]
struct WatchPosition {
    /// The log index of the last event applied, once a whole view was.
    index: Option<u64>,
    /// A view is arriving in chunks: the cache is not whole until its last one.
    mid_view: bool,
}

impl WatchPosition {
    fn saw(&mut self, ev: &pb::WatchEvent) {
        match &ev.event {
            Some(Event::Snapshot(v)) => {
                self.mid_view = !v.last;
                self.index = v.last.then_some(ev.log_index);
            }
            Some(_) => self.saw_index(ev.log_index),
            None => {}
        }
    }

    /// A change (or a batch of them, up to this index) was applied.
    fn saw_index(&mut self, log_index: u64) {
        if !self.mid_view {
            self.index = Some(self.index.unwrap_or(0).max(log_index));
        }
    }

    /// What the next watch request asks for (0: a full view).
    fn resume_from(&mut self) -> u64 {
        if self.mid_view {
            // A view cut off half way: only a whole one makes the cache right again.
            self.mid_view = false;
            self.index = None;
        }
        self.index.unwrap_or(0)
    }
}

/// True when nothing listens at `address` any more (the member's process is gone, so it
/// cannot declare this node dead); a hung or unreachable member is not gone.
async fn member_is_gone(address: &str) -> bool {
    let probe = tokio::time::timeout(
        Duration::from_millis(50),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    matches!(probe, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn apply_event(cluster: &Arc<Cluster>, session: Session, started: &Started, event: pb::WatchEvent) {
    let index = event.log_index;
    let Some(event) = event.event else { return };
    match event {
        Event::Snapshot(view) => {
            if view.last {
                cluster
                    .tokens
                    .replace(view.tokens.iter().filter_map(issued));
            }
            cluster.load_view(&view, index);
            for app in &view.apps {
                app_changed(cluster, session, app);
            }
            for a in view.assignments {
                start_assignment(cluster, session, started, a);
            }
        }
        Event::NodeChanged(info) => cluster.update_member(&info),
        Event::NameRegistered(n) => {
            tracing::debug!(name = %n.name, "global name registered");
            cluster.watched_name(&n.name, pid_from_pb(n.pid.as_ref()), index)
        }
        Event::NameReleased(n) => {
            tracing::debug!(name = %n.name, "global name released");
            cluster.watched_name(&n.name, None, index)
        }
        Event::Assignment(a) => start_assignment(cluster, session, started, a),
        Event::AssignmentRemoved(r) => {
            let pid = started.lock().remove(&(r.app.clone(), r.child.clone()));
            if let Some(pid) = pid {
                cluster.stopper.stop(pid);
            }
        }
        Event::PgJoined(c) => {
            if let Some(pid) = pid_from_pb(c.pid.as_ref()) {
                cluster.watched_member(&c.group, pid, true, index);
            }
        }
        Event::PgLeft(c) => {
            if let Some(pid) = pid_from_pb(c.pid.as_ref()) {
                cluster.watched_member(&c.group, pid, false, index);
            }
        }
        Event::AppChanged(app) => app_changed(cluster, session, &app),
        Event::TokenIssued(t) => {
            if let Some(t) = issued(&t) {
                cluster.tokens.set(t);
            }
        }
        Event::TokenRevoked(id) => cluster.tokens.remove(&id),
        // Unpacked by `follow_watch`; a batch never nests another.
        Event::Changes(_) => {}
    }
}

/// A token record from the watch; one with an unknown role is dropped (it would not be honoured).
fn issued(t: &pb::IssuedToken) -> Option<rebeam_auth::TokenRecord> {
    t.try_into()
        .map_err(|e| tracing::warn!(id = %t.id, "ignoring an issued token: {e}"))
        .ok()
}

/// Follows an app's current version: when it changes (upgrade, rollback) for an app running
/// here, loads the new one and moves the app's servers to it, then reports the outcome.
fn app_changed(cluster: &Arc<Cluster>, session: Session, app: &pb::AppInfo) {
    if app.status != pb::AppStatus::Running as i32 {
        cluster.code.forget(&app.name);
        return;
    }
    cluster.code.warm(cluster);
    let target = Target::of_app(app);
    cluster.code.declare(target.clone());
    if !cluster.code.differs(&app.name, &app.code_hash) {
        return;
    }
    let cluster = cluster.clone();
    cluster.clone().tokio.spawn(async move {
        let name = target.app.clone();
        let result = match cluster.code.ensure(&cluster, target.clone()).await {
            Ok(Some(report)) => report,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(app = %name, "version {} does not load here; keeping the running one:\n{error}", target.version);
                code::failed(&cluster, &target, error)
            }
        };
        report_upgrade(&cluster, session, &name, result).await;
    });
}

fn start_assignment(
    cluster: &Arc<Cluster>,
    session: Session,
    started: &Started,
    a: pb::Assignment,
) {
    if a.node != cluster.rt.node().name().as_ref()
        || a.incarnation != session.incarnation
        || crate::shutdown::leaving()
    {
        return;
    }
    let Some(spec) = a.spec.clone() else { return };
    tracing::debug!(app = %a.app, child = %a.child, generation = a.generation, "assignment received");
    let key = (a.app.clone(), a.child.clone());
    let Some(start) = started.lock().claim(&key, a.generation) else {
        tracing::debug!(app = %a.app, child = %a.child, generation = a.generation, "assignment already starting or running here");
        return;
    };
    let cluster = cluster.clone();
    let started = started.clone();
    cluster.clone().tokio.spawn(async move {
        let target = Target {
            app: a.app.clone(),
            version: a.app_version.clone(),
            code_hash: a.code_hash.clone(),
            modules: vec![code::start_module(&spec.start)],
        };
        let spawned = match cluster.code.ensure(&cluster, target).await {
            Ok(report) => {
                if let Some(report) = report {
                    // Not awaited: the controller only records it (for a client waiting on an
                    // upgrade), and its commit held up the start of a failover's child by
                    // 2-4 ms.
                    let (c, app) = (cluster.clone(), a.app.clone());
                    cluster.tokio.spawn(async move {
                        report_upgrade(&c, session, &app, report).await;
                    });
                }
                // From the version loaded now, which an upgrade named after this assignment
                // may have replaced: the child must not come back on the old code.
                tracing::debug!(app = %a.app, child = %a.child, "code ready; starting the child");
                let mut a2 = a.clone();
                if let Some(hash) = cluster.code.current(&a.app) {
                    a2.code_hash = hash;
                }
                tokio::task::spawn_blocking(move || python::cluster_glue::start_child(&a2, &spec))
                .await
            }
            Err(error) => Ok(Err(error)),
        };
        let pid = match spawned {
            Ok(Ok(pid)) => pid,
            Ok(Err(message)) => {
                tracing::error!(app = %a.app, child = %a.child, "top-level child failed to start: {message}");
                // Freed once the controller knows: a repeat of this generation meanwhile would
                // only fail again and be counted twice.
                report_failed_start(&cluster, session, &a, message).await;
                started.lock().failed(&key, start);
                return;
            }
            Err(err) => {
                tracing::error!("starting a top-level child panicked: {err}");
                started.lock().failed(&key, start);
                return;
            }
        };
        if !started.lock().started(&key, start, pid) {
            // Removed (an app stop, a move) or replaced while it started: not ours to run.
            tracing::info!(app = %a.app, child = %a.child, generation = a.generation, %pid, "assignment withdrawn while its child started; stopping it");
            cluster.stopper.stop(pid);
            cluster.start_reported(pid);
            return;
        }
        tracing::debug!(app = %a.app, child = %a.child, %pid, "child started; reporting it");
        let request = pb::ChildStartedRequest {
            node: Some(node_ref(&cluster, session)),
            app: a.app.clone(),
            child: a.child.clone(),
            generation: a.generation,
            pid: Some(pid_to_pb(pid)),
        };
        let r = cluster
            .controller
            .node(request, |mut c, r| async move { c.report_child_started(r).await })
            .await;
        if let Err(status) = r {
            tracing::warn!("cannot report a started child: {}", status.message());
            if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                // The controller placed it elsewhere meanwhile: this copy must not run.
                started.lock().refused(&key, pid);
                let rt = cluster.rt.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    python::host::exit_signal(&rt, pid, pid, Reason::Kill)
                })
                .await;
            }
        }
        tracing::debug!(app = %a.app, child = %a.child, %pid, "child start reported");
        cluster.start_reported(pid);
    });
}

/// Tells the controller what an upgrade did here; a lost report is logged, not retried (the
/// controller only records it, or rolls back on a failure the user also sees).
async fn report_upgrade(
    cluster: &Arc<Cluster>,
    session: Session,
    app: &str,
    result: pb::NodeUpgrade,
) {
    let request = pb::UpgradeReportRequest {
        node: Some(node_ref(cluster, session)),
        app: app.to_string(),
        result: Some(result),
    };
    let r = cluster
        .controller
        .node(request, |mut c, r| async move { c.report_upgrade(r).await })
        .await;
    if let Err(status) = r {
        tracing::warn!(app, "cannot report an upgrade: {}", status.message());
    }
}

/// Tells the controller a top-level child could not start (its code does not import or its
/// `init` raised); the controller counts it like a crash and shows the user the traceback.
async fn report_failed_start(
    cluster: &Arc<Cluster>,
    session: Session,
    a: &pb::Assignment,
    error: String,
) {
    let request = pb::ChildFailedRequest {
        node: Some(node_ref(cluster, session)),
        app: a.app.clone(),
        child: a.child.clone(),
        generation: a.generation,
        error,
    };
    let r = cluster
        .controller
        .node(
            request,
            |mut c, r| async move { c.report_child_failed(r).await },
        )
        .await;
    if let Err(status) = r {
        tracing::warn!(app = %a.app, child = %a.child, "cannot report a failed start: {}", status.message());
    }
}

/// Fetches an app's code blob by hash from the leader.
pub async fn fetch_code(cluster: &Arc<Cluster>, hash: &str) -> Result<Vec<u8>, Status> {
    let request = pb::FetchCodeRequest {
        code_hash: hash.to_string(),
    };
    let reply = cluster
        .controller
        .node(request, |mut c, r| async move { c.fetch_code(r).await })
        .await?;
    Ok(reply.code)
}

/// Kills every process of this incarnation (the controller may restart their top-level
/// children elsewhere), so nothing of this life runs on after its lease.
async fn fence(cluster: &Arc<Cluster>) {
    crate::observe::stats::STATS.fences.inc();
    let rt = cluster.rt.clone();
    let _ = tokio::task::spawn_blocking(move || python::host::terminate_all(&rt, &Reason::Killed))
        .await;
}

/// Tells the controller this node incarnation leaves (its children are reassigned at once).
pub async fn leave(cluster: &Arc<Cluster>, incarnation: u64) -> Result<(), Status> {
    let request = pb::LeaveRequest {
        node: Some(pb::NodeRef {
            node: cluster.rt.node().name().to_string(),
            incarnation,
        }),
    };
    cluster
        .controller
        .node(request, |mut c, r| async move { c.leave(r).await })
        .await
        .map(drop)
}

/// Tells the controller that processes it cares about exited.
pub async fn report_exits(cluster: &Arc<Cluster>, exits: Vec<(Pid, String)>) {
    let Some(first) = exits.first() else { return };
    let request = pb::ReportExitRequest {
        node: Some(pb::NodeRef {
            node: cluster.rt.node().name().to_string(),
            incarnation: first.0.incarnation,
        }),
        exits: exits
            .iter()
            .map(|(pid, reason)| pb::ProcessExit {
                pid: Some(pid_to_pb(*pid)),
                reason: reason.clone(),
            })
            .collect(),
    };
    let r = cluster
        .controller
        .node(request, |mut c, r| async move { c.report_exit(r).await })
        .await;
    if let Err(status) = r {
        tracing::warn!("cannot report exits: {}", status.message());
    }
}

impl Cluster {
    /// Reports an exit of a top-level child or global-name holder (asynchronously).
    pub fn report_exit(self: &Arc<Self>, pid: Pid, reason: &Reason) {
        self.send_exit_report(pid, reason_report(reason));
    }

    /// Reports the exit of a top-level child once its start is reported (see `child_exits`).
    pub fn child_exited(self: &Arc<Self>, pid: Pid, reason: &Reason) {
        if let Some(reason) = self.child_starts.lock().exited(pid, reason_report(reason)) {
            self.send_exit_report(pid, reason);
        }
    }

    /// The start of the top-level child `pid` was reported (or given up on): an exit that
    /// came first goes now.
    fn start_reported(self: &Arc<Self>, pid: Pid) {
        if let Some(reason) = self.child_starts.lock().start_reported(pid) {
            self.send_exit_report(pid, reason);
        }
    }

    fn send_exit_report(self: &Arc<Self>, pid: Pid, reason: String) {
        if crate::shutdown::leaving() {
            // Not restarted here: the controller reassigns them all once this node left.
            return;
        }
        let cluster = self.clone();
        self.tokio
            .spawn(async move { report_exits(&cluster, vec![(pid, reason)]).await });
    }

    /// Registers a global name; `Err(holder)` when another process holds it.
    pub fn register_global(&self, name: &str, pid: Pid) -> Result<Result<(), Pid>, Status> {
        let request = pb::RegisterNameRequest {
            name: name.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(
            self.controller
                .cluster(request, |mut c, r| async move { c.register_name(r).await }),
        )?;
        if reply.registered {
            self.wrote_name(name, Some(pid), reply.log_index);
            return Ok(Ok(()));
        }
        Ok(Err(pid_from_pb(reply.holder.as_ref()).unwrap_or(pid)))
    }

    /// Releases a global name.
    pub fn unregister_global(&self, name: &str) -> Result<(), Status> {
        let request = pb::UnregisterNameRequest {
            name: name.to_string(),
            ..Default::default()
        };
        let reply = self
            .tokio
            .block_on(self.controller.cluster(request, |mut c, r| async move {
                c.unregister_name(r).await
            }))?;
        self.wrote_name(name, None, reply.log_index);
        Ok(())
    }

    /// Adds `pid` to a cluster-wide process group; false if it was a member already.
    pub fn pg_join(&self, group: &str, pid: Pid) -> Result<bool, Status> {
        let request = pb::PgRequest {
            group: group.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(
            self.controller
                .cluster(request, |mut c, r| async move { c.pg_join(r).await }),
        )?;
        self.wrote_member(group, pid, true, reply.log_index);
        Ok(reply.changed)
    }

    /// Removes `pid` from a group; false if it was not a member.
    pub fn pg_leave(&self, group: &str, pid: Pid) -> Result<bool, Status> {
        let request = pb::PgRequest {
            group: group.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(
            self.controller
                .cluster(request, |mut c, r| async move { c.pg_leave(r).await }),
        )?;
        self.wrote_member(group, pid, false, reply.log_index);
        Ok(reply.changed)
    }

    /// The holder of a global name, asking the controller (linearizable) when not cached;
    /// the name is followed from then on (its changes come on the watch stream, so the next
    /// lookup is answered here).
    pub fn whereis_global(&self, name: &str) -> Result<Option<Pid>, Status> {
        if let Some(pid) = self.whereis_cached(name) {
            return Ok(Some(pid));
        }
        let on = self.follow_stream(name);
        let request = pb::WhereisRequest {
            name: name.to_string(),
            linearizable: true,
            follower: on.map(|(incarnation, _)| pb::NodeRef {
                node: self.rt.node().name().to_string(),
                incarnation,
            }),
            follower_stream: on.map_or(0, |(_, stream)| stream),
        };
        let reply = self.tokio.block_on(
            self.controller
                .cluster(request, |mut c, r| async move { c.whereis(r).await }),
        )?;
        let pid = pid_from_pb(reply.pid.as_ref());
        if let Some(on) = on.filter(|_| reply.followed) {
            self.learned_name(name, pid, reply.log_index, on);
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(index: u64, last: bool) -> pb::WatchEvent {
        pb::WatchEvent {
            log_index: index,
            event: Some(Event::Snapshot(pb::ClusterView {
                last,
                ..Default::default()
            })),
        }
    }

    fn name(index: u64) -> pb::WatchEvent {
        pb::WatchEvent {
            log_index: index,
            event: Some(Event::NameReleased(pb::GlobalName::default())),
        }
    }

    #[test]
    fn a_stream_resumes_from_the_last_event_applied() {
        let mut p = WatchPosition::default();
        assert_eq!(p.resume_from(), 0);
        p.saw(&view(10, true));
        assert_eq!(p.resume_from(), 10);
        p.saw(&name(12));
        p.saw(&name(15));
        assert_eq!(p.resume_from(), 15);
        // A resumed stream re-sends the last entry's events: the position does not go back.
        p.saw(&name(15));
        assert_eq!(p.resume_from(), 15);
    }

    #[test]
    fn a_view_cut_off_half_way_asks_for_a_whole_one() {
        let mut p = WatchPosition::default();
        p.saw(&view(10, true));
        p.saw(&name(12));
        p.saw(&view(20, false));
        assert_eq!(p.resume_from(), 0);
        p.saw(&view(30, false));
        p.saw(&view(30, true));
        assert_eq!(p.resume_from(), 30);
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;
    use crate::runtime::NodeId;

    fn pid(n: u64) -> Pid {
        Pid {
            node: NodeId::intern("slots"),
            incarnation: 1,
            serial: n,
        }
    }

    fn key() -> ChildKey {
        ("app".into(), "child".into())
    }

    #[test]
    fn an_assignment_repeated_while_it_starts_starts_nothing_more() {
        let mut s = Slots::default();
        let first = s.claim(&key(), 1).expect("a first start");
        assert_eq!(s.claim(&key(), 1), None, "a repeat during the start");
        assert_eq!(s.claim(&key(), 0), None, "an older generation");
        assert!(s.started(&key(), first, pid(1)));
        assert_eq!(s.claim(&key(), 1), None, "a repeat once it runs");
        assert_eq!(s.remove(&key()), Some(pid(1)));
    }

    #[test]
    fn a_newer_generation_replaces_the_slot_and_the_old_start_learns_it() {
        let mut s = Slots::default();
        let old = s.claim(&key(), 1).expect("a first start");
        let new = s.claim(&key(), 2).expect("a newer generation starts");
        assert!(
            !s.started(&key(), old, pid(1)),
            "the old start must stop its process"
        );
        s.failed(&key(), old);
        assert!(s.started(&key(), new, pid(2)));
        assert_eq!(s.claim(&key(), 2), None);
        assert!(s.claim(&key(), 3).is_some());
    }

    #[test]
    fn a_failed_start_frees_the_slot_for_a_retry() {
        let mut s = Slots::default();
        let first = s.claim(&key(), 1).expect("a first start");
        s.failed(&key(), first);
        let again = s.claim(&key(), 1).expect("a retry of the same generation");
        assert!(s.started(&key(), again, pid(2)));
    }

    #[test]
    fn a_removal_during_the_start_withdraws_it() {
        let mut s = Slots::default();
        let first = s.claim(&key(), 1).expect("a first start");
        assert_eq!(s.remove(&key()), None, "nothing runs yet");
        assert!(!s.started(&key(), first, pid(1)));
        assert_eq!(s.remove(&key()), None);
        // Assigned here again at the same generation: a new start, and only that one counts.
        let again = s.claim(&key(), 1).expect("assigned again");
        assert!(!s.started(&key(), first, pid(1)));
        assert!(s.started(&key(), again, pid(2)));
    }

    #[test]
    fn a_refusal_frees_only_its_own_process() {
        let mut s = Slots::default();
        let first = s.claim(&key(), 1).expect("a first start");
        assert!(s.started(&key(), first, pid(1)));
        s.refused(&key(), pid(9));
        assert_eq!(
            s.claim(&key(), 1),
            None,
            "another pid's refusal changes nothing"
        );
        s.refused(&key(), pid(1));
        assert!(s.claim(&key(), 1).is_some());
    }
}
