//! `_rebeam_native`: the functions behind the `rebeam` package inside a node.

use super::convert::{self, error, reason_from_py, reason_to_py, types};
use super::executor::{
    clear_interrupt, is_killed, lease_gate, log_crash, run_inline, Blocking, INLINE_WARMUP,
};
use super::host::{current, current_pid, node_runtime, Enter, PyData, PyProcess, PyRuntime};
use super::objects::{Pid as PyPid, Ref as PyRef, Sender};
use super::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, Kind, Pid, Reason, RegistryError, Status};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest name accepted by the local registry.
const MAX_NAME_LEN: usize = 255;

fn rt() -> PyResult<&'static Arc<PyRuntime>> {
    node_runtime()
}

/// The current process, or a clear error for code running outside any process.
fn this(py: Python<'_>, what: &str) -> PyResult<Arc<PyProcess>> {
    current().ok_or_else(|| {
        error(
            py,
            &types(py).map(|t| t.error.clone_ref(py)).unwrap_or_else(|_| py.None()),
            (format!("{what} needs a process: call it from actor code, or wrap the code in rebeam.run(fn)"),),
        )
    })
}

/// Raises the killed-process exception if the current process died during a native call.
fn still_alive(py: Python<'_>, process: &Arc<PyProcess>) -> PyResult<()> {
    if process.is_exited() {
        clear_interrupt(py);
        return Err(error(py, &types(py)?.killed, ()));
    }
    Ok(())
}

/// Where a message goes: a pid, a local name, or None for an unknown name.
fn resolve(dest: &Bound<'_, PyAny>) -> PyResult<Option<Pid>> {
    if let Ok(pid) = dest.cast_exact::<PyPid>() {
        return Ok(Some(pid.get().0));
    }
    if let Ok(name) = dest.cast_exact::<PyString>() {
        return Ok(rt()?.whereis(name.to_str()?));
    }
    let py = dest.py();
    if dest.is_instance(types(py)?.global.bind(py))? {
        let name: String = dest.getattr("name")?.extract()?;
        let cluster = cluster(py)?;
        if let Some(pid) = cluster.whereis_cached(&name) {
            return Ok(Some(pid));
        }
        return py
            .detach(|| cluster.whereis_global(&name))
            .map_err(|s| controller_error(py, &s));
    }
    let type_name = dest.get_type().name()?.to_string();
    Err(PyTypeError::new_err(format!(
        "a destination must be a Pid, a local name (str) or Global(name), not {type_name}"
    )))
}

