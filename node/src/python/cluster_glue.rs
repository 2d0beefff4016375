//! Where cluster mode meets Python: loading an app's code versions and starting its assigned
//! top-level children from them.

use super::convert;
use super::host::PyRuntime;
pub use super::native::{spawn_for_peer, Release};
use super::objects::Pid as PyPid;
use super::upgrade::{move_all, Moves};
use crate::runtime::Pid;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rebeam_proto as pb;
use std::sync::Arc;
use std::time::Duration;

/// How long an upgrade waits for servers busy in a handler before reporting them as stayed.
const UPGRADE_PATIENCE: Duration = Duration::from_secs(5);

/// Which version of which app to make current here, and the modules that must import.
#[derive(Clone)]
pub struct Target {
    /// The app's name.
    pub app: String,
    /// The version string from its manifest.
    pub version: String,
    /// The code blob's hash.
    pub code_hash: String,
    /// Modules to import up front (the top-level children's start modules).
    pub modules: Vec<String>,
}

/// Unpacks (once per hash) and imports a version of an app beside the loaded ones and makes
/// it current; when `upgrading`, moves the app's servers here to it. Returns what moved, or
/// the Python error with its traceback.
pub fn load_version(
    rt: &Arc<PyRuntime>,
    base_dir: &str,
    target: &Target,
    code: Vec<u8>,
    upgrading: bool,
) -> Result<Option<Moves>, String> {
    Python::attach(|py| {
        let glue = py.import("rebeam._cluster")?;
        glue.call_method1(
            "load_version",
            (
                base_dir,
                target.app.as_str(),
                target.version.as_str(),
                target.code_hash.as_str(),
                PyBytes::new(py, &code),
                target.modules.clone(),
                !upgrading,
            ),
        )
        .map(drop)
    })
    .map_err(error_text)?;
    if !upgrading {
        return Ok(None);
    }
    let app = super::apps::tag(&target.app);
    Ok(Some(move_all(rt, &app, UPGRADE_PATIENCE)))
}

/// Imports the modules `load_version` needs (the archive reader and its standard-library
/// imports), so the first load of an app's code on this node does not pay for them.
pub fn warm_loader() -> Result<(), String> {
    Python::attach(|py| {
        py.import("rebeam._cluster")?;
        py.import("rebeam._archive").map(drop)
    })
    .map_err(error_text)
}

/// Spawns a top-level child from the loaded version of its app; returns its pid or the
/// Python error text (with traceback).
pub fn start_child(assignment: &pb::Assignment, spec: &pb::ChildSpec) -> Result<Pid, String> {
    let app = super::apps::tag(&assignment.app);
    let pid = Python::attach(|py| {
        super::apps::spawning_child(app, &assignment.child, || -> PyResult<Pid> {
            let pid = py.import("rebeam._cluster")?.call_method1(
                "start_child",
                (
                    assignment.app.as_str(),
                    assignment.code_hash.as_str(),
                    spec.start.as_str(),
                    spec.args_json.as_str(),
                    spec.name.as_str(),
                    spec.global,
                ),
            )?;
            Ok(pid.cast::<PyPid>()?.get().0)
        })
    })
    .map_err(error_text)?;
    Ok(pid)
}

fn error_text(err: PyErr) -> String {
    Python::attach(|py| convert::traceback_text(py, &err))
}
