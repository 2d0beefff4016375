//! Process-wide counters of the runtime for `/metrics`: relaxed atomic adds where events
//! are rare, per-thread tallies on every message's path; read (approximately, which is all
//! a scrape needs) by the HTTP server.

use parking_lot::Mutex;
use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

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

/// How many `Tally` counters there are (the length of each thread's slots).
const TALLIES: usize = 3;

/// One thread's tallies. Only that thread writes them, with a plain load and store: an
/// atomic add is a locked instruction, which cost about 9 ns each on the 2-vCPU hosts, a
/// few per cent of a cast for each counter bumped.
struct Slots {
    counts: [AtomicU64; TALLIES],
    /// Where it is in `Tallies::live` (changed under that lock when another leaves).
    index: AtomicUsize,
}

/// Every live thread's tallies, and what threads that ended had counted.
struct Tallies {
    live: Vec<Arc<Slots>>,
    ended: [u64; TALLIES],
}

static TALLY_THREADS: Mutex<Tallies> = Mutex::new(Tallies {
    live: Vec::new(),
    ended: [0; TALLIES],
});

/// Counts from threads whose tallies were already torn down (code run by other
/// thread-local destructors at thread exit).
static TALLY_LATE: [Counter; TALLIES] = [Counter::new(), Counter::new(), Counter::new()];

/// This thread's slots, registered on first use and folded into `ended` at thread exit.
struct ThreadSlots(OnceCell<Arc<Slots>>);

impl ThreadSlots {
    fn slots(&self) -> &Slots {
        self.0.get_or_init(|| {
            let mut all = TALLY_THREADS.lock();
            let slots = Arc::new(Slots {
                counts: Default::default(),
                index: AtomicUsize::new(all.live.len()),
            });
            all.live.push(slots.clone());
            slots
        })
    }
}

impl Drop for ThreadSlots {
    fn drop(&mut self) {
        let Some(mine) = self.0.get() else {
            return;
        };
        let mut all = TALLY_THREADS.lock();
        for (ended, count) in all.ended.iter_mut().zip(&mine.counts) {
            *ended += count.load(Relaxed);
        }
        // In constant time: a node may run many thousands of function-process threads.
        let index = mine.index.load(Relaxed);
        all.live.swap_remove(index);
        if let Some(moved) = all.live.get(index) {
            moved.index.store(index, Relaxed);
        }
    }
}

thread_local! {
    static THREAD_SLOTS: ThreadSlots = const { ThreadSlots(OnceCell::new()) };
}

/// A counter bumped on every message's path: each thread counts in slots of its own, and a
/// read sums them.
pub struct Tally(usize);

impl Tally {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        let counted = THREAD_SLOTS.try_with(|t| {
            let slot = &t.slots().counts[self.0];
            slot.store(slot.load(Relaxed) + 1, Relaxed);
        });
        if counted.is_err() {
            TALLY_LATE[self.0].inc();
        }
    }

    /// The current value: every thread's count.
    pub fn get(&self) -> u64 {
        let all = TALLY_THREADS.lock();
        let live: u64 = all
            .live
            .iter()
            .map(|s| s.counts[self.0].load(Relaxed))
            .sum();
        all.ended[self.0] + live + TALLY_LATE[self.0].get()
    }
}

/// The runtime's counters.
pub struct Stats {
    /// Messages sent (local or remote, delivered or not).
    pub sent: Tally,
    /// Messages delivered to a local process: put in its mailbox, or handed straight to an
    /// idle server's handler (an inline call).
    pub delivered: Tally,
    /// Messages handed to a peer link for another node.
    pub routed: Tally,
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
    sent: Tally(0),
    delivered: Tally(1),
    routed: Tally(2),
    dropped: Counter::new(),
    spawned: Counter::new(),
    crashed: Counter::new(),
    exited: Counter::new(),
    mailbox_limit: Counter::new(),
    memory_guard: Counter::new(),
    executor_wakeups: Counter::new(),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_every_threads_adds_also_after_the_threads_end() {
        let tally = &STATS.routed;
        let before = tally.get();
        let (counted, finish) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let live = std::thread::spawn(move || {
            for _ in 0..500 {
                STATS.routed.inc();
            }
            counted.send(()).expect("the test waits");
            wait.recv().expect("the test releases");
        });
        let ended: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        STATS.routed.inc();
                    }
                })
            })
            .collect();
        for t in ended {
            t.join().expect("thread");
        }
        finish.recv().expect("the live thread counted");
        // Other tests may count routed messages meanwhile: at least ours.
        assert!(tally.get() - before >= 4500, "{}", tally.get() - before);
        // Threads that left moved others in the list: each knows where it is.
        let all = TALLY_THREADS.lock();
        for (i, slots) in all.live.iter().enumerate() {
            assert_eq!(slots.index.load(Relaxed), i);
        }
        drop(all);
        release.send(()).expect("live thread");
        live.join().expect("thread");
        assert!(tally.get() - before >= 4500);
    }
}
