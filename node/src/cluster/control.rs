//! The node's side of the control plane: join, lease renewal, the watch stream, fencing,
//! top-level children, global names and exit reports.

use super::code::{self, Target};
use super::wire::{pid_from_pb, pid_to_pb, reason_report};
use super::Cluster;
use crate::runtime::{Pid, Reason};
use futures::StreamExt;
use parking_lot::Mutex;
use pb::watch_event::Event;
use rebeam_controller::auth::BearerInjector;
use rebeam_controller::LEADER_METADATA_KEY;
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

/// Top-level children this node started: (app, child) → (generation, pid).
type Started = Arc<Mutex<HashMap<(String, String), (u64, Pid)>>>;

/// Largest message accepted from the controller (application code travels in one).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// A connection to the controller group that follows the leader.
pub struct Controller {
    addresses: Mutex<Vec<String>>,
    leader: Mutex<usize>,
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
            addresses: Mutex::new(addresses),
            leader: Mutex::new(0),
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

    fn current(&self) -> (usize, String) {
        let addresses = self.addresses.lock();
        let i = *self.leader.lock() % addresses.len().max(1);
        (i, addresses.get(i).cloned().unwrap_or_default())
    }

    /// Runs `f` against the leader, following redirects and skipping dead members.
    async fn with_leader<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel, BearerInjector) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let attempts = 2 * self.addresses.lock().len().max(1) + 2;
        let mut last = Status::unavailable("no controller address configured");
        for _ in 0..attempts {
            let (i, address) = self.current();
            let channel = self.channel(&address)?;
            match f(channel, self.bearer.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let redirect = status
                        .metadata()
                        .get(LEADER_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .filter(|s| !s.is_empty())
                        .map(str::to_string);
                    if let Some(leader) = redirect {
                        let mut addresses = self.addresses.lock();
                        let j = match addresses.iter().position(|a| *a == leader) {
                            Some(j) => j,
                            None => {
                                addresses.push(leader);
                                addresses.len() - 1
                            }
                        };
                        *self.leader.lock() = j;
                    } else if matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    ) {
                        *self.leader.lock() = i + 1;
                    } else {
                        return Err(status);
                    }
                    last = status;
                }
            }
        }
        Err(last)
    }

    fn node_client(channel: Channel, bearer: BearerInjector) -> NodeClient {
        pb::node_service_client::NodeServiceClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn cluster_client(channel: Channel, bearer: BearerInjector) -> ClusterClient {
        pb::cluster_service_client::ClusterServiceClient::with_interceptor(channel, bearer)
    }
}

/// One life of this node in the cluster, as the controller granted it.
#[derive(Clone, Copy, Debug)]
struct Session {
    incarnation: u64,
    heartbeat: Duration,
    fence: Duration,
    stream_fence: Duration,
}

