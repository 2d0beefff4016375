//! A process: its mailbox, links, monitors and lifecycle status, behind one lock.

use super::call::CallSlot;
use super::hand_off;
use super::host::Host;
use super::pid::{Pid, Ref};
use super::reason::Reason;
use super::spin::Spinner;
use parking_lot::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// What the core knows of a message payload: its size, which mailbox limits count.
pub trait Payload {
    /// Bytes the payload holds (an estimate where exact sizes would cost a measurement).
    fn bytes(&self) -> usize;
}

/// Bounds on one process's queued messages, as OTP's `max_heap_size` bounds a process's
/// heap: a delivery that would pass either bound kills the receiver with `mailbox_limit`.
/// Zero means unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MailboxLimit {
    /// Most messages queued at once.
    pub messages: usize,
    /// Most bytes queued at once (payloads as `Payload::bytes` counts them, plus a fixed
    /// overhead per envelope).
    pub bytes: usize,
}

impl MailboxLimit {
    /// No bound at all.
    pub const UNBOUNDED: MailboxLimit = MailboxLimit {
        messages: 0,
        bytes: 0,
    };

    /// True when `messages` messages holding `bytes` bytes pass a bound.
    pub fn exceeded(&self, messages: usize, bytes: usize) -> bool {
        (self.messages != 0 && messages > self.messages) || (self.bytes != 0 && bytes > self.bytes)
    }
}

/// Where waits for mail watch before they park, and what they learnt (see `spin`).
static MAIL_SPINNER: Spinner = Spinner::new();

/// Envelopes of room an empty mailbox keeps (about 300 KiB): a server going idle with more
/// gives it back, as OTP's collector shrinks a process's heap after a burst, and a steady
/// stream of mail does not pay for the room again on every burst.
pub const MAILBOX_KEEP: usize = 4096;

/// One entry of a mailbox.
#[derive(Debug)]
pub enum Envelope<M> {
    /// A raw message (`send`); for a GenServer, `handle_info`.
    Info(M),
    /// A `cast`.
    Cast(M),
    /// A `call`, with the slot the reply goes to (which also names the caller, so that an
    /// entry stays five words: see `python::term`).
    Call {
        /// The request.
        request: M,
        /// Where the reply goes.
        slot: Arc<CallSlot<M>>,
    },
    /// A trapped exit signal (boxed: signals are rare, and every entry is as large as the
    /// largest kind).
    Exit(Box<ExitSignal>),
    /// A monitor fired (boxed, as `Exit` is).
    Down(Box<DownSignal>),
    /// A GenServer idle timeout of the given generation.
    Timeout(u64),
}

/// An exit signal from a linked process, as a trapping process receives it.
#[derive(Debug)]
pub struct ExitSignal {
    /// The process the signal comes from.
    pub from: Pid,
    /// Its reason.
    pub reason: Reason,
}

/// A fired monitor, as its watcher receives it.
#[derive(Debug)]
pub struct DownSignal {
    /// The monitor's reference.
    pub mref: Ref,
    /// The monitored process.
    pub pid: Pid,
    /// Why it is gone.
    pub reason: Reason,
}

impl<M> Envelope<M> {
    /// A trapped exit signal from `from`.
    pub fn exit(from: Pid, reason: Reason) -> Self {
        Envelope::Exit(Box::new(ExitSignal { from, reason }))
    }

    /// Monitor `mref` of `pid` fired with `reason`.
    pub fn down(mref: Ref, pid: Pid, reason: Reason) -> Self {
        Envelope::Down(Box::new(DownSignal { mref, pid, reason }))
    }
}

impl<M: Payload> Envelope<M> {
    /// The bytes this envelope counts against its receiver's mailbox limit.
    pub fn bytes(&self) -> usize {
        let payload = match self {
            Envelope::Info(m) | Envelope::Cast(m) => m.bytes(),
            Envelope::Call { request, .. } => request.bytes(),
            Envelope::Exit(signal) => std::mem::size_of::<ExitSignal>() + signal.reason.bytes(),
            Envelope::Down(signal) => std::mem::size_of::<DownSignal>() + signal.reason.bytes(),
            Envelope::Timeout(_) => 0,
        };
        std::mem::size_of::<Self>() + payload
    }
}

/// The mutable part of a process.
pub struct State<M> {
    /// Messages not yet taken. Add with `push` and take with `pop` or `settle`, so the
    /// counts below stay true.
    pub mailbox: VecDeque<Envelope<M>>,
    /// Messages queued for the process: in `mailbox`, or held by a selective receive.
    pub queued: usize,
    /// Bytes of the messages counted in `queued`.
    pub queued_bytes: usize,
    /// Bounds on `queued` and `queued_bytes`.
    pub limit: MailboxLimit,
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

impl<M: Payload> State<M> {
    /// Queues a message at the back of the mailbox and counts it.
    pub fn push(&mut self, envelope: Envelope<M>) {
        self.queued += 1;
        self.queued_bytes += envelope.bytes();
        self.mailbox.push_back(envelope);
    }

