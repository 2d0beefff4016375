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
    let outcome = run_init(py, rt, &process, &server, &args, kwargs.as_ref());
    finish_spawn(py, rt, parent.as_ref(), &process, mref, outcome)
}

/// Ends a local spawn once the server's `init` is done: lets the server run and returns
/// its pid (and monitor), or ends it and raises `InitError` from what `init` raised.
fn finish_spawn<'py>(
    py: Python<'py>,
    rt: &Arc<PyRuntime>,
    parent: Option<&Arc<PyProcess>>,
    process: &Arc<PyProcess>,
    mref: Option<crate::runtime::Ref>,
    outcome: Result<(), (Reason, Option<PyErr>)>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Err((reason, cause)) = outcome {
        // The caller learns of the failure from the exception, not also from a link signal
        // or a `Down` (as OTP's `start_monitor` flushes it).
        if let Some(p) = parent {
            rt.unlink(p, process.pid);
            if let Some(r) = mref {
                rt.demonitor(p, r);
            }
        }
        log_crash(process, &reason);
        rt.terminate(process, reason.clone());
        // (On the loop's thread the spawner is a task: a kill cancels it, nothing to raise.)
        if let (Some(p), false) = (parent, crate::python::aio::on_loop()) {
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
    rt.release(process);
    spawned(py, process.pid, mref)
}

/// `spawn_async` of a server: `(True, pid or (pid, ref))` when its `init` was plain and
/// is done; `(False, key)` when an `async def init` runs on the loop, its outcome resolving
/// future `key` as `(True, pid ...)` or `(False, InitError)`. Called on the loop's thread.
#[pyfunction]
#[pyo3(signature = (server, args, kwargs=None, link=false, monitor=false, max_mailbox=None, max_mailbox_bytes=None))]
// The Python keyword arguments of `rebeam.spawn_async`, one parameter each.
#[allow(clippy::too_many_arguments)]
pub(super) fn _aio_spawn_server<'py>(
    py: Python<'py>,
    server: Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
    link: bool,
    monitor: bool,
    max_mailbox: Option<usize>,
    max_mailbox_bytes: Option<usize>,
) -> PyResult<(bool, Bound<'py, PyAny>)> {
    let aio = crate::python::aio::Aio::started(py)?;
    let (rt, parent, process, mref) = begin_spawn(
        py,
        Kind::Server,
        link,
        monitor,
        (max_mailbox, max_mailbox_bytes),
    )?;
    let _ = process.data.server.set(server.clone().unbind());
    let outcome = match call_init(py, rt, &process, &server, &args, kwargs.as_ref()) {
        Ok(value) if crate::python::aio::is_coroutine(&value) => {
            let key = aio.key();
            let then = crate::python::aio::Then::Spawn(crate::python::aio::Spawning {
                parent: parent.clone(),
                mref,
                key,
            });
            match crate::python::aio::suspend(py, &process, value, then) {
                Ok(()) => return Ok((false, key.into_pyobject(py)?.into_any())),
                Err(err) => init_outcome(py, &process, Err(err)),
            }
        }
        other => init_outcome(py, &process, other.map(drop)),
    };
    finish_spawn(py, rt, parent.as_ref(), &process, mref, outcome).map(|v| (true, v))
}

/// The async `init` of a server started by `spawn_async` ended with `result` (on the
/// loop's thread): what the spawner's future gets, `(True, pid ...)` or `(False, error)`.
pub fn finish_async_spawn<'py>(
    py: Python<'py>,
    process: &Arc<PyProcess>,
    spawning: crate::python::aio::Spawning,
    result: PyResult<()>,
) -> PyResult<Bound<'py, PyAny>> {
    let rt = rt()?;
    let outcome = init_outcome(py, process, result);
    let done = finish_spawn(
        py,
        rt,
        spawning.parent.as_ref(),
        process,
        spawning.mref,
        outcome,
    );
    Ok(match done {
        Ok(v) => (true, v).into_pyobject(py)?.into_any(),
        Err(e) => (false, e.into_value(py)).into_pyobject(py)?.into_any(),
    })
}

