//! The cluster serving the Python host's ports (`python::ports`): `main.rs` plugs these in.

use super::Cluster;
use crate::python::ports::{GlobalNames, Refused, Remote, SpawnDone, SpawnRequest};
use crate::python::term::Term;
use crate::runtime::{Outbound, Pid, Reason};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The cluster as the Python host sees it.
pub struct Ports(pub Arc<Cluster>);

impl Remote for Ports {
    fn route(&self, out: Outbound<Term>) -> Result<(), Outbound<Term>> {
        self.0.route(out)
    }

    fn process_exited(&self, pid: Pid, reason: &Reason, top_level: bool) {
        // This node's view drops the process at once; the others learn it from the
        // controller once the exit report is applied.
        self.0.forget_pid(pid);
        if top_level {
            self.0.child_exited(pid, reason);
        } else {
            self.0.report_exit(pid, reason);
        }
    }

    fn leave(&self, incarnation: u64) -> Result<(), Refused> {
        let leaving = super::control::leave(&self.0, incarnation);
        self.0.tokio.block_on(leaving).map_err(refused)
    }

    fn members(&self) -> Vec<(String, u64, String, bool)> {
        self.0
            .members()
            .into_iter()
            .map(|(n, m)| (n, m.incarnation, m.address, m.alive))
            .collect()
    }

    fn dropped_frames(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
            + crate::observe::stats::STATS.peer_frames_oversized.get()
    }

    fn spawn_on(&self, node: &str, request: SpawnRequest, done: SpawnDone) -> Result<(), String> {
        super::remote_spawn::request(&self.0, node, request, done)
    }
}

impl GlobalNames for Ports {
    fn whereis_cached(&self, name: &str) -> Option<Pid> {
        self.0.whereis_cached(name)
    }

    fn whereis_global(&self, name: &str) -> Result<Option<Pid>, Refused> {
        self.0.whereis_global(name).map_err(refused)
    }

    fn register_global(&self, name: &str, pid: Pid) -> Result<Result<(), Pid>, Refused> {
        self.0.register_global(name, pid).map_err(refused)
    }

    fn unregister_global(&self, name: &str) -> Result<(), Refused> {
        self.0.unregister_global(name).map_err(refused)
    }

    fn pg_join(&self, group: &str, pid: Pid) -> Result<bool, Refused> {
        self.0.pg_join(group, pid).map_err(refused)
    }

    fn pg_leave(&self, group: &str, pid: Pid) -> Result<bool, Refused> {
        self.0.pg_leave(group, pid).map_err(refused)
    }

    fn group_members(&self, group: &str) -> Vec<Pid> {
        self.0.group_members(group)
    }

    fn group_names(&self) -> Vec<String> {
        self.0.group_names()
    }
}

fn refused(status: tonic::Status) -> Refused {
    Refused {
        code: rebeam_grpc::code_name(status.code()),
        message: status.message().to_string(),
    }
}
