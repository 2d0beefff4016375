//! Timers: `send_after` and GenServer timeouts, served by one thread with a deadline heap.

use super::host::Host;
use super::node::Runtime;
use super::pid::{Pid, Ref};
use super::process::Envelope;
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

struct Pending<M> {
    deadline: Instant,
    target: Pid,
    envelope: Envelope<M>,
}

struct Inner<M> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    pending: HashMap<u64, Pending<M>>,
    stopped: bool,
}

/// The node's timer service.
pub struct Timers<M> {
    inner: Mutex<Inner<M>>,
    changed: Condvar,
}

impl<M: Send + 'static> Timers<M> {
    /// Starts the timer thread delivering into `runtime`.
    pub fn start<H: Host<Msg = M>>(runtime: Weak<Runtime<H>>) -> Arc<Self> {
        let timers = Arc::new(Timers {
            inner: Mutex::new(Inner {
                heap: BinaryHeap::new(),
                pending: HashMap::new(),
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let me = timers.clone();
        std::thread::Builder::new()
            .name("rebeam-timers".into())
            .spawn(move || me.run(runtime))
            .expect("spawning the timer thread");
        timers
    }

    /// Schedules `envelope` to reach `target` after `delay`; `timer` identifies it for cancel.
    pub fn send_after(&self, timer: Ref, delay: Duration, target: Pid, envelope: Envelope<M>) {
        let deadline = Instant::now() + delay;
        let mut inner = self.inner.lock();
        inner.heap.push(Reverse((deadline, timer.0)));
        inner.pending.insert(
            timer.0,
            Pending {
                deadline,
                target,
                envelope,
            },
        );
        self.changed.notify_one();
    }

    /// Cancels a timer; returns the time that was left, or `None` if it already fired.
    pub fn cancel(&self, timer: Ref) -> Option<(Duration, Envelope<M>)> {
        let pending = self.inner.lock().pending.remove(&timer.0)?;
        Some((
            pending.deadline.saturating_duration_since(Instant::now()),
            pending.envelope,
        ))
    }

    /// Stops the timer thread.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.changed.notify_one();
    }

    fn run<H: Host<Msg = M>>(&self, runtime: Weak<Runtime<H>>) {
        let mut inner = self.inner.lock();
        loop {
            if inner.stopped {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((deadline, id))) = inner.heap.peek().copied() {
                if deadline > now {
                    break;
                }
                inner.heap.pop();
                if let Some(p) = inner.pending.remove(&id) {
                    due.push(p);
                }
            }
            if !due.is_empty() {
                drop(inner);
                if let Some(rt) = runtime.upgrade() {
                    for p in due {
                        // A timer to a dead process is dropped, like any send.
                        let _ = rt.send(p.target, p.envelope);
                    }
                }
                inner = self.inner.lock();
                continue;
            }
            match inner.heap.peek().copied() {
                Some(Reverse((deadline, _))) => {
                    self.changed.wait_until(&mut inner, deadline);
                }
                None => self.changed.wait(&mut inner),
            }
        }
    }
}
