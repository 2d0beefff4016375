//! Global names, process groups and the cluster's members: through the host's ports.

use super::*;

/// The cluster's names and groups, or a clear error on a single-machine node.
pub(super) fn names(py: Python<'_>) -> PyResult<&'static Arc<dyn GlobalNames>> {
    rt()?.host.names.get().ok_or_else(|| no_cluster(py))
}

/// The other nodes, or a clear error on a single-machine node.
pub(super) fn remote(py: Python<'_>) -> PyResult<&'static Arc<dyn Remote>> {
    rt()?.host.remote.get().ok_or_else(|| no_cluster(py))
}

pub(super) fn no_cluster(py: Python<'_>) -> PyErr {
    rebeam_error(
        py,
        "global names need a cluster: start the node with --controllers ADDR",
    )
}

/// The typed `rebeam` exception (`Unavailable`, `NotFound`, ...) for a controller's answer.
pub(super) fn controller_error(py: Python<'_>, refused: &Refused) -> PyErr {
    match types(py) {
        Ok(t) => error(
            py,
            &t.controller_error,
            (refused.code, refused.message.as_str()),
        ),
        Err(e) => e,
    }
}

/// `register_global(name, pid)`: a cluster-wide unique name, held by the controller.
#[pyfunction]
pub(super) fn register_global(py: Python<'_>, name: &str, pid: &Bound<'_, PyPid>) -> PyResult<()> {
    check_name(name)?;
    let names = names(py)?;
    let pid = pid.get().0;
    match py.detach(|| names.register_global(name, pid)) {
        Ok(Ok(())) => {
            if let Some(p) = rt()?.lookup(pid) {
                p.data.report_exit.store(true, Ordering::Release);
            }
            Ok(())
        }
        Ok(Err(holder)) => Err(error(
            py,
            &types(py)?.name_taken,
            (name, convert::pid_to_py(py, holder)?),
        )),
        Err(status) => Err(controller_error(py, &status)),
    }
}

/// `unregister_global(name)`.
#[pyfunction]
pub(super) fn unregister_global(py: Python<'_>, name: &str) -> PyResult<()> {
    let names = names(py)?;
    py.detach(|| names.unregister_global(name))
        .map_err(|s| controller_error(py, &s))
}

/// `whereis_global(name)` → Pid or None.
#[pyfunction]
pub(super) fn whereis_global(py: Python<'_>, name: &str) -> PyResult<Option<PyPid>> {
    let names = names(py)?;
    py.detach(|| names.whereis_global(name))
        .map(|p| p.map(PyPid))
        .map_err(|s| controller_error(py, &s))
}

/// `pg.join(group, pid)`: cluster-wide; false if `pid` was a member already.
#[pyfunction]
pub(super) fn pg_join(py: Python<'_>, group: &str, pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    check_name(group)?;
    let names = names(py)?;
    let pid = pid.get().0;
    let changed = py
        .detach(|| names.pg_join(group, pid))
        .map_err(|s| controller_error(py, &s))?;
    if let Some(p) = rt()?.lookup(pid) {
        // Its memberships end when it exits: the controller hears of the exit.
        p.data.report_exit.store(true, Ordering::Release);
    }
    Ok(changed)
}

/// `pg.leave(group, pid)`; false if `pid` was not a member.
#[pyfunction]
pub(super) fn pg_leave(py: Python<'_>, group: &str, pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    let names = names(py)?;
    let pid = pid.get().0;
    py.detach(|| names.pg_leave(group, pid))
        .map_err(|s| controller_error(py, &s))
}

/// `pg.members(group)`: from this node's cache of the watch stream, in join order.
#[pyfunction]
pub(super) fn pg_members(py: Python<'_>, group: &str) -> PyResult<Vec<PyPid>> {
    Ok(names(py)?
        .group_members(group)
        .into_iter()
        .map(PyPid)
        .collect())
}

/// `pg.which_groups()`.
#[pyfunction]
pub(super) fn pg_groups(py: Python<'_>) -> PyResult<Vec<String>> {
    Ok(names(py)?.group_names())
}

/// The cluster's members as this node sees them: [(name, incarnation, address, alive)].
#[pyfunction]
pub(super) fn cluster_members(py: Python<'_>) -> PyResult<Vec<(String, u64, String, bool)>> {
    Ok(remote(py)?.members())
}
