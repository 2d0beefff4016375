//! The Python host: per-process data, the current process of each thread, and the node's
//! one runtime that the `_rebeam_native` functions act on.

use super::apps::AppTag;
use super::convert;
use super::executor::Pool;
use super::ports::{GlobalNames, Remote};
use super::term::Term;
use crate::runtime::{Host, Outbound, Pid, Process, Reason, Runtime, Timers};
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The runtime as the embedding instantiates it.
pub type PyRuntime = Runtime<PyHost>;
/// A process of the embedded runtime.
pub type PyProcess = Process<PyHost>;

/// A stop asked of a process, applied when its handler returns. Looked at after every
/// message: a flag read first, so the common case (no stop) takes no lock.
#[derive(Default)]
pub struct StopRequest {
    pending: AtomicBool,
    reason: Mutex<Option<Reason>>,
}

impl StopRequest {
    /// Asks the process to stop with `reason` (a later request replaces an earlier one).
    pub fn set(&self, reason: Reason) {
        *self.reason.lock() = Some(reason);
        self.pending.store(true, Ordering::Release);
    }

    /// The stop asked, if any, which is then no longer pending.
    pub fn take(&self) -> Option<Reason> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut reason = self.reason.lock();
        self.pending.store(false, Ordering::Relaxed);
        reason.take()
    }
}

/// What the embedding keeps per process.
#[derive(Default)]
pub struct PyData {
    /// The GenServer (or Supervisor) instance, for server processes.
    pub server: OnceLock<Py<PyAny>>,
    /// Python thread ident of the thread running this process's code, or 0.
    pub thread: AtomicU64,
    /// Set by `rebeam.stop(reason)`; takes effect when the handler returns.
    pub stop: StopRequest,
    /// The process registered cleanups (tables, keys, groups) to run when it exits.
    pub cleanup: AtomicBool,
    /// Messages handled so far.
    pub handled: AtomicU64,
    /// A handler once ran too long to be run on a caller's thread again.
    pub slow: AtomicBool,
    /// The controller wants to hear of this process's exit (top-level child, global name).
    pub report_exit: AtomicBool,
    /// This process's thread is running a callee's handler (an inline call): killing this
    /// process must not interrupt that handler; the call raises when the handler returns.
    pub lent: AtomicBool,
    /// The app this process belongs to, inherited from its spawner.
    pub app: Option<Arc<AppTag>>,
    /// The process that spawned this one (OTP's first ancestor).
    pub parent: Option<Pid>,
    /// For a top-level child the controller placed here, its id in the app's manifest.
    pub child: OnceLock<String>,
    /// The app code epoch this server last moved to (see `upgrade`); 0 until its first
    /// message, so a server started from any version is checked once.
    pub code_epoch: AtomicU64,
    /// The function a function process runs (for `rebeam ps`).
    pub function: OnceLock<Py<PyAny>>,
    /// Messages a selective `receive` took out of the mailbox and holds while it waits for
    /// a match: still queued for the process, so `rebeam ps` counts them.
    pub held: AtomicUsize,
    /// What the process wrote to stdout/stderr since its last complete line.
    pub output: Mutex<super::logs::Partial>,
    /// Its handler running as a task on the node's event loop, if any (asyncio actors).
    pub aio: super::aio::Awaiting,
}

impl PyData {
    /// Data for a process spawned now by `parent`: in its app, else in the app the calling
    /// thread spawns for, if any.
    pub fn spawned_by(parent: Option<&Arc<PyProcess>>) -> PyData {
        let data = PyData {
            app: parent
                .and_then(|p| p.data.app.clone())
                .or_else(super::apps::spawning),
            parent: parent.map(|p| p.pid),
            ..PyData::default()
        };
        if parent.is_none() {
            if let Some(child) = super::apps::take_spawning_child() {
                let _ = data.child.set(child);
                data.report_exit.store(true, Ordering::Release);
            }
        }
        data
    }
}

/// The host side of the runtime: executors, timers and hooks into Python.
pub struct PyHost {
    /// The executor threads.
    pub pool: Pool,
    /// The timer service, set once the runtime exists.
    pub timers: OnceLock<Arc<Timers<Term>>>,
    /// Other nodes, when the node joined a cluster.
    pub remote: OnceLock<Arc<dyn Remote>>,
    /// Global names and groups, when the node joined a cluster.
    pub names: OnceLock<Arc<dyn GlobalNames>>,
}

impl PyHost {
    /// Plugs in the distribution layer (once; later calls are ignored).
    pub fn connect(&self, remote: Arc<dyn Remote>, names: Arc<dyn GlobalNames>) {
        let _ = self.remote.set(remote);
        let _ = self.names.set(names);
    }
}

impl Host for PyHost {
    type Msg = Term;
    type Data = PyData;

