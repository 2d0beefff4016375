//! Domain values replicated through the log: pids, nodes, apps, assignments and commands.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How a controller member is reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Raft peer service address.
    pub raft_addr: String,
    /// Node/client API address (used for leader redirects).
    pub api_addr: String,
    /// Where it serves lease renewals (`--lease-listen`), on a runtime apart from the API's;
    /// empty for a member of an older version (nodes then renew at `api_addr`) and in logs
    /// and snapshots written before it existed. A leader fills in its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_addr: String,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// Raft type configuration of the controller.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = MemberNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Shorthand for the openraft handle of the controller.
pub type Raft = openraft::Raft<TypeConfig>;

/// A process id: node, node incarnation, serial.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pid {
    /// Node id.
    pub node: String,
    /// Incarnation of the node when the process was spawned.
    pub incarnation: u64,
    /// Serial within that incarnation.
    pub serial: u64,
}

/// A member node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub id: String,
    /// Current (or last) incarnation.
    pub incarnation: u64,
    /// Peer-link address.
    pub address: String,
    /// Labels used by placement.
    pub labels: BTreeMap<String, String>,
    /// Maximum top-level children; 0 is unlimited.
    pub capacity: u32,
    /// False once the node was declared dead or left.
    pub alive: bool,
    /// When it joined (leader clock, ms since the epoch).
    pub joined_at_ms: u64,
    /// When it died, 0 while alive.
    pub died_at_ms: u64,
    /// Why it died.
    pub death_reason: String,
}

/// Restart type of a top-level child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
}

/// Where a top-level child may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// Any alive node, least loaded first.
    Any,
    /// Spread an app's children over nodes.
    Spread,
    /// Only nodes whose label `key` equals `value`.
    Label(String, String),
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placement::Any => write!(f, "any"),
            Placement::Spread => write!(f, "spread"),
            Placement::Label(k, v) => write!(f, "{k}={v}"),
        }
    }
}

/// A top-level child as declared by the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Unique id within the app.
    pub id: String,
    /// `module:attribute`.
    pub start: String,
    /// Arguments as JSON.
    pub args_json: String,
    /// Local or global name, may be empty.
    pub name: String,
    /// Whether `name` is a global name.
    pub global: bool,
    /// Restart type.
    pub restart: Restart,
    /// Placement rule.
    pub placement: Placement,
}

/// Status of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppStatus {
    /// Its children are placed and restarted.
    Running,
    /// Stopped by a user.
    Stopped,
    /// Restart intensity exceeded.
    Failed,
}

/// A parsed, validated manifest plus the hash of its code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppDraft {
    /// App name.
    pub name: String,
    /// App version.
    pub version: String,
    /// Max restarts within `max_seconds`.
    pub max_restarts: u32,
    /// Intensity window.
    pub max_seconds: u32,
    /// Top-level children in start order.
    pub children: Vec<ChildSpec>,
    /// The manifest as submitted.
    pub manifest_toml: String,
}

/// One version of an app: what a rollback makes current again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppVersion {
    /// Manifest values, the manifest text included.
    pub draft: AppDraft,
    /// Hex SHA-256 of the code.
    pub code_hash: String,
    /// Size of the code in bytes.
    pub code_size: u64,
}

/// What happened when a node moved an app's processes to a code version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeStatus {
    /// Every process of the app on the node moved.
    Done,
    /// Some processes stayed on the old code (their `code_change` raised).
    Partial,
    /// The node could not load the code; nothing moved.
    Failed,
}

/// A process that stayed on its old code because its `code_change` raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StayedProcess {
    /// Its pid, when the node gave one.
    pub pid: Option<Pid>,
    /// Its name, or its class.
    pub name: String,
    /// The exception with its traceback.
    pub error: String,
}

/// One node's result of moving an app's processes to a code version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpgrade {
    /// The reporting node.
    pub node: String,
    /// The code the processes were moved to.
    pub code_hash: String,
    /// The version the node names (informational; the app's own version is authoritative).
    pub version: String,
    /// Outcome.
    pub status: UpgradeStatus,
    /// For `Failed`: the import error with its traceback.
    pub error: String,
    /// Processes that moved.
    pub upgraded: u32,
    /// Processes that stayed on the old code.
    pub stayed: Vec<StayedProcess>,
}

/// A submitted application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Manifest values.
    pub draft: AppDraft,
    /// Hex SHA-256 of the code.
    pub code_hash: String,
    /// Size of the code in bytes.
    pub code_size: u64,
    /// Status.
    pub status: AppStatus,
    /// Why the app failed, if it did.
    pub failure_reason: String,
    /// When this version became current (submit, upgrade or rollback).
    pub submitted_at_ms: u64,
    /// The version before the last upgrade or rollback, for `RollbackApp`.
    #[serde(default, deserialize_with = "previous_of_any_age")]
    pub previous: Option<AppVersion>,
    /// Times of restarts inside the intensity window.
    pub restart_times: Vec<u64>,
    /// Why the latest start of a top-level child failed (child, node and traceback); cleared
    /// once every child started, and by submit, upgrade and rollback.
    #[serde(default)]
    pub last_error: String,
    /// Each node's report of moving to the current code, by node id; cleared whenever the
    /// code hash changes.
    #[serde(default)]
    pub upgrades: BTreeMap<String, NodeUpgrade>,
    /// Which upgrade a node failed to load and that the app was rolled back; cleared by the
    /// next submit, upgrade or rollback.
    #[serde(default)]
    pub upgrade_error: String,
    /// When nodes died while starting one of this app's top-level children (recent ones):
    /// a repeat offender is charged alone for the next such death.
    #[serde(default)]
    pub killed_nodes_ms: Vec<u64>,
}

