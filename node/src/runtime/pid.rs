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

impl NodeId {
    /// Interns `name` and returns its id; the same name always gives the same id.
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
        names().read().by_id[self.0 as usize].clone()
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
}