    /// Takes the oldest message and stops counting it.
    pub fn pop(&mut self) -> Option<Envelope<M>> {
        let envelope = self.mailbox.pop_front()?;
        self.settle(&envelope);
        Some(envelope)
    }

    /// Makes a server with an empty mailbox idle; gives back the mailbox's spare room (see
    /// `spare_room`) for the caller to free once the lock is let go.
    pub fn go_idle(&mut self) -> Option<VecDeque<Envelope<M>>> {
        self.status = Status::Idle;
        self.spare_room()
    }

    /// The room of an empty mailbox past `MAILBOX_KEEP` envelopes, taken out for the caller
    /// to free: a burst of mail would otherwise hold its memory for the process's life.
    fn spare_room(&mut self) -> Option<VecDeque<Envelope<M>>> {
        (self.mailbox.is_empty() && self.mailbox.capacity() > MAILBOX_KEEP)
            .then(|| std::mem::take(&mut self.mailbox))
    }

    /// Stops counting a message that left the queue by another way (a selective receive
    /// matched it, a flush dropped it). Messages a receive merely holds stay counted.
    pub fn settle(&mut self, envelope: &Envelope<M>) {
        self.queued = self.queued.saturating_sub(1);
        self.queued_bytes = self.queued_bytes.saturating_sub(envelope.bytes());
    }
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
    /// Set (under the state lock) when `status` becomes `Exited`: `is_exited`, asked on
    /// every message's path, reads it without taking the lock.
    pub(crate) exited: AtomicBool,
    /// Set by a delivery to a process waiting for mail: what `wait_for_mail` watches for
    /// before it parks, without the lock.
    arrived: AtomicBool,
    /// The `hand_off::mark` of the last wake of a waiter.
    woken_at: AtomicU64,
}

impl<H: Host> Process<H> {
    pub(crate) fn new(
        pid: Pid,
        kind: Kind,
        parent: Option<Pid>,
        data: H::Data,
        limit: MailboxLimit,
    ) -> Self {
        Process {
            pid,
            kind,
            parent,
            data,
            state: Mutex::new(State {
                mailbox: VecDeque::new(),
                queued: 0,
                queued_bytes: 0,
                limit,
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
            exited: AtomicBool::new(false),
            arrived: AtomicBool::new(false),
            woken_at: AtomicU64::new(hand_off::UNANNOUNCED),
        }
    }

    /// Locks the process state. Never call into the host (e.g. Python) while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State<H::Msg>> {
        self.state.lock()
    }

    /// True once the process has exited.
    pub fn is_exited(&self) -> bool {
        self.exited.load(Ordering::Acquire)
    }

    /// The exit reason, once exited.
    pub fn exit_reason(&self) -> Option<Reason> {
        self.state.lock().reason.clone()
    }

    /// Number of messages waiting.
    pub fn mailbox_len(&self) -> usize {
        self.state.lock().mailbox.len()
    }

    /// Waits (lock held by `guard`) until mail arrives, the process exits or `deadline` passes;
    /// false if the deadline passed. Watches a moment before it parks (see `spin`): the mail
    /// a process waits for is often the answer to what it just sent, microseconds away, and
    /// waking a parked thread costs tens of them on a virtual machine. Mail from a thread
    /// that announces its hand-offs is taken once that thread hands off (or the watch
    /// ends), so the waiter does not ask for the interpreter while the sender still holds it.
    pub fn wait_for_mail(
        &self,
        guard: &mut MutexGuard<'_, State<H::Msg>>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        guard.waiting = true;
        self.arrived.store(false, Ordering::Relaxed);
        let seen = MutexGuard::unlocked(guard, || {
            let seen = MAIL_SPINNER.until(deadline, || {
                self.arrived.load(Ordering::Acquire) || self.exited.load(Ordering::Acquire)
            });
            if seen {
                hand_off::wait_after(self.woken_at.load(Ordering::Acquire), deadline);
            }
            seen
        });
        // Mail that came while the lock was let go found `waiting` set and was announced in
        // `arrived`; it is in the mailbox now either way.
        if seen || !guard.mailbox.is_empty() || guard.status == Status::Exited {
            guard.waiting = false;
            return true;
        }
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
            self.woken_at.store(hand_off::mark(), Ordering::Relaxed);
            self.arrived.store(true, Ordering::Release);
            self.mail.notify_one();
        }
    }
}
