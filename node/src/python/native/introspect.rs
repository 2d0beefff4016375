//! What a process is and does: cleanup marks, liveness, `process_info`, output and node stats.

use super::*;

/// Asks for the package's cleanup hook to run when a process (default: the current one)
/// exits; returns its pid.
#[pyfunction]
#[pyo3(signature = (pid=None))]
pub(super) fn mark_cleanup(py: Python<'_>, pid: Option<&Bound<'_, PyPid>>) -> PyResult<PyPid> {
    let process = match pid {
        Some(pid) => match rt()?.lookup(pid.get().0) {
            Some(p) => p,
            None => return Err(exit_error(py, pid.get().0, &Reason::Noproc)?),
        },
        None => this(py, "this operation")?,
    };
    process.data.cleanup.store(true, Ordering::Release);
    Ok(PyPid(process.pid))
}

/// The current process's pid, or None outside processes.
#[pyfunction]
pub(super) fn current_process() -> Option<PyPid> {
    current_pid().map(PyPid)
}

/// `is_alive(pid)`.
#[pyfunction]
pub(super) fn is_alive(pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    Ok(rt()?.lookup(pid.get().0).is_some_and(|p| !p.is_exited()))
}

/// Facts about a live local process (what `rebeam ps` shows of it), or None.
#[pyfunction]
pub(super) fn process_info<'py>(
    py: Python<'py>,
    pid: &Bound<'py, PyPid>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(p) = rt()?.lookup(pid.get().0) else {
        return Ok(None);
    };
    let Some(r) = crate::python::inspect::describe(py, &p) else {
        return Ok(None);
    };
    let info = PyDict::new(py);
    info.set_item("pid", PyPid(r.pid))?;
    info.set_item("status", r.status)?;
    info.set_item("kind", r.kind)?;
    info.set_item("initial", r.initial)?;
    info.set_item("current_function", r.current_function)?;
    info.set_item("mailbox", r.mailbox_len)?;
    info.set_item("handled", r.handled)?;
    info.set_item("memory", r.memory_bytes)?;
    info.set_item("links", PyList::new(py, r.links.into_iter().map(PyPid))?)?;
    info.set_item("monitored_by", r.monitored_by)?;
    info.set_item("trap_exit", r.trap_exits)?;
    info.set_item("name", r.name)?;
    info.set_item("parent", r.parent.map(PyPid))?;
    info.set_item("app", r.app)?;
    info.set_item("child", r.child)?;
    Ok(Some(info))
}

/// Takes text the current process wrote to stdout (`fd` 1) or stderr (2) for its app's log;
/// the caller has already written it to the real stream. Outside any app it does nothing.
#[pyfunction]
pub(super) fn write_output(fd: u8, text: &Bound<'_, PyString>) -> PyResult<()> {
    let Some(process) = current() else {
        return Ok(());
    };
    if process.data.app.is_none() {
        return Ok(());
    }
    if let Some(stream) = crate::python::logs::Stream::from_fd(fd) {
        crate::python::logs::capture(&process, stream, &text.to_string_lossy());
    }
    Ok(())
}

/// Every live local process.
#[pyfunction]
pub(super) fn processes() -> PyResult<Vec<PyPid>> {
    Ok(rt()?.processes().iter().map(|p| PyPid(p.pid)).collect())
}

/// Runtime counters: processes, executor threads, run queue length, how often servers
/// were scheduled and parked executors woken, messages sent and delivered (since the node
/// started).
#[pyfunction]
pub(super) fn stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let rt = rt()?;
    let out = PyDict::new(py);
    out.set_item("processes", rt.process_count())?;
    out.set_item("executors", rt.host.pool.threads())?;
    out.set_item("run_queue", rt.runq.pressure().0)?;
    out.set_item("scheduled", rt.runq.scheduled())?;
    let counters = &crate::runtime::stats::STATS;
    out.set_item("executor_wakeups", counters.executor_wakeups.get())?;
    out.set_item("sent", counters.sent.get())?;
    out.set_item("delivered", counters.delivered.get())?;
    out.set_item("node", rt.node().name().to_string())?;
    out.set_item("incarnation", rt.incarnation())?;
    Ok(out)
}
