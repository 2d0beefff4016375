//! A controller group as real processes: start, kill -9, restart from disk, find the leader.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rebeam_proto::v1 as pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::net::{channel, cluster_client, free_port, node_client, Client, NodeClient};

/// How the members of a group are started.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// The `rebeam-controller` binary.
    pub exe: PathBuf,
    /// The cluster secret every member and every harness client uses.
    pub secret: String,
    /// Extra flags given to every member.
    pub extra: Vec<String>,
    /// `RUST_LOG` of the members (their output goes to `member-<id>.log`).
    pub log_filter: String,
    /// Prefix of the temporary directory holding the members' data and logs.
    pub dir_prefix: String,
}

impl GroupOptions {
    /// Members of `exe` sharing `secret`, logging at info (openraft at warn).
    pub fn new(exe: impl Into<PathBuf>, secret: &str) -> GroupOptions {
        GroupOptions {
            exe: exe.into(),
            secret: secret.into(),
            extra: Vec::new(),
            log_filter: "info,openraft=warn".into(),
            dir_prefix: "rebeam-controllers-".into(),
        }
    }
}

/// One member process of the group.
pub struct Member {
    /// Its Raft id (1-based).
    pub id: u64,
    /// Where it listens for Raft traffic.
    pub raft: SocketAddr,
    /// Where it serves clients and nodes.
    pub api: SocketAddr,
    /// Where it serves lease renewals (`--lease-listen`).
    pub lease: SocketAddr,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A group of controller members that initialise one Raft group on first start.
pub struct ControllerGroup {
    tmp: Option<tempfile::TempDir>,
    /// The members, index `i` having Raft id `i + 1`.
    pub members: Vec<Member>,
    opts: GroupOptions,
    /// One long-lived connection per member, as a node keeps one; tonic reconnects it after
    /// the member restarts.
    control: Vec<Channel>,
    /// The member last seen leading: where [`ControllerGroup::on_leader`] tries first.
    hint: AtomicUsize,
}

impl ControllerGroup {
    /// Starts `n` members with their own ports and directories.
    pub fn start(n: usize, opts: GroupOptions) -> anyhow::Result<ControllerGroup> {
        let tmp = tempfile::Builder::new()
            .prefix(&opts.dir_prefix)
            .tempdir()
            .context("creating the group's temporary directory")?;
        let mut members = Vec::with_capacity(n);
        for id in 1..=n as u64 {
            let dir = tmp.path().join(format!("member-{id}"));
            std::fs::create_dir_all(&dir)?;
            members.push(Member {
                id,
                raft: free_port()?,
                api: free_port()?,
                lease: free_port()?,
                log: tmp.path().join(format!("member-{id}.log")),
                dir,
                child: Mutex::new(None),
            });
        }
        let control = members
            .iter()
            .map(|m| channel(m.api))
            .collect::<anyhow::Result<_>>()?;
        let group = ControllerGroup {
            tmp: Some(tmp),
            members,
            opts,
            control,
            hint: AtomicUsize::new(0),
        };
        for i in 0..n {
            group.spawn(i)?;
        }
        Ok(group)
    }

    /// (Re)starts member `i` from its directory.
    pub fn spawn(&self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut cmd = Command::new(&self.opts.exe);
        cmd.args(["--id", &m.id.to_string()])
            .args(["--raft-listen", &m.raft.to_string()])
            .args(["--api-listen", &m.api.to_string()])
            .args(["--lease-listen", &m.lease.to_string()])
            // Members share one machine: each HTTP server on a port of its own.
            .args(["--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&m.dir)
            .args(["--init", "--secret", &self.opts.secret])
            .env_remove("REBEAM_SECRET")
            .env("RUST_LOG", &self.opts.log_filter)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for p in self.members.iter().filter(|p| p.id != m.id) {
            cmd.arg("--peer")
                .arg(format!("{}={}/{}", p.id, p.raft, p.api));
        }
        cmd.args(&self.opts.extra);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.opts.exe.display()))?;
        *m.child.lock() = Some(child);
        Ok(())
    }

    /// SIGKILLs member `i`: no chance to flush or say goodbye.
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

    /// Whether member `i` was started and not killed since.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.lock().is_some()
    }