/// The cluster this node joined, or a clear error on a single-machine node.
fn cluster(py: Python<'_>) -> PyResult<&'static Arc<crate::cluster::Cluster>> {
    rt()?.host.cluster.get().ok_or_else(|| {
        error(
            py,
            &types(py)
                .map(|t| t.error.clone_ref(py))
                .unwrap_or_else(|_| py.None()),
            ("global names need a cluster: start the node with --controllers ADDR",),
        )
    })
}

/// The typed `rebeam` exception (`Unavailable`, `NotFound`, ...) for a controller's answer.
fn controller_error(py: Python<'_>, status: &tonic::Status) -> PyErr {
    match types(py) {
        Ok(t) => error(
            py,
            &t.controller_error,
            (grpc_code_name(status.code()), status.message()),
        ),
        Err(e) => e,
    }
}

/// The gRPC status name (`NOT_FOUND`), as the client's errors carry it.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `register_global(name, pid)`: a cluster-wide unique name, held by the controller.
#[pyfunction]
fn register_global(py: Python<'_>, name: &str, pid: &Bound<'_, PyPid>) -> PyResult<()> {
    check_name(name)?;
    let cluster = cluster(py)?;
    let pid = pid.get().0;
    match py.detach(|| cluster.register_global(name, pid)) {
        Ok(Ok(())) => {
            if let Some(p) = rt()?.lookup(pid) {
                p.data.report_exit.store(true, Ordering::Release);
            }
            Ok(())
        }
        Ok(Err(holder)) => Err(error(
            py,
            &types(py)?.name_taken,
            (name, convert::pid_to_py(py, holder)?),
        )),
        Err(status) => Err(controller_error(py, &status)),
    }
}

/// `unregister_global(name)`.
#[pyfunction]
fn unregister_global(py: Python<'_>, name: &str) -> PyResult<()> {
    let cluster = cluster(py)?;
    py.detach(|| cluster.unregister_global(name))
        .map_err(|s| controller_error(py, &s))
}

/// `whereis_global(name)` → Pid or None.
#[pyfunction]
fn whereis_global(py: Python<'_>, name: &str) -> PyResult<Option<PyPid>> {
    let cluster = cluster(py)?;
    py.detach(|| cluster.whereis_global(name))
        .map(|p| p.map(PyPid))
        .map_err(|s| controller_error(py, &s))
}

/// `pg.join(group, pid)`: cluster-wide; false if `pid` was a member already.
#[pyfunction]
fn pg_join(py: Python<'_>, group: &str, pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    check_name(group)?;
    let cluster = cluster(py)?;
    let pid = pid.get().0;
    let changed = py
        .detach(|| cluster.pg_join(group, pid))
        .map_err(|s| controller_error(py, &s))?;
    if let Some(p) = rt()?.lookup(pid) {
        // Its memberships end when it exits: the controller hears of the exit.
        p.data.report_exit.store(true, Ordering::Release);
    }
    Ok(changed)
}

/// `pg.leave(group, pid)`; false if `pid` was not a member.
#[pyfunction]
fn pg_leave(py: Python<'_>, group: &str, pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    let cluster = cluster(py)?;
    let pid = pid.get().0;
    py.detach(|| cluster.pg_leave(group, pid))
        .map_err(|s| controller_error(py, &s))
}

/// `pg.members(group)`: from this node's cache of the watch stream, in join order.
#[pyfunction]
fn pg_members(py: Python<'_>, group: &str) -> PyResult<Vec<PyPid>> {
    Ok(cluster(py)?
        .group_members(group)
        .into_iter()
        .map(PyPid)
        .collect())
}

/// `pg.which_groups()`.
#[pyfunction]
fn pg_groups(py: Python<'_>) -> PyResult<Vec<String>> {
    Ok(cluster(py)?.group_names())
}

/// The cluster's members as this node sees them: [(name, incarnation, address, alive)].
#[pyfunction]
fn cluster_members(py: Python<'_>) -> PyResult<Vec<(String, u64, String, bool)>> {
    Ok(cluster(py)?
        .members()
        .into_iter()
        .map(|(n, m)| (n, m.incarnation, m.address, m.alive))
        .collect())
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

/// A new process of `kind`, linked to and/or monitored by the caller as asked.
type Spawned = (
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

fn begin_spawn(
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
fn spawn_server<'py>(
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

fn spawned<'py>(
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
fn spawn_function<'py>(
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

fn finish_function(
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
fn spawn_as_app<'py>(
    name: &str,
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    super::apps::spawning_for(super::apps::tag(name), || function.call1(args))
}

/// Runs `function` as a process on the calling thread and returns its result.
#[pyfunction]
#[pyo3(signature = (function, args, kwargs=None))]
fn run<'py>(
    py: Python<'py>,
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = rt()?;
    if current().is_some() {
        return Err(error(
            py,
            &types(py)?.error,
            ("rebeam.run is for code outside processes; call the function directly",),
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

/// Raises the killed-process exception again in code that caught it and went on: a killed
/// process sends nothing more.
fn not_killed(py: Python<'_>) -> PyResult<()> {
    match current() {
        Some(me) => still_alive(py, &me),
        None => Ok(()),
    }
}

/// `send(dest, message)`: never blocks; a message to a dead process is dropped.
#[pyfunction]
fn send(py: Python<'_>, dest: &Bound<'_, PyAny>, message: &Bound<'_, PyAny>) -> PyResult<()> {
    not_killed(py)?;
    let Some(pid) = resolve(dest)? else {
        return Err(unknown_name(py, dest)?);
    };
    let term = Term::copy_in(message)?;
    let _ = rt()?.send(pid, Envelope::Info(term));
    Ok(())
}

/// `cast(dest, request)`: an asynchronous request to a GenServer.
#[pyfunction]
fn cast(py: Python<'_>, dest: &Bound<'_, PyAny>, request: &Bound<'_, PyAny>) -> PyResult<()> {
    not_killed(py)?;
    let Some(pid) = resolve(dest)? else {
        return Ok(());
    };
    let term = Term::copy_in(request)?;
    let _ = rt()?.send(pid, Envelope::Cast(term));
    Ok(())
}

/// `call(dest, request, timeout)`: a synchronous request; raises Timeout or Exit.
#[pyfunction]
#[pyo3(signature = (dest, request, timeout=5.0))]
fn call<'py>(
    py: Python<'py>,
    dest: &Bound<'py, PyAny>,
    request: &Bound<'py, PyAny>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = rt()?;
    let me = current();
    let Some(pid) = resolve(dest)? else {
        return Err(error(py, &types(py)?.exit, (dest.clone(), "noproc")));
    };
    if me.as_ref().is_some_and(|m| m.pid == pid) {
        return Err(error(
            py,
            &types(py)?.error,
            (format!(
                "{pid} called itself: a process cannot wait for its own reply"
            ),),
        ));
    }
    let deadline = match timeout {
        Some(t) if !(t >= 0.0 && t.is_finite()) => {
            return Err(PyValueError::new_err(format!(
                "timeout must be a non-negative number of seconds or None, not {t}"
            )));
        }
        Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
        None => None,
    };
    let slot = Arc::new(CallSlot::default());
    let envelope = Envelope::Call {
        request: Term::copy_in(request)?,
        from: me.as_ref().map(|m| m.pid),
        slot: slot.clone(),
    };
    if rt.is_remote(pid) {
        if rt.send(pid, envelope).is_err() {
            return Err(exit_error(py, pid, &Reason::Noconnection)?);
        }
        return wait_for_reply(py, rt, me.as_ref(), pid, &slot, deadline, timeout);
    }
    let Some(callee) = rt.lookup(pid) else {
        return Err(exit_error(py, pid, &Reason::Noproc)?);
    };
    let inline = !callee.data.slow.load(Ordering::Relaxed)
        && callee.data.handled.load(Ordering::Relaxed) >= INLINE_WARMUP
        && lend(me.as_ref())
        && rt.try_claim_idle(&callee);
    let delivered = if inline {
        run_inline(py, rt, &callee, envelope);
        true
    } else {
        rt.deliver(&callee, envelope).is_ok()
    };
    if let Some(m) = &me {
        m.data.lent.store(false, Ordering::SeqCst);
    }
    if !delivered {
        return Err(exit_error(py, pid, &Reason::Noproc)?);
    }
    drop(callee);
    wait_for_reply(py, rt, me.as_ref(), pid, &slot, deadline, timeout)
}

/// Waits for a call's reply (or takes the one already given on this thread).
fn wait_for_reply<'py>(
    py: Python<'py>,
    rt: &Arc<PyRuntime>,
    me: Option<&Arc<PyProcess>>,
    pid: Pid,
    slot: &Arc<CallSlot<Term>>,
    deadline: Option<Instant>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(m) = me {
        rt.block_on(m, Some(slot.clone()));
    }
    let outcome = if slot.is_complete() {
        // Answered on this thread; a reply later than the deadline still counts as a timeout.
        slot.wait(None)
            .filter(|_| deadline.is_none_or(|d| Instant::now() <= d))
    } else {
        let _blocking = Blocking::begin(rt);
        py.detach(|| slot.wait(deadline))
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

/// Marks the caller's thread as lent to a callee's handler; false if the caller is already
/// dead (then the call must not run a handler here). Called with the GIL held.
fn lend(me: Option<&Arc<PyProcess>>) -> bool {
    match me {
        Some(m) => {
            m.data.lent.store(true, Ordering::SeqCst);
            !m.is_exited()
        }
        None => true,
    }
}

/// `reply(sender, value)`: answers a call whose handler returned `noreply()`.
#[pyfunction]
fn reply(sender: &Bound<'_, Sender>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
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

/// `self_pid()`.
#[pyfunction]
fn self_pid(py: Python<'_>) -> PyResult<PyPid> {
    Ok(PyPid(this(py, "self_pid()")?.pid))
}

fn pid_arg(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Pid> {
    match resolve(value)? {
        Some(pid) => Ok(pid),
        None => Err(unknown_name(py, value)?),
    }
}

/// `link(pid)`.
#[pyfunction]
fn link(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<()> {
    let me = this(py, "link()")?;
    let target = pid_arg(py, pid)?;
    rt()?.link(&me, target);
    still_alive(py, &me)
}

/// `unlink(pid)`.
#[pyfunction]
fn unlink(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<()> {
    let me = this(py, "unlink()")?;
    let target = pid_arg(py, pid)?;
    rt()?.unlink(&me, target);
    Ok(())
}

/// `monitor(pid)` → Ref.
#[pyfunction]
fn monitor(py: Python<'_>, pid: &Bound<'_, PyAny>) -> PyResult<PyRef> {
    let me = this(py, "monitor()")?;
    let target = pid_arg(py, pid)?;
    Ok(PyRef(rt()?.monitor(&me, target)))
}

/// `demonitor(ref)`; removes a `Down` already in the mailbox too when `flush`.
#[pyfunction]
#[pyo3(signature = (mref, flush=false))]
fn demonitor(py: Python<'_>, mref: &Bound<'_, PyRef>, flush: bool) -> PyResult<bool> {
    let me = this(py, "demonitor()")?;
    let r = mref.get().0;
    let active = rt()?.demonitor(&me, r);
    if flush {
        let removed: Vec<_> = {
            let mut st = me.lock();
            let (gone, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut st.mailbox)
                .into_iter()
                .partition(|e| matches!(e, Envelope::Down { mref, .. } if *mref == r));
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
fn exit(py: Python<'_>, pid: &Bound<'_, PyAny>, reason: &Bound<'_, PyAny>) -> PyResult<()> {
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
fn trap_exits(py: Python<'_>, on: bool) -> PyResult<bool> {
    let me = this(py, "trap_exits()")?;
    Ok(rt()?.set_trap_exit(&me, on))
}

/// `stop(reason)`: ends the current process when its handler returns.
#[pyfunction]
#[pyo3(signature = (reason=None))]
fn stop(py: Python<'_>, reason: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
    let me = this(py, "stop()")?;
    let reason = match reason {
        Some(r) => reason_from_py(r)?,
        None => Reason::Normal,
    };
    *me.data.stop.lock() = Some(reason);
    Ok(())
}

fn check_name(name: &str) -> PyResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(PyValueError::new_err(format!(
            "a name must be 1 to {MAX_NAME_LEN} bytes long, got {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// `register(name, pid)`.
#[pyfunction]
fn register(py: Python<'_>, name: &str, pid: &Bound<'_, PyPid>) -> PyResult<()> {
    check_name(name)?;
    match rt()?.register(name, pid.get().0) {
        Ok(()) => Ok(()),
        Err(RegistryError::Taken(holder)) => Err(error(
            py,
            &types(py)?.name_taken,
            (name, convert::pid_to_py(py, holder)?),
        )),
        Err(RegistryError::AlreadyNamed(existing)) => Err(PyValueError::new_err(format!(
            "{} is already registered as {existing:?}",
            pid.get().0
        ))),
        Err(RegistryError::Noproc) => Err(exit_error(py, pid.get().0, &Reason::Noproc)?),
    }
}

/// `unregister(name)` → whether it was registered.
#[pyfunction]
fn unregister(name: &str) -> PyResult<bool> {
    Ok(rt()?.unregister(name))
}

/// `whereis(name)` → Pid or None.
#[pyfunction]
fn whereis(name: &str) -> PyResult<Option<PyPid>> {
    Ok(rt()?.whereis(name).map(PyPid))
}

/// `registered()` → {name: pid}.
#[pyfunction]
fn registered(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let out = PyDict::new(py);
    for (name, pid) in rt()?.registered() {
        out.set_item(name, PyPid(pid))?;
    }
    Ok(out)
}

/// `receive(match, timeout)`: the first message (in arrival order) for which `match` is
/// true; raises Timeout when none arrives in time. Others stay queued, in order.
#[pyfunction]
#[pyo3(signature = (r#match=None, timeout=None))]
fn receive<'py>(
    py: Python<'py>,
    r#match: Option<Bound<'py, PyAny>>,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = rt()?;
    let me = this(py, "receive()")?;
    let deadline = match timeout {
        Some(t) if !(t >= 0.0 && t.is_finite()) => {
            return Err(PyValueError::new_err(format!(
                "timeout must be a non-negative number of seconds or None, not {t}"
            )));
        }
        Some(t) => Some(Instant::now() + Duration::from_secs_f64(t)),
        None => None,
    };
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
            py.detach(|| {
                let mut st = me.lock();
                if st.mailbox.is_empty() && st.status != Status::Exited {
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

/// Returns unmatched messages to the front of the mailbox, ahead of newer arrivals.
fn put_back(me: &Arc<PyProcess>, saved: VecDeque<Envelope<crate::python::term::Term>>) {
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

/// `send_after(seconds, dest, message)` → timer Ref.
#[pyfunction]
fn send_after(
    py: Python<'_>,
    seconds: f64,
    dest: &Bound<'_, PyAny>,
    message: &Bound<'_, PyAny>,
) -> PyResult<PyRef> {
    if !(seconds >= 0.0 && seconds.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "delay must be a non-negative number of seconds, not {seconds}"
        )));
    }
    let rt = rt()?;
    let Some(pid) = resolve(dest)? else {
        return Err(unknown_name(py, dest)?);
    };
    let timer = rt.make_ref();
    let term = Term::copy_in(message)?;
    timers(rt)?.send_after(
        timer,
        Duration::from_secs_f64(seconds),
        pid,
        Envelope::Info(term),
    );
    Ok(PyRef(timer))
}

fn timers(rt: &PyRuntime) -> PyResult<&Arc<crate::runtime::Timers<Term>>> {
    rt.host
        .timers
        .get()
        .ok_or_else(|| PyValueError::new_err("timers are not running"))
}

/// `cancel_timer(ref)` → seconds that were left, or None if it already fired.
#[pyfunction]
fn cancel_timer(timer: &Bound<'_, PyRef>) -> PyResult<Option<f64>> {
    let rt = rt()?;
    Ok(timers(rt)?
        .cancel(timer.get().0)
        .map(|(left, _)| left.as_secs_f64()))
}

/// `set_timeout(seconds)`: a GenServer gets `TIMEOUT` if no message arrives in time.
#[pyfunction]
fn set_timeout(py: Python<'_>, seconds: f64) -> PyResult<()> {
    if !(seconds >= 0.0 && seconds.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, not {seconds}"
        )));
    }
    let rt = rt()?;
    let me = this(py, "set_timeout()")?;
    let generation = me.lock().timeout_gen;
    let timer = rt.make_ref();
    timers(rt)?.send_after(
        timer,
        Duration::from_secs_f64(seconds),
        me.pid,
        Envelope::Timeout(generation),
    );
    Ok(())
}

/// Asks for the package's cleanup hook to run when a process (default: the current one)
/// exits; returns its pid.
#[pyfunction]
#[pyo3(signature = (pid=None))]
fn mark_cleanup(py: Python<'_>, pid: Option<&Bound<'_, PyPid>>) -> PyResult<PyPid> {
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
fn current_process() -> Option<PyPid> {
    current_pid().map(PyPid)
}

/// `is_alive(pid)`.
#[pyfunction]
fn is_alive(pid: &Bound<'_, PyPid>) -> PyResult<bool> {
    Ok(rt()?.lookup(pid.get().0).is_some_and(|p| !p.is_exited()))
}

/// Facts about a live local process (what `rebeam ps` shows of it), or None.
#[pyfunction]
fn process_info<'py>(
    py: Python<'py>,
    pid: &Bound<'py, PyPid>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let Some(p) = rt()?.lookup(pid.get().0) else {
        return Ok(None);
    };
    let Some(r) = super::inspect::describe(py, &p) else {
        return Ok(None);
    };
    let info = PyDict::new(py);
    info.set_item("pid", PyPid(r.pid))?;
    info.set_item("status", format!("{:?}", r.status).to_lowercase())?;
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
fn write_output(fd: u8, text: &Bound<'_, PyString>) -> PyResult<()> {
    let Some(process) = current() else {
        return Ok(());
    };
    if process.data.app.is_none() {
        return Ok(());
    }
    if let Some(stream) = super::logs::Stream::from_fd(fd) {
        super::logs::capture(&process, stream, &text.to_string_lossy());
    }
    Ok(())
}

/// Every live local process.
#[pyfunction]
fn processes() -> PyResult<Vec<PyPid>> {
    Ok(rt()?.processes().iter().map(|p| PyPid(p.pid)).collect())
}

/// Runtime counters: processes, executor threads, run queue length.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let rt = rt()?;
    let out = PyDict::new(py);
    out.set_item("processes", rt.process_count())?;
    out.set_item("executors", rt.host.pool.threads())?;
    out.set_item("run_queue", rt.runq.pressure().0)?;
    out.set_item("node", rt.node().name().to_string())?;
    out.set_item("incarnation", rt.incarnation())?;
    Ok(out)
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
    m.add_function(wrap_pyfunction!(register_global, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_global, m)?)?;
    m.add_function(wrap_pyfunction!(whereis_global, m)?)?;
    m.add_function(wrap_pyfunction!(cluster_members, m)?)?;
    m.add_function(wrap_pyfunction!(pg_join, m)?)?;
    m.add_function(wrap_pyfunction!(pg_leave, m)?)?;
    m.add_function(wrap_pyfunction!(pg_members, m)?)?;
    m.add_function(wrap_pyfunction!(pg_groups, m)?)?;
    Ok(())
}
