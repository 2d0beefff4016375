//! `_rebeam_native`: the functions behind the `rebeam` package inside a node.

use super::convert::{self, error, reason_from_py, reason_to_py, types};
use super::executor::{clear_interrupt, is_killed, lease_gate, log_crash, Blocking};
use super::host::{
    current, current_exited, current_pid, node_runtime, wait_detached, Enter, PyData, PyProcess,
    PyRuntime,
};
use super::objects::{Pid as PyPid, Ref as PyRef, Sender};
use super::ports::{GlobalNames, Refused, Remote, SpawnDone, SpawnReply, SpawnRequest};
use super::term::Term;
use crate::observe::trace::{self, Delivery};
use crate::runtime::{CallResult, CallSlot, Envelope, Kind, Pid, Reason, RegistryError, Status};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod awaiting;
mod globals;
mod introspect;
mod messaging;
mod receiving;
mod registry;
mod signals;
mod spawning;
mod timing;

use awaiting::*;
use globals::*;
use introspect::*;
use messaging::*;
use receiving::*;
use registry::*;
use signals::*;
use spawning::*;
pub use spawning::{finish_async_spawn, finish_function, spawn_for_peer, Release};
use timing::*;

/// Longest name accepted by the local registry.
const MAX_NAME_LEN: usize = 255;

fn rt() -> PyResult<&'static Arc<PyRuntime>> {
    node_runtime()
}

/// The current process, or a clear error for code running outside any process.
fn this(py: Python<'_>, what: &str) -> PyResult<Arc<PyProcess>> {
    current().ok_or_else(|| {
        rebeam_error(
            py,
            format!("{what} needs a process: call it from actor code, or wrap the code in rebeam.run(fn)"),
        )
    })
}

/// A `rebeam.Error` saying what is wrong.
fn rebeam_error(py: Python<'_>, message: impl Into<String>) -> PyErr {
    match types(py) {
        Ok(t) => error(py, &t.error, (message.into(),)),
        Err(e) => e,
    }
}

/// A number of seconds given for `what` (a delay, a timeout), or a ValueError naming it.
fn seconds_arg(what: &str, seconds: f64) -> PyResult<Duration> {
    if !(seconds >= 0.0 && seconds.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, not {seconds}"
        )));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The deadline of a wait with an optional `timeout` (None waits for ever).
fn deadline_after(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        Some(t) if !(t >= 0.0 && t.is_finite()) => Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds or None, not {t}"
        ))),
        Some(t) => Ok(Some(Instant::now() + Duration::from_secs_f64(t))),
        None => Ok(None),
    }
}

/// Raises the killed-process exception if the current process died during a native call.
fn still_alive(py: Python<'_>, process: &Arc<PyProcess>) -> PyResult<()> {
    if process.is_exited() {
        return Err(killed(py));
    }
    Ok(())
}

/// The killed-process exception, for a process that died during a native call (the
/// interrupt aimed at it is dropped: it raises this instead).
fn killed(py: Python<'_>) -> PyErr {
    clear_interrupt(py);
    match types(py) {
        Ok(t) => error(py, &t.killed, ()),
        Err(e) => e,
    }
}

/// Where a message goes: a pid, a local name, or None for an unknown name. Inlined for a
/// pid (every send's case): a result returned through memory stalls the send that reads it.
#[inline(always)]
fn resolve(dest: &Bound<'_, PyAny>) -> PyResult<Option<Pid>> {
    if let Ok(pid) = dest.cast_exact::<PyPid>() {
        return Ok(Some(pid.get().0));
    }
    resolve_name(dest)
}

/// `resolve` for anything but a pid.
#[inline(never)]
fn resolve_name(dest: &Bound<'_, PyAny>) -> PyResult<Option<Pid>> {
    if let Ok(name) = dest.cast_exact::<PyString>() {
        return Ok(rt()?.whereis(name.to_str()?));
    }
    let py = dest.py();
    if dest.is_instance(types(py)?.global.bind(py))? {
        let name: String = dest.getattr("name")?.extract()?;
        let names = names(py)?;
        if let Some(pid) = names.whereis_cached(&name) {
            return Ok(Some(pid));
        }
        return py
            .detach(|| names.whereis_global(&name))
            .map_err(|s| controller_error(py, &s));
    }
    if dest.get_type().is(types(py)?.via.bind(py)) {
        // A `Via` name resolves through its registry's Python code (`rebeam.cast` is this
        // module's function itself, so it meets them; other senders resolve them first).
        let found = dest.call_method0(pyo3::intern!(py, "whereis"))?;
        if found.is_none() {
            return Ok(None);
        }
        return Ok(Some(found.cast::<PyPid>()?.get().0));
    }
    let type_name = dest.get_type().name()?.to_string();
    Err(PyTypeError::new_err(format!(
        "a destination must be a Pid, a local name (str), Global(name) or Via(registry, key), \
         not {type_name}"
    )))
}

