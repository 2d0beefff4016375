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

/// What the calling thread's wakes can promise about its hand-offs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announcing {
    /// It never announces: its wakes carry no mark.
    Never,
    /// It announces when it lets go of the interpreter, which it may hold now.
    Holding,
    /// It has let go of the interpreter and announced it: what it wakes need not wait.
    Detached,
}

thread_local! {
    static ANNOUNCING: Cell<Announcing> = const { Cell::new(Announcing::Never) };
}

/// Marks the calling thread as one that lets go of the interpreter to wait only through
/// `detached`.
pub fn announces() {
    ANNOUNCING.with(|a| a.set(Announcing::Holding));
}

/// Runs `f`, which waits with the interpreter let go, after announcing that hand-off. What
/// `f` wakes carries no mark: its waker holds nothing the woken thread would wait for (a
/// call queued while its caller waits for the reply would otherwise have the executor
/// watch for a hand-off that already happened, and miss).
pub fn detached<R>(f: impl FnOnce() -> R) -> R {
    HAND_OFFS.fetch_add(1, Ordering::Release);
    let before = ANNOUNCING.try_with(|a| a.replace(Announcing::Detached));
    let result = f();
    // The thread holds the interpreter again. (Were `f` to panic, the thread would go on
    // marking nothing: its wakes would only not be watched for.)
    if let Ok(before) = before {
        let _ = ANNOUNCING.try_with(|a| a.set(before));
    }
    result
}

/// What a wake (or a queued server) made by the calling thread carries: the hand-offs so
/// far if this thread holds the interpreter and will announce letting go of it, else
/// `UNANNOUNCED`.
pub fn mark() -> u64 {
    if ANNOUNCING.try_with(Cell::get) == Ok(Announcing::Holding) {
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

    #[test]
    fn what_a_detached_thread_wakes_waits_for_nothing() {
        let (inside, after) = std::thread::spawn(|| {
            announces();
            let inside = detached(mark);
            (inside, mark())
        })
        .join()
        .expect("a thread");
        assert_eq!(inside, UNANNOUNCED);
        assert_ne!(after, UNANNOUNCED);
    }
}
