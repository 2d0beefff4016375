//! Executor threads: they stay attached to Python for life, take servers with mail from the
//! run queue and run their handlers in batches; the pool grows when handlers block.

use super::aio::{self, Then};
use super::convert::{self, crash_reason, envelope_to_py, reason_to_py};
use super::host::{wait_detached, Enter, PyProcess, PyRuntime};
use super::objects::Sender;
use super::term::Term;
use crate::runtime::{clock, CallResult, CallSlot, Envelope, Pid, Reason};
use pyo3::intern;
use pyo3::prelude::*;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages one server handles before yielding its thread to the next server.
const BATCH: usize = 64;
/// An executor above the initial count retires after this long without work.
const RETIRE_AFTER: Duration = Duration::from_secs(10);
/// A handler slower than this is never again run on a caller's thread, nor is a call whose
/// timeout is shorter.
const INLINE_LIMIT: Duration = Duration::from_millis(10);
/// Messages a server handles on executors (each faster than `INLINE_LIMIT`) before calls
/// to it may run on the caller's thread: a fresh server's first calls keep exact timeouts.
const INLINE_WARMUP: u64 = 3;
/// How often the stall monitor looks at the run queue.
const MONITOR_TICK: Duration = Duration::from_millis(2);
/// Monitor ticks (4–6 ms) a queue head waits with no idle executor and no server taken
/// before the pool grows: handlers hold every thread.
const STALL_TICKS: u32 = 3;
/// Ticks in a row with nothing queued after which the stall monitor waits for a push
/// instead (100 ms): a busy node's queue empties between most pushes, and waking the
/// monitor on each would cost more than its ticks.
const QUIET_TICKS: u32 = 50;
/// Longest wait of the stall monitor for a push, after which it checks that the runtime
/// still lives.
const QUIET_WAIT: Duration = Duration::from_secs(1);

thread_local! {
    static IS_EXECUTOR: Cell<bool> = const { Cell::new(false) };
    /// Calls this executor answered whose callers it has not woken yet (see `Wake::Later`).
    static UNWOKEN: RefCell<Vec<Arc<CallSlot<Term>>>> = const { RefCell::new(Vec::new()) };
}

/// When the caller of a call answered by a handler's return value is woken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Wake {
    /// At once: the handler runs on the caller's own thread, or the next code may run long.
    Now,
    /// When this executor next lets go of the interpreter or starts other code
    /// (`wake_unwoken`): a caller woken while the executor still holds the interpreter
    /// would only wake to wait for it, paying a second wake-up.
    Later,
}

/// Wakes the callers of the calls this executor answered (see `Wake::Later`).
fn wake_unwoken() {
    UNWOKEN.with(|held| {
        for slot in held.borrow_mut().drain(..) {
            slot.wake();
        }
    });
}

/// Counts of executor threads, so blocking handlers never leave the run queue unserved.
pub struct Pool {
    total: AtomicUsize,
    blocked: AtomicUsize,
    /// Executors between taking a server and waiting for the next (`blocked` ones too).
    running: AtomicUsize,
    base: AtomicUsize,
    max: usize,
}

impl Pool {
    /// A pool that may grow to `max` threads.
    pub fn new(max: usize) -> Pool {
        Pool {
            total: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            base: AtomicUsize::new(0),
            max: max.max(1),
        }
    }

    /// Starts `count` executors and the stall monitor.
    pub fn start(rt: &Arc<PyRuntime>, count: usize) {
        rt.host.pool.base.store(count.max(1), Ordering::Relaxed);
        for _ in 0..count.max(1) {
            spawn_executor(rt.clone());
        }
        let weak = Arc::downgrade(rt);
        let _ = std::thread::Builder::new()
            .name("rebeam-stall-monitor".into())
            .spawn(move || stall_monitor(weak));
    }