/// Joins (retrying until a controller answers), then keeps the node's lease and follows
/// the watch stream; fences and rejoins whenever the lease cannot be kept. Runs forever.
pub async fn run(cluster: Arc<Cluster>, joined: tokio::sync::oneshot::Sender<u64>) {
    let mut joined = Some(joined);
    loop {
        let joined_at = Instant::now();
        let session = join(&cluster).await;
        cluster.rt.hold_lease_until(joined_at + session.fence);
        cluster.rt.set_incarnation(session.incarnation);
        tracing::info!(incarnation = session.incarnation, "joined the cluster");
        if let Some(tx) = joined.take() {
            let _ = tx.send(session.incarnation);
        }
        let started = Arc::new(Mutex::new(HashMap::new()));
        let reason = tokio::select! {
            r = keep_lease(&cluster, session) => r,
            r = follow_watch(&cluster, session, started.clone()) => r,
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
            .with_leader(|ch, b| {
                let req = request.clone();
                async move { Controller::node_client(ch, b).join(req).await }
            })
            .await;
        match r {
            Ok(reply) => {
                return Session {
                    incarnation: reply.incarnation,
                    heartbeat: Duration::from_millis(reply.heartbeat_ms.max(10)),
                    fence: Duration::from_millis(reply.fence_ms.max(50)),
                    stream_fence: Duration::from_millis(reply.stream_fence_ms.max(20)),
                }
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

/// Heartbeats; returns (to fence) once no renewal succeeded for the fence interval or the
/// controller refused this incarnation.
async fn keep_lease(cluster: &Arc<Cluster>, session: Session) -> String {
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(session.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let request = pb::HeartbeatRequest {
            node: Some(node_ref(cluster, session)),
        };
        let sent = Instant::now();
        let call = cluster.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::node_client(ch, b).heartbeat(req).await }
        });
        let remaining = session.fence.saturating_sub(last_ok.elapsed());
        match tokio::time::timeout(remaining.max(Duration::from_millis(1)), call).await {
            Ok(Ok(_)) => {
                // Counted from the send: the controller's lease started no earlier.
                last_ok = sent;
                cluster.rt.hold_lease_until(sent + session.fence);
            }
            Ok(Err(status))
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
            Ok(Err(_)) | Err(_) => {}
        }
        if last_ok.elapsed() >= session.fence {
            return format!("no lease renewal for {:?}", session.fence);
        }
    }
}

/// Follows the watch stream, reconnecting at once when it breaks; returns (to fence) when
/// no stream could be re-established within the stream fence interval.
async fn follow_watch(cluster: &Arc<Cluster>, session: Session, started: Started) -> String {
    let mut broken_since: Option<Instant> = None;
    loop {
        if let Some(since) = broken_since {
            if since.elapsed() >= session.stream_fence {
                return format!("no watch stream for {:?}", session.stream_fence);
            }
        }
        let request = pb::WatchRequest {
            node: Some(node_ref(cluster, session)),
        };
        let opened = cluster
            .controller
            .with_leader(|ch, b| {
                let req = request.clone();
                async move { Controller::node_client(ch, b).watch(req).await }
            })
            .await;
        let mut stream = match opened {
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
                broken_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        cluster.begin_view();
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => apply_event(cluster, session, &started, ev),
                Err(status) => {
                    tracing::info!("watch stream ended: {}", status.message());
                    break;
                }
            }
        }
        broken_since = Some(Instant::now());
    }
}

fn apply_event(cluster: &Arc<Cluster>, session: Session, started: &Started, event: pb::WatchEvent) {
    let Some(event) = event.event else { return };
    match event {
        Event::Snapshot(view) => {
            cluster.load_view(&view);
            for app in &view.apps {
                app_changed(cluster, session, app);
            }
            for a in view.assignments {
                start_assignment(cluster, session, started, a);
            }
        }
        Event::NodeChanged(info) => cluster.update_member(&info),
        Event::NameRegistered(n) => cluster.set_name(&n.name, pid_from_pb(n.pid.as_ref())),
        Event::NameReleased(n) => cluster.set_name(&n.name, None),
        Event::Assignment(a) => start_assignment(cluster, session, started, a),
        Event::AssignmentRemoved(r) => {
            let pid = started
                .lock()
                .remove(&(r.app.clone(), r.child.clone()))
                .map(|(_, pid)| pid);
            if let Some(pid) = pid {
                cluster.stopper.stop(pid);
            }
        }
        Event::PgJoined(c) => {
            if let Some(pid) = pid_from_pb(c.pid.as_ref()) {
                cluster.set_member(&c.group, pid, true);
            }
        }
        Event::PgLeft(c) => {
            if let Some(pid) = pid_from_pb(c.pid.as_ref()) {
                cluster.set_member(&c.group, pid, false);
            }
        }
        Event::AppChanged(app) => app_changed(cluster, session, &app),
    }
}

/// Follows an app's current version: when it changes (upgrade, rollback) for an app running
/// here, loads the new one and moves the app's servers to it, then reports the outcome.
fn app_changed(cluster: &Arc<Cluster>, session: Session, app: &pb::AppInfo) {
    if app.status != pb::AppStatus::Running as i32 {
        cluster.code.forget(&app.name);
        return;
    }
    if !cluster.code.differs(&app.name, &app.code_hash) {
        return;
    }
    let target = Target::of_app(app);
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
    if a.node != cluster.rt.node().name().as_ref() || a.incarnation != session.incarnation {
        return;
    }
    let key = (a.app.clone(), a.child.clone());
    {
        let started = started.lock();
        if started
            .get(&key)
            .is_some_and(|(generation, _)| *generation >= a.generation)
        {
            return;
        }
    }
    let Some(spec) = a.spec.clone() else { return };
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
                    report_upgrade(&cluster, session, &a.app, report).await;
                }
                let c2 = cluster.clone();
                let a2 = a.clone();
                tokio::task::spawn_blocking(move || {
                    crate::python::cluster_glue::start_child(&c2, &a2, &spec)
                })
                .await
            }
            Err(error) => Ok(Err(error)),
        };
        let pid = match spawned {
            Ok(Ok(pid)) => pid,
            Ok(Err(message)) => {
                tracing::error!(app = %a.app, child = %a.child, "top-level child failed to start: {message}");
                report_failed_start(&cluster, session, &a, message).await;
                return;
            }
            Err(err) => {
                tracing::error!("starting a top-level child panicked: {err}");
                return;
            }
        };
        started.lock().insert((a.app.clone(), a.child.clone()), (a.generation, pid));
        let request = pb::ChildStartedRequest {
            node: Some(node_ref(&cluster, session)),
            app: a.app.clone(),
            child: a.child.clone(),
            generation: a.generation,
            pid: Some(pid_to_pb(pid)),
        };
        let r = cluster
            .controller
            .with_leader(|ch, b| {
                let req = request.clone();
                async move { Controller::node_client(ch, b).report_child_started(req).await }
            })
            .await;
        if let Err(status) = r {
            tracing::warn!("cannot report a started child: {}", status.message());
            if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) {
                // The controller placed it elsewhere meanwhile: this copy must not run.
                started.lock().remove(&(a.app.clone(), a.child.clone()));
                let rt = cluster.rt.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    pyo3::Python::attach(|_py| rt.exit_signal(pid, pid, Reason::Kill));
                })
                .await;
            }
        }
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
        .with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::node_client(ch, b).report_upgrade(req).await }
        })
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
        .with_leader(|ch, b| {
            let req = request.clone();
            async move {
                Controller::node_client(ch, b)
                    .report_child_failed(req)
                    .await
            }
        })
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
        .with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::node_client(ch, b).fetch_code(req).await }
        })
        .await?;
    Ok(reply.code)
}

