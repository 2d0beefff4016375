//! An orderly departure of a cluster node on SIGTERM/SIGINT (a container stop, a pod
//! eviction, a rolling upgrade): the node stops starting and reporting top-level children,
//! shuts its trees down in the reverse of their start order (supervisors stop their own
//! children in reverse order and `terminate` runs where exits are trapped), then tells the
//! controller it leaves so its children are placed elsewhere at once instead of after the
//! lease. The lease is renewed throughout, so nothing of this node is restarted elsewhere
//! while it still runs here.

use crate::python::host::PyRuntime;
use crate::runtime::{Pid, Reason};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the processes left after the trees stopped get to end before the node leaves.
const REST_PATIENCE: Duration = Duration::from_secs(2);

static LEAVING: AtomicBool = AtomicBool::new(false);

/// True once this node started leaving: it takes no new top-level children and reports no
/// exits (the controller reassigns everything when told the node left).
pub fn leaving() -> bool {
    LEAVING.load(Ordering::Acquire)
}

/// Stops every tree of this node in order and leaves the cluster; returns once the
/// controller was told (or could not be). Does nothing but stop the trees outside a cluster.
pub fn depart(rt: &Arc<PyRuntime>) {
    LEAVING.store(true, Ordering::Release);
    let mut top: Vec<Pid> = rt
        .processes()
        .iter()
        .filter(|p| p.data.child.get().is_some())
        .map(|p| p.pid)
        .collect();
    // Serials grow with each spawn in an incarnation: the last started stops first.
    top.sort_by_key(|p| std::cmp::Reverse(p.serial));
    tracing::info!(
        children = top.len(),
        "leaving: stopping the top-level children"
    );
    for pid in top {
        crate::cluster::stopper::stop_child(rt, pid);
    }
    let rest: Vec<Pid> = rt.processes().iter().map(|p| p.pid).collect();
    if !rest.is_empty() {
        pyo3::Python::attach(|_py| {
            for &pid in &rest {
                rt.exit_signal(pid, pid, Reason::Shutdown);
            }
        });
        let deadline = Instant::now() + REST_PATIENCE;
        while rest.iter().any(|&p| rt.lookup(p).is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(remote) = rt.host.remote.get() {
        let incarnation = rt.incarnation();
        match remote.leave(incarnation) {
            // Printed like the join line: operators see departures at any log level.
            Ok(()) => eprintln!(
                "rebeam-node: {} left the cluster (incarnation {incarnation})",
                rt.node().name()
            ),
            Err(refused) => tracing::warn!(
                incarnation,
                "could not tell the controller this node leaves (its lease will lapse): {}",
                refused.message
            ),
        }
    }
}
