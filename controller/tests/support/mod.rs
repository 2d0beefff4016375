//! The controller tests' view of the shared harness (`rebeam-testkit`): a group of real
//! `rebeam-controller` processes on loopback whose helpers panic with the logs' path, as a test
//! wants. REBEAM_KEEP_TEST_DIRS=1 keeps the directories (they are also kept, and their path
//! printed, when a test panics).

#![allow(dead_code)]

use std::time::{Duration, Instant};

use rebeam_proto::v1 as pb;
use rebeam_testkit::{ControllerGroup, GroupOptions};

pub use rebeam_testkit::{Client, NodeClient};

pub const SECRET: &str = "test-secret";

/// A controller group for one test.
pub struct Cluster(ControllerGroup);

impl std::ops::Deref for Cluster {
    type Target = ControllerGroup;
    fn deref(&self) -> &ControllerGroup {
        &self.0
    }
}

impl Cluster {
    /// Starts `n` members that initialize one group; `extra` args go to every member.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let mut opts = GroupOptions::new(env!("CARGO_BIN_EXE_rebeam-controller"), SECRET);
        opts.extra = extra.iter().map(|s| s.to_string()).collect();
        opts.dir_prefix = "rebeam-ctl-test-".into();
        Cluster(ControllerGroup::start(n, opts).expect("start the controller group"))
    }

    /// (Re)starts member `i` from its directory.
    pub fn spawn(&self, i: usize) {
        self.0.spawn(i).expect("spawn rebeam-controller");
    }

    /// A client of member `i`'s cluster service (connects lazily).
    pub fn client(&self, i: usize) -> Client {
        self.0.client(i).expect("client")
    }

    /// A client of member `i`'s node service.
    pub fn node_client(&self, i: usize) -> NodeClient {
        self.0.node_client(i).expect("node client")
    }

    /// Waits until a running member says it leads and returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        self.0.leader(timeout).await.expect("a leader")
    }

    /// Polls `cond` every 20 ms until it holds or `timeout` passes (then panics with `what`).
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.0
            .wait_until(timeout, what, cond)
            .await
            .expect("condition");
    }

    pub fn path(&self) -> String {
        self.root().display().to_string()
    }
}

/// A cluster-service client for `addr` with `token`.
pub fn client_at(addr: &str, token: &str) -> Client {
    let addr = addr.parse().expect("a socket address");
    rebeam_testkit::cluster_client(rebeam_testkit::channel(addr).expect("channel"), token)
}

pub fn pid(node: &str, incarnation: u64, serial: u64) -> pb::Pid {
    pb::Pid {
        node: node.into(),
        incarnation,
        serial,
    }
}

/// Joins a node through the leader and returns its incarnation.
pub async fn join_node(c: &Cluster, node: &str, labels: &[(&str, &str)]) -> u64 {
    join_node_at(c, node, "127.0.0.1:9000", labels).await
}

/// Joins `node` with `address` as the address it listens on.
pub async fn join_node_at(c: &Cluster, node: &str, address: &str, labels: &[(&str, &str)]) -> u64 {
    let req = pb::JoinRequest {
        node: node.into(),
        address: address.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: 0,
    };
    on_leader_node(c, |mut n| {
        let req = req.clone();
        async move { n.join(req).await }
    })
    .await
    .expect("join")
    .incarnation
}

/// Registers `name` for `p` on the leader (following leader changes).
pub async fn register(c: &Cluster, name: &str, p: pb::Pid) -> pb::RegisterNameReply {
    let req = pb::RegisterNameRequest {
        name: name.into(),
        pid: Some(p),
    };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.register_name(req).await }
    })
    .await
    .expect("register")
}

/// Submits an app on the leader (following leader changes).
pub async fn submit(c: &Cluster, manifest_toml: String, code: Vec<u8>) -> pb::AppInfo {
    let req = pb::SubmitAppRequest {
        manifest_toml,
        code,
    };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.submit_app(req).await }
    })
    .await
    .expect("submit")
    .app
    .expect("app")
}

