//! Starts real `rebeam-controller` processes on loopback for integration tests.
//!
//! Each member gets its own temporary directory and log file; ports come from binding
//! 127.0.0.1:0. Set REBEAM_KEEP_TEST_DIRS=1 to keep the directories (they are also kept, and their
//! path printed, when a test panics).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rebeam_proto::v1 as pb;
use rebeam_proto::v1::cluster_service_client::ClusterServiceClient;
use rebeam_proto::v1::node_service_client::NodeServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const SECRET: &str = "test-secret";

/// Adds the bearer token to requests: the interceptor members use (`rebeam-grpc`).
pub type Bearer = rebeam_grpc::BearerInjector;

pub type Client = ClusterServiceClient<InterceptedService<Channel, Bearer>>;
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, Bearer>>;

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// One controller member process.
pub struct Member {
    pub id: u64,
    pub raft: SocketAddr,
    pub api: SocketAddr,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: parking_lot::Mutex<Option<Child>>,
}

/// A group of controller members.
pub struct Cluster {
    tmp: Option<tempfile::TempDir>,
    pub members: Vec<Member>,
    pub extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` members that initialize one group; `extra` args go to every member.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("rebeam-ctl-test-")
            .tempdir()
            .expect("temp dir");
        let members = (1..=n as u64)
            .map(|id| {
                let dir = tmp.path().join(format!("member-{id}"));
                std::fs::create_dir_all(&dir).expect("member dir");
                Member {
                    id,
                    raft: free_port(),
                    api: free_port(),
                    log: tmp.path().join(format!("member-{id}.log")),
                    dir,
                    child: parking_lot::Mutex::new(None),
                }
            })
            .collect();
        let c = Cluster {
            tmp: Some(tmp),
            members,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// (Re)starts member `i` from its directory.
    pub fn spawn(&self, i: usize) {
        let peers: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.id != self.members[i].id)
            .map(|m| format!("{}={}/{}", m.id, m.raft, m.api))
            .collect();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rebeam-controller"));
        cmd.arg("--id")
            .arg(m.id.to_string())
            .arg("--data-dir")
            .arg(&m.dir)
            .arg("--raft-listen")
            .arg(m.raft.to_string())
            .arg("--api-listen")
            .arg(m.api.to_string())
            // Members share one machine: each HTTP server on a port of its own.
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--init")
            .arg("--secret")
            .arg(SECRET)
            .env_remove("REBEAM_SECRET")
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::from(log.try_clone().expect("log clone")))
            .stderr(Stdio::from(log));
        for p in &peers {
            cmd.arg("--peer").arg(p);
        }
        cmd.args(&self.extra);
        *m.child.lock() = Some(cmd.spawn().expect("spawn rebeam-controller"));
    }

    /// SIGKILLs member `i` (no chance to flush or say goodbye).
    pub fn kill9(&self, i: usize) {
        if let Some(mut c) = self.members[i].child.lock().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILLs every member.
    pub fn kill_all(&self) {
        for i in 0..self.members.len() {
            self.kill9(i);
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.lock().is_some()
    }

    /// A client of member `i`'s cluster service (connects lazily).
    pub fn client(&self, i: usize) -> Client {
        client_at(&self.members[i].api.to_string(), SECRET)
    }

    /// A client of member `i`'s node service.
    pub fn node_client(&self, i: usize) -> NodeClient {
        let ch = channel(&self.members[i].api.to_string());
        NodeServiceClient::with_interceptor(ch, Bearer::new(SECRET))
    }

    /// Waits until a running member says it leads and returns its index.
    pub async fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            for i in 0..self.members.len() {
                if !self.is_running(i) {
                    continue;
                }
                if let Ok(s) = self.client(i).status(pb::StatusRequest {}).await {
                    if s.get_ref().is_leader {
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}; logs in {}",
                self.path()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `cond` every 20 ms until it holds or `timeout` passes (then panics with `what`).
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !cond().await {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs in {}",
                self.path()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn path(&self) -> String {
        self.tmp
            .as_ref()
            .map(|t| t.path().display().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        let keep = std::thread::panicking() || std::env::var_os("REBEAM_KEEP_TEST_DIRS").is_some();
        if let Some(t) = self.tmp.take() {
            if keep {
                let p = t.keep();
                eprintln!("kept controller test directory {}", p.display());
            }
        }
    }
}

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// A cluster-service client for `addr` with `token`.
pub fn client_at(addr: &str, token: &str) -> Client {
    ClusterServiceClient::with_interceptor(channel(addr), Bearer::new(token))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
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
    for i in 0..c.members.len() {
        if c.is_running(i) {
            if let Ok(s) = c.client(i).status(pb::StatusRequest {}).await {
                if s.get_ref().is_leader {
                    return Some(i);
                }
            }
        }
    }
    None
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
    use std::io::Write;
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let deflated =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    w.start_file("rebeam.toml", deflated).expect("zip manifest");
    w.write_all(manifest_toml.as_bytes()).expect("zip manifest");
    w.start_file("mod.py", deflated).expect("zip module");
    w.write_all(b"class Child0: pass\n").expect("zip module");
    if padding > 0 {
        let stored =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("data.bin", stored).expect("zip padding");
        // Varied bytes, so the blob is as large as asked whatever the writer does.
        let bytes: Vec<u8> = (0..padding).map(|i| (i * 7 % 251) as u8).collect();
        w.write_all(&bytes).expect("zip padding");
    }
    w.finish().expect("zip finish").into_inner()
}

/// Runs `f` against the leader's client service, retrying on `unavailable` (leader changes
/// under load) for up to 20 s; other errors are returned.
pub async fn on_leader<T, F, Fut>(c: &Cluster, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = c.wait_leader(Duration::from_secs(10)).await;
        match f(c.client(l)).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => return Err(s),
        }
    }
}

/// Like [`on_leader`] for the node service.
pub async fn on_leader_node<T, F, Fut>(c: &Cluster, mut f: F) -> Result<T, tonic::Status>
where
    F: FnMut(NodeClient) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = c.wait_leader(Duration::from_secs(10)).await;
        match f(c.node_client(l)).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => return Err(s),
        }
    }
}
