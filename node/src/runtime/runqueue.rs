//! The run queue of servers with mail, shared by the executor threads.

use super::host::Host;
use super::process::Process;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// FIFO of runnable servers; FIFO order keeps scheduling fair.
pub struct RunQueue<H: Host> {
    queue: Mutex<Inner<H>>,
    ready: Condvar,
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
        }
    }
}

impl<H: Host> RunQueue<H> {
    /// Queues a server that has mail.
    pub fn push(&self, process: Arc<Process<H>>) {
        let mut q = self.queue.lock();
        q.items.push_back(process);
        if q.idle_threads > 0 {
            self.ready.notify_one();
        }
    }

    /// Takes the next server without waiting.
    pub fn try_pop(&self) -> Option<Arc<Process<H>>> {
        let mut q = self.queue.lock();
        Self::take(&mut q)
    }

    fn take(q: &mut Inner<H>) -> Option<Arc<Process<H>>> {
        let item = q.items.pop_front()?;
        q.popped += 1;
        Some(item)
    }

    /// Takes the next server, waiting until `deadline`.
    pub fn pop_until(&self, deadline: Instant) -> Option<Arc<Process<H>>> {
        let mut q = self.queue.lock();
        loop {
            if let Some(item) = Self::take(&mut q) {
                return Some(item);
            }
            q.idle_threads += 1;
            let timed_out = self.ready.wait_until(&mut q, deadline).timed_out();
            q.idle_threads -= 1;
            if timed_out {
                return Self::take(&mut q);
            }
        }
    }

    /// Queue length, threads waiting for work, and servers taken so far (unchanged between
    /// two looks: the head did not move).
    pub fn pressure(&self) -> (usize, usize, u64) {
        let q = self.queue.lock();
        (q.items.len(), q.idle_threads, q.popped)
    }
}
