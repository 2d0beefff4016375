//! Conversions between core values (reasons, signals) and the `rebeam` package's Python types.

use super::objects::{Pid as PyPid, Ref as PyRef};
use super::term::Term;
use crate::runtime::{Crash, Envelope, Pid, Reason, Ref};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};
use std::sync::Arc;

/// Classes and sentinels of the `rebeam` package that the node builds or recognises.
pub struct PyTypes {
    /// `rebeam.Exit`: the exception for dead call targets and the trapped-exit message.
    pub exit: Py<PyAny>,
    /// `rebeam.Down`.
    pub down: Py<PyAny>,
    /// `rebeam.Crash`.
    pub crash: Py<PyAny>,
    /// `rebeam.Timeout`.
    pub timeout: Py<PyAny>,
    /// `rebeam.Error`.
    pub error: Py<PyAny>,
    /// `rebeam.InitError`.
    pub init_error: Py<PyAny>,
    /// `rebeam.UnknownName`.
    pub unknown_name: Py<PyAny>,
    /// `rebeam.NameTaken`.
    pub name_taken: Py<PyAny>,
    /// The private BaseException that unwinds a killed process's code.
    pub killed: Py<PyAny>,
    /// The `noreply()` sentinel.
    pub noreply: Py<PyAny>,
    /// The message a GenServer gets when its idle timeout passes.
    pub timeout_message: Py<PyAny>,
    /// `rebeam.Global`.
    pub global: Py<PyAny>,
    /// `rebeam.Via`.
    pub via: Py<PyAny>,
    /// Called with a pid when a process that registered cleanups exits.
    pub cleanup: Py<PyAny>,
    /// `rebeam._errors.controller_error(code, message)`: the typed exception for a controller
    /// answer, the same classes the client raises.
    pub controller_error: Py<PyAny>,
    /// `rebeam._errors.format_exception`: `traceback.format_exception` without the
    /// runtime's own frames, for crash reports users read.
    pub format_exception: Py<PyAny>,
}

static TYPES: PyOnceLock<PyTypes> = PyOnceLock::new();

/// Installs the package's types; the package calls this once on import.
pub fn install(py: Python<'_>, types: &Bound<'_, PyDict>) -> PyResult<()> {
    let get = |name: &str| -> PyResult<Py<PyAny>> {
        types
            .get_item(name)?
            .map(|v| v.unbind())
            .ok_or_else(|| PyRuntimeError::new_err(format!("_install: missing {name}")))
    };
    let installed = PyTypes {
        exit: get("Exit")?,
        down: get("Down")?,
        crash: get("Crash")?,
        timeout: get("Timeout")?,
        error: get("Error")?,
        init_error: get("InitError")?,
        unknown_name: get("UnknownName")?,
        name_taken: get("NameTaken")?,
        killed: get("ProcessKilled")?,
        noreply: get("NOREPLY")?,
        timeout_message: get("TIMEOUT")?,
        global: get("Global")?,
        via: get("Via")?,
        cleanup: get("cleanup")?,
        controller_error: get("controller_error")?,
        format_exception: get("format_exception")?,
    };
    let _ = TYPES.set(py, installed);
    Ok(())
}

/// The installed types; errors if the `rebeam` package was not imported.
pub fn types(py: Python<'_>) -> PyResult<&PyTypes> {
    TYPES.get(py).ok_or_else(|| {
        PyRuntimeError::new_err("the rebeam package is not initialised; import rebeam")
    })
}

/// Builds an exception instance of `class` with `args`.
pub fn error<'py>(
    py: Python<'py>,
    class: &Py<PyAny>,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyErr {
    match class.bind(py).call1(args) {
        Ok(instance) => PyErr::from_value(instance),
        Err(e) => e,
    }
}

/// A reason as the Python value users see.
pub fn reason_to_py<'py>(py: Python<'py>, reason: &Reason) -> PyResult<Bound<'py, PyAny>> {
    match reason {
        Reason::ShutdownWith(term) => {
            let extra = Term::from_bytes(py, term)?;
            Ok(PyTuple::new(py, [PyString::new(py, "shutdown").into_any(), extra])?.into_any())
        }
        Reason::Crash(c) => types(py)?.crash.bind(py).call1((
            c.kind.as_str(),
            c.message.as_str(),
            c.traceback.as_str(),
        )),
        Reason::Other(term) => Term::from_bytes(py, term),
        other => Ok(PyString::new(py, other.atom().unwrap_or("noconnection")).into_any()),
    }
}

