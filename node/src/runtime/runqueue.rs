//! The run queue of servers with mail, shared by the executor threads.

use super::host::Host;
use super::process::Process;
use super::spin::Spinner;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// FIFO of runnable servers; FIFO order keeps scheduling fair.
pub struct RunQueue<H: Host> {
    queue: Mutex<Inner<H>>,
    ready: Condvar,
    /// The queue's length, read without the lock by a thread watching for work.
    queued: AtomicUsize,
    /// One idle thread at a time watches for work before parking (see `spin`); a push
    /// then wakes no one, the watcher takes it.
    watching: AtomicBool,
    spinner: Spinner,
}

struct Inner<H: Host> {
    items: VecDeque<Arc<Process<H>>>,
    idle_threads: usize,
    /// Servers taken so far; the stall monitor watches it move (no clock read here: the
    /// queue is on every message's path).
    popped: u64,
}

impl<H: Host> Default for RunQueue<H> {
    fn default() -> Self {
        RunQueue {
            queue: Mutex::new(Inner {
                items: VecDeque::new(),
                idle_threads: 0,
                popped: 0,
            }),
            ready: Condvar::new(),
            queued: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
            spinner: Spinner::new(),
        }
    }
}

impl<H: Host> RunQueue<H> {
    /// Queues a server that has mail.
    pub fn push(&self, process: Arc<Process<H>>) {
        let mut q = self.queue.lock();
        let first = q.items.is_empty();
        q.items.push_back(process);
        self.queued.store(q.items.len(), Ordering::Release);
        // The watcher takes the first server queued (one that gives up looks again under
        // the lock before it parks); any more go to parked threads.
        if q.idle_threads > 0 && !(first && self.watching.load(Ordering::Acquire)) {
            self.ready.notify_one();
        }
    }

    /// Takes the next server without waiting.
    pub fn try_pop(&self) -> Option<Arc<Process<H>>> {
        if self.queued.load(Ordering::Acquire) == 0 {
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

    /// Takes the next server, waiting until `deadline`: the first idle thread watches for
    /// work a moment before it parks (see `spin`), the others park at once. The watcher
    /// takes a server only while `may_take` holds: one queued by a thread that is still
    /// running code would only make the two hand the interpreter back and forth.
    pub fn pop_until(
        &self,
        deadline: Instant,
        may_take: impl Fn() -> bool,
    ) -> Option<Arc<Process<H>>> {
        if let Some(item) = self.watch(may_take) {
            return Some(item);
        }
        let mut q = self.queue.lock();
        loop {
            if let Some(item) = self.take(&mut q) {
                return Some(item);
            }
            q.idle_threads += 1;
            let timed_out = self.ready.wait_until(&mut q, deadline).timed_out();
            q.idle_threads -= 1;
            if timed_out {
                return self.take(&mut q);
            }
        }
    }

    /// Watches for work as the one watching thread; `None` if another thread watches or
    /// nothing it may take came.
    fn watch(&self, may_take: impl Fn() -> bool) -> Option<Arc<Process<H>>> {
        if self.watching.swap(true, Ordering::AcqRel) {
            return None;
        }
        let seen = self.spinner.until(None, || {
            self.queued.load(Ordering::Acquire) > 0 && may_take()
        });
        self.watching.store(false, Ordering::Release);
        if seen {
            self.try_pop()
        } else {
            None
        }
    }

    /// Queue length, threads waiting for work, and servers taken so far (unchanged between
    /// two looks: the head did not move).
    pub fn pressure(&self) -> (usize, usize, u64) {
        let q = self.queue.lock();
        let watching = usize::from(self.watching.load(Ordering::Relaxed));
        (q.items.len(), q.idle_threads + watching, q.popped)
    }
}
