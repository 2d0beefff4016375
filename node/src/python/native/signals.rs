//! Links, monitors, exit signals, trapping exits and stopping.

use super::*;

/// `self_pid()`.
#[pyfunction]
pub(super) fn self_pid(py: Python<'_>) -> PyResult<PyPid> {
    Ok(PyPid(this(py, "self_pid()")?.pid))
}

pub(super) fn pid_arg(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Pid> {
    match resolve(value)? {
        Some(pid) => Ok(pid),
        None => Err(unknown_name(py, value)?),
    }
}

/// `link(pid)`.
#[pyfunction]
pub(super) fn link(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<()> {
    let me = this(py, "link()")?;
    let target = pid_arg(py, pid)?;
    rt()?.link(&me, target);
    still_alive(py, &me)
}

/// `unlink(pid)`.
#[pyfunction]
pub(super) fn unlink(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<()> {
    let me = this(py, "unlink()")?;
    let target = pid_arg(py, pid)?;
    rt()?.unlink(&me, target);
    Ok(())
}

/// `monitor(pid)` → Ref.
#[pyfunction]
pub(super) fn monitor(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<PyRef> {
    let me = this(py, "monitor()")?;
    let target = pid_arg(py, pid)?;
    Ok(PyRef(rt()?.monitor(&me, target)))
}

/// `demonitor(ref)`; removes a `Down` already in the mailbox too when `flush`.
#[pyfunction]
#[pyo3(signature = (mref, flush=false))]
pub(super) fn demonitor(py: Python<'_>, mref: &Bound<'_, PyRef>, flush: bool) -> PyResult<bool> {
    let me = this(py, "demonitor()")?;
    let r = mref.get().0;
    let active = rt()?.demonitor(&me, r);
    if flush {
        let removed: Vec<_> = {
            let mut st = me.lock();
            let (gone, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut st.mailbox)
                .into_iter()
                .partition(|e| matches!(e, Envelope::Down(signal) if signal.mref == r));
            st.mailbox = keep;
            for envelope in &gone {
                st.settle(envelope);
            }
            gone.into_iter().collect()
        };
        drop(removed);
    }
    Ok(active)
}

/// `exit(pid, reason)`: sends an exit signal.
#[pyfunction]
pub(super) fn exit(
    py: Python<'_>,
    pid: &Bound<'_, PyAny>,
    reason: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let target = pid_arg(py, pid)?;
    let reason = reason_from_py(reason)?;
    let me = current();
    let from = me.as_ref().map(|m| m.pid).unwrap_or(target);
    rt()?.exit_signal(from, target, reason);
    if let Some(m) = &me {
        still_alive(py, m)?;
    }
    Ok(())
}

/// `trap_exits(on)` → previous setting.
#[pyfunction]
#[pyo3(signature = (on=true))]
pub(super) fn trap_exits(py: Python<'_>, on: bool) -> PyResult<bool> {
    let me = this(py, "trap_exits()")?;
    Ok(rt()?.set_trap_exit(&me, on))
}

/// `stop(reason)`: ends the current process when its handler returns.
#[pyfunction]
#[pyo3(signature = (reason=None))]
pub(super) fn stop(py: Python<'_>, reason: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let me = this(py, "stop()")?;
    let reason = match reason {
        Some(r) => reason_from_py(r)?,
        None => Reason::Normal,
    };
    me.data.stop.set(reason);
    Ok(())
}
