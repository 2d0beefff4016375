//! Spawning servers and function processes, and running code as a process.

use super::*;

/// A new process of `kind`, linked to and/or monitored by the caller as asked.
pub(super) type Spawned = (
    &'static Arc<PyRuntime>,
    Option<Arc<PyProcess>>,
    Arc<PyProcess>,
    Option<crate::runtime::Ref>,
);

/// A spawn's mailbox limit: the node's default with the fields the spawner gave (a child
/// spec's `max_mailbox` / `max_mailbox_bytes`; 0 for unbounded) put in.
fn mailbox_limit(
    rt: &PyRuntime,
    messages: Option<usize>,
    bytes: Option<usize>,
) -> crate::runtime::MailboxLimit {
    let mut limit = rt.default_mailbox_limit();
    if let Some(m) = messages {
        limit.messages = m;
    }
    if let Some(b) = bytes {
        limit.bytes = b;
    }
    limit
}

pub(super) fn begin_spawn(
    py: Python<'_>,
    kind: Kind,
    link: bool,
    monitor: bool,
    limit: (Option<usize>, Option<usize>),
) -> PyResult<Spawned> {
    let rt = rt()?;
    let parent = current();
    if (link || monitor) && parent.is_none() {
        this(py, "spawn_link/spawn_monitor")?;
    }
    let process = rt.spawn_with(
        kind,
        parent.as_ref().filter(|_| link),
        PyData::spawned_by(parent.as_ref()),
        mailbox_limit(rt, limit.0, limit.1),
    );
    let mref = match (&parent, monitor) {
        (Some(p), true) => Some(rt.monitor(p, process.pid)),
        _ => None,
    };
    Ok((rt, parent, process, mref))
}

/// Starts a server process for `server` (an instance whose `init` has not run yet); runs
/// `init(*args, **kwargs)` on this thread as the new process, as `start_link` does in OTP.
#[pyfunction]
#[pyo3(signature = (server, args, kwargs=None, link=false, monitor=false, max_mailbox=None, max_mailbox_bytes=None))]
// The Python keyword arguments of `rebeam.spawn*`, one parameter each.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_server<'py>(
    py: Python<'py>,
    server: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
    link: bool,
    monitor: bool,
    max_mailbox: Option<usize>,
    max_mailbox_bytes: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let (rt, parent, process, mref) = begin_spawn(
        py,
        Kind::Server,
        link,
        monitor,
        (max_mailbox, max_mailbox_bytes),
    )?;
    let _ = process.data.server.set(server.clone().unbind());
    let result = {
        let _enter = Enter::new(process.clone());
        if lease_gate(py, rt, &process) {
            server.call_method(pyo3::intern!(py, "init"), args, kwargs.as_ref())
        } else {
            Err(error(py, &types(py)?.killed, ()))
        }
    };
    let stop = process.data.stop.lock().take();
    let failure = match result {
        Err(err) => {
            let reason = if process.is_exited() || is_killed(py, &err) {
                process.exit_reason().unwrap_or(Reason::Killed)
            } else if let Some(reason) = stop {
                // `init` chose its exit reason with `stop(reason)`, then raised the cause.
                reason
            } else {
                convert::crash_reason(py, &err)
            };
            Some((reason, Some(err)))
        }
        Ok(_) => stop.map(|reason| (reason, None)),
    };
    if let Some((reason, cause)) = failure {
        // The caller learns of the failure from the exception, not also from a link signal
        // or a `Down` (as OTP's `start_monitor` flushes it).
        if let Some(p) = &parent {
            rt.unlink(p, process.pid);
            if let Some(r) = mref {
                rt.demonitor(p, r);
            }
        }
        log_crash(&process, &reason);
        rt.terminate(&process, reason.clone());
        if let Some(p) = &parent {
            still_alive(py, p)?;
        }
        let err = error(
            py,
            &types(py)?.init_error,
            (
                convert::pid_to_py(py, process.pid)?,
                reason_to_py(py, &reason)?,
            ),
        );
        if let Some(cause) = cause {
            err.set_cause(py, Some(cause));
        }
        return Err(err);
    }
    rt.release(&process);
    spawned(py, process.pid, mref)
}

