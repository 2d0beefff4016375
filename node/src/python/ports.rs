//! The ports through which the Python host reaches other nodes. The host owns these traits
//! and knows nothing of how they are served; `main.rs` plugs the cluster in (a
//! single-machine node has none), so the import direction stays `runtime ← python ← cluster`.

use super::term::Term;
use crate::runtime::{Outbound, Pid, Reason, Ref};

/// Routing to other nodes, and the exits the control plane must hear of.
pub trait Remote: Send + Sync {
    /// Sends a message or signal to another node; gives it back if that node is not
    /// reachable (the caller then treats the target as unreachable).
    fn route(&self, out: Outbound<Term>) -> Result<(), Outbound<Term>>;

    /// A local process the control plane cares about (a top-level child, a global name's
    /// holder, a group member) exited.
    /// `top_level` marks a top-level child the controller placed here.
    fn process_exited(&self, pid: Pid, reason: &Reason, top_level: bool);

    /// Tells the control plane this node's incarnation leaves (an orderly shutdown), so
    /// its children are placed elsewhere at once.
    fn leave(&self, incarnation: u64) -> Result<(), Refused>;

    /// The other nodes this one knows of: (name, incarnation, address, alive), by name.
    fn members(&self) -> Vec<(String, u64, String, bool)>;

    /// Frames dropped so far because a link's queue to another node was full.
    fn dropped_frames(&self) -> u64;

    /// Asks the node named `node` to start a process (`rebeam.spawn_on`); `done` gets the
    /// answer on the thread that applies peer frames, before any later frame from that node.
    /// Err (saying why) when `node` is not a live member.
    fn spawn_on(&self, node: &str, request: SpawnRequest, done: SpawnDone) -> Result<(), String>;
}

/// A request to start a process on another node (Erlang's `spawn(Node, ...)`).
#[derive(Clone, Debug)]
pub struct SpawnRequest {
    /// The calling process, if any.
    pub from: Option<Pid>,
    /// The module defining the target, imported on the other node.
    pub module: String,
    /// The target's qualified name in `module`.
    pub qualname: String,
    /// The script's path when `module` is `__main__`, else empty.
    pub main_path: String,
    /// The pickled `(args, kwargs)`.
    pub args: Vec<u8>,
    /// Link `from` to the new process before it runs.
    pub link: bool,
    /// `from` monitors the new process under this ref, from before it runs.
    pub monitor: Option<Ref>,
}

/// What the other node answered to a remote spawn.
#[derive(Clone, Debug)]
pub enum SpawnReply {
    /// The process runs (a server's `init` returned).
    Spawned(Pid),
    /// A server's `init` failed with this reason.
    InitFailed(Reason),
    /// Nothing was started; the text says why (an import error's traceback, a bad target).
    Refused(String),
    /// The node was lost before it answered.
    Lost,
}

/// Receives the answer to a remote spawn.
pub type SpawnDone = Box<dyn FnOnce(SpawnReply) + Send>;

/// Why the control plane did not answer a request: the gRPC code name (`UNAVAILABLE`, as
/// the client's errors carry it) and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The status code's name, e.g. `NOT_FOUND`.
    pub code: &'static str,
    /// What the controller (or the attempt to reach it) said.
    pub message: String,
}

/// Cluster-wide names and process groups, held by the control plane.
pub trait GlobalNames: Send + Sync {
    /// The holder of a global name from this node's cache, without asking anyone.
    fn whereis_cached(&self, name: &str) -> Option<Pid>;
    /// The holder of a global name, asking the control plane when not cached (blocks).
    fn whereis_global(&self, name: &str) -> Result<Option<Pid>, Refused>;
    /// Registers a global name; `Ok(Err(holder))` when another process holds it (blocks).
    fn register_global(&self, name: &str, pid: Pid) -> Result<Result<(), Pid>, Refused>;
    /// Releases a global name (blocks).
    fn unregister_global(&self, name: &str) -> Result<(), Refused>;
    /// Adds `pid` to a process group; false if it was a member already (blocks).
    fn pg_join(&self, group: &str, pid: Pid) -> Result<bool, Refused>;
    /// Removes `pid` from a group; false if it was not a member (blocks).
    fn pg_leave(&self, group: &str, pid: Pid) -> Result<bool, Refused>;
    /// The cached members of a group, in join order.
    fn group_members(&self, group: &str) -> Vec<Pid>;
    /// Every group with members, sorted.
    fn group_names(&self) -> Vec<String>;
}