/// Joins `p` to `group` on the leader.
pub async fn pg_join(c: &Cluster, group: &str, p: pb::Pid) {
    let req = pb::PgRequest {
        group: group.into(),
        pid: Some(p),
    };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.pg_join(req).await }
    })
    .await
    .expect("pg join");
}

/// The cluster state as the leader sees it.
pub async fn cluster_state(c: &Cluster) -> pb::ClusterStateReply {
    on_leader(c, |mut cl| async move {
        cl.cluster_state(pb::ClusterStateRequest {}).await
    })
    .await
    .expect("cluster state")
}

/// A linearizable whereis on the leader.
pub async fn whereis(c: &Cluster, name: &str) -> Option<pb::Pid> {
    let req = pb::WhereisRequest {
        name: name.into(),
        linearizable: true,
        ..Default::default()
    };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.whereis(req).await }
    })
    .await
    .expect("whereis")
    .pid
}

/// Finds the current leader's index by asking running members (None while there is none).
pub async fn leader_index(c: &Cluster) -> Option<usize> {
    c.0.leader_index().await
}

/// A running heartbeat task for one node incarnation.
pub struct Heartbeats {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// When the last heartbeat was acknowledged.
    pub last: std::sync::Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl Heartbeats {
    /// Stops heartbeating and waits until no heartbeat is in flight any more.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Heartbeats `node` every `every` to whichever member leads, like a live node.
pub fn heartbeat(
    c: std::sync::Arc<Cluster>,
    node: &str,
    incarnation: u64,
    every: Duration,
) -> Heartbeats {
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let last = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let (node, last2) = (node.to_string(), last.clone());
    let task = tokio::spawn(async move {
        loop {
            if *rx.borrow() {
                return;
            }
            if let Some(l) = leader_index(&c).await {
                let req = pb::HeartbeatRequest {
                    node: Some(pb::NodeRef {
                        node: node.clone(),
                        incarnation,
                    }),
                    // Tests that hold a watch stream for the node count on its close.
                    watching: true,
                    streams_ended: 0,
                    sent_ms: 0,
                    attempt_ms: 0,
                };
                if c.node_client(l).heartbeat(req).await.is_ok() {
                    *last2.lock() = Some(Instant::now());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = rx.changed() => if r.is_err() { return },
            }
        }
    });
    Heartbeats { stop, task, last }
}

/// A small valid manifest with `children` top-level children of the given placements.
pub fn manifest(name: &str, version: &str, placements: &[&str]) -> String {
    let mut m = format!(
        "[app]\nname = \"{name}\"\nversion = \"{version}\"\nmax_restarts = 10\nmax_seconds = 5\n"
    );
    for (i, p) in placements.iter().enumerate() {
        m.push_str(&format!(
            "\n[[children]]\nstart = \"mod:Child{i}\"\nname = \"c{i}\"\nplacement = \"{p}\"\n"
        ));
    }
    m
}

/// An app archive as `rebeam.client.pack` builds it: `manifest_toml` as the root
/// `rebeam.toml`, one module, and `padding` bytes stored uncompressed (for tests that need a
/// large blob).
pub fn app_code(manifest_toml: &str, padding: usize) -> Vec<u8> {
    rebeam_testkit::app_archive(
        manifest_toml,
        &[("mod.py", "class Child0: pass\n")],
        padding,
    )
    .expect("zip the app")
}

/// Runs `f` against the leader's client service, following leader changes for up to 20 s;
/// other errors are returned.
pub async fn on_leader<T, F, Fut>(c: &Cluster, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    c.0.on_leader(deadline, Duration::from_secs(5), |i| f(c.control_client(i)))
        .await
}

/// Like [`on_leader`] for the node service.
pub async fn on_leader_node<T, F, Fut>(c: &Cluster, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut(NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    c.0.on_leader(deadline, Duration::from_secs(5), |i| {
        f(c.control_node_client(i))
    })
    .await
}