/// Runs a new server's `init(*args, **kwargs)` on this thread as that process; the reason
/// (and the exception, if one was raised) when it failed or chose to stop.
fn run_init(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    server: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> Result<(), (Reason, Option<PyErr>)> {
    let result = match call_init(py, rt, process, server, args, kwargs) {
        // An `async def init` runs on the event loop; the spawner waits for it here.
        Ok(value) if crate::python::aio::is_coroutine(&value) => crate::python::aio::await_outcome(
            py,
            process,
            value,
            "spawning a server whose init is async",
        )
        .map(drop),
        other => other.map(drop),
    };
    init_outcome(py, process, result)
}

/// Calls a new server's `init(*args, **kwargs)` on this thread as that process: its value
/// (a coroutine for an `async def init`), or what it raised.
fn call_init<'py>(
    py: Python<'py>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    server: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    // On the event loop's thread (a coroutine spawning a server) the thread is not the
    // new process's to interrupt: a kill there would land in whatever runs next on the
    // loop. The kill then takes effect when `init` returns, as one inside a C call does.
    let _enter = if crate::python::aio::on_loop() {
        Enter::step(process.clone())
    } else {
        Enter::new(process.clone())
    };
    if lease_gate(py, rt, process) {
        server.call_method(pyo3::intern!(py, "init"), args, kwargs)
    } else {
        Err(error(py, &types(py)?.killed, ()))
    }
}

/// What an ended `init` (`result`) means for the new server: nothing, or the reason it
/// exits with (and the exception, if one was raised).
fn init_outcome(
    py: Python<'_>,
    process: &Arc<PyProcess>,
    result: PyResult<()>,
) -> Result<(), (Reason, Option<PyErr>)> {
    let stop = process.data.stop.take();
    match result {
        Err(err) => {
            let reason = if process.is_exited() || is_killed(py, &err) {
                process.exit_reason().unwrap_or(Reason::Killed)
            } else if let Some(reason) = stop {
                // `init` chose its exit reason with `stop(reason)`, then raised the cause.
                reason
            } else {
                convert::crash_reason(py, &err)
            };
            Err((reason, Some(err)))
        }
        Ok(()) => match stop {
            Some(reason) => Err((reason, None)),
            None => Ok(()),
        },
    }
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
    start_thread(
        rt,
        &process,
        function.unbind(),
        args.unbind(),
        kwargs.map(|k| k.unbind()),
    )
    .map_err(|e| PyValueError::new_err(format!("cannot start a process thread: {e}")))?;
    if let Some(p) = &parent {
        still_alive(py, p)?;
    }
    spawned(py, process.pid, mref)
}

/// Starts the thread that runs a function process.
fn start_thread(
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    function: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
) -> std::io::Result<()> {
    let child = process.clone();
    let rt2 = rt.clone();
    std::thread::Builder::new()
        .name("rebeam-process".into())
        .spawn(move || {
            crate::runtime::hand_off::announces();
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
                let result = match result {
                    // An `async def` function process runs on the event loop from here on;
                    // its task ends it (`aio::finished`), and this thread is done.
                    Ok(value) if crate::python::aio::is_coroutine(&value) => {
                        match crate::python::aio::suspend(
                            py,
                            &child,
                            value,
                            crate::python::aio::Then::Function,
                        ) {
                            Ok(()) => return,
                            Err(err) => Err(err),
                        }
                    }
                    other => other,
                };
                finish_function(py, &rt2, &child, result.map(drop));
            })
        })
        .map(drop)
}

