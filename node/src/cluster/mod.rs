//! Cluster mode: the node joins the controller, keeps its lease, follows the watch stream,
//! runs the top-level children placed on it, and talks to peer nodes directly.

pub mod child_exits;
pub mod code;
pub mod control;
pub mod gateway;
pub mod links;
pub mod own_writes;
pub mod peers;
pub mod ports;
pub mod remote_spawn;
pub mod stopper;
pub mod transport;
pub mod wire;

use crate::observe::stats::STATS;
use crate::python::host::PyRuntime;
use crate::python::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, NodeId, Outbound, Pid, Reason};
use links::{Links, Pushed};
use own_writes::OwnWrites;
use parking_lot::{Mutex, RwLock};
use peers::Inbound;
use rebeam_auth::TokenCache;
use rebeam_grpc::BearerInjector;
use rebeam_proto as pb;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// How a node joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Controller API addresses (`host:port`), any member; followers redirect to the leader.
    pub controllers: Vec<String>,
    /// Where the peer service listens.
    pub listen: SocketAddr,
    /// The peer address other nodes dial; defaults to the bound address.
    pub advertise: Option<String>,
    /// Labels for placement (`key=value`).
    pub labels: HashMap<String, String>,
    /// Most top-level children placed here; 0 for no limit.
    pub capacity: u32,
    /// The credential this node presents to controllers and peers and accepts as a
    /// member's at its gateway: the node secret, or (not recommended) the cluster secret.
    pub secret: String,
    /// Where fetched application code is unpacked.
    pub data_dir: PathBuf,
    /// TLS for the peer service, peer links and the controller connection; with it the
    /// node authenticates by certificate and never sends the secret.
    pub tls: Option<rebeam_tls::TlsSource>,
}

/// A call waiting for a reply from another node: the node and the caller's slot.
pub type RemoteCall = (NodeId, Arc<CallSlot<Term>>);

/// What the node knows of another member.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its current incarnation.
    pub incarnation: u64,
    /// Its peer address.
    pub address: String,
    /// Whether the controller considers it alive.
    pub alive: bool,
}

/// The cluster side of a node.
pub struct Cluster {
    /// The node's runtime.
    pub rt: Arc<PyRuntime>,
    /// The async runtime running gRPC.
    pub tokio: tokio::runtime::Handle,
    /// The runtime carrying peer connections (see [`peer_runtime`]).
    pub peer_io: tokio::runtime::Handle,
    /// Adds the node's credential to outgoing requests (nothing with TLS).
    pub bearer: BearerInjector,
    /// Opens channels to controllers and peers (TLS or plaintext).
    pub dialer: rebeam_tls::Dialer,
    /// How this node proves itself on peer connections (its secret, or the certificate).
    pub proof: transport::handshake::Proof,
    /// The configuration it joined with.
    pub config: ClusterConfig,
    /// Ids for calls that wait for a reply from another node.
    pub next_call: AtomicU64,
    /// Calls waiting for a reply from another node: call id → (node, slot).
    pub calls: Mutex<HashMap<u64, RemoteCall>>,
    /// Work for the inbound thread.
    pub inbound: std::sync::mpsc::Sender<Inbound>,
    links: Mutex<Links>,
    members: RwLock<HashMap<NodeId, Member>>,
    names: RwLock<NameCache>,
    groups: RwLock<GroupCache>,
    /// False while a chunked view is arriving.
    view_complete: std::sync::atomic::AtomicBool,
    /// True once a whole view has been applied (see `control::run`).
    pub view_loaded: tokio::sync::watch::Sender<bool>,
    /// Messages dropped because a peer's queue was full.
    pub dropped: AtomicU64,
    /// The controller connection.
    pub controller: control::Controller,
    /// Which version of each app runs here.
    pub code: code::AppCode,
    /// Stops removed top-level children in order.
    pub stopper: stopper::Stopper,
    /// Client tokens the controller issued (hashes), for the gateway; kept by the watch.
    pub tokens: Arc<TokenCache>,
    /// Exits of top-level children held until their start is reported.
    child_starts: Mutex<child_exits::StartGate>,
}

