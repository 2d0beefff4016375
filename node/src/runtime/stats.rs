//! Process-wide counters of the runtime for `/metrics`: relaxed atomic adds on the message
//! path, no locks; read (approximately, which is all a scrape needs) by the HTTP server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One counter, padded to its own cache line so threads bumping different counters do not
/// slow each other down.
#[repr(align(64))]
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
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
    /// Messages put in a local mailbox.
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
}

/// The counters of this process's runtime (one node per OS process).
pub static STATS: Stats = Stats {
    delivered: Counter(AtomicU64::new(0)),
    routed: Counter(AtomicU64::new(0)),
    dropped: Counter(AtomicU64::new(0)),
    spawned: Counter(AtomicU64::new(0)),
    crashed: Counter(AtomicU64::new(0)),
    exited: Counter(AtomicU64::new(0)),
    mailbox_limit: Counter(AtomicU64::new(0)),
    memory_guard: Counter(AtomicU64::new(0)),
};
