//! Where cluster mode meets Python: starting assigned top-level children from fetched code.

use super::convert;
use super::objects::Pid as PyPid;
use crate::cluster::Cluster;
use crate::runtime::Pid;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rebeam_proto as pb;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Unpacks the app's code (once per hash) and spawns the child; returns its pid or the
/// Python error text (with traceback).
pub fn start_child(
    cluster: &Arc<Cluster>,
    base_dir: &str,
    assignment: &pb::Assignment,
    spec: &pb::ChildSpec,
    code: Vec<u8>,
) -> Result<Pid, String> {
    let app = super::apps::tag(&assignment.app);
    Python::attach(|py| {
        let result = super::apps::spawning_for(app, || -> PyResult<Pid> {
            let glue = py.import("rebeam._cluster")?;
            let dir = glue.call_method1(
                "install_code",
                (
                    base_dir,
                    assignment.app.as_str(),
                    assignment.code_hash.as_str(),
                    PyBytes::new(py, &code),
                ),
            )?;
            let pid = glue.call_method1(
                "start_child",
                (
                    dir,
                    spec.start.as_str(),
                    spec.args_json.as_str(),
                    spec.name.as_str(),
                    spec.global,
                ),
            )?;
            Ok(pid.cast::<PyPid>()?.get().0)
        });
        match result {
            Ok(pid) => {
                if let Some(p) = cluster.rt.lookup(pid) {
                    p.data.report_exit.store(true, Ordering::Release);
                    let _ = p.data.child.set(assignment.child.clone());
                }
                Ok(pid)
            }
            Err(err) => Err(match convert::crash_reason(py, &err) {
                crate::runtime::Reason::Crash(c) => c.traceback.clone(),
                other => other.to_string(),
            }),
        }
    })
}