    /// Member `i`'s OS process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.lock().as_ref().map(|c| c.id())
    }

    /// The cluster secret the members share.
    pub fn secret(&self) -> &str {
        &self.opts.secret
    }

    /// A cluster-service client of member `i` on a connection of its own.
    pub fn client(&self, i: usize) -> anyhow::Result<Client> {
        Ok(cluster_client(
            channel(self.members[i].api)?,
            &self.opts.secret,
        ))
    }

    /// A node-service client of member `i` on a connection of its own.
    pub fn node_client(&self, i: usize) -> anyhow::Result<NodeClient> {
        Ok(node_client(
            channel(self.members[i].api)?,
            &self.opts.secret,
        ))
    }

    /// A cluster-service client on member `i`'s long-lived control connection.
    pub fn control_client(&self, i: usize) -> Client {
        cluster_client(self.control[i].clone(), &self.opts.secret)
    }

    /// A node-service client on member `i`'s long-lived control connection.
    pub fn control_node_client(&self, i: usize) -> NodeClient {
        node_client(self.control[i].clone(), &self.opts.secret)
    }

    /// A fresh connection to each member, in member order (a load generator's own).
    pub fn channels(&self) -> anyhow::Result<Vec<Channel>> {
        self.members.iter().map(|m| channel(m.api)).collect()
    }

    /// A fresh connection to each member's lease listener, in member order (renewals only).
    pub fn lease_channels(&self) -> anyhow::Result<Vec<Channel>> {
        self.members.iter().map(|m| channel(m.lease)).collect()
    }

    /// The index of the member that says it leads, asking every running member once (each
    /// ask bounded, so a frozen member cannot hold the search up).
    pub async fn leader_index(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let asked = tokio::time::timeout(
                Duration::from_millis(300),
                self.control_client(i).status(pb::StatusRequest {}),
            )
            .await;
            if let Ok(Ok(s)) = asked {
                if s.get_ref().is_leader {
                    self.hint.store(i, Ordering::Relaxed);
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits until a running member says it leads and returns its index.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_index().await {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no leader within {timeout:?}; logs in {}",
                    self.root().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `f(member index)` against the leader until `deadline`, each attempt bounded by
    /// `attempt`: follows the leader hint a refusing member returns, moves on to the next
    /// member when one is unreachable or slow, and returns any other error at once. The one
    /// leader-following policy of the harness, as a node follows leaders.
    pub async fn on_leader<T, F, Fut>(
        &self,
        deadline: Instant,
        attempt: Duration,
        mut f: F,
    ) -> Result<T, Status>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.members.len();
        let mut last = Status::unavailable("no attempt");
        let mut tries = 0usize;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            let i = self.hint.load(Ordering::Relaxed) % n;
            let bound = attempt.min(deadline - now);
            let status = match tokio::time::timeout(bound, f(i)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("attempt timed out"),
            };
            let redirect = status
                .metadata()
                .get(rebeam_grpc::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|a| self.index_of(a))
                .filter(|&j| j != i);
            match redirect {
                Some(j) => self.hint.store(j, Ordering::Relaxed),
                None if matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
                ) =>
                {
                    let next = (i + 1) % n;
                    let _ =
                        self.hint
                            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
                    tries += 1;
                    // A whole round refused: an election is on; give it a moment.
                    if tries.is_multiple_of(n) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                None => return Err(status),
            }
            last = status;
        }
    }

    /// Polls `cond` every 20 ms until it holds, or fails naming `what` after `timeout`.
    pub async fn wait_until<F, Fut>(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !cond().await {
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for {what}; logs in {}",
                    self.root().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The member whose client address is `api`.
    pub fn index_of(&self, api: &str) -> Option<usize> {
        self.members.iter().position(|m| m.api.to_string() == api)
    }

    /// The members' client addresses, comma-separated (the form `--controllers` takes).
    pub fn api_list(&self) -> String {
        self.members
            .iter()
            .map(|m| m.api.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The directory holding the members' data and logs.
    pub fn root(&self) -> &Path {
        self.tmp
            .as_ref()
            .map(|t| t.path())
            .unwrap_or(Path::new("."))
    }
}

impl Drop for ControllerGroup {
    fn drop(&mut self) {
        self.kill_all();
        let keep = std::thread::panicking() || std::env::var_os("REBEAM_KEEP_TEST_DIRS").is_some();
        if let Some(t) = self.tmp.take() {
            if keep {
                let p = t.keep();
                eprintln!("kept controller directory {}", p.display());
            }
        }
    }
}