/// A single-threaded runtime on its own thread ("rebeam-peer-io") for the peer transport's
/// connections, or `fallback` when it cannot be started. On the shared multi-thread runtime
/// every frame woke two workers (the one that got the task and a second one it woke to steal),
/// five thread switches per node per cross-node call; here a frame written or read costs one
/// wake of one thread.
fn peer_runtime(fallback: &tokio::runtime::Handle) -> tokio::runtime::Handle {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::warn!("no peer I/O runtime, peers share the main one: {err}");
            return fallback.clone();
        }
    };
    let handle = runtime.handle().clone();
    let spawned = std::thread::Builder::new()
        .name("rebeam-peer-io".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()));
    match spawned {
        Ok(_) => handle,
        Err(err) => {
            tracing::warn!("no peer I/O thread, peers share the main runtime: {err}");
            fallback.clone()
        }
    }
}

impl Cluster {
    /// Creates the cluster state and starts the inbound thread.
    pub fn new(
        rt: Arc<PyRuntime>,
        tokio: tokio::runtime::Handle,
        config: ClusterConfig,
    ) -> Arc<Cluster> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stopper = stopper::Stopper::start(rt.clone());
        let dialer = rebeam_tls::Dialer::new(config.tls.clone());
        let bearer = BearerInjector::for_member(&config.secret, &dialer);
        let proof = if dialer.is_tls() {
            transport::handshake::Proof::Certificate(Vec::new())
        } else {
            transport::handshake::Proof::secret(&config.secret)
        };
        let peer_io = peer_runtime(&tokio);
        let cluster = Arc::new(Cluster {
            rt,
            tokio,
            peer_io,
            proof,
            controller: control::Controller::new(
                config.controllers.clone(),
                bearer.clone(),
                dialer.clone(),
            ),
            bearer,
            dialer,
            code: code::AppCode::default(),
            stopper,
            config,
            next_call: AtomicU64::new(1),
            calls: Mutex::new(HashMap::new()),
            inbound: tx,
            links: Mutex::new(Links::default()),
            members: RwLock::new(HashMap::new()),
            names: RwLock::default(),
            groups: RwLock::default(),
            view_complete: std::sync::atomic::AtomicBool::new(true),
            view_loaded: tokio::sync::watch::Sender::new(false),
            dropped: AtomicU64::new(0),
            tokens: Arc::new(TokenCache::default()),
            child_starts: Mutex::default(),
        });
        let me = cluster.clone();
        let spawned = std::thread::Builder::new()
            .name("rebeam-inbound".into())
            .spawn(move || peers::inbound_loop(me, rx));
        if let Err(err) = spawned {
            tracing::error!("cannot start the inbound thread: {err}");
        }
        cluster
    }

    /// Sends a message or signal to another node; gives it back if that node is not a live
    /// member (the caller then treats the target as unreachable).
    pub fn route(self: &Arc<Self>, out: Outbound<Term>) -> Result<(), Outbound<Term>> {
        let node = target_node(&out);
        // An open link or inbound stream means a live member (links to lost members are
        // removed): the message path checks membership only when it has to open one. The
        // link is pushed on after letting go of the links' lock (a push may write to the
        // socket).
        let (link, reachable) = {
            let links = self.links.lock();
            let link = links.link(node);
            let reachable = link.is_some() || links.reachable(node);
            (link, reachable)
        };
        if !reachable && self.address_of(node).is_none() {
            tracing::debug!(peer = %node.name(), "no live member to route to");
            return Err(out);
        }
        if let (
            Some(link),
            Outbound::Message {
                to,
                envelope: envelope @ (Envelope::Info(term) | Envelope::Cast(term)),
            },
        ) = (&link, &out)
        {
            // A message's frame is encoded straight into the link's outbox; a payload that
            // cannot be encoded takes the general path, which gives the message back.
            let cast = matches!(envelope, Envelope::Cast(_));
            if let Some(queued) = peers::push_message(link, *to, term, cast) {
                self.settle(node, links::settled(link, queued));
                return Ok(());
            }
        }
        let (node, frame) = peers::frame_for(self, out)?;
        let pushed = match link {
            Some(link) => links::push_on(&link, frame),
            None => self.push_opening(node, frame),
        };
        self.settle(node, pushed);
        Ok(())
    }

    /// Queues a frame on the link to `node`, opening it on first use.
    fn push(self: &Arc<Self>, node: NodeId, frame: pb::PeerFrame) {
        // Not under the links' lock: a push on an idle link writes to the socket.
        let link = self.links.lock().link(node);
        let pushed = match link {
            Some(link) => links::push_on(&link, frame),
            None => self.push_opening(node, frame),
        };
        self.settle(node, pushed);
    }

    /// Queues a frame for `node`, which had no open link: one is opened (or the frame held).
    fn push_opening(self: &Arc<Self>, node: NodeId, frame: pb::PeerFrame) -> Pushed {
        let open = || Some(peers::open(self, node, self.address_of(node)?));
        self.links.lock().push(node, frame, open)
    }

    /// Deals with a frame that found its link's outbox full: a process's thread waits for
    /// room, up to [`peers::SEND_WAIT`] (as OTP suspends a sender on a busy connection);
    /// other threads (tokio's, the inbound thread, timers) must not block, and drop the
    /// frame. Waits and drops are counted.
    fn settle(&self, node: NodeId, pushed: Pushed) {
        match pushed {
            Pushed::Queued | Pushed::Held => {}
            Pushed::Full(Some(busy)) if may_wait() => {
                STATS.peer_send_waits.inc();
                let sent = crate::python::host::without_gil(move || busy.wait(peers::SEND_WAIT));
                if !sent {
                    self.count_dropped(node, 1);
                }
            }
            Pushed::Full(_) => self.count_dropped(node, 1),
            Pushed::Unknown => {
                tracing::debug!(peer = %node.name(), "frame to an unknown member dropped");
            }
        }
    }

    fn count_dropped(&self, node: NodeId, frames: usize) {
        if frames == 0 {
            return;
        }
        let before = self.dropped.fetch_add(frames as u64, Ordering::Relaxed);
        let count = before + frames as u64;
        // Logged at each power of two, so that a flood does not flood the log too.
        if before.checked_ilog2() != count.checked_ilog2() {
            tracing::warn!(peer = %node.name(), count, "peer queue full: messages dropped");
        }
    }

    /// Answers a call that came from `node`.
    pub fn send_reply(self: &Arc<Self>, node: NodeId, call_id: u64, result: CallResult<Term>) {
        let result = match result {
            CallResult::Reply(term) => match term.encode() {
                Ok(bytes) => pb::peer_reply::Result::Value(bytes),
                Err(_) => pb::peer_reply::Result::Exit(wire::reason_to_pb(&Reason::Noproc)),
            },
            CallResult::Exit(reason) => pb::peer_reply::Result::Exit(wire::reason_to_pb(&reason)),
            CallResult::CallerKilled => return,
        };
        let frame = pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Reply(pb::PeerReply {
                call_id,
                result: Some(result),
            })),
        };
        self.push(node, frame);
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        let members = self.members.read();
        let m = members.get(&node)?;
        m.alive.then(|| m.address.clone())
    }

    /// The outbound link `link` to `node` ended: like Erlang, the connection's loss is the
    /// peer's loss for every link, monitor and call across it. Unless the peer itself reset
    /// the connection, its inbound streams are cut too, so that it learns of the loss (its
    /// calls here may have had their replies on the lost link).
    pub fn link_ended(&self, node: NodeId, link: u64, cut_inbound: bool) {
        let Some(cuts) = self.links.lock().link_ended(node, link) else {
            return;
        };
        if cut_inbound {
            for cut in cuts {
                cut.notify_one();
            }
        }
        let _ = self.inbound.send(Inbound::NodeDown(node));
    }

    /// Fires `noconnection` for everything tied to `node` (on the inbound thread).
    pub fn apply_node_down(&self, node: NodeId) {
        let failed: Vec<_> = {
            let mut calls = self.calls.lock();
            let ids: Vec<u64> = calls
                .iter()
                .filter(|(_, (n, _))| *n == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| calls.remove(&id)).collect()
        };
        for (_, slot) in failed {
            let _ = slot.complete(CallResult::Exit(Reason::Noconnection));
        }
        remote_spawn::node_down(node);
        self.rt.node_down(node);
    }

    /// Updates the membership cache; a member that died or changed incarnation is lost.
    pub fn update_member(self: &Arc<Self>, info: &pb::NodeInfo) {
        let node = NodeId::intern(&info.id);
        if node == self.rt.node() {
            return;
        }
        let alive = info.status == pb::NodeStatus::Alive as i32;
        let lost = {
            let mut members = self.members.write();
            let previous = members.insert(
                node,
                Member {
                    incarnation: info.incarnation,
                    address: info.address.clone(),
                    alive,
                },
            );
            previous.is_some_and(|p| p.alive && (!alive || p.incarnation != info.incarnation))
        };
        if lost {
            self.links.lock().forget(node);
            let _ = self.inbound.send(Inbound::NodeDown(node));
        } else if alive {
            // Frames held for a peer that called in before the watch brought its address.
            let open = || Some(peers::open(self, node, info.address.clone()));
            let dropped = self.links.lock().release(node, open);
            self.count_dropped(node, dropped);
        }
    }

    /// The cached holder of a global name.
    pub fn whereis_cached(&self, name: &str) -> Option<Pid> {
        self.names.read().holders.get(name).copied()
    }

    /// Applies a registry change from the watch stream, made at log index `index`.
    pub fn watched_name(&self, name: &str, pid: Option<Pid>, index: u64) {
        let mut names = self.names.write();
        let NameCache {
            holders,
            own,
            followed,
            ..
        } = &mut *names;
        if !own.watched(name, index) {
            return;
        }
        if let Some(known) = followed.get_mut(name) {
            if known.0 > index {
                return;
            }
            *known = (index, pid);
        }
        self.put_name(holders, name, pid);
    }

    /// The names to follow on the watch stream about to open; until `following_on` says it
    /// opened, answers are not cached as followed.
    pub fn names_to_follow(&self) -> Vec<String> {
        let mut names = self.names.write();
        names.following_on = None;
        names.followed.keys().cloned().collect()
    }

    /// The watch stream numbered `stream` of `incarnation` opened, following names.
    pub fn following_on(&self, incarnation: u64, stream: u64) {
        self.names.write().following_on = Some((incarnation, stream));
    }

    /// The stream to ask a controller to follow a name on: None when no stream follows
    /// names now, or this node follows as many as it may.
    pub fn follow_stream(&self, name: &str) -> Option<(u64, u64)> {
        let names = self.names.read();
        room_to_follow(&names.followed, name).then_some(names.following_on)?
    }

    /// A lookup answered at log index `index`, followed on stream `on` from then: cached
    /// unless a newer value is (or that stream was replaced meanwhile).
    pub fn learned_name(&self, name: &str, pid: Option<Pid>, index: u64, on: (u64, u64)) {
        let mut names = self.names.write();
        let NameCache {
            holders,
            own,
            followed,
            following_on,
        } = &mut *names;
        if *following_on != Some(on) || own.newer(name, index) || !room_to_follow(followed, name) {
            return;
        }
        let known = followed.entry(name.to_string()).or_insert((0, None));
        if known.0 > index {
            return;
        }
        *known = (index, pid);
        self.put_name(holders, name, pid);
    }

    /// Applies a registry write of this node, answered at log index `index`.
    pub fn wrote_name(&self, name: &str, pid: Option<Pid>, index: u64) {
        let mut names = self.names.write();
        if names.own.answered(name.to_string(), pid, index) {
            self.put_name(&mut names.holders, name, pid);
        }
    }

    fn put_name(&self, holders: &mut HashMap<String, Pid>, name: &str, pid: Option<Pid>) {
        match pid {
            Some(pid) if self.gone_here(pid) => {}
            Some(pid) => {
                holders.insert(name.to_string(), pid);
            }
            None => {
                holders.remove(name);
            }
        }
    }

    /// Replaces the caches with a full view at log index `index` (the first event of a
    /// watch stream).
    pub fn load_view(self: &Arc<Self>, view: &pb::ClusterView, index: u64) {
        for node in &view.nodes {
            self.update_member(node);
        }
        // A large view arrives in chunks; the cache is replaced at the first one.
        let first = self.view_complete.swap(view.last, Ordering::AcqRel);
        let mut names = self.names.write();
        if first {
            names.holders.clear();
        }
        for n in &view.names {
            if let Some(pid) = wire::pid_from_pb(n.pid.as_ref()) {
                names.holders.insert(n.name.clone(), pid);
            }
        }
        if view.last {
            let NameCache {
                holders,
                own,
                followed,
                ..
            } = &mut *names;
            for (name, pid) in own.view(index) {
                self.put_name(holders, &name, pid);
            }
            // A name learned after this view was read keeps its newer value; the others
            // are as the view says from now on.
            for (name, known) in followed.iter_mut() {
                if known.0 > index {
                    self.put_name(holders, name, known.1);
                } else {
                    *known = (index, holders.get(name).copied());
                }
            }
        }
        let mut groups = self.groups.write();
        if first {
            groups.members.clear();
        }
        for g in &view.groups {
            let members = g.members.iter().filter_map(|p| wire::pid_from_pb(Some(p)));
            groups
                .members
                .entry(g.name.clone())
                .or_default()
                .extend(members);
        }
        if view.last {
            let GroupCache { members, own } = &mut *groups;
            for ((group, pid), joined) in own.view(index) {
                self.put_member(members, &group, pid, joined);
            }
            drop(groups);
            self.view_loaded.send_replace(true);
        }
    }

    /// A new watch stream starts: its first view replaces the cache.
    pub fn begin_view(&self) {
        self.view_complete.store(true, Ordering::Release);
    }

    /// Applies a group change from the watch stream, made at log index `index`.
    pub fn watched_member(&self, group: &str, pid: Pid, joined: bool, index: u64) {
        let mut groups = self.groups.write();
        if groups.own.watched(&(group.to_string(), pid), index) {
            self.put_member(&mut groups.members, group, pid, joined);
        }
    }

    /// Applies a group change of this node, answered at log index `index`.
    pub fn wrote_member(&self, group: &str, pid: Pid, joined: bool, index: u64) {
        let mut groups = self.groups.write();
        if groups.own.answered((group.to_string(), pid), joined, index) {
            self.put_member(&mut groups.members, group, pid, joined);
        }
    }

    fn put_member(
        &self,
        groups: &mut HashMap<String, Vec<Pid>>,
        group: &str,
        pid: Pid,
        joined: bool,
    ) {
        if joined && self.gone_here(pid) {
            return;
        }
        let members = groups.entry(group.to_string()).or_default();
        members.retain(|p| *p != pid);
        if joined {
            members.push(pid);
        }
        if members.is_empty() {
            groups.remove(group);
        }
    }

    /// Whether `pid` is a process of this node incarnation that has exited. A change about it
    /// that arrives late (a watch batch carrying its join or registration, applied after its
    /// exit) must not put it back in the caches: [`Cluster::forget_pid`] already ran, and the
    /// controller's release comes later still. Asked under the cache's write lock: the process
    /// leaves the table before `forget_pid` takes that lock, so either this sees it gone or
    /// `forget_pid` removes what was added.
    fn gone_here(&self, pid: Pid) -> bool {
        self.rt.is_local(pid) && self.rt.lookup(pid).is_none()
    }

    /// Drops a dead local process from the cached names and groups.
    pub fn forget_pid(&self, pid: Pid) {
        self.names.write().holders.retain(|_, p| *p != pid);
        self.groups.write().members.retain(|_, members| {
            members.retain(|p| *p != pid);
            !members.is_empty()
        });
    }

    /// The cached members of a process group, in join order.
    pub fn group_members(&self, group: &str) -> Vec<Pid> {
        self.groups
            .read()
            .members
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    /// Every group with members.
    pub fn group_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.groups.read().members.keys().cloned().collect();
        out.sort();
        out
    }

    /// Every member the node knows of.
    pub fn members(&self) -> Vec<(String, Member)> {
        let mut out: Vec<_> = self
            .members
            .read()
            .iter()
            .map(|(n, m)| (n.name().to_string(), m.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The global names this node caches, with its own writes the watch stream has not passed.
#[derive(Default)]
struct NameCache {
    holders: HashMap<String, Pid>,
    own: OwnWrites<String, Option<Pid>>,
    /// The names this node follows (the watch stream carries their changes, and those of
    /// names its processes hold, not every name): each one's newest value cached and the log
    /// index it is from, so an older change the stream brings later is not applied over it.
    followed: HashMap<String, (u64, Option<Pid>)>,
    /// The watch stream (incarnation, number) that follows names for this node now; None
    /// while one opens (an answer followed on an earlier stream is not cached: the new one
    /// may not carry that name's changes).
    following_on: Option<(u64, u64)>,
}

/// Global names one node follows at most (the controller's bound per stream).
pub const MAX_FOLLOWED: usize = 65_536;

/// Whether `name` is followed already or may be (under the bound).
fn room_to_follow<V>(followed: &HashMap<String, V>, name: &str) -> bool {
    followed.len() < MAX_FOLLOWED || followed.contains_key(name)
}

/// The process groups this node caches (members in join order), with its own changes the
/// watch stream has not passed.
#[derive(Default)]
struct GroupCache {
    members: HashMap<String, Vec<Pid>>,
    own: OwnWrites<(String, Pid), bool>,
}

/// Whether the calling thread may wait for room on a link: a process's own thread, outside
/// the async runtime.
fn may_wait() -> bool {
    crate::python::host::current_pid().is_some() && tokio::runtime::Handle::try_current().is_err()
}

fn target_node(out: &Outbound<Term>) -> NodeId {
    match out {
        Outbound::Message { to, .. }
        | Outbound::Link { to, .. }
        | Outbound::Unlink { to, .. }
        | Outbound::Exit { to, .. } => to.node,
        Outbound::Monitor { target, .. } | Outbound::Demonitor { target, .. } => target.node,
        Outbound::Down { watcher, .. } => watcher.node,
    }
}
