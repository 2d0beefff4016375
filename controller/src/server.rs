//! Starts one controller member: storage, Raft, the gRPC listeners and background tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rebeam_proto::v1::cluster_service_client::ClusterServiceClient;
use rebeam_proto::v1::cluster_service_server::ClusterServiceServer;
use rebeam_proto::v1::node_service_server::NodeServiceServer;
use rebeam_proto::v1::raft_peer_server::RaftPeerServer;
use rebeam_proto::v1::AddControllerRequest;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::cluster::ClusterApi;
use crate::api::node::{NodeApi, RenewalsOnly};
use crate::api::raft::{elect, Contact, ElectionTimes, RaftService};
use crate::auth::{BearerInjector, Guard};
use crate::config::ControllerConfig;
use crate::core::Core;
use crate::error::{Error, Result, LEADER_METADATA_KEY};
use crate::lease::{self, Leases};
use crate::network::{Network, MAX_RAFT_MESSAGE};
use crate::proposer::Proposer;
use crate::store::{LogStore, StateMachineStore};
use crate::trace::Traced;
use crate::types::{MemberNode, Raft};

/// A running controller member.
pub struct ControllerHandle {
    raft_addr: SocketAddr,
    api_addr: SocketAddr,
    core: Arc<Core>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    lease_addr: SocketAddr,
    /// Declared last: dropped after the tasks running on them were stopped.
    lease_runtime: OwnRuntime,
    raft_runtime: OwnRuntime,
}

/// A runtime of its own for one kind of traffic, apart from the runtime serving nodes and
/// clients: Raft (its core, replication, the peer listener, the election timer and the
/// leadership confirmations), so a vote request or a heartbeat is never queued behind watch
/// streams, renewals and API calls (measured under load: vote requests answered 100+ ms
/// late, confirmations missing their deadline and leases refused while the API runtime was
/// saturated); and lease renewals with the lease task, so that a renewal is served within
/// the node's attempt bound while watch streams saturate the API runtime (measured at 1,000
/// nodes: renewals served 0.2–2 s late there, every attempt given up, healthy nodes fenced).
/// A woken thread of it is scheduled by the kernel like any sleeper instead of queueing
/// behind the API's tasks.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

/// Nice value of the lease runtime's thread. A thread of its own is not enough on a
/// saturated machine: the kernel shares the CPU evenly between runnable threads, and at
/// 1,000 nodes with names written at thousands per second the one lease thread got about a
/// tenth of a core beside the API's and Raft's and served ~1,700 renewals/s of the 5,000
/// sent, late. At −10 it weighs about nine times a normal thread, so renewals (cheap: no
/// Raft write) are served first and the fan-out gets the rest.
const LEASE_NICE: i32 = -10;

/// Raises the calling thread's priority to `nice`; without the privilege (no
/// CAP_SYS_NICE) it says so once and runs at the normal priority.
fn prioritise(nice: i32) {
    static REFUSED: std::sync::Once = std::sync::Once::new();
    // SAFETY: setpriority only reads its arguments; `who` 0 is the calling thread on Linux.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        let e = std::io::Error::last_os_error();
        REFUSED.call_once(|| {
            tracing::warn!(error = %e, nice, "cannot raise the lease thread's priority; renewals may be served late on a saturated machine (grant CAP_SYS_NICE)");
        });
    }
}

impl OwnRuntime {
    fn new(name: &str, threads: usize, nice: i32) -> Result<OwnRuntime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .on_thread_start(move || {
                if nice != 0 {
                    prioritise(nice);
                }
            })
            .enable_all()
            .build()
            .map(|rt| OwnRuntime(Some(rt)))
            .map_err(|e| Error::Internal(format!("cannot start the {name} runtime: {e}")))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            // Only taken in Drop.
            None => tokio::runtime::Handle::current(),
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        // Dropped from async code (a handle going away in a test): never block there.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves `svc` on `listener` until `stop`, on the runtime of `rt` (the listener is
/// registered again there, so that runtime's own reactor drives its connections).
#[allow(clippy::too_many_arguments)]
fn serve_on<S>(
    rt: &tokio::runtime::Handle,
    listener: TcpListener,
    svc: S,
    tls: Option<rebeam_tls::TlsSource>,
    connections: rebeam_tls::ConnLimits,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = listener.into_std().map_err(Error::internal)?;
    Ok(rt.spawn(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "{what} listener failed");
                return;
            }
        };
        let r = connections
            .grpc_server()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                rebeam_tls::incoming(listener, tls, connections, what),
                async move {
                    let _ = stop.changed().await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "{what} listener failed");
        }
    }))
}

