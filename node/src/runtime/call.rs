//! A one-shot reply slot for `call`: the caller waits on it, the callee (or its death) fills it.

use super::reason::Reason;
use parking_lot::{Condvar, Mutex};
use std::time::Instant;

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
    result: Mutex<Option<CallResult<M>>>,
    done: Condvar,
    forward: Mutex<Option<Forward<M>>>,
}

impl<M> std::fmt::Debug for CallSlot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallSlot")
    }
}

impl<M> Default for CallSlot<M> {
    fn default() -> Self {
        CallSlot {
            result: Mutex::new(None),
            done: Condvar::new(),
            forward: Mutex::new(None),
        }
    }
}

impl<M> CallSlot<M> {
    /// Completes the call; gives the result back if the slot was already completed.
    pub fn complete(&self, result: CallResult<M>) -> Result<(), CallResult<M>> {
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
        self.done.notify_all();
        Ok(())
    }

    /// A slot whose completion is handed to `forward` instead of a waiting thread.
    pub fn forwarding(forward: Forward<M>) -> Self {
        let slot = CallSlot::default();
        *slot.forward.lock() = Some(forward);
        slot
    }

    /// True once a result is in.
    pub fn is_complete(&self) -> bool {
        self.result.lock().is_some()
    }

    /// Waits for the result until `deadline`; `None` on timeout.
    pub fn wait(&self, deadline: Option<Instant>) -> Option<CallResult<M>> {
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
