//! Timers: `send_after`, `cancel_timer` and GenServer idle timeouts.

use super::*;

/// `send_after(seconds, dest, message)` → timer Ref.
#[pyfunction]
pub(super) fn send_after(
    py: Python<'_>,
    seconds: f64,
    dest: &Bound<'_, PyAny>,
    message: &Bound<'_, PyAny>,
) -> PyResult<PyRef> {
    let delay = seconds_arg("delay", seconds)?;
    let rt = rt()?;
    let Some(pid) = resolve(dest)? else {
        return Err(unknown_name(py, dest)?);
    };
    let timer = rt.make_ref();
    let term = Term::copy_in(message)?;
    timers(rt)?.send_after(timer, delay, pid, Envelope::Info(term));
    Ok(PyRef(timer))
}

pub(super) fn timers(rt: &PyRuntime) -> PyResult<&Arc<crate::runtime::Timers<Term>>> {
    rt.host
        .timers
        .get()
        .ok_or_else(|| PyValueError::new_err("timers are not running"))
}

/// `cancel_timer(ref)` → seconds that were left, or None if it already fired.
#[pyfunction]
pub(super) fn cancel_timer(timer: &Bound<'_, PyRef>) -> PyResult<Option<f64>> {
    let rt = rt()?;
    Ok(timers(rt)?
        .cancel(timer.get().0)
        .map(|(left, _)| left.as_secs_f64()))
}

/// `set_timeout(seconds)`: a GenServer gets `TIMEOUT` if no message arrives in time.
#[pyfunction]
pub(super) fn set_timeout(py: Python<'_>, seconds: f64) -> PyResult<()> {
    let delay = seconds_arg("timeout", seconds)?;
    let rt = rt()?;
    let me = this(py, "set_timeout()")?;
    let generation = me.lock().timeout_gen;
    let timer = rt.make_ref();
    timers(rt)?.send_after(timer, delay, me.pid, Envelope::Timeout(generation));
    Ok(())
}