impl ControllerHandle {
    /// Where the Raft peer service listens.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Where the node and client services listen.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where lease renewals are served.
    pub fn lease_addr(&self) -> SocketAddr {
        self.lease_addr
    }

    /// The shared handles, for the HTTP server.
    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// The Raft handle (metrics, leadership).
    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    /// Waits until this member sees a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: std::time::Duration) -> Result<u64> {
        let mut rx = self.core.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow().current_leader {
                    return Ok(l);
                }
                if rx.changed().await.is_err() {
                    return Err(Error::Unavailable("raft stopped".into()));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::Unavailable(
                "no leader elected in time; check that a quorum of members runs".into(),
            )
        })?
    }

    /// Stops serving, shuts Raft down and waits for the background tasks.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        let r = self.core.raft.shutdown().await.map_err(Error::internal);
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.lease_runtime);
        drop(self.raft_runtime);
        r
    }
}

fn raft_config(c: &ControllerConfig) -> Result<openraft::Config> {
    let t = &c.timings;
    let cfg = openraft::Config {
        cluster_name: "rebeam".into(),
        heartbeat_interval: t.raft_heartbeat.as_millis() as u64,
        election_timeout_min: t.election_timeout.as_millis() as u64,
        // The max is openraft's leader lease: voters refuse to vote for that long after
        // hearing from a leader. Campaigns are timed by `api::raft::elect`, not by openraft.
        election_timeout_max: (t.election_timeout.as_millis() as u64) * 2,
        install_snapshot_timeout: 10_000,
        // Entries carry batches of up to MAX_BATCH commands: keep one AppendEntries small
        // enough that a busy follower handles it well within an election timeout.
        max_payload_entries: 4,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.snapshot_logs.max(1)),
        max_in_snapshot_log_to_keep: c.keep_logs,
        ..Default::default()
    };
    cfg.validate()
        .map_err(|e| Error::invalid(format!("raft timings: {e}")))
}