/// Kills every process of this incarnation (the controller may restart their top-level
/// children elsewhere), so nothing of this life runs on after its lease.
async fn fence(cluster: &Arc<Cluster>) {
    let rt = cluster.rt.clone();
    let _ = tokio::task::spawn_blocking(move || {
        pyo3::Python::attach(|_py| {
            for p in rt.processes() {
                rt.terminate(&p, Reason::Killed);
            }
        })
    })
    .await;
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
        .with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::node_client(ch, b).report_exit(req).await }
        })
        .await;
    if let Err(status) = r {
        tracing::warn!("cannot report exits: {}", status.message());
    }
}

impl Cluster {
    /// Reports an exit of a top-level child or global-name holder (asynchronously).
    pub fn report_exit(self: &Arc<Self>, pid: Pid, reason: &Reason) {
        let cluster = self.clone();
        let reason = reason_report(reason);
        self.tokio
            .spawn(async move { report_exits(&cluster, vec![(pid, reason)]).await });
    }

    /// Registers a global name; `Err(holder)` when another process holds it.
    pub fn register_global(&self, name: &str, pid: Pid) -> Result<Result<(), Pid>, Status> {
        let request = pb::RegisterNameRequest {
            name: name.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(self.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::cluster_client(ch, b).register_name(req).await }
        }))?;
        if reply.registered {
            self.set_name(name, Some(pid));
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
        self.tokio.block_on(self.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::cluster_client(ch, b).unregister_name(req).await }
        }))?;
        self.set_name(name, None);
        Ok(())
    }

    /// Adds `pid` to a cluster-wide process group; false if it was a member already.
    pub fn pg_join(&self, group: &str, pid: Pid) -> Result<bool, Status> {
        let request = pb::PgRequest {
            group: group.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(self.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::cluster_client(ch, b).pg_join(req).await }
        }))?;
        self.set_member(group, pid, true);
        Ok(reply.changed)
    }

    /// Removes `pid` from a group; false if it was not a member.
    pub fn pg_leave(&self, group: &str, pid: Pid) -> Result<bool, Status> {
        let request = pb::PgRequest {
            group: group.to_string(),
            pid: Some(pid_to_pb(pid)),
        };
        let reply = self.tokio.block_on(self.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::cluster_client(ch, b).pg_leave(req).await }
        }))?;
        self.set_member(group, pid, false);
        Ok(reply.changed)
    }

    /// The holder of a global name, asking the controller (linearizable) when not cached.
    pub fn whereis_global(&self, name: &str) -> Result<Option<Pid>, Status> {
        if let Some(pid) = self.whereis_cached(name) {
            return Ok(Some(pid));
        }
        let request = pb::WhereisRequest {
            name: name.to_string(),
            linearizable: true,
        };
        let reply = self.tokio.block_on(self.controller.with_leader(|ch, b| {
            let req = request.clone();
            async move { Controller::cluster_client(ch, b).whereis(req).await }
        }))?;
        Ok(pid_from_pb(reply.pid.as_ref()))
    }
}
