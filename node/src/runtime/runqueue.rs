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
    /// When the oldest queued item was pushed with no change since; for stall detection.
    stalled_since: Option<Instant>,
    popped: u64,
}

impl<H: Host> Default for RunQueue<H> {
    fn default() -> Self {
        RunQueue {
            queue: Mutex::new(Inner {
                items: VecDeque::new(),
                idle_threads: 0,
                stalled_since: None,
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
        if q.items.is_empty() {
            q.stalled_since = Some(Instant::now());
        }
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
        q.stalled_since = if q.items.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
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

    /// Queue length, threads waiting for work, and how long the head has waited.
    pub fn pressure(&self) -> (usize, usize, Option<std::time::Duration>) {
        let q = self.queue.lock();
        (
            q.items.len(),
            q.idle_threads,
            q.stalled_since.map(|t| t.elapsed()),
        )
    }
}