/// Starts a controller member and returns once it serves (a leader may not be elected yet).
pub async fn start(config: ControllerConfig) -> Result<ControllerHandle> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::invalid(format!(
            "cannot create data dir {}: {e}; pick a writable --data-dir",
            config.data_dir.display()
        ))
    })?;
    let log = LogStore::open(&config.data_dir.join("raft-log.redb")).map_err(|e| {
        Error::Internal(format!(
            "cannot open the log in {}: {e}",
            config.data_dir.display()
        ))
    })?;
    let sm =
        StateMachineStore::open(&config.data_dir.join("snapshots")).map_err(Error::internal)?;
    let shared = sm.shared();

    let raft_listener = TcpListener::bind(config.raft_listen).await.map_err(|e| {
        Error::invalid(format!(
            "cannot listen on {} for raft: {e}",
            config.raft_listen
        ))
    })?;
    let api_listener = TcpListener::bind(config.api_listen).await.map_err(|e| {
        Error::invalid(format!(
            "cannot listen on {} for the api: {e}",
            config.api_listen
        ))
    })?;
    let lease_listen = config
        .lease_listen
        .unwrap_or_else(|| SocketAddr::new(config.api_listen.ip(), 0));
    let lease_listener = TcpListener::bind(lease_listen).await.map_err(|e| {
        Error::invalid(format!(
            "cannot listen on {lease_listen} for lease renewals: {e}; pick another --lease-listen"
        ))
    })?;
    let raft_addr = raft_listener.local_addr().map_err(Error::internal)?;
    let api_addr = api_listener.local_addr().map_err(Error::internal)?;
    let lease_addr = lease_listener.local_addr().map_err(Error::internal)?;
    let me = MemberNode {
        lease_addr: lease_advertise(&config, lease_addr),
        raft_addr: config
            .raft_advertise
            .clone()
            .unwrap_or_else(|| raft_addr.to_string()),
        api_addr: config
            .api_advertise
            .clone()
            .unwrap_or_else(|| api_addr.to_string()),
    };

    let dialer = rebeam_tls::Dialer::new(config.tls.clone());
    if let Some(tls) = &config.tls {
        tls.watch();
    }
    let contact = Arc::new(Contact::default());
    let raft_runtime = OwnRuntime::new("raft", 2, 0)?;
    let rt = raft_runtime.handle();
    // One thread: a renewal is a few map updates, and 1,000 nodes send 5,000 a second.
    let lease_runtime = OwnRuntime::new("lease", 1, LEASE_NICE)?;
    let lease_rt = lease_runtime.handle();
    // One network for openraft and for the election timer's pre-votes: the same channels.
    let network = Network::new(config.secret.clone(), dialer.clone(), contact.clone());
    // Raft spawns its core and replication tasks where it is created.
    let raft = rt
        .spawn(Raft::new(
            config.id,
            Arc::new(raft_config(&config)?),
            network.clone(),
            log,
            sm,
        ))
        .await
        .map_err(Error::internal)?
        .map_err(|e| Error::Internal(format!("raft failed to start: {e}")))?;

    let proposer = Proposer::spawn(raft.clone());
    let core = Arc::new(Core {
        id: config.id,
        raft: raft.clone(),
        shared,
        proposer,
        leases: Leases::new(config.timings.lease, config.timings.stream_fence),
        config: config.clone(),
        voters: Default::default(),
        contact: contact.clone(),
        me: me.clone(),
        follows: Default::default(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // One set of credentials for every service: auth::RPC_TABLE decides, per method, whether
    // a member (by certificate with TLS, else by the cluster secret) or which client role is
    // needed.
    let credentials = core.credentials();
    let connections = config.connections;

    let raft_svc = Guard::new(
        RaftPeerServer::new(RaftService::new(
            core.clone(),
            // openraft's leader lease is its election_timeout_max (see raft_config).
            config.timings.election_timeout * 2,
        ))
        .max_decoding_message_size(MAX_RAFT_MESSAGE)
        .max_encoding_message_size(MAX_RAFT_MESSAGE),
        credentials.clone(),
    );
    tasks.push(serve_on(
        &rt,
        raft_listener,
        raft_svc,
        config.tls.clone(),
        connections,
        "raft",
        stop_rx.clone(),
    )?);

    let max_api = config.limits.max_code_bytes + config.limits.max_manifest_bytes + 64 * 1024;
    // Traced outside the guard: a refused request is a span too.
    let node_svc = Traced::new(Guard::new(
        NodeServiceServer::new(NodeApi::new(core.clone())).max_decoding_message_size(4 << 20),
        credentials.clone(),
    ));
    // The lease listener serves `NodeService.Heartbeat` alone, with the same credentials.
    let lease_svc = RenewalsOnly::new(Traced::new(Guard::new(
        NodeServiceServer::new(NodeApi::new(core.clone())),
        credentials.clone(),
    )));
    let cluster_svc = Traced::new(Guard::new(
        ClusterServiceServer::new(ClusterApi::new(core.clone())).max_decoding_message_size(max_api),
        credentials,
    ));
    tasks.push(serve_on(
        &lease_rt,
        lease_listener,
        lease_svc,
        config.tls.clone(),
        connections,
        "lease",
        stop_rx.clone(),
    )?);
    let mut s = stop_rx.clone();
    let api_tls = config.tls.clone();
    tasks.push(tokio::spawn(async move {
        let r = connections
            .grpc_server()
            .add_service(node_svc)
            .add_service(cluster_svc)
            .serve_with_incoming_shutdown(
                rebeam_tls::incoming(api_listener, api_tls, connections, "api"),
                async move {
                    let _ = s.changed().await;
                },
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "api listener failed");
        }
    }));

    let election = config.timings.election_timeout;
    tasks.push(rt.spawn(elect(
        raft.clone(),
        config.id,
        contact,
        network.clone(),
        ElectionTimes {
            // openraft's leader lease is its election_timeout_max (see raft_config).
            lease: election * 2,
            // As openraft draws it, but anew for every wait. (Shorter waits made starved
            // followers campaign against a live leader before the pre-vote existed; the
            // pre-vote asks voters whether they heard from a leader within the lease, so a
            // wait shorter than the lease would only be refused.)
            spread: (election, election * 2),
            // One and a half Raft heartbeats: a live leader has spoken by then.
            probe_after: config.timings.raft_heartbeat * 3 / 2,
        },
        stop_rx.clone(),
    )));
    // Beside the renewals it judges: a stalled API runtime delays neither.
    tasks.push(lease_rt.spawn(lease::run(core.clone(), stop_rx.clone())));
    tasks.push(rt.spawn(lease::confirm(core.clone(), stop_rx.clone())));
    tasks.push(rt.spawn(lease::advertise(core.clone(), network, stop_rx.clone())));

    if config.init {
        let mut members = BTreeMap::new();
        members.insert(config.id, me.clone());
        for p in &config.peers {
            members.insert(
                p.id,
                MemberNode {
                    raft_addr: p.raft_addr.clone(),
                    api_addr: p.api_addr.clone(),
                    // Filled in by that member once it leads (`lease::advertise`).
                    lease_addr: String::new(),
                },
            );
        }
        let initialized = raft.is_initialized().await.map_err(Error::internal)?;
        if !initialized {
            // Every initial member may do this with the same membership; openraft accepts it.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "initialize skipped");
            } else {
                tracing::info!("raft group initialized");
            }
        }
    }
    if let Some(seed) = config.join.clone() {
        let initialized = raft.is_initialized().await.map_err(Error::internal)?;
        if !initialized {
            tasks.push(tokio::spawn(join_group(
                seed,
                config.id,
                me.clone(),
                BearerInjector::for_member(&config.secret, &dialer),
                dialer.clone(),
                stop_rx,
            )));
        }
    }
    tracing::info!(id = config.id, raft = %raft_addr, api = %api_addr, lease = %lease_addr, "controller member serving");
    Ok(ControllerHandle {
        raft_addr,
        api_addr,
        core,
        stop,
        tasks,
        lease_addr,
        lease_runtime,
        raft_runtime,
    })
}

