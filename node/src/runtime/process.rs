//! A process: its mailbox, links, monitors and lifecycle status, behind one lock.

use super::call::CallSlot;
use super::host::Host;
use super::pid::{Pid, Ref};
use super::reason::Reason;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;

/// How a process's code runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Message handlers (GenServer, Supervisor) run by the executor pool when mail arrives;
    /// an idle server holds no thread.
    Server,
    /// A function running on a thread of its own, taking messages with `receive`.
    Thread,
}

/// Where a process is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// A server with an empty mailbox, holding no thread.
    Idle,
    /// A server waiting in the run queue.
    Queued,
    /// Code of this process is on a thread (a server's batch, a function, or an `init`).
    Running,
    /// Dead; kept only by stale references.
    Exited,
}

/// One entry of a mailbox.
#[derive(Debug)]
pub enum Envelope<M> {
    /// A raw message (`send`); for a GenServer, `handle_info`.
    Info(M),
    /// A `cast`.
    Cast(M),
    /// A `call`, with the slot the reply goes to.
    Call {
        /// The request.
        request: M,
        /// The caller, when it is a process.
        from: Option<Pid>,
        /// Where the reply goes.
        slot: Arc<CallSlot<M>>,
    },
    /// A trapped exit signal.
    Exit {
        /// The process the signal comes from.
        from: Pid,
        /// Its reason.
        reason: Reason,
    },
    /// A monitor fired.
    Down {
        /// The monitor's reference.
        mref: Ref,
        /// The monitored process.
        pid: Pid,
        /// Why it is gone.
        reason: Reason,
    },
    /// A GenServer idle timeout of the given generation.
    Timeout(u64),
}

/// The mutable part of a process.
pub struct State<M> {
    /// Messages not yet taken.
    pub mailbox: VecDeque<Envelope<M>>,
    /// Lifecycle status.
    pub status: Status,
    /// Linked processes.
    pub links: Vec<Pid>,
    /// Monitors held by others on this process.
    pub watchers: Vec<(Ref, Pid)>,
    /// Monitors this process holds on others, to clean up when it exits.
    pub watching: Vec<(Ref, Pid)>,
    /// Whether exit signals arrive as `Exit` messages.
    pub trap_exit: bool,
    /// The local name, if registered.
    pub name: Option<Arc<str>>,
    /// The exit reason once exited.
    pub reason: Option<Reason>,
    /// A thread is blocked waiting for mail (selective receive).
    pub waiting: bool,
    /// The call the process is blocked in, so killing it can wake it.
    pub blocked_call: Option<Arc<CallSlot<M>>>,
    /// Calls taken from the mailbox and not yet answered (deferred replies).
    pub pending_calls: Vec<Arc<CallSlot<M>>>,
    /// Generation of the GenServer idle timeout; any message invalidates older ones.
    pub timeout_gen: u64,
}

/// A process as the runtime holds it.
pub struct Process<H: Host> {
    /// Its identifier.
    pub pid: Pid,
    /// How its code runs.
    pub kind: Kind,
    /// The process that spawned and linked it (the one whose exit signal means shutdown).
    pub parent: Option<Pid>,
    /// The host's per-process data.
    pub data: H::Data,
    pub(crate) state: Mutex<State<H::Msg>>,
    pub(crate) mail: Condvar,
}

impl<H: Host> Process<H> {
    pub(crate) fn new(pid: Pid, kind: Kind, parent: Option<Pid>, data: H::Data) -> Self {
        Process {
            pid,
            kind,
            parent,
            data,
            state: Mutex::new(State {
                mailbox: VecDeque::new(),
                status: Status::Running,
                links: Vec::new(),
                watchers: Vec::new(),
                watching: Vec::new(),
                trap_exit: false,
                name: None,
                reason: None,
                waiting: false,
                blocked_call: None,
                pending_calls: Vec::new(),
                timeout_gen: 0,
            }),
            mail: Condvar::new(),
        }
    }

    /// Locks the process state. Never call into the host (e.g. Python) while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State<H::Msg>> {
        self.state.lock()
    }

    /// True once the process has exited.
    pub fn is_exited(&self) -> bool {
        self.state.lock().status == Status::Exited
    }

    /// The exit reason, once exited.
    pub fn exit_reason(&self) -> Option<Reason> {
        self.state.lock().reason.clone()
    }

    /// Number of messages waiting.
    pub fn mailbox_len(&self) -> usize {
        self.state.lock().mailbox.len()
    }

    /// Waits (lock held by `guard`) until mail arrives, the process exits or `deadline` passes.
    pub fn wait_for_mail(
        &self,
        guard: &mut MutexGuard<'_, State<H::Msg>>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        guard.waiting = true;
        let timed_out = match deadline {
            Some(deadline) => self.mail.wait_until(guard, deadline).timed_out(),
            None => {
                self.mail.wait(guard);
                false
            }
        };
        guard.waiting = false;
        !timed_out
    }

    pub(crate) fn wake(&self, state: &State<H::Msg>) {
        if state.waiting {
            self.mail.notify_one();
        }
    }
}
