//! Sending, casting, calling and replying.

use super::*;
use crate::python::executor;

/// `send(dest, message)`: never blocks; a message to a dead process is dropped.
#[pyfunction]
pub(super) fn send(
    py: Python<'_>,
    dest: &Bound<'_, PyAny>,
    message: &Bound<'_, PyAny>,
) -> PyResult<()> {
    not_killed(py)?;
    let Some(pid) = resolve(dest)? else {
        return Err(unknown_name(py, dest)?);
    };
    let mut term = Term::copy_in(message)?;
    let _span = trace::stamp(py, Delivery::Send, pid, &mut term);
    let _ = rt()?.send(pid, Envelope::Info(term));
    Ok(())
}

/// Sends an asynchronous request to a GenServer (its ``handle_cast``); a name nobody holds
/// is ignored, as OTP's ``gen_server:cast`` does. (`rebeam.cast` itself: no Python frame
/// runs before it.)
#[pyfunction]
pub(super) fn cast(
    py: Python<'_>,
    dest: &Bound<'_, PyAny>,
    request: &Bound<'_, PyAny>,
) -> PyResult<()> {
    not_killed(py)?;
    let Some(pid) = resolve(dest)? else {
        return Ok(());
    };
    let mut term = Term::copy_in(request)?;
    let _span = trace::stamp(py, Delivery::Cast, pid, &mut term);
    let _ = rt()?.send(pid, Envelope::Cast(term));
    Ok(())
}

/// The pid `dest` names for a call by `me`: `Exit(noproc)` for an unknown name, an error
/// for a call to oneself (it could never be answered).
pub(super) fn callee(
    py: Python<'_>,
    dest: &Bound<'_, PyAny>,
    me: Option<&Arc<PyProcess>>,
) -> PyResult<Pid> {
    let Some(pid) = resolve(dest)? else {
        return Err(error(py, &types(py)?.exit, (dest.clone(), "noproc")));
    };
    if me.is_some_and(|m| m.pid == pid) {
        return Err(rebeam_error(
            py,
            format!("{pid} called itself: a process cannot wait for its own reply"),
        ));
    }
    Ok(pid)
}

/// `call(dest, request, timeout)`: a synchronous request; raises Timeout or Exit.
#[pyfunction]
#[pyo3(signature = (dest, request, timeout=5.0))]
pub(super) fn call<'py>(
    py: Python<'py>,
    dest: &Bound<'py, PyAny>,
    request: &Bound<'py, PyAny>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    not_on_loop(
        py,
        "rebeam.call",
        "use `await rebeam.call_async(...)` in async code",
    )?;
    let rt = rt()?;
    let me = current();
    let pid = callee(py, dest, me.as_ref())?;
    let deadline = deadline_after(timeout)?;
    let started = crate::observe::stats::call_clock();
    let slot = Arc::new(CallSlot::new(me.as_ref().map(|m| m.pid)));
    let mut request = Term::copy_in(request)?;
    let span = trace::stamp(py, Delivery::Call, pid, &mut request);
    let envelope = Envelope::Call {
        request,
        slot: slot.clone(),
    };
    if rt.is_remote(pid) {
        if rt.send(pid, envelope).is_err() {
            return Err(exit_error(py, pid, &Reason::Noconnection)?);
        }
        let outcome = wait_for_reply(py, rt, me.as_ref(), pid, &slot, deadline, timeout, None);
        trace::call_done(started, span, &outcome);
        return outcome;
    }
    let Some(callee) = rt.lookup_callee(pid) else {
        return Err(exit_error(py, pid, &Reason::Noproc)?);
    };
    let queue = executor::try_inline(rt, callee, envelope, me.as_ref(), timeout);
    if let Some(m) = &me {
        m.data.lent.store(false, Ordering::SeqCst);
    }
    let outcome = wait_for_reply(py, rt, me.as_ref(), pid, &slot, deadline, timeout, queue);
    trace::call_done(started, span, &outcome);
    outcome
}

/// A supervisor restarted a child: counted for `/metrics` (node-wide and by app).
#[pyfunction]
pub(super) fn note_restart() {
    crate::observe::stats::STATS.restarts.inc();
    if let Some(app) = current().and_then(|p| p.data.app.clone()) {
        app.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits for a call's reply (or takes the one already given on this thread). `queue` is a
/// local callee and the call for its mailbox: queued here, after the interpreter is let go,
/// so the executor that takes it does not wait for this thread to let go of it.
#[allow(clippy::too_many_arguments)]
pub(super) fn wait_for_reply<'py>(
    py: Python<'py>,
    rt: &Arc<PyRuntime>,
    me: Option<&Arc<PyProcess>>,
    pid: Pid,
    slot: &Arc<CallSlot<Term>>,
    deadline: Option<Instant>,
    timeout: Option<f64>,
    queue: Option<(Arc<PyProcess>, Envelope<Term>)>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(m) = me {
        rt.block_on(m, Some(slot.clone()));
    }
    let outcome = if let Some((callee, envelope)) = queue {
        let _blocking = Blocking::begin(rt);
        wait_detached(py, || {
            if rt.deliver(&callee, envelope).is_err() {
                return Some(CallResult::Exit(Reason::Noproc));
            }
            drop(callee);
            slot.wait(deadline)
        })
    } else if slot.is_complete() {
        // Answered on this thread; a reply later than the deadline still counts as a timeout.
        slot.wait(None)
            .filter(|_| deadline.is_none_or(|d| Instant::now() <= d))
    } else {
        let _blocking = Blocking::begin(rt);
        wait_detached(py, || slot.wait(deadline))
    };
    if let Some(m) = me {
        rt.block_on(m, None);
        still_alive(py, m)?;
    }
    match outcome {
        Some(CallResult::Reply(term)) => term.to_py(py),
        Some(CallResult::Exit(reason)) => Err(exit_error(py, pid, &reason)?),
        Some(CallResult::CallerKilled) => Err(error(py, &types(py)?.killed, ())),
        None => Err(error(
            py,
            &types(py)?.timeout,
            (format!(
                "call to {pid} timed out after {}s",
                timeout.unwrap_or(0.0)
            ),),
        )),
    }
}

/// `reply(sender, value)`: answers a call whose handler returned `noreply()`.
#[pyfunction]
pub(super) fn reply(sender: &Bound<'_, Sender>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let sender = sender.get();
    let term = Term::copy_in(value)?;
    let done = sender.slot.complete(CallResult::Reply(term)).is_ok();
    if let Some(me) = current() {
        me.lock()
            .pending_calls
            .retain(|s| !Arc::ptr_eq(s, &sender.slot));
    }
    Ok(done)
}
