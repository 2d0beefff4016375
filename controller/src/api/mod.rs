//! gRPC services: Raft peer traffic, node control traffic, client/admin traffic.

pub mod cluster;
pub mod follows;
pub mod node;
pub mod raft;
pub(crate) mod watch;

pub(crate) use cluster::change_membership;

use crate::error::Error;
use crate::types::Pid;
use crate::validate;

/// Validates an optional proto pid into a domain pid.
pub fn pid(p: Option<rebeam_proto::v1::Pid>) -> Result<Pid, Error> {
    validate::pid(p.map(Into::into))
}

/// Validates a proto node reference into (node, incarnation).
pub fn node_ref(r: Option<rebeam_proto::v1::NodeRef>) -> Result<(String, u64), Error> {
    let r = r.ok_or_else(|| {
        Error::invalid("node is missing; pass the node id and the incarnation from Join")
    })?;
    validate::node_id(&r.node)?;
    if r.incarnation == 0 {
        return Err(Error::invalid(
            "incarnation is 0; pass the incarnation Join returned",
        ));
    }
    Ok((r.node, r.incarnation))
}
