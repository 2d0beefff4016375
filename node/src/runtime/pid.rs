//! Process identifiers: (node, incarnation, serial), never reused, valid cluster-wide.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// An interned node name, so a `Pid` stays `Copy` and cheap to compare.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct NodeId(u32);

#[derive(Default)]
struct NodeNames {
    by_id: Vec<Arc<str>>,
    by_name: HashMap<Arc<str>, u32>,
}

fn names() -> &'static RwLock<NodeNames> {
    static NAMES: OnceLock<RwLock<NodeNames>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

/// Longest node name taken from the wire (the controller's node id grammar allows 128).
pub const MAX_NODE_NAME: usize = 128;
/// Most distinct node names one process keeps: far more than any cluster has members, few
/// enough that names from the wire cost at most `MAX_NODE_NAMES * MAX_NODE_NAME` bytes.
pub const MAX_NODE_NAMES: usize = 4096;

/// Why a node name from the wire was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node name {shown:?} is invalid: use 1 to {MAX_NODE_NAME} ASCII letters, digits, '.', '_' or '-'")]
pub struct BadNodeName {
    /// The start of the name, for the message.
    pub shown: String,
}

/// True for a name of the node id grammar: 1 to `MAX_NODE_NAME` bytes of `[A-Za-z0-9._-]`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl NodeId {
    /// The id of every node name that arrived from the wire once the table was full: such a
    /// node is unknown here, so nothing is routed to it (it prints as `?`).
    pub const UNKNOWN: NodeId = NodeId(u32::MAX);

    /// A node name from the wire (a pid in a message, a request): checked against the node
    /// id grammar, and interned only while the table has room, so a peer or client naming
    /// made-up nodes cannot grow this process without bound. Known names keep their id.
    pub fn from_wire(name: &str) -> Result<NodeId, BadNodeName> {
        if !valid_node_name(name) {
            return Err(BadNodeName {
                shown: name.chars().take(40).collect(),
            });
        }
        if let Some(id) = names().read().by_name.get(name) {
            return Ok(NodeId(*id));
        }
        if names().read().by_id.len() >= MAX_NODE_NAMES {
            return Ok(NodeId::UNKNOWN);
        }
        Ok(NodeId::intern(name))
    }

    /// Interns `name` and returns its id; the same name always gives the same id. For names
    /// this node trusts (its own, the controller's membership); the wire uses `from_wire`.
    pub fn intern(name: &str) -> NodeId {
        if let Some(id) = names().read().by_name.get(name) {
            return NodeId(*id);
        }
        let mut table = names().write();
        if let Some(id) = table.by_name.get(name) {
            return NodeId(*id);
        }
        let id = table.by_id.len() as u32;
        let name: Arc<str> = Arc::from(name);
        table.by_id.push(name.clone());
        table.by_name.insert(name, id);
        NodeId(id)
    }

    /// The node's name as given to `intern`.
    pub fn name(self) -> Arc<str> {
        match names().read().by_id.get(self.0 as usize) {
            Some(name) => name.clone(),
            None => Arc::from("?"),
        }
    }
}

/// A process identifier. Printed as `<node.inc.serial>` with the incarnation shortened.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Pid {
    /// The node that spawned the process.
    pub node: NodeId,
    /// The node's incarnation when it spawned the process; a restarted node has a new one.
    pub incarnation: u64,
    /// Serial number within the incarnation, never reused.
    pub serial: u64,
}

impl Pid {
    /// The node's application master in `pid`'s incarnation: the parent, for exit signals,
    /// of the top-level children the controller placed there. Serial 0 is never a process.
    pub fn app_master(pid: &Pid) -> Pid {
        Pid {
            node: pid.node,
            incarnation: pid.incarnation,
            serial: 0,
        }
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{}.{:04x}.{}>",
            self.node.name(),
            self.incarnation & 0xffff,
            self.serial
        )
    }
}

/// A unique reference for monitors, timers and calls (like Erlang's `make_ref()`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Ref(pub u64);

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#Ref<{}>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_display_is_short() {
        let a = NodeId::intern("node-a");
        assert_eq!(a, NodeId::intern("node-a"));
        assert_ne!(a, NodeId::intern("node-b"));
        let pid = Pid {
            node: a,
            incarnation: 0x1234_3f2c,
            serial: 42,
        };
        assert_eq!(pid.to_string(), "<node-a.3f2c.42>");
    }

    #[test]
    fn names_from_the_wire_are_checked_and_bounded() {
        let known = NodeId::intern("wire-known");
        assert_eq!(NodeId::from_wire("wire-known"), Ok(known));
        for bad in ["", "a b", "x\0", "../x", &"n".repeat(MAX_NODE_NAME + 1)] {
            assert!(NodeId::from_wire(bad).is_err(), "{bad:?}");
        }
        let mut last = known;
        for i in 0..MAX_NODE_NAMES + 10 {
            last = NodeId::from_wire(&format!("made-up-{i}")).expect("valid name");
        }
        assert_eq!(last, NodeId::UNKNOWN, "the table stops growing");
        assert!(names().read().by_id.len() <= MAX_NODE_NAMES);
        assert_eq!(NodeId::UNKNOWN.name().as_ref(), "?");
        assert_eq!(
            NodeId::from_wire("wire-known"),
            Ok(known),
            "known names still resolve"
        );
    }
}
