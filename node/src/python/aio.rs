//! asyncio actors. A handler that is a coroutine function (`async def`) returns a coroutine;
//! the executor hands it to the node's event loop (one thread, started by `rebeam._aio` on
//! first use) as a task and lets go of the server, which stays `Running` and so takes no
//! other message while the task awaits, yet holds no thread. When the task ends its outcome
//! is applied as a plain handler's is (`finished`) and the server goes back to the run queue.
//!
//! Other threads reach the loop without the GIL: they push onto one queue and write a byte to
//! a socket the loop watches (`Aio::push`); the loop's reader (`rebeam._aio._drain`) takes
//! the queue: tasks to start or cancel, futures of `call_async`/`receive_async` to resolve.

use super::executor::{self, lease_gate, reply_with};
use super::host::{node_runtime, Enter, PyProcess};
use super::term::Term;
use crate::runtime::{CallResult, CallSlot, Pid, Reason};
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// What the loop must do, queued by any thread.
pub enum Ready {
    /// Run a process's coroutine (wrapped in a `Step`) as task `task`.
    Start {
        /// The task's key.
        task: u64,
        /// The `Step` to run.
        step: Py<PyAny>,
    },
    /// Cancel task `task`: its process was killed.
    Cancel {
        /// The task's key.
        task: u64,
    },
    /// A `call_async` got its outcome.
    Reply {
        /// The future's key.
        key: u64,
        /// The callee, for the `Exit` a failed call raises.
        pid: Pid,
        /// The outcome.
        result: CallResult<Term>,
    },
    /// Mail arrived for a `receive_async` waiting with future `key`.
    Mail {
        /// The future's key.
        key: u64,
    },
    /// Future `key` gets `value` (a `spawn_async`'s outcome).
    Resolve {
        /// The future's key.
        key: u64,
        /// What it resolves to.
        value: Py<PyAny>,
    },
    /// Another node answered a `spawn_on_async` waiting with future `key`.
    Spawned {
        /// The future's key.
        key: u64,
        /// The answer.
        reply: crate::python::ports::SpawnReply,
        /// The caller's monitor of the new process, if it asked for one.
        mref: Option<crate::runtime::Ref>,
    },
}

/// The node's event loop as the rest of the node reaches it.
pub struct Aio {
    queue: Mutex<Vec<Ready>>,
    tx: UnixStream,
    rx: UnixStream,
    keys: AtomicU64,
}

static AIO: OnceLock<Option<Aio>> = OnceLock::new();
/// Set once `rebeam._aio` started the loop's thread.
static STARTED: PyOnceLock<()> = PyOnceLock::new();

thread_local! {
    static ON_LOOP: Cell<bool> = const { Cell::new(false) };
}