impl App {
    /// The current version, as a rollback would restore it.
    pub fn version(&self) -> AppVersion {
        AppVersion {
            draft: self.draft.clone(),
            code_hash: self.code_hash.clone(),
            code_size: self.code_size,
        }
    }
}

/// Reads [`App::previous`] from snapshots of any age. Before rollback existed it held only
/// `(version, code hash)`, which lacks the manifest needed to make it current again, so such
/// an entry loads as no previous version.
fn previous_of_any_age<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<AppVersion>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Full(AppVersion),
        VersionAndHash(serde::de::IgnoredAny, serde::de::IgnoredAny),
    }
    Ok(match Option::<Stored>::deserialize(d)? {
        Some(Stored::Full(v)) => Some(v),
        Some(Stored::VersionAndHash(..)) | None => None,
    })
}

/// One restart of a top-level child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// When.
    pub at_ms: u64,
    /// Why.
    pub reason: String,
    /// Node it ran on.
    pub from_node: String,
    /// Incarnation it ran on.
    pub from_incarnation: u64,
}

/// Where one top-level child runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// App name.
    pub app: String,
    /// Child id.
    pub child: String,
    /// Bumped on every (re)start.
    pub generation: u64,
    /// Node and incarnation, None while pending.
    pub node: Option<(String, u64)>,
    /// The pid the node reported for this generation.
    pub pid: Option<Pid>,
    /// Restart history (most recent last, bounded).
    pub history: Vec<RestartRecord>,
}

/// Code blob, base64 in JSON so snapshots and log entries stay compact.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Blob)
            .map_err(serde::de::Error::custom)
    }
}

/// One state change proposed through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node joins (or rejoins with a new incarnation).
    Join {
        node: String,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: u32,
    },
    /// A node leaves gracefully.
    Leave { node: String, incarnation: u64 },
    /// The leader declares a node dead (lease lapsed).
    DeclareDead {
        node: String,
        incarnation: u64,
        reason: String,
    },
    /// A node reports processes that exited.
    ReportExits {
        node: String,
        incarnation: u64,
        exits: Vec<(Pid, String)>,
    },
    /// A node reports the pid of a top-level child it started.
    ChildStarted {
        node: String,
        incarnation: u64,
        app: String,
        child: String,
        generation: u64,
        pid: Pid,
    },
    /// Register a global name.
    Register { name: String, pid: Pid },
    /// Release a global name (only if held by `pid`, when given).
    Unregister { name: String, pid: Option<Pid> },
    /// Join a process group.
    PgJoin { group: String, pid: Pid },
    /// Leave a process group.
    PgLeave { group: String, pid: Pid },
    /// Submit (or upgrade) an application.
    SubmitApp {
        draft: AppDraft,
        code: Blob,
        code_hash: String,
        upgrade: bool,
    },
    /// Stop an application.
    StopApp { name: String },
    /// Make an app's previous version current again.
    RollbackApp { name: String },
    /// Remove a stopped app and its code.
    DeleteApp { name: String },
    /// Store a new client token's record (its hash, never the token).
    IssueToken { record: crate::auth::TokenRecord },
    /// Remove a client token.
    RevokeToken { id: String },
    /// A node could not start a top-level child (import error or exception in `init`).
    ChildFailed {
        node: String,
        incarnation: u64,
        app: String,
        child: String,
        generation: u64,
        error: String,
    },
    /// An operator's action, recorded in the event journal with who did it.
    Note {
        who: String,
        app: String,
        node: String,
        text: String,
    },
    /// A node reports moving an app's processes to the code the app names.
    UpgradeReport {
        node: String,
        incarnation: u64,
        app: String,
        result: NodeUpgrade,
    },
}

/// A log entry's payload: commands proposed together (batched) at the leader's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Leader wall clock when proposed, ms since the epoch.
    pub now_ms: u64,
    /// Commands applied in order; each succeeds or fails alone.
    pub cmds: Vec<Command>,
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied, nothing to report.
    Done,
    /// Joined with this incarnation.
    Joined { incarnation: u64 },
    /// Registration result; `holder` is the winner.
    Registered { registered: bool, holder: Pid },
    /// Whether anything changed.
    Changed(bool),
    /// The app after submit/upgrade/stop.
    App(Box<App>),
    /// Refused; nothing was changed.
    Rejected(Error),
}

/// The results of a log entry, in command order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// One outcome per command.
    pub outcomes: Vec<Outcome>,
}

pub use rebeam_auth::now_ms;