/// Ends a function process whose code returned (or raised) `result`.
pub fn finish_function(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    result: PyResult<()>,
) {
    let reason = match result {
        Ok(()) => process.data.stop.take().unwrap_or(Reason::Normal),
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
    not_on_loop(py, "rebeam.run", "rebeam.run is for code outside processes")?;
    let rt = rt()?;
    if current().is_some() {
        return Err(rebeam_error(
            py,
            "rebeam.run is for code outside processes; call the function directly",
        ));
    }
    let process = rt.spawn(Kind::Thread, None, PyData::default());
    let _ = process.data.function.set(function.clone().unbind());
    // This thread runs a process from now on, like a function process's own thread.
    crate::runtime::hand_off::announces();
    let result = {
        let _enter = Enter::new(process.clone());
        function.call(args, kwargs.as_ref())
    };
    // An async function runs on the event loop, as this process; this thread waits for it.
    let result = match result {
        Ok(value) if crate::python::aio::is_coroutine(&value) => {
            crate::python::aio::await_outcome(py, &process, value, "rebeam.run")
        }
        other => other,
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

/// What lets a process started for a peer run, once the answer to its node is queued.
pub type Release = Box<dyn FnOnce() + Send>;

/// Starts a process another node asked for (`rebeam.spawn_on` there): returns the answer,
/// and what lets the new process run. The caller's link and monitor are in place before any
/// code of it runs; a server's `init` runs on this thread first, as for a local spawn.
pub fn spawn_for_peer(request: SpawnRequest) -> (SpawnReply, Option<Release>) {
    Python::attach(|py| match peer_spawn(py, &request) {
        Ok(done) => done,
        Err(err) => (SpawnReply::Refused(convert::traceback_text(py, &err)), None),
    })
}

fn peer_spawn(py: Python<'_>, request: &SpawnRequest) -> PyResult<(SpawnReply, Option<Release>)> {
    let rt = rt()?;
    let found = py.import("rebeam._remote")?.call_method1(
        "_peer_target",
        (&request.module, &request.qualname, &request.main_path),
    )?;
    let (target, is_server): (Bound<'_, PyAny>, bool) = found.extract()?;
    let decoded = Term::from_bytes(py, &request.args)?;
    let (args, kwargs): (Bound<'_, PyTuple>, Option<Bound<'_, PyDict>>) = decoded.extract()?;
    let kind = if is_server {
        Kind::Server
    } else {
        Kind::Thread
    };
    let process = rt.spawn_with(
        kind,
        None,
        PyData::spawned_by(None),
        rt.default_mailbox_limit(),
    );
    if let Some(from) = request.from {
        let mut st = process.lock();
        if request.link {
            st.links.push(from);
        }
        if let Some(r) = request.monitor {
            st.watchers.push((r, from));
        }
    }
    if is_server {
        let server = target.call_method1(pyo3::intern!(py, "__new__"), (&target,))?;
        let _ = process.data.server.set(server.clone().unbind());
        if let Err((reason, _)) = run_init(py, rt, &process, &server, &args, kwargs.as_ref()) {
            // The caller learns of it from the answer, not also from its link or monitor.
            if let Some(from) = request.from {
                let mut st = process.lock();
                st.links.retain(|p| *p != from);
                st.watchers.retain(|(_, w)| *w != from);
            }
            log_crash(&process, &reason);
            rt.terminate(&process, reason.clone());
            return Ok((SpawnReply::InitFailed(reason), None));
        }
        let rt = rt.clone();
        let pid = process.pid;
        return Ok((
            SpawnReply::Spawned(pid),
            Some(Box::new(move || rt.release(&process))),
        ));
    }
    let _ = process.data.function.set(target.clone().unbind());
    let (function, args, kwargs) = (target.unbind(), args.unbind(), kwargs.map(|k| k.unbind()));
    let rt = rt.clone();
    let pid = process.pid;
    Ok((
        SpawnReply::Spawned(pid),
        Some(Box::new(move || {
            if let Err(err) = start_thread(&rt, &process, function, args, kwargs) {
                tracing::error!(%pid, "cannot start a process thread: {err}");
                rt.terminate(&process, Reason::Killed);
            }
        })),
    ))
}

/// `rebeam.spawn_on(node, ...)` to another node: asks it to start `module`'s `qualname`
/// and waits for the answer. Returns `(status, value)`: `("ok", pid or (pid, ref))`,
/// `("init_failed", reason)`, `("refused", why)`, `("no_node", why)`, `("lost", None)` or
/// `("timeout", None)`; `rebeam.spawn_on` raises the matching exception.
#[pyfunction]
#[pyo3(signature = (node, module, qualname, main_path, args, kwargs=None, link=false, monitor=false, timeout=None))]
// The Python arguments of `rebeam.spawn_on`, one parameter each.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn_remote<'py>(
    py: Python<'py>,
    node: &str,
    module: String,
    qualname: String,
    main_path: String,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
    link: bool,
    monitor: bool,
    timeout: Option<f64>,
) -> PyResult<(&'static str, Bound<'py, PyAny>)> {
    not_on_loop(
        py,
        "rebeam.spawn_on",
        "spawn on other nodes from code that is not a coroutine",
    )?;
    let rt = rt()?;
    let me = current();
    let deadline = deadline_after(timeout)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<SpawnReply>(1);
    let rx = parking_lot::Mutex::new(rx);
    let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let target = (node, module, qualname, main_path);
    let sent = ask_spawn(
        py,
        target,
        args,
        kwargs,
        (link, monitor),
        &abandoned,
        move |reply, _| {
            let _ = tx.send(reply);
        },
    )?;
    let mref = match sent {
        Ok(mref) => mref,
        Err(why) => return Ok(("no_node", PyString::new(py, &why).into_any())),
    };
    let blocking = Blocking::begin(rt);
    let reply = loop {
        match py.detach(|| rx.lock().recv_timeout(Duration::from_millis(50))) {
            Ok(reply) => break Some(reply),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break Some(SpawnReply::Lost),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(m) = &me {
            if m.is_exited() {
                abandoned.store(true, Ordering::SeqCst);
                still_alive(py, m)?;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            abandoned.store(true, Ordering::SeqCst);
            break None;
        }
    };
    drop(blocking);
    spawn_answer(py, reply, mref)
}

/// The `(status, value)` of a remote spawn's answer (None: it timed out), as `spawn_remote`
/// documents.
pub(super) fn spawn_answer<'py>(
    py: Python<'py>,
    reply: Option<SpawnReply>,
    mref: Option<crate::runtime::Ref>,
) -> PyResult<(&'static str, Bound<'py, PyAny>)> {
    Ok(match reply {
        Some(SpawnReply::Spawned(pid)) => ("ok", spawned(py, pid, mref)?),
        Some(SpawnReply::InitFailed(reason)) => ("init_failed", reason_to_py(py, &reason)?),
        Some(SpawnReply::Refused(why)) => ("refused", PyString::new(py, &why).into_any()),
        Some(SpawnReply::Lost) => ("lost", py.None().into_bound(py)),
        None => ("timeout", py.None().into_bound(py)),
    })
}

/// Sends a remote spawn request for the current process (`link`/`monitor` as asked);
/// `deliver` gets the answer (and the monitor's ref) once the caller's half of the link and monitor is in place
/// (unless `abandoned` was set by then). Returns the monitor's ref, or why no node takes it.
fn ask_spawn(
    py: Python<'_>,
    (node, module, qualname, main_path): (&str, String, String, String),
    args: Bound<'_, PyTuple>,
    kwargs: Option<Bound<'_, PyDict>>,
    (link, monitor): (bool, bool),
    abandoned: &Arc<std::sync::atomic::AtomicBool>,
    deliver: impl FnOnce(SpawnReply, Option<crate::runtime::Ref>) + Send + 'static,
) -> PyResult<Result<Option<crate::runtime::Ref>, String>> {
    let rt = rt()?;
    let me = current();
    if (link || monitor) && me.is_none() {
        this(py, "spawn_on(link=True/monitor=True)")?;
    }
    let kwargs = match kwargs {
        Some(k) => k.into_any(),
        None => py.None().into_bound(py),
    };
    let payload = Term::to_bytes(&PyTuple::new(py, [args.into_any(), kwargs])?.into_any())?;
    let remote = remote(py)?;
    let mref = monitor.then(|| rt.make_ref());
    let done: SpawnDone = {
        let caller = me.clone();
        let rt = rt.clone();
        let abandoned = abandoned.clone();
        Box::new(move |reply| {
            if let (SpawnReply::Spawned(pid), Some(c)) = (&reply, &caller) {
                if !abandoned.load(Ordering::SeqCst) {
                    adopt(&rt, c, *pid, link, mref);
                }
            }
            deliver(reply, mref);
        })
    };
    let request = SpawnRequest {
        from: me.as_ref().map(|m| m.pid),
        module,
        qualname,
        main_path,
        args: payload,
        link,
        monitor: mref,
    };
    Ok(remote.spawn_on(node, request, done).map(|()| mref))
}

/// A `spawn_on_async` waiting for its answer: `abandon()` when it stops waiting (timed out
/// or cancelled), so a late answer links and monitors nothing.
#[pyclass(module = "_rebeam_native", frozen)]
pub struct SpawnTicket(Arc<std::sync::atomic::AtomicBool>);

#[pymethods]
impl SpawnTicket {
    /// The caller no longer waits for the answer.
    fn abandon(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `spawn_on_async`'s request to another node: `("pending", (key, ticket))`, future `key`
/// then resolving to `spawn_remote`'s `(status, value)`; or `("no_node", why)`.
#[pyfunction]
#[pyo3(signature = (node, module, qualname, main_path, args, kwargs=None, link=false, monitor=false))]
// The Python arguments of `rebeam.spawn_on_async`, one parameter each.
#[allow(clippy::too_many_arguments)]
pub(super) fn _aio_spawn_remote<'py>(
    py: Python<'py>,
    node: &str,
    module: String,
    qualname: String,
    main_path: String,
    args: Bound<'py, PyTuple>,
    kwargs: Option<Bound<'py, PyDict>>,
    link: bool,
    monitor: bool,
) -> PyResult<(&'static str, Bound<'py, PyAny>)> {
    let aio = crate::python::aio::Aio::started(py)?;
    let key = aio.key();
    let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let target = (node, module, qualname, main_path);
    let sent = ask_spawn(
        py,
        target,
        args,
        kwargs,
        (link, monitor),
        &abandoned,
        move |reply, mref| {
            aio.push(crate::python::aio::Ready::Spawned { key, reply, mref });
        },
    )?;
    match sent {
        Ok(_) => {
            let ticket = Bound::new(py, SpawnTicket(abandoned))?;
            Ok(("pending", (key, ticket).into_pyobject(py)?.into_any()))
        }
        Err(why) => Ok(("no_node", PyString::new(py, &why).into_any())),
    }
}

/// Records the caller's half of a remote spawn's link and monitor (the new process's node
/// holds the other half since its birth), on the thread applying that node's frames, before
/// any later signal from it. A caller that died meanwhile passes its exit on instead.
fn adopt(
    rt: &Arc<PyRuntime>,
    caller: &Arc<PyProcess>,
    pid: Pid,
    link: bool,
    mref: Option<crate::runtime::Ref>,
) {
    use crate::runtime::Host as _;
    let mut st = caller.lock();
    if st.status == Status::Exited {
        let reason = st.reason.clone().unwrap_or(Reason::Noproc);
        drop(st);
        if link {
            let _ = rt.host.route(crate::runtime::Outbound::Exit {
                from: caller.pid,
                to: pid,
                reason,
                link: true,
            });
        }
        if let Some(mref) = mref {
            let _ = rt.host.route(crate::runtime::Outbound::Demonitor {
                watcher: caller.pid,
                target: pid,
                mref,
            });
        }
        return;
    }
    if link && !st.links.contains(&pid) {
        st.links.push(pid);
    }
    if let Some(mref) = mref {
        st.watching.push((mref, pid));
    }
}
