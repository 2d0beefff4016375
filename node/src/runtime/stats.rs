//! Process-wide counters of the runtime for `/metrics`: relaxed atomic adds on the message
//! path, no locks; read (approximately, which is all a scrape needs) by the HTTP server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One counter, padded to its own cache line so threads bumping different counters do not
/// slow each other down.
#[repr(align(64))]
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The runtime's counters.
pub struct Stats {
    /// Messages sent (local or remote, delivered or not).
    pub sent: Counter,
    /// Messages delivered to a local process: put in its mailbox, or handed straight to an
    /// idle server's handler (an inline call).
    pub delivered: Counter,
    /// Messages handed to a peer link for another node.
    pub routed: Counter,
    /// Messages dropped because their target was dead (or unreachable).
    pub dropped: Counter,
    /// Processes spawned.
    pub spawned: Counter,
    /// Processes that ended with a crash (an uncaught exception).
    pub crashed: Counter,
    /// Processes that ended, whatever the reason.
    pub exited: Counter,
    /// Processes killed because a delivery would have passed their mailbox limit.
    pub mailbox_limit: Counter,
    /// Times the memory guard ended an app's processes.
    pub memory_guard: Counter,
    /// Times a parked executor thread was woken for a queued server: a futex call, and on a
    /// virtual machine often a halted vCPU brought back.
    pub executor_wakeups: Counter,
}

/// The counters of this process's runtime (one node per OS process).
pub static STATS: Stats = Stats {
    sent: Counter::new(),
    delivered: Counter::new(),
    routed: Counter::new(),
    dropped: Counter::new(),
    spawned: Counter::new(),
    crashed: Counter::new(),
    exited: Counter::new(),
    mailbox_limit: Counter::new(),
    memory_guard: Counter::new(),
    executor_wakeups: Counter::new(),
};
