//! Configuration of one controller member: identity, addresses, peers, timings and limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Another member of the Raft group, as given with `--peer ID=RAFT_ADDR/API_ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Raft member id (unique, non-zero).
    pub id: u64,
    /// Address the member's Raft peer service listens on.
    pub raft_addr: String,
    /// Address the member's node and client services listen on.
    pub api_addr: String,
}

impl std::str::FromStr for PeerSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "peer `{s}` is malformed; write it as ID=RAFT_ADDR/API_ADDR, e.g. 2=10.0.0.2:7001/10.0.0.2:7100"
            ))
        };
        let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
        let (raft, api) = addrs.split_once('/').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        if id == 0 || raft.is_empty() || api.is_empty() {
            return Err(bad());
        }
        Ok(PeerSpec {
            id,
            raft_addr: raft.trim().to_string(),
            api_addr: api.trim().to_string(),
        })
    }
}

/// Failure-detection and Raft timings.
#[derive(Debug, Clone)]
pub struct Timings {
    /// A node silent this long is declared dead through the log.
    pub lease: Duration,
    /// How often nodes are told to heartbeat.
    pub heartbeat: Duration,
    /// Nodes fence themselves when they could not renew for this long (shorter than `lease`).
    pub node_fence: Duration,
    /// Nodes fence themselves this long after their watch stream broke; the leader may then
    /// declare a node dead this long after its stream closed instead of waiting for the lease.
    pub stream_fence: Duration,
    /// Raft leader heartbeat interval.
    pub raft_heartbeat: Duration,
    /// Raft election timeout: voters refuse votes for twice this after hearing from a
    /// leader, and a member that heard nothing campaigns after that plus a random one to
    /// two times this (`api::raft::elect`).
    pub election_timeout: Duration,
}

impl Timings {
    /// How recently a leader must have confirmed its leadership with a quorum to renew a
    /// lease. A member deposed without knowing it renews nothing: a heartbeat it accepts was
    /// sent after the last quorum acknowledgement it holds, so after every lease a newer
    /// leader honours by at most this much, which together with the node's fence stays
    /// under the lease (`node_fence + confirm_within < lease`).
    pub fn confirm_within(&self) -> Duration {
        self.lease.saturating_sub(self.node_fence) / 2
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease: Duration::from_millis(2000),
            heartbeat: Duration::from_millis(200),
            node_fence: Duration::from_millis(1400),
            stream_fence: Duration::from_millis(300),
            // openraft bounds a leadership confirmation by one Raft heartbeat: at 50 ms,
            // confirmations on a loaded machine missed it for seconds and leases went
            // unrenewed. Followers campaign only after the 300 ms leader lease anyway.
            raft_heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(150),
        }
    }
}

/// Bounds on what clients may store.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted app code blob in bytes.
    pub max_code_bytes: usize,
    /// Largest accepted manifest in bytes.
    pub max_manifest_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_code_bytes: crate::archive::MAX_CODE_BYTES,
            max_manifest_bytes: 64 * 1024,
        }
    }
}

