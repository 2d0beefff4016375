//! Hand-offs of the interpreter between a thread that wakes another and the woken one.
//!
//! A thread woken by another that still holds what it needs next (the interpreter) would
//! ask for it at once, find it held, and sleep in its lock until it is let go: a second
//! wake-up, tens of microseconds on a virtual machine. Threads that announce their
//! hand-offs (executors and function processes, at the waits where they let go of the
//! interpreter) let the threads they wake watch for that moment a short while first.

use super::spin::Spinner;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Hand-offs announced so far, by every announcing thread.
static HAND_OFFS: AtomicU64 = AtomicU64::new(0);

/// The mark of a wake by a thread that does not announce its hand-offs: nothing to wait for.
pub const UNANNOUNCED: u64 = u64::MAX;

/// Where woken threads watch for their waker's hand-off, and what they learnt.
static SPINNER: Spinner = Spinner::new();

thread_local! {
    static ANNOUNCES: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that calls `announce` whenever it lets go of the
/// interpreter to wait.
pub fn announces() {
    ANNOUNCES.with(|a| a.set(true));
}

/// Announces that the calling thread let go of the interpreter to wait.
pub fn announce() {
    HAND_OFFS.fetch_add(1, Ordering::Release);
}

/// What a wake (or a queued server) made by the calling thread carries: the hand-offs so
/// far if this thread announces its own, else `UNANNOUNCED`.
pub fn mark() -> u64 {
    if ANNOUNCES.try_with(Cell::get).unwrap_or(false) {
        HAND_OFFS.load(Ordering::Acquire)
    } else {
        UNANNOUNCED
    }
}

/// Watches a short while (see `spin`), never past `deadline`, for a hand-off after `mark`:
/// then the waker has most likely let go of the interpreter.
pub fn wait_after(mark: u64, deadline: Option<Instant>) {
    if mark != UNANNOUNCED {
        SPINNER.until(deadline, || HAND_OFFS.load(Ordering::Acquire) != mark);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_announcing_threads_mark_what_they_wake() {
        let unannounced = std::thread::spawn(mark).join().expect("a thread");
        assert_eq!(unannounced, UNANNOUNCED);
        let marked = std::thread::spawn(|| {
            announces();
            mark()
        })
        .join()
        .expect("a thread");
        assert_ne!(marked, UNANNOUNCED);
    }
}