/// The lease address this member advertises: `--lease-advertise`, else the host nodes reach
/// its API at (`--api-advertise`) with the bound lease port, else the bound address.
fn lease_advertise(config: &ControllerConfig, bound: SocketAddr) -> String {
    if let Some(a) = &config.lease_advertise {
        return a.clone();
    }
    let host = config
        .api_advertise
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(host, _)| host);
    match host {
        Some(host) => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    }
}

/// Asks the group (following leader redirects) to admit this member, until it succeeds.
async fn join_group(
    seed: String,
    id: u64,
    me: MemberNode,
    bearer: BearerInjector,
    dialer: rebeam_tls::Dialer,
    mut stop: watch::Receiver<bool>,
) {
    let mut target = seed;
    loop {
        let attempt = async {
            let channel = dialer
                .channel(&target, |e| {
                    e.connect_timeout(std::time::Duration::from_secs(2))
                })
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let mut c = ClusterServiceClient::with_interceptor(channel, bearer.clone());
            c.add_controller(AddControllerRequest {
                id,
                raft_address: me.raft_addr.clone(),
                api_address: me.api_addr.clone(),
            })
            .await
        };
        match attempt.await {
            Ok(_) => {
                tracing::info!(id, "joined the controller group");
                return;
            }
            Err(s) => {
                if let Some(l) = s
                    .metadata()
                    .get(LEADER_METADATA_KEY)
                    .and_then(|v| v.to_str().ok())
                {
                    target = l.to_string();
                    continue;
                }
                tracing::info!(error = %s.message(), "joining the controller group; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}