    fn interrupt(&self, process: &Arc<PyProcess>) {
        // A handler awaiting on the event loop holds no thread: its task is cancelled there.
        super::aio::cancel(process);
        let thread = process.data.thread.load(Ordering::Acquire);
        if thread == 0 || thread == current_thread_ident() {
            // Our own process: the native call that killed it raises on return.
            return;
        }
        Python::attach(|py| {
            // Checked with the GIL held: the caller sets `lent` and checks that it is still
            // alive under the GIL before it runs a callee's handler.
            if process.data.lent.load(Ordering::SeqCst) {
                return;
            }
            // Read again under the GIL: the thread may have finished this process's handler
            // while we waited for the GIL and gone on to run another process, which the
            // exception would then kill instead.
            if process.data.thread.load(Ordering::Acquire) != thread {
                return;
            }
            if let Ok(types) = convert::types(py) {
                // SAFETY: the GIL is held; the ident names a live thread that runs this
                // process's code (it clears `thread` under the GIL when it stops).
                unsafe {
                    pyo3::ffi::PyThreadState_SetAsyncExc(
                        thread as std::os::raw::c_long,
                        types.killed.as_ptr(),
                    );
                }
            }
        });
    }

    fn mail_arrived(&self, process: &Arc<PyProcess>) {
        super::aio::mail_arrived(process);
    }

    fn route(&self, out: Outbound<Term>) -> Result<(), Outbound<Term>> {
        match self.remote.get() {
            Some(remote) => remote.route(out),
            None => Err(out),
        }
    }

    fn exited(&self, process: &Arc<PyProcess>, reason: &Reason) {
        // A last line without its newline still belongs to the app's log.
        super::logs::flush(process);
        if process.data.report_exit.load(Ordering::Acquire) {
            if let Some(remote) = self.remote.get() {
                remote.process_exited(process.pid, reason, process.data.child.get().is_some());
            }
        }
        if !process.data.cleanup.load(Ordering::Acquire) {
            return;
        }
        Python::attach(|py| {
            let result = convert::types(py).and_then(|t| {
                t.cleanup
                    .bind(py)
                    .call1((convert::pid_to_py(py, process.pid)?,))
                    .map(|_| ())
            });
            if let Err(err) = result {
                tracing::error!(pid = %process.pid, "cleanup after exit failed: {err}");
            }
        });
    }
}

/// The Python thread ident of the calling thread.
pub fn current_thread_ident() -> u64 {
    // SAFETY: a plain query of the OS thread id; needs no GIL.
    unsafe { pyo3::ffi::PyThread_get_thread_ident() as u64 }
}

thread_local! {
    /// The processes entered on this thread, innermost last: each a pointer into the `Arc`
    /// its live `Enter` holds, so entering takes no reference of its own (an atomic add and
    /// subtract on every batch of mail). An entry leaving removes only its own pointer, so
    /// the list never holds one whose entry has ended.
    static ENTERED: RefCell<Vec<*const PyProcess>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the process whose code the calling thread runs, if any.
fn with_current<R>(f: impl FnOnce(&PyProcess) -> R) -> Option<R> {
    ENTERED.with(|e| {
        let entered = e.borrow();
        // SAFETY: every pointer in the list is that of an `Arc` a live `Enter` on this
        // thread holds (see `ENTERED`), and `f` runs while the list is borrowed, so no entry
        // can end meanwhile.
        entered.last().map(|p| f(unsafe { &**p }))
    })
}

/// The process whose code the calling thread runs, if any.
pub fn current() -> Option<Arc<PyProcess>> {
    ENTERED.with(|e| {
        let p = *e.borrow().last()?;
        // SAFETY: as in `with_current`; the reference added here is the caller's.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    })
}

/// True when the calling thread runs a process that has exited (no reference is taken:
/// every send asks).
pub fn current_exited() -> bool {
    with_current(|p| p.is_exited()).unwrap_or(false)
}

/// The pid of the current process, if any.
pub fn current_pid() -> Option<Pid> {
    with_current(|p| p.pid)
}

/// Makes `process` the current one on this thread until dropped, restoring the previous one.
pub struct Enter {
    process: Arc<PyProcess>,
    /// The thread ident `process` had before, when this entry set it.
    previous_thread: Option<u64>,
    /// Not `Send`: the entry must end on the thread whose list points into it.
    _here: PhantomData<*const PyProcess>,
}

impl Enter {
    /// Enters `process` on the calling thread.
    pub fn new(process: Arc<PyProcess>) -> Enter {
        let previous_thread = process
            .data
            .thread
            .swap(current_thread_ident(), Ordering::AcqRel);
        Self::push(process, Some(previous_thread))
    }

    /// Enters `process` for one step of its task on the event loop: it is the current
    /// process, but its thread stays unset, so killing it cancels the task instead of
    /// raising in the loop's thread (which runs every async process).
    pub fn step(process: Arc<PyProcess>) -> Enter {
        Self::push(process, None)
    }

    fn push(process: Arc<PyProcess>, previous_thread: Option<u64>) -> Enter {
        ENTERED.with(|e| e.borrow_mut().push(Arc::as_ptr(&process)));
        Enter {
            process,
            previous_thread,
            _here: PhantomData,
        }
    }

    /// The entered process.
    pub fn process(&self) -> &Arc<PyProcess> {
        &self.process
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let ours = Arc::as_ptr(&self.process);
        // Entries end in the reverse order of their start, so this is the last one; were
        // it not, only this entry's pointer may go (its `Arc` goes with it).
        let _ = ENTERED.try_with(|e| {
            let mut entered = e.borrow_mut();
            if let Some(i) = entered.iter().rposition(|p| *p == ours) {
                entered.remove(i);
            }
        });
        if let Some(thread) = self.previous_thread {
            // Only while it is still ours: a server whose handler went on to the event loop
            // may already run on another executor, which set its own ident.
            let _ = self.process.data.thread.compare_exchange(
                current_thread_ident(),
                thread,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }
}

/// Settings of the embedded node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's name, the first part of its pids.
    pub name: String,
    /// Executor threads started up front.
    pub executors: usize,
    /// Upper bound on executor threads (blocked handlers make the pool grow).
    pub max_executors: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "node".into(),
            executors: 2,
            max_executors: 512,
        }
    }
}

static RUNTIME: OnceLock<Arc<PyRuntime>> = OnceLock::new();

/// The node's runtime; errors when no node runs in this process.
pub fn node_runtime() -> PyResult<&'static Arc<PyRuntime>> {
    RUNTIME.get().ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err("no Re:BEAM node runs in this process")
    })
}