/// Everything needed to start one controller member.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Raft member id (unique within the group, non-zero).
    pub id: u64,
    /// Directory holding the Raft log (redb) and snapshots.
    pub data_dir: PathBuf,
    /// Where the Raft peer service listens (port 0 picks one).
    pub raft_listen: SocketAddr,
    /// Where the node and client services listen (port 0 picks one).
    pub api_listen: SocketAddr,
    /// Where lease renewals are served, on a runtime of their own; `None` is the API
    /// listener's IP with a port the kernel picks.
    pub lease_listen: Option<SocketAddr>,
    /// Raft address other members use to reach this one; defaults to the bound address.
    pub raft_advertise: Option<String>,
    /// API address clients are redirected to; defaults to the bound address.
    pub api_advertise: Option<String>,
    /// Lease address nodes renew at; defaults to the host of `api_advertise` with the bound
    /// lease port, else the bound address.
    pub lease_advertise: Option<String>,
    /// The other initial members (used with `init`).
    pub peers: Vec<PeerSpec>,
    /// Initialize the group with this member and `peers` if the log is empty.
    pub init: bool,
    /// API address of an existing member to ask for admission into the group.
    pub join: Option<String>,
    /// Cluster secret required on every service.
    pub secret: String,
    /// Node secret: what nodes are given instead of the cluster secret, good for the node
    /// RPCs only (`auth::NODE_RPCS`) and sent to nodes' gateways; empty when nodes hold the
    /// cluster secret.
    pub node_secret: String,
    /// Client tokens given at start, each with its role (bare tokens are admin).
    pub client_tokens: Vec<crate::auth::StaticToken>,
    /// Failure detection and Raft timings.
    pub timings: Timings,
    /// Size limits.
    pub limits: Limits,
    /// Build a snapshot after this many log entries.
    pub snapshot_logs: u64,
    /// Log entries kept behind the last snapshot for slow followers.
    pub keep_logs: u64,
    /// TLS on every listener and outbound channel, with members authenticated by
    /// certificate (see `rebeam_tls::identity`); `None` is plaintext with the bearer secret.
    pub tls: Option<rebeam_tls::TlsSource>,
    /// Connection cap and idle timeout of each listener (API, Raft, HTTP).
    pub connections: rebeam_tls::ConnLimits,
    /// Requests per second (and burst) each client token may make.
    pub rate_limit: crate::auth::rate::RateLimit,
    /// Requests and streams each client token may have in flight at once per server (0: no
    /// cap).
    pub max_streams_per_token: usize,
}

impl ControllerConfig {
    /// A one-member controller on loopback with default timings, as `rebeam-node --dev` wants it.
    pub fn single(data_dir: PathBuf, secret: String) -> Self {
        ControllerConfig {
            id: 1,
            data_dir,
            raft_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_listen: None,
            raft_advertise: None,
            api_advertise: None,
            lease_advertise: None,
            peers: Vec::new(),
            init: true,
            join: None,
            secret,
            node_secret: String::new(),
            client_tokens: Vec::new(),
            timings: Timings::default(),
            limits: Limits::default(),
            snapshot_logs: 10_000,
            keep_logs: 1_000,
            tls: None,
            connections: rebeam_tls::ConnLimits::default(),
            rate_limit: crate::auth::rate::RateLimit::default(),
            max_streams_per_token: crate::auth::streams::DEFAULT_MAX_STREAMS,
        }
    }

    /// Checks values that would otherwise fail later in confusing ways.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::invalid("--id must be a non-zero integer"));
        }
        if self.secret.is_empty() {
            return Err(Error::invalid(
                "the cluster secret is empty; pass --secret or set REBEAM_SECRET",
            ));
        }
        if !self.node_secret.is_empty() && self.node_secret == self.secret {
            return Err(Error::invalid(
                "the node secret equals the cluster secret, so nodes would hold the cluster's keys; make a separate --node-secret",
            ));
        }
        if self.peers.iter().any(|p| p.id == self.id) {
            return Err(Error::invalid(
                "--peer lists this member's own id; list only the other members",
            ));
        }
        if self.limits.max_code_bytes > crate::archive::MAX_CODE_BYTES {
            return Err(Error::invalid(format!(
                "--max-code-bytes {} is above the {} bytes nodes unpack; an app that large would be accepted and never run",
                self.limits.max_code_bytes,
                crate::archive::MAX_CODE_BYTES
            )));
        }
        let t = &self.timings;
        if t.node_fence >= t.lease || t.heartbeat >= t.node_fence {
            return Err(Error::invalid(
                "timings must satisfy heartbeat < node fence < lease; adjust --heartbeat-ms, --node-fence-ms or --lease-ms",
            ));
        }
        if t.confirm_within() < t.raft_heartbeat * 2 {
            return Err(Error::invalid(
                "--lease-ms minus --node-fence-ms must be at least 4 times --raft-heartbeat-ms: a leader confirms its leadership every Raft heartbeat and renews leases only within half that gap",
            ));
        }
        if t.raft_heartbeat >= t.election_timeout {
            return Err(Error::invalid(
                "--raft-heartbeat-ms must be below --election-timeout-ms",
            ));
        }
        Ok(())
    }
}

pub use rebeam_auth::serving::ServingArgs;
