//! A bounded busy wait before a thread parks, as the BEAM's schedulers wait (`+sbwt`).
//!
//! Waking a parked thread costs a futex call, and on a virtual machine whose idle cores are
//! halted it costs far more: the halted vCPU must be brought back by the host (measured on
//! the 2-core VM: a call to a fresh server, two hand-offs, took ~30 µs when the machine was
//! idle and ~8 µs when it was busy). A thread about to wait for something that usually
//! comes within microseconds (the next server with mail, a call's reply) first watches for
//! it for a short while, and parks only if nothing came.
//!
//! On a busy machine watching is a loss: the thread that would answer may be waiting for
//! the very core the watcher holds. So each place that watches learns: after watches that
//! saw nothing it parks at once for its next waits, one after a first miss, twice as many
//! after each further miss in a row, up to `SKIP_AFTER_MISS`; a watch that sees its event
//! starts over. A fixed long back-off after any miss was too eager: on a VM where a watch
//! now and then misses (a timer tick, the host taking the vCPU), calls to fresh servers
//! made 1.8 context switches each instead of 0.5, as each parked side made the other's
//! next watch miss too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a thread watches before it parks: longer than a hand-off between two threads
/// and a short handler, short enough to cost little when nothing comes.
pub const SPIN: Duration = Duration::from_micros(20);

/// Most waits that park at once after watches that saw nothing.
const SKIP_AFTER_MISS: u32 = 64;

/// Polls between two clock reads: a clock read is ~20 ns, a poll a few.
const POLLS_PER_LOOK: u32 = 64;

/// One place that watches before parking, with what it learnt of its last watches.
#[derive(Default, Debug)]
pub struct Spinner {
    /// Waits left to park at once.
    skip: AtomicU32,
    /// Watches in a row that saw nothing.
    misses: AtomicU32,
}

impl Spinner {
    /// A spinner that watches on its first wait.
    pub const fn new() -> Spinner {
        Spinner {
            skip: AtomicU32::new(0),
            misses: AtomicU32::new(0),
        }
    }

    /// Watches `ready` for up to `SPIN`, never past `deadline`, unless a recent watch here
    /// saw nothing; true as soon as it holds.
    pub fn until(&self, deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
        if ready() {
            return true;
        }
        let skip = self.skip.load(Ordering::Relaxed);
        if skip > 0 {
            self.skip.store(skip - 1, Ordering::Relaxed);
            return false;
        }
        let seen = watch(deadline, ready);
        if seen {
            // Written only when it changes: a hit is every call's path, and a store would
            // bounce the line between the threads sharing this place.
            if self.misses.load(Ordering::Relaxed) != 0 {
                self.misses.store(0, Ordering::Relaxed);
            }
        } else {
            // Relaxed and racy on purpose: several threads may share a place, and a lost
            // update only changes how soon it watches again.
            let misses = self.misses.load(Ordering::Relaxed).saturating_add(1);
            self.misses.store(misses, Ordering::Relaxed);
            self.skip.store(back_off(misses), Ordering::Relaxed);
        }
        seen
    }
}

/// Waits to park at once after `misses` watches in a row saw nothing: 1, 2, 4, … up to
/// `SKIP_AFTER_MISS`.
fn back_off(misses: u32) -> u32 {
    1u32.checked_shl(misses.saturating_sub(1))
        .map_or(SKIP_AFTER_MISS, |n| n.min(SKIP_AFTER_MISS))
}

/// Polls `ready` until it holds, `SPIN` has passed or `deadline` is reached.
fn watch(deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let end = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
    loop {
        for _ in 0..POLLS_PER_LOOK {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= end {
            return ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_after_the_spin() {
        let start = Instant::now();
        assert!(!watch(None, || false));
        assert!(start.elapsed() >= SPIN);
    }

    #[test]
    fn never_watches_past_the_deadline() {
        // A deadline already passed: one round of polls and a last look, then it gives up
        // (counted, not timed, so a preempted test cannot fail it).
        let mut looks = 0;
        assert!(!watch(Some(Instant::now()), || {
            looks += 1;
            false
        }));
        assert_eq!(looks, POLLS_PER_LOOK + 1);
    }

    /// Waits of `spinner` that park after one look, up to the first that watches.
    fn parked_waits(spinner: &Spinner) -> u32 {
        let mut parked = 0;
        loop {
            let mut looks = 0;
            spinner.until(Some(Instant::now()), || {
                looks += 1;
                false
            });
            if looks > 1 {
                return parked;
            }
            parked += 1;
        }
    }

    #[test]
    fn misses_in_a_row_make_more_waits_park_at_once() {
        let spinner = Spinner::new();
        assert!(!spinner.until(None, || false));
        // The first miss was the watch above; each `parked_waits` ends with a missed watch.
        assert_eq!(parked_waits(&spinner), 1);
        assert_eq!(parked_waits(&spinner), 2);
        assert_eq!(parked_waits(&spinner), 4);
        for _ in 0..6 {
            parked_waits(&spinner);
        }
        assert_eq!(parked_waits(&spinner), SKIP_AFTER_MISS, "capped");
    }

    #[test]
    fn a_watch_that_sees_its_event_starts_the_back_off_over() {
        let spinner = Spinner::new();
        for _ in 0..4 {
            assert!(!spinner.until(Some(Instant::now()), || false));
        }
        // Skipping now: parks until a watch is due, which sees its event.
        while spinner.skip.load(Ordering::Relaxed) > 0 {
            assert!(!spinner.until(None, || false));
        }
        let mut looks = 0;
        assert!(spinner.until(None, || {
            looks += 1;
            looks > 2
        }));
        assert!(!spinner.until(Some(Instant::now()), || false));
        assert_eq!(parked_waits(&spinner), 1, "one miss since the hit");
    }

    #[test]
    fn a_ready_wait_returns_at_once_even_while_skipping() {
        let spinner = Spinner::new();
        assert!(!spinner.until(Some(Instant::now()), || false));
        assert!(spinner.until(None, || true));
    }
}
