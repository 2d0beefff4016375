//! Selective receive.

use super::*;

/// `receive(match, timeout)`: the first message (in arrival order) for which `match` is
/// true; raises Timeout when none arrives in time. Others stay queued, in order.
#[pyfunction]
#[pyo3(signature = (r#match=None, timeout=None))]
pub(super) fn receive<'py>(
    py: Python<'py>,
    r#match: Option<Bound<'py, PyAny>>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    not_on_loop(
        py,
        "rebeam.receive",
        "use `await rebeam.receive_async(...)` in async code",
    )?;
    let rt = rt()?;
    let me = this(py, "receive()")?;
    let deadline = deadline_after(timeout)?;
    let mut saved: VecDeque<Envelope<crate::python::term::Term>> = VecDeque::new();
    let mut scanned = 0;
    let outcome = loop {
        saved.extend(std::mem::take(&mut me.lock().mailbox));
        me.data.held.store(saved.len(), Ordering::Relaxed);
        let mut found = None;
        while scanned < saved.len() {
            let value = match convert::envelope_to_py(py, &saved[scanned]) {
                Ok(v) => v,
                Err(e) => {
                    // A message that cannot be restored is dropped rather than block the mailbox.
                    if let Some(gone) = saved.remove(scanned) {
                        me.lock().settle(&gone);
                    }
                    found = Some(Err(e));
                    break;
                }
            };
            let matched = match &r#match {
                None => Ok(true),
                Some(f) => f.call1((value.clone(),)).and_then(|r| r.is_truthy()),
            };
            match matched {
                Ok(true) => {
                    found = Some(Ok(value));
                    break;
                }
                Ok(false) => scanned += 1,
                Err(e) => {
                    found = Some(Err(e));
                    break;
                }
            }
        }
        if let Some(result) = found {
            if result.is_ok() {
                if let Some(taken) = saved.remove(scanned) {
                    me.lock().settle(&taken);
                }
                me.data.handled.fetch_add(1, Ordering::Relaxed);
            }
            // (an unrestorable message was already removed above)
            break result.map(Some);
        }
        let woke = {
            let _blocking = Blocking::begin(rt);
            wait_detached(py, || {
                let mut st = me.lock();
                if st.mailbox.is_empty() && st.status != Status::Exited {
                    // A dead process's record is not held by a thread that waits.
                    crate::runtime::node::forget_last_target();
                    me.wait_for_mail(&mut st, deadline)
                } else {
                    true
                }
            })
        };
        // A lapsed lease (the node was frozen or cut off) lets no code run until the fence.
        while !rt.lease_ok() && !me.is_exited() {
            py.detach(|| std::thread::sleep(Duration::from_millis(1)));
        }
        if me.is_exited() {
            break Ok(None);
        }
        if !woke && me.mailbox_len() == 0 {
            break Err(error(
                py,
                &types(py)?.timeout,
                (format!(
                    "receive timed out after {}s",
                    timeout.unwrap_or(0.0)
                ),),
            ));
        }
    };
    put_back(&me, saved);
    still_alive(py, &me)?;
    match outcome? {
        Some(value) => Ok(value),
        None => Err(error(py, &types(py)?.killed, ())),
    }
}

/// One pass of a selective receive that does not wait: the first message `match` accepts,
/// taken out of the mailbox; the others stay queued, in order.
pub(super) fn take_match<'py>(
    py: Python<'py>,
    me: &Arc<PyProcess>,
    r#match: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let mut saved = std::mem::take(&mut me.lock().mailbox);
    me.data.held.store(saved.len(), Ordering::Relaxed);
    let mut index = 0;
    let found = loop {
        if index >= saved.len() {
            break Ok(None);
        }
        let value = match convert::envelope_to_py(py, &saved[index]) {
            Ok(v) => v,
            Err(e) => {
                // A message that cannot be restored is dropped rather than block the mailbox.
                if let Some(gone) = saved.remove(index) {
                    me.lock().settle(&gone);
                }
                break Err(e);
            }
        };
        let matched = match r#match {
            None => Ok(true),
            Some(f) => f.call1((value.clone(),)).and_then(|r| r.is_truthy()),
        };
        match matched {
            Ok(true) => {
                if let Some(taken) = saved.remove(index) {
                    me.lock().settle(&taken);
                }
                me.data.handled.fetch_add(1, Ordering::Relaxed);
                break Ok(Some(value));
            }
            Ok(false) => index += 1,
            Err(e) => break Err(e),
        }
    };
    put_back(me, saved);
    found
}

/// Returns unmatched messages to the front of the mailbox, ahead of newer arrivals.
pub(super) fn put_back(me: &Arc<PyProcess>, saved: VecDeque<Envelope<crate::python::term::Term>>) {
    let mut st = me.lock();
    me.data.held.store(0, Ordering::Relaxed);
    if st.status == Status::Exited {
        drop(st);
        drop(saved);
        return;
    }
    for envelope in saved.into_iter().rev() {
        st.mailbox.push_front(envelope);
    }
}