    /// Executor threads alive now.
    pub fn threads(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn try_grow(&self, rt: &Arc<PyRuntime>) {
        let total = self.total.load(Ordering::Relaxed);
        if total < self.max {
            spawn_executor(rt.clone());
        }
    }
}

/// Marks the calling executor as blocked in a runtime wait for as long as it lives.
pub struct Blocking {
    counted: bool,
}

impl Blocking {
    /// Called before a handler blocks in `call` or `receive`: keeps one executor free.
    pub fn begin(rt: &Arc<PyRuntime>) -> Blocking {
        let counted = IS_EXECUTOR.with(|e| e.get());
        if counted {
            let pool = &rt.host.pool;
            let blocked = pool.blocked.fetch_add(1, Ordering::AcqRel) + 1;
            if blocked >= pool.total.load(Ordering::Acquire) {
                pool.try_grow(rt);
            }
        }
        Blocking { counted }
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        if self.counted {
            if let Ok(rt) = super::host::node_runtime() {
                rt.host.pool.blocked.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn spawn_executor(rt: Arc<PyRuntime>) {
    rt.host.pool.total.fetch_add(1, Ordering::AcqRel);
    let spawned = std::thread::Builder::new()
        .name("rebeam-executor".into())
        .spawn(move || {
            IS_EXECUTOR.with(|e| e.set(true));
            crate::runtime::hand_off::announces();
            // Counted as running until its first wait (see `executor_loop`).
            rt.host.pool.running.fetch_add(1, Ordering::AcqRel);
            Python::attach(|py| executor_loop(py, &rt));
            rt.host.pool.total.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(err) = spawned {
        tracing::error!("cannot start an executor thread: {err}");
    }
}

fn executor_loop(py: Python<'_>, rt: &Arc<PyRuntime>) {
    // The clock as the last batch left it: a server taken without waiting starts from that
    // reading (a chain of servers with one message each reads the clock once a message).
    let mut last: Option<clock::Moment> = None;
    let pool = &rt.host.pool;
    // Servers queued while another executor runs code are left to it (see `wait_for_work`).
    let none_running =
        || pool.running.load(Ordering::Acquire) <= pool.blocked.load(Ordering::Acquire);
    loop {
        let (next, now) = match rt.runq.try_pop() {
            Some(p) => {
                wake_unwoken();
                (Some(p), last.take().unwrap_or_else(clock::now))
            }
            None => {
                pool.running.fetch_sub(1, Ordering::AcqRel);
                let claim = wait_detached(py, || {
                    wake_unwoken();
                    crate::runtime::node::forget_last_target();
                    rt.runq
                        .wait_for_work(Instant::now() + RETIRE_AFTER, none_running)
                });
                pool.running.fetch_add(1, Ordering::AcqRel);
                // Taken only now, holding the interpreter (see `wait_for_work`); another
                // executor may have taken it meanwhile, which is no reason to retire.
                match (rt.runq.try_pop(), claim) {
                    (Some(p), _) => (Some(p), clock::now()),
                    (None, Some(_)) => continue,
                    (None, None) => (None, clock::now()),
                }
            }
        };
        last = None;
        // `now` serves the lease check and the first handler's timing.
        match next {
            Some(process) if !rt.lease_ok_at(now) => {
                // The lease lapsed (the node was frozen or cut off): run nothing until the
                // fence has killed every process of this incarnation.
                rt.runq.push(process);
                py.detach(|| std::thread::sleep(Duration::from_millis(1)));
            }
            Some(process) => last = Some(run_batch(py, rt, process, now)),
            None => {
                let total = pool.total.load(Ordering::Acquire);
                if total > pool.base.load(Ordering::Relaxed) + pool.blocked.load(Ordering::Acquire)
                {
                    pool.running.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            }
        }
    }
}

fn stall_monitor(rt: std::sync::Weak<PyRuntime>) {
    // Ticks in a row with a queued head, no idle executor and no server taken: the head
    // has waited at least that many ticks (no clock read on the queue's hot path).
    let mut still = 0u32;
    let mut last_popped = 0u64;
    // Ticks in a row that found the queue empty.
    let mut quiet = 0u32;
    loop {
        if quiet >= QUIET_TICKS {
            // Nothing was queued for a while: wait for a push instead of ticking. Bounded,
            // so a dropped runtime's monitor still ends.
            let Some(rt) = rt.upgrade() else { return };
            if rt.runq.wait_for_queued(QUIET_WAIT) {
                quiet = 0;
            }
            continue;
        }
        std::thread::sleep(MONITOR_TICK);
        let Some(rt) = rt.upgrade() else { return };
        let (queued, idle, popped) = rt.runq.pressure();
        quiet = if queued == 0 { quiet + 1 } else { 0 };
        if queued > 0 && idle == 0 && popped == last_popped {
            still += 1;
        } else {
            still = 0;
        }
        last_popped = popped;
        if still >= STALL_TICKS {
            tracing::debug!(queued, "run queue stalled: adding an executor");
            rt.host.pool.try_grow(&rt);
            still = 0;
        }
    }
}

/// Runs up to `BATCH` messages of a server; `now` is a reading of `clock::now` taken just
/// before.
/// Returns a reading taken after the last process code it ran.
fn run_batch(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: Arc<PyProcess>,
    now: clock::Moment,
) -> clock::Moment {
    let Some(server) = process.data.server.get().map(|s| s.clone_ref(py)) else {
        if rt.begin_batch(&process) {
            rt.finish_batch(&process);
        }
        return now;
    };
    // Entered before its first message is taken: a kill from then on either finds it dead
    // at the take or interrupts its handler, never lets a taken message run after it.
    let enter = Enter::new(process);
    let process = enter.process();
    // An async handler that ended with a stop left it for an executor: `terminate` is user
    // code, and user code off the loop's coroutines runs on executors.
    if let Some(reason) = process.data.stop.take() {
        if !rt.begin_batch(process) {
            return now;
        }
        if finish_server(py, rt, process, server.bind(py), reason) != After::Suspended {
            rt.finish_batch(process);
        }
        drop(enter);
        return clock::now();
    }
    // One reading per message (of `clock::now`: mostly the time-stamp counter): each
    // message's end is the next one's start, and the lease is checked at that reading
    // (this batch's first message: by the caller).
    let mut reading = now;
    let mut budget = BATCH;
    // `take_next` ends the batch itself when the mailbox is empty (then `finished`).
    let mut finished = false;
    loop {
        let Some(envelope) = rt.take_next(process) else {
            finished = true;
            break;
        };
        match handle_one(
            py,
            rt,
            process,
            server.bind(py),
            envelope,
            &mut reading,
            Wake::Later,
        ) {
            After::Next => {}
            After::Stopped => {
                // `terminate` may have run after the handler's reading.
                reading = clock::now();
                break;
            }
            // The handler awaits on the event loop, which hands the server back when done.
            After::Suspended => return reading,
        }
        budget -= 1;
        if budget == 0 {
            // The batch is over: yield the thread to the next server in the queue (FIFO
            // fairness). With none waiting, go on: re-queueing would wake an idle executor
            // only for this one to take the server straight back (a futex wake-up every
            // batch of a busy server).
            if !rt.runq.is_empty() {
                break;
            }
            budget = BATCH;
        }
        // Checked before every message, not once per batch: a node frozen in the middle of
        // a batch must not go on with it when it wakes after its lease lapsed.
        if !rt.lease_ok_at(reading) {
            break;
        }
    }
    // Still entered while its batch ends: no other thread can enter it before this one
    // leaves, as entering holds the interpreter, which this thread holds.
    if !finished {
        rt.finish_batch(process);
    }
    drop(enter);
    reading
}

/// What follows one handled message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum After {
    /// The server takes its next message.
    Next,
    /// The server stopped (or was killed).
    Stopped,
    /// Its handler (or `terminate`) is a coroutine now running on the event loop: the
    /// server stays running, off this thread, until the task ends.
    Suspended,
}

/// Runs a call's handler on the calling thread when the inline rule allows (see
/// `claim_inline`); otherwise gives the callee and the envelope back, for the caller to
/// queue in the callee's mailbox once it has let go of the interpreter (see
/// `wait_for_reply`). `caller` is the calling process, if any; it is left marked as lent.
/// `timeout` is the call's, in seconds (`None`: none).
pub fn try_inline(
    rt: &Arc<PyRuntime>,
    callee: Arc<PyProcess>,
    envelope: Envelope<Term>,
    caller: Option<&Arc<PyProcess>>,
    timeout: Option<f64>,
) -> Option<(Arc<PyProcess>, Envelope<Term>)> {
    if claim_inline(rt, &callee, caller, timeout) {
        Python::attach(|py| run_inline(py, rt, callee, envelope));
        None
    } else {
        Some((callee, envelope))
    }
}

/// The inline-call rule, in one place: a call runs the callee's handler on the caller's
/// thread (one thread hand-off fewer) when its timeout is at least `INLINE_LIMIT`, the
/// callee is past its warm-up, none of its handlers was ever slow, the caller is still
/// alive (its thread is then marked as lent) and the callee is idle (it is then claimed).
/// A handler on the caller's thread cannot be left at the deadline; with those rules one
/// can pass the deadline only by being slow for the first time.
fn claim_inline(
    rt: &PyRuntime,
    callee: &Arc<PyProcess>,
    caller: Option<&Arc<PyProcess>>,
    timeout: Option<f64>,
) -> bool {
    timeout.is_none_or(|t| t >= INLINE_LIMIT.as_secs_f64())
        && !callee.data.slow.load(Ordering::Relaxed)
        && callee.data.handled.load(Ordering::Relaxed) >= INLINE_WARMUP
        && lend(caller)
        && rt.try_claim_idle(callee)
}

/// Marks the caller's thread as lent to a callee's handler; false if the caller is already
/// dead (then the call must not run a handler here). With a caller, called with the GIL
/// held: `interrupt` checks `lent` under the GIL.
fn lend(caller: Option<&Arc<PyProcess>>) -> bool {
    match caller {
        Some(m) => {
            m.data.lent.store(true, Ordering::SeqCst);
            !m.is_exited()
        }
        None => true,
    }
}

/// Runs one call of a server claimed with `try_claim_idle` on the caller's thread: no
/// thread wake-ups on the fast path. A server whose handler once took longer than
/// `INLINE_LIMIT` is never run this way again, so slow handlers keep callers' timeouts exact.
pub fn run_inline(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: Arc<PyProcess>,
    envelope: Envelope<Term>,
) {
    let Some(server) = process.data.server.get().map(|s| s.clone_ref(py)) else {
        rt.finish_batch(&process);
        return;
    };
    // One reading for the lease check and the handler's start, as in `run_batch`.
    let mut reading = clock::now();
    if !rt.lease_ok_at(reading) {
        // No lease: the message waits in the mailbox for an executor (which waits for the
        // lease or the fence) instead of holding this caller's or peer link's thread.
        let _ = rt.deliver(&process, envelope);
        rt.finish_batch(&process);
        return;
    }
    let enter = Enter::new(process);
    let process = enter.process();
    let after = handle_one(
        py,
        rt,
        process,
        server.bind(py),
        envelope,
        &mut reading,
        Wake::Now,
    );
    // Left after the batch ends, as in `run_batch`.
    if after != After::Suspended {
        rt.finish_batch(process);
    }
    drop(enter);
}

/// Handles one envelope of an entered server on this thread, counting it and marking the
/// server slow if the handler took longer than `INLINE_LIMIT`. `reading` is when the handler
/// started (read just before); it is left at when it ended. `wake` says when the caller of
/// a call answered by the handler's return value is woken; callers still unwoken are woken
/// before any more code runs here but the next message's handler.
fn handle_one(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    server: &Bound<'_, PyAny>,
    envelope: Envelope<Term>,
    reading: &mut clock::Moment,
    wake: Wake,
) -> After {
    // The previous message's caller waited long enough: a handler may run long.
    wake_unwoken();
    // Only the thread running the server counts its messages: no atomic add needed.
    let handled = &process.data.handled;
    handled.store(handled.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    let outcome = dispatch(py, process, server, envelope, wake);
    if !matches!(outcome, Handled::Next) {
        wake_unwoken();
    }
    let ended = clock::now();
    // Both readings may be late by up to the slack: a handler longer than the limit takes
    // longer than this between them, whatever their lateness.
    if ended.since(*reading) > INLINE_LIMIT - clock::SLACK {
        process.data.slow.store(true, Ordering::Relaxed);
    }
    *reading = ended;
    if process.is_exited() {
        clear_interrupt(py);
        return After::Stopped;
    }
    match outcome {
        Handled::Next => After::Next,
        Handled::Suspended => After::Suspended,
        Handled::Stop(reason) => finish_server(py, rt, process, server, reason),
    }
}

/// The outcome of dispatching one envelope.
enum Handled {
    /// Done; take the next message.
    Next,
    /// The server must stop with this reason.
    Stop(Reason),
    /// The handler is a coroutine now running on the event loop.
    Suspended,
}

/// What a handler call gave back: done, or a coroutine to run on the event loop and what
/// applies its outcome.
enum Ran<'py> {
    Done,
    Coroutine(Bound<'py, PyAny>, Then),
}

/// A handler's return value: a coroutine (an `async def` handler) to run on the loop, or done.
fn ran<'py>(value: Bound<'py, PyAny>, then: impl FnOnce() -> Then) -> Ran<'py> {
    if aio::is_coroutine(&value) {
        Ran::Coroutine(value, then())
    } else {
        Ran::Done
    }
}

/// Answers the call in `slot` with a handler's return value; `noreply()` leaves it pending.
/// An error (a reply that cannot be copied) has already failed the call: the server crashes.
pub fn reply_with(
    py: Python<'_>,
    process: &PyProcess,
    slot: &Arc<CallSlot<Term>>,
    reply: &Bound<'_, PyAny>,
) -> PyResult<()> {
    answer(py, process, slot, reply, Wake::Now)
}

/// `reply_with`, waking the caller now or later.
fn answer(
    py: Python<'_>,
    process: &PyProcess,
    slot: &Arc<CallSlot<Term>>,
    reply: &Bound<'_, PyAny>,
    wake: Wake,
) -> PyResult<()> {
    if reply.is(convert::types(py)?.noreply.bind(py)) {
        if !slot.is_complete() {
            process.lock().pending_calls.push(slot.clone());
        }
        return Ok(());
    }
    match Term::copy_in(reply) {
        Ok(term) => {
            let answered = match wake {
                Wake::Now => slot.complete(CallResult::Reply(term)),
                Wake::Later => slot.complete_unwoken(CallResult::Reply(term)),
            };
            if wake == Wake::Later && answered.is_ok() {
                UNWOKEN.with(|held| held.borrow_mut().push(slot.clone()));
            }
            Ok(())
        }
        Err(err) => {
            // The server crashes on a reply it cannot send; its caller learns why.
            let _ = slot.complete(CallResult::Exit(crash_reason(py, &err)));
            Err(err)
        }
    }
}

/// Drops an interrupt that was aimed at a process that has already stopped running here.
pub fn clear_interrupt(_py: Python<'_>) {
    // SAFETY: the GIL is held (the token proves it); a null exception clears a pending one.
    unsafe {
        pyo3::ffi::PyThreadState_SetAsyncExc(
            super::host::current_thread_ident() as std::os::raw::c_long,
            std::ptr::null_mut(),
        );
    }
}

/// Waits, with the GIL released, while the node's lease has lapsed; false once `process`
/// exited meanwhile (the fence killed it). Called right before process code starts (each
/// handler, `init`, `terminate`, `code_change`, a function process): a node that was frozen
/// or cut off past its lease may already have been replaced elsewhere, so it runs nothing
/// until it renews or fences. The lease is on the monotonic clock, which runs on while the
/// process is stopped.
pub fn lease_gate(py: Python<'_>, rt: &PyRuntime, process: &PyProcess) -> bool {
    while !rt.lease_ok() {
        if process.is_exited() {
            return false;
        }
        py.detach(|| std::thread::sleep(Duration::from_millis(1)));
    }
    !process.is_exited()
}

/// Handles one envelope: done, stopping, or suspended on the event loop.
fn dispatch(
    py: Python<'_>,
    process: &Arc<PyProcess>,
    server: &Bound<'_, PyAny>,
    envelope: Envelope<Term>,
    wake: Wake,
) -> Handled {
    // The lease was checked by the caller right before (see `run_batch`, `run_inline`):
    // only a process killed since is left to skip.
    if process.is_exited() {
        return Handled::Next;
    }
    if let Some(app) = &process.data.app {
        let epoch = app.epoch.load(Ordering::Acquire);
        if process.data.code_epoch.load(Ordering::Relaxed) != epoch {
            super::upgrade::move_process(py, process, server, app, epoch);
        }
    }
    let span = crate::observe::trace::handling(py, &envelope, process.pid);
    let result: PyResult<Ran<'_>> = (|| match envelope {
        Envelope::Cast(m) => server
            .call_method1(intern!(py, "handle_cast"), (m.to_py(py)?,))
            .map(|r| ran(r, || Then::Handler(None))),
        Envelope::Call { request, slot } => {
            let sender = Bound::new(py, Sender { slot: slot.clone() })?;
            let reply = match server
                .call_method1(intern!(py, "handle_call"), (request.to_py(py)?, sender))
            {
                Ok(r) => r,
                Err(err) => {
                    let reason = if process.is_exited() {
                        process.exit_reason().unwrap_or(Reason::Killed)
                    } else {
                        crash_reason(py, &err)
                    };
                    let _ = slot.complete(CallResult::Exit(reason));
                    return Err(err);
                }
            };
            if aio::is_coroutine(&reply) {
                return Ok(Ran::Coroutine(reply, Then::Handler(Some(slot))));
            }
            answer(py, process, &slot, &reply, wake)?;
            Ok(Ran::Done)
        }
        Envelope::Exit(signal)
            if Some(signal.from) == process.parent
                || (process.data.child.get().is_some()
                    && signal.from == Pid::app_master(&process.pid)) =>
        {
            let reason = signal.reason;
            // The parent's exit signal, trapped: shut down like a gen_server does. A top-level
            // child's parent is the node's application master, which stops it on app stop.
            process.data.stop.set(reason);
            Ok(Ran::Done)
        }
        Envelope::Timeout(generation) => {
            if process.lock().timeout_gen != generation + 1 {
                return Ok(Ran::Done);
            }
            let message = convert::types(py)?.timeout_message.bind(py).clone();
            server
                .call_method1(intern!(py, "handle_info"), (message,))
                .map(|r| ran(r, || Then::Handler(None)))
        }
        other => {
            let message = envelope_to_py(py, &other)?;
            server
                .call_method1(intern!(py, "handle_info"), (message,))
                .map(|r| ran(r, || Then::Handler(None)))
        }
    })();
    // An async handler's span covers its start only: its steps run on the loop's thread.
    if let Some(span) = span {
        span.end(py, result.as_ref().err().map(|e| e.to_string()));
    }
    match result {
        Ok(Ran::Done) => match process.data.stop.take() {
            Some(reason) => Handled::Stop(reason),
            None => Handled::Next,
        },
        Ok(Ran::Coroutine(coroutine, then)) => match aio::suspend(py, process, coroutine, then) {
            Ok(()) => Handled::Suspended,
            Err(err) => Handled::Stop(crash_reason(py, &err)),
        },
        Err(err) => {
            if process.is_exited() || is_killed(py, &err) {
                return Handled::Next;
            }
            Handled::Stop(crash_reason(py, &err))
        }
    }
}

/// True for the exception that unwinds a killed process.
pub fn is_killed(py: Python<'_>, err: &PyErr) -> bool {
    convert::types(py)
        .map(|t| err.get_type(py).is(t.killed.bind(py)))
        .unwrap_or(false)
}

/// Runs `terminate(reason)` and ends the server with `reason`; an async `terminate` runs
/// on the event loop and the server ends when it returns.
fn finish_server(
    py: Python<'_>,
    rt: &Arc<PyRuntime>,
    process: &Arc<PyProcess>,
    server: &Bound<'_, PyAny>,
    reason: Reason,
) -> After {
    log_crash(process, &reason);
    if !lease_gate(py, rt, process) {
        return After::Stopped;
    }
    let result =
        reason_to_py(py, &reason).and_then(|r| server.call_method1(intern!(py, "terminate"), (r,)));
    match result {
        Ok(value) if aio::is_coroutine(&value) => {
            match aio::suspend(py, process, value, Then::Terminate(reason.clone())) {
                Ok(()) => return After::Suspended,
                Err(err) => terminate_raised(py, process, &err),
            }
        }
        Ok(_) => {}
        Err(err) => terminate_raised(py, process, &err),
    }
    rt.terminate(process, reason);
    After::Stopped
}

/// Logs an exception `terminate` raised (the server ends with its reason all the same).
pub fn terminate_raised(py: Python<'_>, process: &PyProcess, err: &PyErr) {
    if !is_killed(py, err) {
        tracing::error!(pid = %process.pid, "terminate raised: {}", crash_reason(py, err));
    }
}

/// Prints a crash report, as OTP's logger does for abnormal exits, and keeps it in the app's
/// log. Called only where a process's own code raised: a process that dies of a linked
/// process's crash reports nothing itself (as in OTP).
pub fn log_crash(process: &Arc<PyProcess>, reason: &Reason) {
    if let Reason::Crash(crash) = reason {
        tracing::warn!(pid = %process.pid, "process crashed: {}: {}\n{}", crash.kind, crash.message, crash.traceback);
        super::logs::crashed(process, reason);
        if let Some(app) = &process.data.app {
            app.crashes.fetch_add(1, Ordering::Relaxed);
        }
    }
}