fn unknown_name(py: Python<'_>, dest: &Bound<'_, PyAny>) -> PyResult<PyErr> {
    Ok(error(py, &types(py)?.unknown_name, (dest.clone(),)))
}

fn exit_error(py: Python<'_>, pid: Pid, reason: &Reason) -> PyResult<PyErr> {
    Ok(error(
        py,
        &types(py)?.exit,
        (convert::pid_to_py(py, pid)?, reason_to_py(py, reason)?),
    ))
}

#[pyfunction]
fn _install(py: Python<'_>, types: &Bound<'_, PyDict>) -> PyResult<()> {
    convert::install(py, types)
}

/// Raises the killed-process exception again in code that caught it and went on: a killed
/// process sends nothing more.
fn not_killed(py: Python<'_>) -> PyResult<()> {
    if current_exited() {
        return Err(killed(py));
    }
    Ok(())
}

/// Fills the `_rebeam_native` module (the binary registers it before Python starts).
pub fn init_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPid>()?;
    m.add_class::<PyRef>()?;
    m.add_class::<Sender>()?;
    m.add_function(wrap_pyfunction!(_install, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_server, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_function, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_as_app, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_remote, m)?)?;
    m.add_function(wrap_pyfunction!(send, m)?)?;
    m.add_function(wrap_pyfunction!(cast, m)?)?;
    m.add_function(wrap_pyfunction!(call, m)?)?;
    m.add_function(wrap_pyfunction!(reply, m)?)?;
    m.add_function(wrap_pyfunction!(self_pid, m)?)?;
    m.add_function(wrap_pyfunction!(link, m)?)?;
    m.add_function(wrap_pyfunction!(unlink, m)?)?;
    m.add_function(wrap_pyfunction!(monitor, m)?)?;
    m.add_function(wrap_pyfunction!(demonitor, m)?)?;
    m.add_function(wrap_pyfunction!(exit, m)?)?;
    m.add_function(wrap_pyfunction!(trap_exits, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(register, m)?)?;
    m.add_function(wrap_pyfunction!(unregister, m)?)?;
    m.add_function(wrap_pyfunction!(whereis, m)?)?;
    m.add_function(wrap_pyfunction!(registered, m)?)?;
    m.add_function(wrap_pyfunction!(receive, m)?)?;
    m.add_function(wrap_pyfunction!(send_after, m)?)?;
    m.add_function(wrap_pyfunction!(cancel_timer, m)?)?;
    m.add_function(wrap_pyfunction!(set_timeout, m)?)?;
    m.add_function(wrap_pyfunction!(mark_cleanup, m)?)?;
    m.add_function(wrap_pyfunction!(current_process, m)?)?;
    m.add_function(wrap_pyfunction!(is_alive, m)?)?;
    m.add_function(wrap_pyfunction!(process_info, m)?)?;
    m.add_function(wrap_pyfunction!(write_output, m)?)?;
    m.add_function(wrap_pyfunction!(processes, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(note_restart, m)?)?;
    m.add_function(wrap_pyfunction!(register_global, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_global, m)?)?;
    m.add_function(wrap_pyfunction!(whereis_global, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_members, m)?)?;
    m.add_function(wrap_pyfunction!(pg_join, m)?)?;
    m.add_function(wrap_pyfunction!(pg_leave, m)?)?;
    m.add_function(wrap_pyfunction!(pg_members, m)?)?;
    m.add_function(wrap_pyfunction!(pg_groups, m)?)?;
    m.add_class::<crate::python::aio::Step>()?;
    m.add_function(wrap_pyfunction!(_aio_loop_thread, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_take, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_done, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_call, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_receive, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_unwatch, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_spawn_server, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_step, m)?)?;
    m.add_function(wrap_pyfunction!(_aio_spawn_remote, m)?)?;
    m.add_class::<SpawnTicket>()?;
    Ok(())
}
