//! The clock of the message path. Executors check the node's lease before every message
//! and time every handler (see `python::executor`), so a reading per message: on the
//! 2-vCPU hosts `clock_gettime` costs about 19 ns, about 7 % of a cast. The processor's
//! time-stamp counter costs about 9 ns and says whether enough time has passed to need a
//! real reading at all: within `SLACK` of the thread's last one, that reading plus `SLACK`
//! is a bound the lease check and the handler timing can use.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How late a reading may be: `now` is never earlier than the true time and never later
/// than it by more than this.
pub const SLACK: Duration = Duration::from_micros(200);

/// Counter ticks short of which less than `SLACK` has surely passed; 0 while the counter
/// is not calibrated yet or not to be trusted (then every reading is a real one).
static TICKS_WITHIN_SLACK: AtomicU64 = AtomicU64::new(0);

/// The counter's value at a real reading early in the process's life, from which its rate
/// is measured; `None` when the counter cannot stand in for the clock here.
static ORIGIN: OnceLock<Option<(Instant, u64)>> = OnceLock::new();

/// What `Moment`s count from: the first use of the clock in the process.
static START: OnceLock<Instant> = OnceLock::new();

/// Time the calibration spans: long enough that the gap between the two reads of a pair
/// (a preemption at worst) is small beside it.
const CALIBRATION: Duration = Duration::from_millis(50);

/// A time on the message path's clock: nanoseconds since the process's first reading, so
/// that comparing two is an integer comparison.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Moment(u64);

impl Moment {
    /// The moment of `instant` (the start of the clock if it is earlier).
    pub fn of(instant: Instant) -> Moment {
        let start = *START.get_or_init(Instant::now);
        Moment(instant.saturating_duration_since(start).as_nanos() as u64)
    }

    /// Time from `earlier` to this moment (zero if `earlier` is later).
    pub fn since(self, earlier: Moment) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Nanoseconds since the start of the clock, for keeping a moment in an atomic.
    pub fn as_nanos(self) -> u64 {
        self.0
    }
}

thread_local! {
    /// The thread's last real reading.
    static LAST: Cell<Option<Reading>> = const { Cell::new(None) };
}

/// Starts the clock: its moments count from here, and the counter's rate is measured from
/// here (readings are real ones until `CALIBRATION` has passed). Called when a runtime
/// starts, so the counter is in use before the first app runs.
pub fn start() {
    START.get_or_init(Instant::now);
    ORIGIN.get_or_init(origin);
}

/// The time now, late by at most `SLACK` (a real reading when the counter cannot tell):
/// never earlier than the true time, so a lease that this says holds does hold.
#[inline]
pub fn now() -> Moment {
    LAST.with(|last| {
        let within = TICKS_WITHIN_SLACK.load(Ordering::Relaxed);
        if let Some(r) = last.get() {
            if within != 0 && ticks().wrapping_sub(r.ticks) < within {
                return r.late;
            }
        }
        // The counter first: were the thread held up between the two reads, the counter
        // would count that time too, never less than the clock (and a rate measured from
        // this pair comes out low, never high: see `origin`).
        let ticks = ticks();
        let real = Instant::now();
        let at = Moment::of(real);
        last.set(Some(Reading {
            ticks,
            late: Moment(at.0 + SLACK.as_nanos() as u64),
        }));
        if within == 0 {
            calibrate(real, ticks);
        }
        at
    })
}

/// A real reading of the clock: the counter then, and the latest time it stands for until
/// `SLACK` has passed.
#[derive(Clone, Copy, Debug)]
struct Reading {
    ticks: u64,
    late: Moment,
}

/// Learns the counter's rate from a real reading and the origin once `CALIBRATION` has
/// passed.
fn calibrate(real: Instant, ticks: u64) {
    let Some((at, origin)) = *ORIGIN.get_or_init(origin) else {
        return;
    };
    let elapsed = real.saturating_duration_since(at);
    if elapsed < CALIBRATION {
        return;
    }
    let per_second = ticks.wrapping_sub(origin) as f64 / elapsed.as_secs_f64();
    // Half of SLACK's worth: a rate measured up to twice too high still keeps the bound.
    let within = (per_second * SLACK.as_secs_f64() / 2.0) as u64;
    TICKS_WITHIN_SLACK.store(within, Ordering::Relaxed);
}

/// The first reading, if the counter runs at a constant rate through sleep states and the
/// kernel itself keeps time by it (so it is in step across processors).
fn origin() -> Option<(Instant, u64)> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = flags.lines().find(|l| l.starts_with("flags"))?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let source =
        std::fs::read_to_string("/sys/devices/system/clocksource/clocksource0/current_clocksource")
            .ok()?;
    // The clock first, then the counter: the opposite of a later reading's order, so a
    // hold-up between either pair's reads lowers the measured rate, which keeps the bound.
    (has("constant_tsc") && has("nonstop_tsc") && source.trim() == "tsc").then(|| {
        let at = Instant::now();
        (at, ticks())
    })
}

/// The processor's time-stamp counter (0 where there is none: never used then).
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` has no preconditions; it reads a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_never_early_and_never_late_by_more_than_the_slack() {
        let until = Instant::now() + CALIBRATION * 3;
        let mut readings = 0u64;
        while Instant::now() < until {
            let before = Moment::of(Instant::now());
            let read = now();
            let after = Moment::of(Instant::now());
            assert!(read >= before, "early by {:?}", before.since(read));
            assert!(
                read.since(after) <= SLACK,
                "late by {:?}",
                read.since(after)
            );
            readings += 1;
        }
        assert!(readings > 1000);
    }

    #[test]
    fn past_the_slack_a_reading_is_a_real_one() {
        now();
        std::thread::sleep(SLACK * 2);
        let before = Moment::of(Instant::now());
        let read = now();
        assert!(read >= before && read <= Moment::of(Instant::now()));
    }
}
