//! The run queue of servers with mail, shared by the executor threads.

use super::hand_off;
use super::host::Host;
use super::process::Process;
use super::spin::Spinner;
use super::stats::STATS;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// FIFO of runnable servers; FIFO order keeps scheduling fair.
pub struct RunQueue<H: Host> {
    queue: Mutex<Inner<H>>,
    ready: Condvar,
    /// Where the stall monitor waits for a server to be queued (see `wait_for_queued`).
    monitor: Condvar,
    /// The queue's length, read without the lock by a thread watching for work.
    queued: AtomicUsize,
    /// One idle thread at a time watches for work before parking (see `spin`); a push
    /// then wakes no one, the watcher sees it.
    watching: AtomicBool,
    /// Threads that saw a server queued and are on their way to take it (see `Claim`).
    claiming: AtomicUsize,
    spinner: Spinner,
    /// The `hand_off::mark` of the last push the watcher saw: it waits for the pusher to let
    /// go of the interpreter before it asks for it.
    pushed_at: AtomicU64,
}

struct Inner<H: Host> {
    items: VecDeque<Arc<Process<H>>>,
    idle_threads: usize,
    /// Servers taken so far: the stall monitor watches it move (no clock read here: the
    /// queue is on every message's path), and with the queue's length it counts `scheduled`.
    popped: u64,
    /// The stall monitor waits in `wait_for_queued`: the next push wakes it.
    monitor_parked: bool,
}

impl<H: Host> Default for RunQueue<H> {
    fn default() -> Self {
        RunQueue {
            queue: Mutex::new(Inner {
                items: VecDeque::new(),
                idle_threads: 0,
                popped: 0,
                monitor_parked: false,
            }),
            ready: Condvar::new(),
            monitor: Condvar::new(),
            queued: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
            claiming: AtomicUsize::new(0),
            spinner: Spinner::new(),
            pushed_at: AtomicU64::new(hand_off::UNANNOUNCED),
        }
    }
}

impl<H: Host> RunQueue<H> {
    /// Queues a server that has mail.
    pub fn push(&self, process: Arc<Process<H>>) {
        let mut q = self.queue.lock();
        let first = q.items.is_empty();
        q.items.push_back(process);
        // The watcher sees the first server queued (one that gives up looks again under
        // the lock before it parks); any more wake parked threads.
        let watched = first && self.watching.load(Ordering::Acquire);
        if watched {
            // Only the watcher waits for the pusher's hand-off: no mark on other pushes.
            self.pushed_at.store(hand_off::mark(), Ordering::Relaxed);
        }
        self.queued.store(q.items.len(), Ordering::Release);
        if q.idle_threads > 0 && !watched {
            STATS.executor_wakeups.inc();
            self.ready.notify_one();
        }
        if first && q.monitor_parked {
            self.monitor.notify_one();
        }
    }

    /// Parks the calling thread (the stall monitor) until a server is queued or `max` has
    /// passed; true if one is queued. A stall needs a queued server, so there is nothing to
    /// watch before, and an idle node's monitor would otherwise wake 500 times a second.
    pub fn wait_for_queued(&self, max: Duration) -> bool {
        let mut q = self.queue.lock();
        if q.items.is_empty() {
            q.monitor_parked = true;
            let _ = self.monitor.wait_for(&mut q, max);
            q.monitor_parked = false;
        }
        !q.items.is_empty()
    }

    /// True while the stall monitor waits in `wait_for_queued` (tests wait for it).
    #[cfg(test)]
    pub fn monitor_parked(&self) -> bool {
        self.queue.lock().monitor_parked
    }

    /// True when no server waits in the queue (read without the lock: a hint).
    pub fn is_empty(&self) -> bool {
        self.queued.load(Ordering::Acquire) == 0
    }

    /// Times a server was put in the queue for an executor thread (mail reached it while
    /// idle, or it yielded its thread to others with mail left): those taken and those
    /// waiting.
    pub fn scheduled(&self) -> u64 {
        let q = self.queue.lock();
        q.popped + q.items.len() as u64
    }

    /// Takes the next server without waiting.
    pub fn try_pop(&self) -> Option<Arc<Process<H>>> {
        if self.is_empty() {
            return None;
        }
        let mut q = self.queue.lock();
        self.take(&mut q)
    }

    fn take(&self, q: &mut Inner<H>) -> Option<Arc<Process<H>>> {
        let item = q.items.pop_front()?;
        self.queued.store(q.items.len(), Ordering::Release);
        q.popped += 1;
        Some(item)
    }

    /// Waits until a server is queued or `deadline` passes; `Some` if one is. Takes nothing:
    /// the caller takes it with `try_pop` once it holds the interpreter, holding the `Claim`
    /// until then. A thread woken for a server that a running executor queued (a handler's
    /// cast) would otherwise hold that server while it waits for the interpreter the
    /// executor holds, and the two would hand the interpreter to each other for every
    /// message; waiting for the interpreter first leaves the server to the executor, which
    /// takes it as its handler returns. The first idle thread watches for work a moment
    /// before it parks (see `spin`), the others park at once; the watcher sees a server
    /// only while `may_take` holds.
    pub fn wait_for_work(
        &self,
        deadline: Instant,
        may_take: impl Fn() -> bool,
    ) -> Option<Claim<'_, H>> {
        if self.watch(may_take) {
            hand_off::wait_after(self.pushed_at.load(Ordering::Relaxed), Some(deadline));
            return Some(Claim::new(self));
        }
        let mut q = self.queue.lock();
        loop {
            if !q.items.is_empty() {
                return Some(Claim::new(self));
            }
            q.idle_threads += 1;
            let timed_out = self.ready.wait_until(&mut q, deadline).timed_out();
            q.idle_threads -= 1;
            if timed_out {
                return (!q.items.is_empty()).then(|| Claim::new(self));
            }
        }
    }

    /// Watches for work as the one watching thread; false if another thread watches or
    /// nothing it may take came.
    fn watch(&self, may_take: impl Fn() -> bool) -> bool {
        if self.watching.swap(true, Ordering::AcqRel) {
            return false;
        }
        let seen = self.spinner.until(None, || {
            self.queued.load(Ordering::Acquire) > 0 && may_take()
        });
        self.watching.store(false, Ordering::Release);
        seen
    }

    /// Queue length, threads waiting for work or on their way to take it, and servers
    /// taken so far (unchanged between two looks: the head did not move).
    pub fn pressure(&self) -> (usize, usize, u64) {
        let q = self.queue.lock();
        let watching = usize::from(self.watching.load(Ordering::Relaxed));
        let claiming = self.claiming.load(Ordering::Relaxed);
        (
            q.items.len(),
            q.idle_threads + watching + claiming,
            q.popped,
        )
    }
}

/// A thread that saw a server queued and is about to take it (`wait_for_work`): counted as
/// free by `pressure` while it waits for the interpreter, so the stall monitor does not add
/// a thread for a server one is already coming for.
pub struct Claim<'a, H: Host> {
    queue: &'a RunQueue<H>,
}

impl<'a, H: Host> Claim<'a, H> {
    fn new(queue: &'a RunQueue<H>) -> Self {
        queue.claiming.fetch_add(1, Ordering::AcqRel);
        Claim { queue }
    }
}

impl<H: Host> Drop for Claim<'_, H> {
    fn drop(&mut self) {
        self.queue.claiming.fetch_sub(1, Ordering::AcqRel);
    }
}
