//! A one-shot reply slot for `call`: the caller waits on it, the callee (or its death) fills it.

use super::pid::Pid;
use super::reason::Reason;
use super::spin::Spinner;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What callers learnt of watching for replies (see `Spinner`): one for the process.
static REPLY_SPINNER: Spinner = Spinner::new();

/// The outcome of a call.
#[derive(Debug)]
pub enum CallResult<M> {
    /// The callee replied.
    Reply(M),
    /// The callee exited before replying (or did not exist).
    Exit(Reason),
    /// The caller itself was killed while waiting.
    CallerKilled,
}

/// Sends a completion elsewhere (to the caller's node, for a call that came over the wire).
pub type Forward<M> = Box<dyn FnOnce(CallResult<M>) + Send>;

/// Where exactly one reply to one call goes; the first completion wins.
pub struct CallSlot<M> {
    /// The caller, when it is a process (kept here rather than in the mailbox entry).
    from: Option<Pid>,
    result: Mutex<Option<CallResult<M>>>,
    done: Condvar,
    /// Set when the waiter may take the result: it watches this before it parks.
    woken: AtomicBool,
    forward: Mutex<Option<Forward<M>>>,
}

impl<M> std::fmt::Debug for CallSlot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallSlot")
    }
}

impl<M> CallSlot<M> {
    /// The slot of a call made by `from` (`None`: from outside any process).
    pub fn new(from: Option<Pid>) -> Self {
        CallSlot {
            from,
            result: Mutex::new(None),
            done: Condvar::new(),
            woken: AtomicBool::new(false),
            forward: Mutex::new(None),
        }
    }

    /// The caller, when it is a process.
    pub fn from(&self) -> Option<Pid> {
        self.from
    }

    /// Completes the call; gives the result back if the slot was already completed.
    pub fn complete(&self, result: CallResult<M>) -> Result<(), CallResult<M>> {
        self.complete_unwoken(result)?;
        self.wake();
        Ok(())
    }

    /// Completes the call without waking its waiter yet (`wake` does): an executor that
    /// answered a call keeps the interpreter until it has nothing more to run, and wakes
    /// the caller only once it has let go of it, so the caller does not wake up only to
    /// wait for the interpreter. A waiter that looks (parked and woken for another reason,
    /// or at its deadline) takes the result all the same.
    pub fn complete_unwoken(&self, result: CallResult<M>) -> Result<(), CallResult<M>> {
        let mut slot = self.result.lock();
        if slot.is_some() {
            return Err(result);
        }
        if let Some(forward) = self.forward.lock().take() {
            *slot = Some(CallResult::CallerKilled);
            drop(slot);
            forward(result);
            return Ok(());
        }
        *slot = Some(result);
        Ok(())
    }

    /// Wakes the waiter of a completed slot.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.done.notify_all();
    }

    /// A slot of a call by `from` whose completion is handed to `forward` instead of a
    /// waiting thread.
    pub fn forwarding(from: Option<Pid>, forward: Forward<M>) -> Self {
        let slot = CallSlot::new(from);
        *slot.forward.lock() = Some(forward);
        slot
    }

    /// True once a result is in.
    pub fn is_complete(&self) -> bool {
        self.result.lock().is_some()
    }

    /// Waits for the result until `deadline`; `None` on timeout. Watches for it a moment
    /// before parking (see `spin`): most replies come within microseconds.
    pub fn wait(&self, deadline: Option<Instant>) -> Option<CallResult<M>> {
        REPLY_SPINNER.until(deadline, || self.woken.load(Ordering::Acquire));
        let mut slot = self.result.lock();
        loop {
            if let Some(result) = slot.take() {
                // Leave a marker so late replies are refused rather than stored forever.
                *slot = Some(CallResult::CallerKilled);
                return Some(result);
            }
            match deadline {
                Some(deadline) => {
                    if self.done.wait_until(&mut slot, deadline).timed_out() && slot.is_none() {
                        *slot = Some(CallResult::CallerKilled);
                        return None;
                    }
                }
                None => self.done.wait(&mut slot),
            }
        }
    }
}