/// A Python value given as a reason, in core form.
pub fn reason_from_py(value: &Bound<'_, PyAny>) -> PyResult<Reason> {
    let py = value.py();
    if let Ok(s) = value.cast_exact::<PyString>() {
        if let Some(reason) = Reason::from_atom(s.to_str()?) {
            return Ok(reason);
        }
    }
    if let Ok(t) = value.cast_exact::<PyTuple>() {
        if t.len() == 2 && t.get_item(0)?.extract::<&str>().ok() == Some("shutdown") {
            let extra = Term::to_bytes(&t.get_item(1)?)?;
            return Ok(Reason::ShutdownWith(Arc::from(extra)));
        }
    }
    if value.is_instance(types(py)?.crash.bind(py))? {
        return Ok(Reason::Crash(Arc::new(Crash {
            kind: value.getattr("type")?.extract()?,
            message: value.getattr("message")?.extract()?,
            traceback: value.getattr("traceback")?.extract()?,
        })));
    }
    Ok(Reason::Other(Arc::from(Term::to_bytes(value)?)))
}

/// An exception as a person reads it in a report: its formatted traceback.
pub fn traceback_text(py: Python<'_>, err: &PyErr) -> String {
    match crash_reason(py, err) {
        Reason::Crash(c) => c.traceback.clone(),
        other => other.to_string(),
    }
}

/// The reason for an uncaught exception: a `Crash` with type, message and traceback.
pub fn crash_reason(py: Python<'_>, err: &PyErr) -> Reason {
    let kind = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    let message = err
        .value(py)
        .str()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let traceback = types(py)
        .and_then(|t| {
            t.format_exception
                .bind(py)
                .call1((err.get_type(py), err.value(py), err.traceback(py)))
        })
        .and_then(|lines| lines.extract::<Vec<String>>())
        .map(|lines| lines.concat())
        .unwrap_or_else(|_| format!("{kind}: {message}\n"));
    Reason::Crash(Arc::new(Crash {
        kind,
        message,
        traceback,
    }))
}

/// A pid as a Python `Pid`.
pub fn pid_to_py(py: Python<'_>, pid: Pid) -> PyResult<Bound<'_, PyAny>> {
    Ok(Bound::new(py, PyPid(pid))?.into_any())
}

/// What a mailbox entry looks like to Python code that receives it.
pub fn envelope_to_py<'py>(
    py: Python<'py>,
    envelope: &Envelope<Term>,
) -> PyResult<Bound<'py, PyAny>> {
    match envelope {
        Envelope::Info(m) => m.to_py(py),
        Envelope::Cast(m) => {
            Ok(PyTuple::new(py, [PyString::new(py, "$cast").into_any(), m.to_py(py)?])?.into_any())
        }
        Envelope::Call { request, slot } => {
            let sender = Bound::new(py, super::objects::Sender { slot: slot.clone() })?;
            Ok(PyTuple::new(
                py,
                [
                    PyString::new(py, "$call").into_any(),
                    request.to_py(py)?,
                    sender.into_any(),
                ],
            )?
            .into_any())
        }
        Envelope::Exit(signal) => exit_value(py, signal.from, &signal.reason),
        Envelope::Down(signal) => down_value(py, signal.mref, signal.pid, &signal.reason),
        Envelope::Timeout(_) => Ok(types(py)?.timeout_message.bind(py).clone()),
    }
}

/// `Exit(pid, reason)`.
pub fn exit_value<'py>(py: Python<'py>, pid: Pid, reason: &Reason) -> PyResult<Bound<'py, PyAny>> {
    types(py)?
        .exit
        .bind(py)
        .call1((pid_to_py(py, pid)?, reason_to_py(py, reason)?))
}

/// `Down(ref, pid, reason)`.
pub fn down_value<'py>(
    py: Python<'py>,
    mref: Ref,
    pid: Pid,
    reason: &Reason,
) -> PyResult<Bound<'py, PyAny>> {
    types(py)?.down.bind(py).call1((
        Bound::new(py, PyRef(mref))?,
        pid_to_py(py, pid)?,
        reason_to_py(py, reason)?,
    ))
}
