//! The native side of `rebeam._aio`: the event loop's queue, task outcomes, and the
//! non-blocking halves of `call_async` and `receive_async`.

use super::*;
use crate::python::aio::{self, Aio, Ready};

/// Marks the calling thread as the node's event loop (`rebeam._aio` calls it first thing).
#[pyfunction]
pub(super) fn _aio_loop_thread() {
    aio::enter_loop_thread();
}

/// What the loop must do now, as `(kind, key, value)`: kind 0 starts task `key` running
/// `value` (a `Step`), 1 cancels task `key`, 2 resolves future `key` with `value` (for a
/// call, `(True, reply)` or `(False, exception)`; for mail, None).
#[pyfunction]
pub(super) fn _aio_take<'py>(py: Python<'py>) -> PyResult<Vec<(u8, u64, Bound<'py, PyAny>)>> {
    // The loop's own thread calls this: the loop has started, only the queue is needed.
    let aio = Aio::get()?;
    let none = || py.None().into_bound(py);
    let mut out = Vec::new();
    for ready in aio.take() {
        out.push(match ready {
            Ready::Start { task, step } => (0, task, step.into_bound(py)),
            Ready::Cancel { task } => (1, task, none()),
            Ready::Mail { key } => (2, key, none()),
            Ready::Resolve { key, value } => (2, key, value.into_bound(py)),
            Ready::Spawned { key, reply, mref } => {
                let answer = spawn_answer(py, Some(reply), mref)?;
                (2, key, answer.into_pyobject(py)?.into_any())
            }
            Ready::Reply { key, pid, result } => {
                // A conversion that fails fails this call only, not the rest of the batch.
                let outcome: PyResult<Bound<'py, PyAny>> = match result {
                    CallResult::Reply(term) => term.to_py(py),
                    CallResult::Exit(reason) => {
                        Err(exit_error(py, pid, &reason).unwrap_or_else(|e| e))
                    }
                    CallResult::CallerKilled => Err(match types(py) {
                        Ok(t) => error(py, &t.killed, ()),
                        Err(e) => e,
                    }),
                };
                let value = match outcome {
                    Ok(v) => (true, v).into_pyobject(py)?.into_any(),
                    Err(e) => (false, e.into_value(py)).into_pyobject(py)?.into_any(),
                };
                (2, key, value)
            }
        });
    }
    Ok(out)
}

/// The task running `step` is done: applies its outcome (`task.result()`) for the process.
#[pyfunction]
pub(super) fn _aio_done(
    py: Python<'_>,
    step: &Bound<'_, aio::Step>,
    task: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let result = task.call_method0(pyo3::intern!(py, "result"));
    aio::finished(py, step.get(), result);
    Ok(())
}

/// Sends a call for `call_async`: returns the key of the future its outcome resolves, and
/// the callee's pid. Raises at once, as `call` does, for a dead or unknown callee.
#[pyfunction]
pub(super) fn _aio_call<'py>(
    py: Python<'py>,
    dest: &Bound<'py, PyAny>,
    request: &Bound<'py, PyAny>,
) -> PyResult<(u64, Bound<'py, PyAny>)> {
    let rt = rt()?;
    let me = current();
    if let Some(m) = &me {
        still_alive(py, m)?;
    }
    let pid = super::messaging::callee(py, dest, me.as_ref())?;
    let aio = Aio::started(py)?;
    let key = aio.key();
    let started = crate::observe::stats::call_clock();
    let mut request = Term::copy_in(request)?;
    let span = trace::stamp(py, Delivery::Call, pid, &mut request);
    let slot = aio::reply_slot(aio, key, me.as_ref().map(|m| m.pid), pid, started, span);
    let envelope = Envelope::Call { request, slot };
    if rt.send(pid, envelope).is_err() {
        let reason = if rt.is_remote(pid) {
            Reason::Noconnection
        } else {
            Reason::Noproc
        };
        return Err(exit_error(py, pid, &reason)?);
    }
    Ok((key, convert::pid_to_py(py, pid)?))
}

/// One pass of `receive_async`: `(True, message, 0)` for the first message `match` accepts
/// (taken out of the mailbox), else `(False, None, key)` with future `key` registered to be
/// woken by the next mail (registered before the scan, so no mail slips between).
#[pyfunction]
#[pyo3(signature = (r#match=None))]
pub(super) fn _aio_receive<'py>(
    py: Python<'py>,
    r#match: Option<Bound<'py, PyAny>>,
) -> PyResult<(bool, Bound<'py, PyAny>, u64)> {
    let me = this(py, "receive_async()")?;
    still_alive(py, &me)?;
    let key = Aio::started(py)?.key();
    aio::watch_mail(&me, key);
    match take_match(py, &me, r#match.as_ref()) {
        Ok(Some(value)) => {
            aio::unwatch_mail(&me, key);
            Ok((true, value, 0))
        }
        Ok(None) => Ok((false, py.None().into_bound(py), key)),
        Err(err) => {
            aio::unwatch_mail(&me, key);
            Err(err)
        }
    }
}

/// Forgets the `receive_async` future `key` (it was woken, timed out or cancelled).
#[pyfunction]
pub(super) fn _aio_unwatch(key: u64) {
    if let Some(me) = current() {
        aio::unwatch_mail(&me, key);
    }
}

/// The loop's task factory's half: `coroutine` wrapped to run as the process creating the
/// task, if any.
#[pyfunction]
pub(super) fn _aio_step<'py>(coroutine: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    aio::Step::of_current(coroutine)
}

/// Refuses a blocking call on the event loop's thread, naming the awaitable to use instead.
pub(super) fn not_on_loop(py: Python<'_>, what: &str, instead: &str) -> PyResult<()> {
    if aio::on_loop() {
        return Err(aio::blocking_error(py, what, instead));
    }
    Ok(())
}