impl Aio {
    /// The queue and wake-up socket, made on first use.
    pub fn get() -> PyResult<&'static Aio> {
        AIO.get_or_init(|| {
            let (tx, rx) = UnixStream::pair().ok()?;
            tx.set_nonblocking(true).ok()?;
            rx.set_nonblocking(true).ok()?;
            Some(Aio {
                queue: Mutex::new(Vec::new()),
                tx,
                rx,
                keys: AtomicU64::new(1),
            })
        })
        .as_ref()
        .ok_or_else(|| {
            pyo3::exceptions::PyOSError::new_err("cannot make the event loop's wake-up socket")
        })
    }

    /// The queue and wake-up socket, with the loop's thread started.
    pub fn started(py: Python<'_>) -> PyResult<&'static Aio> {
        let aio = Aio::get()?;
        STARTED.get_or_try_init(py, || {
            py.import(pyo3::intern!(py, "rebeam._aio"))?
                .call_method1(pyo3::intern!(py, "_start"), (aio.rx.as_raw_fd(),))
                .map(drop)
        })?;
        Ok(aio)
    }

    /// A fresh key for a task or a future.
    pub fn key(&self) -> u64 {
        self.keys.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues work for the loop and wakes it; no GIL needed, so any thread may call it.
    pub fn push(&self, ready: Ready) {
        let first = {
            let mut queue = self.queue.lock();
            queue.push(ready);
            queue.len() == 1
        };
        // One byte per batch: the loop reads the socket empty before it takes the queue, so
        // a push after that take writes again. A full socket means a wake-up is pending.
        if first {
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// Everything queued, for the loop's thread; reads the wake-up socket empty first.
    pub fn take(&self) -> Vec<Ready> {
        let mut sink = [0u8; 256];
        while matches!((&self.rx).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.queue.lock())
    }
}

/// Marks the calling thread as the event loop's (blocking calls refuse to run there).
pub fn enter_loop_thread() {
    ON_LOOP.with(|l| l.set(true));
}

/// True on the event loop's thread.
pub fn on_loop() -> bool {
    ON_LOOP.with(|l| l.get())
}

/// What applies the outcome of a process's task.
pub enum Then {
    /// A message handler; for a call, its reply slot (meanwhile among the process's pending
    /// calls, so a kill fails the call at once).
    Handler(Option<Arc<CallSlot<Term>>>),
    /// Code a thread waits for (a server's `init` for its spawner, `rebeam.run`'s function).
    Wait(Arc<Outcome>),
    /// `terminate(reason)`: the server then ends with `reason`.
    Terminate(Reason),
    /// The body of a function process.
    Function,
    /// A server's async `init` for a `spawn_async` awaiting it.
    Spawn(Spawning),
}

/// A `spawn_async` waiting for the new server's async `init`.
pub struct Spawning {
    /// The spawner.
    pub parent: Option<Arc<PyProcess>>,
    /// The spawner's monitor of the new server, if it asked for one.
    pub mref: Option<crate::runtime::Ref>,
    /// The spawner's future.
    pub key: u64,
}

/// A process's side of the event loop.
#[derive(Default)]
pub struct Awaiting {
    /// The task running the process's code on the loop, 0 when none.
    task: AtomicU64,
    /// What applies that task's outcome.
    then: Mutex<Option<Then>>,
    /// Set while `mail` holds keys, so deliveries look at it.
    watched: AtomicBool,
    /// Futures of `receive_async` calls waiting for mail.
    mail: Mutex<Vec<u64>>,
    /// The coroutine that task runs, for `rebeam ps` to show where it awaits.
    coroutine: Mutex<Option<Py<PyAny>>>,
}

impl Awaiting {
    /// The coroutine of the process's task while one runs on the loop (the process is then
    /// awaiting unless a step of it runs at this instant).
    pub fn coroutine<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        if self.task.load(Ordering::SeqCst) == 0 {
            return None;
        }
        self.coroutine.lock().as_ref().map(|c| c.bind(py).clone())
    }
}

/// Where a thread waits for a coroutine to end on the loop (`await_outcome`).
#[derive(Default)]
pub struct Outcome {
    outcome: Mutex<Option<PyResult<Py<PyAny>>>>,
    done: Condvar,
}

impl Outcome {
    fn complete(&self, outcome: PyResult<Py<PyAny>>) {
        *self.outcome.lock() = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> PyResult<Py<PyAny>> {
        let mut outcome = self.outcome.lock();
        loop {
            if let Some(done) = outcome.take() {
                return done;
            }
            self.done.wait(&mut outcome);
        }
    }
}

/// True when `value` is a coroutine object (what calling an `async def` function returns).
pub fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // The type compared by address, as CPython's own `PyCoro_CheckExact` does (pyo3's walks
    // the type's bases, once for every handler's `None`); the coroutine type has no subtypes.
    // SAFETY: reads the type of a live object; the GIL is held (the Bound proves it).
    unsafe { pyo3::ffi::Py_TYPE(value.as_ptr()) == std::ptr::addr_of_mut!(pyo3::ffi::PyCoro_Type) }
}

/// Runs `coroutine`, code of `process`, as a task on the event loop; `then` applies its
/// outcome. An error means it could not start (the coroutine is closed).
pub fn suspend(
    py: Python<'_>,
    process: &Arc<PyProcess>,
    coroutine: Bound<'_, PyAny>,
    then: Then,
) -> PyResult<()> {
    let aio = match Aio::started(py) {
        Ok(aio) => aio,
        Err(err) => {
            let _ = coroutine.call_method0(pyo3::intern!(py, "close"));
            if let Then::Handler(Some(slot)) = &then {
                let reason = super::convert::crash_reason(py, &err);
                let _ = slot.complete(CallResult::Exit(reason));
            }
            return Err(err);
        }
    };
    if let Then::Handler(Some(slot)) = &then {
        process.lock().pending_calls.push(slot.clone());
    }
    // Servers with async handlers never run on a caller's thread (the inline fast path):
    // their handlers end on the loop, not where the caller could wait for them.
    process.data.slow.store(true, Ordering::Relaxed);
    let task = aio.key();
    *process.data.aio.then.lock() = Some(then);
    *process.data.aio.coroutine.lock() = Some(coroutine.clone().unbind());
    // Stored before the task is queued: a kill from now on cancels it (see `cancel`); for
    // one that came before, `Step` throws `CancelledError` in at the first step.
    process.data.aio.task.store(task, Ordering::SeqCst);
    // Its code runs on the loop from now on, not on this thread: a kill must not interrupt
    // whatever this thread runs next (see `Enter`'s drop).
    process.data.thread.store(0, Ordering::SeqCst);
    let step = Py::new(
        py,
        Step {
            process: process.clone(),
            coroutine: coroutine.unbind(),
        },
    )?;
    aio.push(Ready::Start {
        task,
        step: step.into_any(),
    });
    Ok(())
}

/// Runs `coroutine`, code of `process`, on the loop and waits for its value on this thread:
/// a server's async `init` on its spawner's thread, an async function given to `rebeam.run`.
/// `what` names it for the error raised on the loop's own thread, which must not wait.
pub fn await_outcome<'py>(
    py: Python<'py>,
    process: &Arc<PyProcess>,
    coroutine: Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    if on_loop() {
        let _ = coroutine.call_method0(pyo3::intern!(py, "close"));
        return Err(blocking_error(
            py,
            what,
            "start it with `await rebeam.spawn_async(...)`, or from code that is not a coroutine",
        ));
    }
    let wait = Arc::new(Outcome::default());
    suspend(py, process, coroutine, Then::Wait(wait.clone()))?;
    let rt = node_runtime()?;
    let _blocking = executor::Blocking::begin(rt);
    py.detach(|| wait.wait()).map(|v| v.into_bound(py))
}

/// The error a blocking call made from a coroutine raises instead of stalling the loop.
pub fn blocking_error(py: Python<'_>, what: &str, instead: &str) -> PyErr {
    let message = format!(
        "{what} blocks, and this code runs on the node's event loop, where blocking would \
         stall every async process: {instead}"
    );
    match super::convert::types(py) {
        Ok(t) => super::convert::error(py, &t.error, (message,)),
        Err(e) => e,
    }
}

/// Cancels the task of a killed `process`, if it has one.
pub fn cancel(process: &PyProcess) {
    let task = process.data.aio.task.load(Ordering::SeqCst);
    if task != 0 {
        if let Ok(aio) = Aio::get() {
            aio.push(Ready::Cancel { task });
        }
    }
}

/// Mail was queued for `process`: wakes the `receive_async` calls waiting for it.
pub fn mail_arrived(process: &PyProcess) {
    let awaiting = &process.data.aio;
    if !awaiting.watched.load(Ordering::Acquire) {
        return;
    }
    let keys = {
        let mut mail = awaiting.mail.lock();
        awaiting.watched.store(false, Ordering::Release);
        std::mem::take(&mut *mail)
    };
    if let Ok(aio) = Aio::get() {
        for key in keys {
            aio.push(Ready::Mail { key });
        }
    }
}

/// Registers a `receive_async` future to be woken by `process`'s next mail. Called before
/// the mailbox is scanned: mail queued after the scan then wakes it.
pub fn watch_mail(process: &PyProcess, key: u64) {
    let awaiting = &process.data.aio;
    let mut mail = awaiting.mail.lock();
    mail.push(key);
    awaiting.watched.store(true, Ordering::Release);
}

/// Forgets a `receive_async` future that is done waiting.
pub fn unwatch_mail(process: &PyProcess, key: u64) {
    let awaiting = &process.data.aio;
    let mut mail = awaiting.mail.lock();
    mail.retain(|k| *k != key);
    if mail.is_empty() {
        awaiting.watched.store(false, Ordering::Release);
    }
}

/// A reply slot whose outcome resolves future `key` on the loop; records the call's
/// latency (when timed) and ends its span (if traced) as `call` does.
pub fn reply_slot(
    aio: &'static Aio,
    key: u64,
    from: Option<Pid>,
    pid: Pid,
    started: Option<std::time::Instant>,
    span: Option<crate::observe::trace::Sending>,
) -> Arc<CallSlot<Term>> {
    Arc::new(CallSlot::forwarding(
        from,
        Box::new(move |result| {
            let outcome: Result<(), String> = match &result {
                CallResult::Reply(_) => Ok(()),
                CallResult::Exit(reason) => Err(format!("{pid} exited: {reason:?}")),
                CallResult::CallerKilled => Err("the caller was killed".into()),
            };
            let outcome = outcome.map_err(pyo3::exceptions::PyRuntimeError::new_err);
            crate::observe::trace::call_done(started, span, &outcome);
            aio.push(Ready::Reply { key, pid, result })
        }),
    ))
}

/// The task of `step` ended with `result` (on the loop's thread): applies the outcome as
/// the executor does a plain handler's and lets the process go on.
pub fn finished(py: Python<'_>, step: &Step, result: PyResult<Bound<'_, PyAny>>) {
    let process = &step.process;
    process.data.aio.task.store(0, Ordering::SeqCst);
    drop(process.data.aio.coroutine.lock().take());
    let Some(then) = process.data.aio.then.lock().take() else {
        return;
    };
    let Ok(rt) = node_runtime() else { return };
    match then {
        Then::Wait(wait) => wait.complete(result.map(Bound::unbind)),
        Then::Spawn(spawning) => {
            let key = spawning.key;
            let value = super::native::finish_async_spawn(py, process, spawning, result.map(drop))
                .unwrap_or_else(|e| {
                    let value = (false, e.into_value(py)).into_pyobject(py);
                    value.map_or_else(|_| py.None().into_bound(py), |v| v.into_any())
                });
            if let Ok(aio) = Aio::get() {
                aio.push(Ready::Resolve {
                    key,
                    value: value.unbind(),
                });
            }
        }
        Then::Terminate(reason) => {
            // A kill while `terminate` awaited cancelled it: nothing to report.
            if let (Err(err), false) = (&result, process.is_exited()) {
                executor::terminate_raised(py, process, err);
            }
            rt.terminate(process, reason);
        }
        Then::Function => {
            let _enter = Enter::step(process.clone());
            super::native::finish_function(py, rt, process, result.map(drop));
        }
        Then::Handler(slot) => {
            if let Some(slot) = &slot {
                process
                    .lock()
                    .pending_calls
                    .retain(|s| !Arc::ptr_eq(s, slot));
            }
            if process.is_exited() {
                // Killed while awaiting: its exit already failed the call.
                return;
            }
            let crashed = match (result, &slot) {
                (Ok(value), Some(slot)) => reply_with(py, process, slot, &value).err(),
                (Ok(_), None) => None,
                (Err(err), _) => Some(err),
            };
            let stop = match crashed {
                Some(err) => {
                    let reason = super::convert::crash_reason(py, &err);
                    if let Some(slot) = &slot {
                        // (`reply_with` failed it already when the reply could not be copied.)
                        let _ = slot.complete(CallResult::Exit(reason.clone()));
                    }
                    Some(reason)
                }
                None => process.data.stop.take(),
            };
            match stop {
                // `terminate` is user code: an executor runs it (see `run_batch`).
                Some(reason) => {
                    process.data.stop.set(reason);
                    rt.reschedule(process);
                }
                None => rt.finish_batch(process),
            }
        }
    }
}

/// A process's coroutine as its task runs it: each step runs with the process current (so
/// `rebeam.self_pid()`, `send`, `stop` work) and behind the lease gate; a step of a process
/// that was killed throws `CancelledError` into the coroutine instead.
#[pyclass(module = "_rebeam_native", frozen)]
pub struct Step {
    process: Arc<PyProcess>,
    coroutine: Py<PyAny>,
}

impl Step {
    /// `coroutine` as a task of the calling thread's current process (a task that process's
    /// code creates: `asyncio.gather`, `create_task`), so it runs as that process and a kill
    /// cancels it; unchanged outside processes or when it is a `Step` already.
    pub fn of_current<'py>(coroutine: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = coroutine.py();
        match super::host::current() {
            Some(process) if !coroutine.is_instance_of::<Step>() => Ok(Bound::new(
                py,
                Step {
                    process,
                    coroutine: coroutine.unbind(),
                },
            )?
            .into_any()),
            _ => Ok(coroutine),
        }
    }

    fn run<'py>(
        &self,
        py: Python<'py>,
        method: &Bound<'py, pyo3::types::PyString>,
        args: Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let coroutine = self.coroutine.bind(py);
        let _enter = Enter::step(self.process.clone());
        let alive = match node_runtime() {
            Ok(rt) => lease_gate(py, rt, &self.process),
            Err(_) => false,
        };
        if !alive && method.to_str()? == "send" {
            let cancelled = py
                .import(pyo3::intern!(py, "asyncio"))?
                .getattr(pyo3::intern!(py, "CancelledError"))?
                .call1(("the process was killed",))?;
            return coroutine.call_method1(pyo3::intern!(py, "throw"), (cancelled,));
        }
        coroutine.call_method1(method, args)
    }
}

#[pymethods]
impl Step {
    fn send<'py>(&self, py: Python<'py>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let args = pyo3::types::PyTuple::new(py, [value])?;
        self.run(py, pyo3::intern!(py, "send"), args)
    }

    #[pyo3(signature = (*args))]
    fn throw<'py>(
        &self,
        py: Python<'py>,
        args: Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, pyo3::intern!(py, "throw"), args)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let _enter = Enter::step(self.process.clone());
        self.coroutine
            .bind(py)
            .call_method0(pyo3::intern!(py, "close"))
            .map(drop)
    }

    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.send(py, py.None().into_bound(py))
    }

    /// The process this task runs (for `repr` and debugging).
    #[getter]
    fn pid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        super::convert::pid_to_py(py, self.process.pid)
    }

    fn __repr__(&self) -> String {
        format!("<task of {}>", self.process.pid)
    }
}