pub(super) fn spawned<'py>(
    py: Python<'py>,
    pid: Pid,
    mref: Option<crate::runtime::Ref>,
) -> PyResult<Bound<'py, PyAny>> {
    let pid = convert::pid_to_py(py, pid)?;
    match mref {
        Some(r) => Ok(PyTuple::new(py, [pid, Bound::new(py, PyRef(r))?.into_any()])?.into_any()),
        None => Ok(pid),
    }
}

/// Starts a function process on a thread of its own.
#[pyfunction]
#[pyo3(signature = (function, args, kwargs=None, link=false, monitor=false, max_mailbox=None, max_mailbox_bytes=None))]
// The Python keyword arguments of `rebeam.spawn*`, one parameter each.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_function<'py>(
    py: Python<'py>,
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
    link: bool,
    monitor: bool,
    max_mailbox: Option<usize>,
    max_mailbox_bytes: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let (rt, parent, process, mref) = begin_spawn(
        py,
        Kind::Thread,
        link,
        monitor,
        (max_mailbox, max_mailbox_bytes),
    )?;
    let _ = process.data.function.set(function.clone().unbind());
    let function = function.unbind();
    let args = args.unbind();
    let kwargs = kwargs.map(|k| k.unbind());
    let child = process.clone();
    let rt2 = rt.clone();
    std::thread::Builder::new()
        .name("rebeam-process".into())
        .spawn(move || {
            Python::attach(|py| {
                let result = {
                    let _enter = Enter::new(child.clone());
                    if lease_gate(py, &rt2, &child) {
                        function
                            .bind(py)
                            .call(args.bind(py), kwargs.as_ref().map(|k| k.bind(py)))
                    } else {
                        // Exited while the lease was lapsed: `finish_function` ignores it.
                        Err(PyValueError::new_err("killed before it started"))
                    }
                };
                finish_function(py, &rt2, &child, result.map(drop));
            })
        })
        .map_err(|e| PyValueError::new_err(format!("cannot start a process thread: {e}")))?;
    if let Some(p) = &parent {
        still_alive(py, p)?;
    }
    spawned(py, process.pid, mref)
}

pub(super) fn finish_function(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    result: PyResult<()>,
) {
    let reason = match result {
        Ok(()) => process.data.stop.lock().take().unwrap_or(Reason::Normal),
        Err(err) => {
            if process.is_exited() || is_killed(py, &err) {
                clear_interrupt(py);
                return;
            }
            convert::crash_reason(py, &err)
        }
    };
    log_crash(process, &reason);
    rt.terminate(process, reason);
    clear_interrupt(py);
}

/// Calls `function(*args)` so that the processes it spawns belong to the app `name` (and
/// so everything they spawn in turn): how a locally run app (`--app DIR`) tags its tree for
/// `rebeam ps` and `rebeam logs`.
#[pyfunction]
#[pyo3(signature = (name, function, *args))]
pub(super) fn spawn_as_app<'py>(
    name: &str,
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    crate::python::apps::spawning_for(crate::python::apps::tag(name), || function.call1(args))
}

/// Runs `function` as a process on the calling thread and returns its result.
#[pyfunction]
#[pyo3(signature = (function, args, kwargs=None))]
pub(super) fn run<'py>(
    py: Python<'py>,
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = rt()?;
    if current().is_some() {
        return Err(rebeam_error(
            py,
            "rebeam.run is for code outside processes; call the function directly",
        ));
    }
    let process = rt.spawn(Kind::Thread, None, PyData::default());
    let _ = process.data.function.set(function.clone().unbind());
    let result = {
        let _enter = Enter::new(process.clone());
        function.call(args, kwargs.as_ref())
    };
    match result {
        Ok(value) => {
            finish_function(py, rt, &process, Ok(()));
            Ok(value)
        }
        Err(err) => {
            let killed = process.exit_reason();
            finish_function(py, rt, &process, Err(err.clone_ref(py)));
            match killed {
                Some(reason) => Err(exit_error(py, process.pid, &reason)?),
                None => Err(err),
            }
        }
    }
}