/// Starts the runtime, its timers and executors; the first call wins.
pub fn start_node(config: &NodeConfig) -> Arc<PyRuntime> {
    RUNTIME
        .get_or_init(|| {
            let incarnation = rand::random::<u64>();
            let host = PyHost {
                pool: Pool::new(config.max_executors),
                timers: OnceLock::new(),
                remote: OnceLock::new(),
                names: OnceLock::new(),
            };
            let rt = Arc::new(Runtime::new(&config.name, incarnation, host));
            let _ = rt.host.timers.set(Timers::start(Arc::downgrade(&rt)));
            Pool::start(&rt, config.executors);
            rt
        })
        .clone()
}

/// Sends an exit signal from outside any process (the stopper, the control plane). The
/// interpreter is taken once up front: the exits it causes run Python cleanups and
/// interrupt running code, each of which needs it.
pub fn exit_signal(rt: &PyRuntime, from: Pid, to: Pid, reason: Reason) {
    Python::attach(|_py| rt.exit_signal(from, to, reason));
}

/// Ends every process of the node with `reason` (fencing), holding the interpreter once.
pub fn terminate_all(rt: &PyRuntime, reason: &Reason) {
    Python::attach(|_py| {
        for p in rt.processes() {
            rt.terminate(&p, reason.clone());
        }
    });
}

/// Lets go of the interpreter while `f` waits (for mail, a reply, work), announcing it (see
/// `runtime::hand_off`): a thread this one woke may be watching for that moment.
pub fn wait_detached<R: Send>(py: Python<'_>, f: impl FnOnce() -> R + Send) -> R {
    py.detach(|| crate::runtime::hand_off::detached(f))
}

/// Runs `f` without the GIL when the calling thread holds it: a process's thread waiting on
/// something that needs no Python (room on a peer link) lets the node's other processes run.
pub fn without_gil<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // SAFETY: a plain query of the calling thread's GIL state.
    if unsafe { pyo3::ffi::PyGILState_Check() } == 1 {
        Python::attach(|py| py.detach(f))
    } else {
        f()
    }
}

/// Runs `f` on the calling thread with a Python thread state kept for its whole run but
/// without the GIL: for a long-lived thread that takes the GIL often but briefly.
pub fn with_thread_state<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    Python::attach(|py| py.detach(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Kind, MailboxLimit, NodeId};

    fn process(serial: u64) -> Arc<PyProcess> {
        let node = NodeId::from_wire("enter-test").expect("a valid name");
        let pid = Pid {
            node,
            incarnation: 1,
            serial,
        };
        Arc::new(PyProcess::new(
            pid,
            Kind::Server,
            None,
            PyData::default(),
            MailboxLimit::UNBOUNDED,
        ))
    }

    #[test]
    fn entries_nest_take_no_reference_and_one_ending_out_of_order_leaves_the_others() {
        let (a, b) = (process(1), process(2));
        assert!(current_pid().is_none());
        let outer = Enter::step(a.clone());
        let inner = Enter::step(b.clone());
        assert_eq!(current_pid(), Some(b.pid), "the innermost entry is current");
        assert_eq!(Arc::strong_count(&b), 2, "the test's and the entry's");
        let held = current().expect("a current process");
        assert_eq!(
            Arc::strong_count(&b),
            3,
            "`current` gives its caller a reference"
        );
        drop(held);
        drop(outer);
        assert_eq!(current_pid(), Some(b.pid), "an outer entry ending first");
        assert_eq!(Arc::strong_count(&a), 1);
        drop(inner);
        assert!(current().is_none() && !current_exited());
        assert_eq!(Arc::strong_count(&b), 1);
    }
}
