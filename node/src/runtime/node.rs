//! The node's actor runtime: spawning, message delivery, links, monitors, exit signals
//! and local names. Plain Rust; the host runs the code.

use super::call::{CallResult, CallSlot};
use super::clock;
use super::host::{Host, Outbound};
use super::pid::{NodeId, Pid, Ref};
use super::process::{Envelope, Kind, MailboxLimit, Process, Status};
use super::reason::Reason;
use super::registry::{Registry, RegistryError};
use super::runqueue::RunQueue;
use super::stats::STATS;
use super::table::ProcessTable;
use std::any::Any;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    /// The process this thread last sent to: a sender usually sends to the same process
    /// again, and finding it in the table costs a shard lock and a reference count (four
    /// locked instructions; 4 % of the casts' rate). Held only while it lives: a send finds
    /// it exited and lets it go, and executors let it go before they park. Kept with the id
    /// of the runtime it belongs to (tests run several in one OS process, of different
    /// hosts), which also tells its type.
    static LAST_TARGET: Cell<Option<(u64, Box<dyn Any>)>> = const { Cell::new(None) };
}

/// What `LAST_TARGET` holds.
struct Target<H: Host> {
    pid: Pid,
    process: Arc<Process<H>>,
}

/// A message that was not delivered: its target is not alive (or not reachable). The
/// envelope is dropped, outside any lock (a payload's last reference may run Python code).
#[derive(Debug, PartialEq, Eq)]
pub struct Undelivered;

/// Lets go of the process this thread last sent to (see `LAST_TARGET`): called before a
/// thread parks, so that a dead process's memory is not held by an idle thread.
pub fn forget_last_target() {
    // (Not from a thread whose locals are already torn down.)
    let _ = LAST_TARGET.try_with(|t| t.set(None));
}

/// One node's processes and the operations on them.
pub struct Runtime<H: Host> {
    /// Tells this runtime from others in the OS process (see `LAST_TARGET`).
    id: u64,
    node: NodeId,
    incarnation: AtomicU64,
    serials: AtomicU64,
    refs: AtomicU64,
    /// While the node holds a cluster lease: until when (a `clock::Moment`); 0 means no lease
    /// is needed (a node outside any cluster).
    lease_until: AtomicU64,
    /// The mailbox limit of processes spawned without one of their own.
    default_limit: parking_lot::RwLock<MailboxLimit>,
    table: ProcessTable<H>,
    names: Registry,
    /// Servers with mail, for the executor threads.
    pub runq: RunQueue<H>,
    /// The layer that runs process code.
    pub host: H,
}

impl<H: Host> Runtime<H> {
    /// Creates a runtime for node `node` in incarnation `incarnation`.
    pub fn new(node: &str, incarnation: u64, host: H) -> Self {
        clock::start();
        static RUNTIMES: AtomicU64 = AtomicU64::new(0);
        Runtime {
            id: RUNTIMES.fetch_add(1, Ordering::Relaxed),
            node: NodeId::intern(node),
            incarnation: AtomicU64::new(incarnation),
            serials: AtomicU64::new(1),
            refs: AtomicU64::new(1),
            lease_until: AtomicU64::new(0),
            default_limit: parking_lot::RwLock::new(MailboxLimit::default()),
            table: ProcessTable::default(),
            names: Registry::default(),
            runq: RunQueue::default(),
            host,
        }
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Records that the node's lease holds until `until`: past it, no process code may run
    /// (the controller may already have restarted this node's children elsewhere).
    pub fn hold_lease_until(&self, until: Instant) {
        let until = clock::Moment::of(until).as_nanos();
        self.lease_until.store(until.max(1), Ordering::Release);
    }

    /// True while process code may run: no lease is needed, or it has not lapsed. Asked
    /// before every message a server handles, so it reads the message path's clock (late by
    /// at most `clock::SLACK`: a lease about to lapse counts as lapsed that much sooner).
    pub fn lease_ok(&self) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until == 0 || clock::now().as_nanos() < until
    }

    /// `lease_ok` at `now`, a reading of `clock::now` the caller already has (the executors
    /// read it once per message and use it for this and for timing the handler).
    pub fn lease_ok_at(&self, now: clock::Moment) -> bool {
        let until = self.lease_until.load(Ordering::Acquire);
        until == 0 || now.as_nanos() < until
    }

    /// Starts a new life of this node (after a rejoin): pids of the old incarnation no
    /// longer resolve here. Callers kill the old processes first.
    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Release);
    }

    /// A fresh unique reference.
    pub fn make_ref(&self) -> Ref {
        Ref(self.refs.fetch_add(1, Ordering::Relaxed))
    }

    /// Number of live processes.
    pub fn process_count(&self) -> usize {
        self.table.len()
    }

    /// Every live process.
    pub fn processes(&self) -> Vec<Arc<Process<H>>> {
        self.table.all()
    }

    /// True when `pid` belongs to this node incarnation.
    pub fn is_local(&self, pid: Pid) -> bool {
        pid.node == self.node && pid.incarnation == self.incarnation()
    }

    /// Finds a live local process.
    pub fn lookup(&self, pid: Pid) -> Option<Arc<Process<H>>> {
        if !self.is_local(pid) {
            return None;
        }
        self.table.get(pid.serial)
    }

    /// Finds the local process a call goes to, counting the call as sent (as `send` counts
    /// what it is given): a call to a local server is delivered or run in place by its
    /// caller, not through `send`.
    pub fn lookup_callee(&self, pid: Pid) -> Option<Arc<Process<H>>> {
        STATS.sent.inc();
        self.lookup(pid)
    }

    /// Sets the mailbox limit of processes spawned from now on without one of their own.
    pub fn set_default_mailbox_limit(&self, limit: MailboxLimit) {
        *self.default_limit.write() = limit;
    }

    /// The mailbox limit processes get unless their spawner gives one.
    pub fn default_mailbox_limit(&self) -> MailboxLimit {
        *self.default_limit.read()
    }

    /// Creates a process in status `Running` (the spawner runs its start-up code) and,
    /// when `link` is given, links it to that process atomically with its birth.
    pub fn spawn(
        &self,
        kind: Kind,
        link: Option<&Arc<Process<H>>>,
        data: H::Data,
    ) -> Arc<Process<H>> {
        self.spawn_with(kind, link, data, self.default_mailbox_limit())
    }

    /// `spawn` with the new process's own mailbox limit.
    pub fn spawn_with(
        &self,
        kind: Kind,
        link: Option<&Arc<Process<H>>>,
        data: H::Data,
        limit: MailboxLimit,
    ) -> Arc<Process<H>> {
        let pid = Pid {
            node: self.node,
            incarnation: self.incarnation(),
            serial: self.serials.fetch_add(1, Ordering::Relaxed),
        };
        let parent = link.map(|p| p.pid);
        let process = Arc::new(Process::new(pid, kind, parent, data, limit));
        self.table.insert(process.clone());
        STATS.spawned.inc();
        if let Some(parent) = link {
            let parent_alive = {
                let mut st = parent.lock();
                if st.status != Status::Exited {
                    st.links.push(pid);
                    true
                } else {
                    false
                }
            };
            if parent_alive {
                process.lock().links.push(parent.pid);
            } else {
                self.deliver_exit(&process, parent.pid, Reason::Noproc);
            }
        }
        process
    }

    /// Ends the start-up of a server: it becomes idle, or queued if mail already arrived.
    pub fn release(&self, process: &Arc<Process<H>>) {
        self.finish_batch(process);
    }

    /// Delivers an envelope (a message not delivered is dropped: see `Undelivered`).
    pub fn send(&self, pid: Pid, envelope: Envelope<H::Msg>) -> Result<(), Undelivered> {
        STATS.sent.inc();
        if self.is_remote(pid) {
            return match self.host.route(Outbound::Message { to: pid, envelope }) {
                Ok(()) => {
                    STATS.routed.inc();
                    Ok(())
                }
                Err(_) => {
                    STATS.dropped.inc();
                    Err(Undelivered)
                }
            };
        }
        if !self.is_local(pid) {
            STATS.dropped.inc();
            return Err(Undelivered);
        }
        let Some(target) = self.last_target(pid) else {
            STATS.dropped.inc();
            return Err(Undelivered);
        };
        let delivered = self.deliver(&target.process, envelope);
        // (A send made meanwhile by code this delivery ran has put its own target there.)
        let _ = LAST_TARGET.try_with(|t| t.set(Some((self.id, target as Box<dyn Any>))));
        delivered
    }

    /// The local process `pid` names, from this thread's last send if it went there (no
    /// process-table lock, no reference-count updates), else from the table.
    fn last_target(&self, pid: Pid) -> Option<Box<Target<H>>> {
        let cached = match LAST_TARGET.try_with(Cell::take).ok().flatten() {
            // SAFETY: only this runtime keeps entries under its id (ids are never reused),
            // and those are `Target<H>`s of its own host type. (Not `downcast`: its type id
            // comes back through memory, a stalled load on every send.)
            Some((runtime, b)) if runtime == self.id => {
                Some(unsafe { Box::from_raw(Box::into_raw(b).cast::<Target<H>>()) })
            }
            // Another runtime's: let go here.
            _ => None,
        };
        match cached {
            Some(t) if t.pid == pid && !t.process.is_exited() => Some(t),
            // The box is reused; the process it held is let go.
            Some(mut t) => {
                t.process = self.table.get(pid.serial)?;
                t.pid = pid;
                Some(t)
            }
            None => Some(Box::new(Target {
                pid,
                process: self.table.get(pid.serial)?,
            })),
        }
    }

    /// True when `pid` lives on another node (not an old incarnation of this one).
    pub fn is_remote(&self, pid: Pid) -> bool {
        pid.node != self.node
    }

    /// Delivers an envelope to a known process. A delivery that would pass the receiver's
    /// mailbox limit kills the receiver with `mailbox_limit` instead (see `over_limit`).
    pub fn deliver(
        &self,
        process: &Arc<Process<H>>,
        envelope: Envelope<H::Msg>,
    ) -> Result<(), Undelivered> {
        let schedule = {
            let mut st = process.lock();
            if st.status == Status::Exited {
                drop(st);
                STATS.dropped.inc();
                drop(envelope);
                return Err(Undelivered);
            }
            let size = envelope.bytes();
            if st.limit.exceeded(st.queued + 1, st.queued_bytes + size) {
                let (queued, bytes, limit) = (st.queued, st.queued_bytes, st.limit);
                drop(st);
                self.over_limit(process, envelope, queued, bytes, limit);
                return Ok(());
            }
            st.push(envelope);
            if st.status == Status::Idle && process.kind == Kind::Server {
                st.status = Status::Queued;
                true
            } else {
                process.wake(&st);
                false
            }
        };
        STATS.delivered.inc();
        if schedule {
            self.runq.push(process.clone());
        } else {
            self.host.mail_arrived(process);
        }
        Ok(())
    }

    /// A delivery would pass `process`'s mailbox limit: the process is killed with
    /// `mailbox_limit` (untrappable, as OTP kills a process past its `max_heap_size`) and
    /// its links and supervisor decide what follows. A call in the envelope fails with that
    /// reason, as a call to a process that died does. Not backpressure: a sender must never
    /// wait on a slow receiver (a peer link or the gateway would stall every other process's
    /// traffic), and not a silent drop: the only gap a receiver's mail may have is its death,
    /// which links and monitors report.
    fn over_limit(
        &self,
        process: &Arc<Process<H>>,
        envelope: Envelope<H::Msg>,
        queued: usize,
        bytes: usize,
        limit: MailboxLimit,
    ) {
        STATS.mailbox_limit.inc();
        tracing::warn!(
            pid = %process.pid,
            queued,
            bytes,
            max_messages = limit.messages,
            max_bytes = limit.bytes,
            "process killed: its mailbox passed its limit (mailbox_limit)"
        );
        self.terminate(process, Reason::MailboxLimit);
        if let Envelope::Call { slot, .. } = envelope {
            let _ = slot.complete(CallResult::Exit(Reason::MailboxLimit));
        }
    }

    /// Sets the mailbox limit of a live process (deliveries from now on are checked).
    pub fn set_mailbox_limit(&self, process: &Arc<Process<H>>, limit: MailboxLimit) {
        process.lock().limit = limit;
    }

    /// Takes the next envelope of a server run on the calling thread, marking it running (a
    /// queued server starts its batch with this: one critical section, not two). `None`
    /// means the batch is over: the server exited, or its mailbox is empty and it was made
    /// idle in the same critical section (as `finish_batch` would, which must then not be
    /// called: mail that came meanwhile has queued it again).
    pub fn take_next(&self, process: &Arc<Process<H>>) -> Option<Envelope<H::Msg>> {
        let _spare = {
            let mut st = process.lock();
            if st.status == Status::Exited {
                return None;
            }
            if let Some(envelope) = st.pop() {
                st.status = Status::Running;
                st.timeout_gen += 1;
                return Some(envelope);
            }
            // Freed once the lock is let go.
            st.go_idle()
        };
        None
    }

    /// Ends a server's batch: idle if its mailbox is empty, else back in the run queue.
    pub fn finish_batch(&self, process: &Arc<Process<H>>) {
        let (requeue, _spare) = {
            let mut st = process.lock();
            match st.status {
                Status::Exited => (false, None),
                _ if process.kind == Kind::Thread => (false, None),
                // Freed once the lock is let go.
                _ if st.mailbox.is_empty() => (false, st.go_idle()),
                _ => {
                    st.status = Status::Queued;
                    (true, None)
                }
            }
        };
        if requeue {
            self.runq.push(process.clone());
        }
    }

    /// Puts a running server back in the run queue whatever its mailbox holds: its handler
    /// finished off the executors (an async one) and left work for one (a pending stop).
    pub fn reschedule(&self, process: &Arc<Process<H>>) {
        {
            let mut st = process.lock();
            if st.status == Status::Exited || process.kind != Kind::Server {
                return;
            }
            st.status = Status::Queued;
        }
        self.runq.push(process.clone());
    }

    /// Claims an idle server with an empty mailbox for the calling thread, so a caller can
    /// run the callee's handler itself instead of waking an executor; false if not idle.
    pub fn try_claim_idle(&self, process: &Arc<Process<H>>) -> bool {
        if process.kind != Kind::Server || !self.lease_ok() {
            return false;
        }
        let mut st = process.lock();
        if st.status != Status::Idle || !st.mailbox.is_empty() {
            return false;
        }
        st.status = Status::Running;
        st.timeout_gen += 1;
        // The caller hands its message straight to the handler: delivered all the same.
        STATS.delivered.inc();
        true
    }

    /// Marks a queued server as running on the calling thread without taking a message (a
    /// batch of messages starts with `take_next` instead); false if it exited meanwhile.
    pub fn begin_batch(&self, process: &Arc<Process<H>>) -> bool {
        let mut st = process.lock();
        if st.status == Status::Exited {
            return false;
        }
        st.status = Status::Running;
        true
    }

    /// Sets whether `process` traps exits; returns the previous value.
    pub fn set_trap_exit(&self, process: &Arc<Process<H>>, on: bool) -> bool {
        std::mem::replace(&mut process.lock().trap_exit, on)
    }

    /// Links two processes; linking to a dead one delivers `noproc` at once.
    pub fn link(&self, process: &Arc<Process<H>>, other: Pid) {
        if other == process.pid {
            return;
        }
        if self.is_remote(other) {
            // Our half is recorded before the request leaves: the peer's `noproc` answer
            // can arrive before `route` returns, and it only counts for a recorded link.
            let added = {
                let mut st = process.lock();
                let added = !st.links.contains(&other);
                if added {
                    st.links.push(other);
                }
                added
            };
            let routed = self
                .host
                .route(Outbound::Link {
                    from: process.pid,
                    to: other,
                })
                .is_ok();
            if !routed {
                if added {
                    process.lock().links.retain(|p| *p != other);
                }
                self.deliver_exit(process, other, Reason::Noconnection);
            }
            return;
        }
        let added = match self.lookup(other) {
            Some(target) => {
                let mut st = target.lock();
                if st.status == Status::Exited {
                    false
                } else {
                    if !st.links.contains(&process.pid) {
                        st.links.push(process.pid);
                    }
                    true
                }
            }
            None => false,
        };
        if added {
            let mut st = process.lock();
            if st.status == Status::Exited {
                // The caller was terminated after the target took the link and before this
                // half: its exit did not see the link, so it fires here (as in OTP, where
                // the link signal reaches the target before the caller's exit signal).
                let reason = st.reason.clone();
                drop(st);
                if let (Some(reason), Some(target)) = (reason, self.lookup(other)) {
                    target.lock().links.retain(|x| *x != process.pid);
                    self.deliver_exit(&target, process.pid, reason);
                }
            } else if !st.links.contains(&other) {
                st.links.push(other);
            }
        } else {
            self.deliver_exit(process, other, Reason::Noproc);
        }
    }

    /// Removes a link in both directions.
    pub fn unlink(&self, process: &Arc<Process<H>>, other: Pid) {
        process.lock().links.retain(|p| *p != other);
        if self.is_remote(other) {
            let _ = self.host.route(Outbound::Unlink {
                from: process.pid,
                to: other,
            });
            return;
        }
        if let Some(target) = self.lookup(other) {
            target.lock().links.retain(|p| *p != process.pid);
        }
    }

    /// Monitors `target` for `watcher`; a dead target yields `Down(noproc)` at once.
    pub fn monitor(&self, watcher: &Arc<Process<H>>, target: Pid) -> Ref {
        let mref = self.make_ref();
        if self.is_remote(target) {
            // Recorded before the request leaves: the peer's `Down(noproc)` for a dead
            // target can arrive before `route` returns, and only a recorded monitor fires.
            watcher.lock().watching.push((mref, target));
            let routed = self
                .host
                .route(Outbound::Monitor {
                    watcher: watcher.pid,
                    target,
                    mref,
                })
                .is_ok();
            if !routed {
                watcher
                    .lock()
                    .watching
                    .retain(|(r, t)| !(*r == mref && *t == target));
                let _ = self.deliver(watcher, Envelope::down(mref, target, Reason::Noconnection));
            }
            return mref;
        }
        let added = match self.lookup(target) {
            Some(t) => {
                let mut st = t.lock();
                if st.status == Status::Exited {
                    false
                } else {
                    st.watchers.push((mref, watcher.pid));
                    true
                }
            }
            None => false,
        };
        if added {
            watcher.lock().watching.push((mref, target));
        } else {
            let _ = self.deliver(watcher, Envelope::down(mref, target, Reason::Noproc));
        }
        mref
    }

    /// Removes a monitor; true if it was active.
    pub fn demonitor(&self, watcher: &Arc<Process<H>>, mref: Ref) -> bool {
        let target = {
            let mut st = watcher.lock();
            let found = st.watching.iter().position(|(r, _)| *r == mref);
            found.map(|i| st.watching.swap_remove(i).1)
        };
        let Some(target) = target else { return false };
        self.drop_watcher(target, mref, watcher.pid);
        true
    }

    /// `exit(pid, reason)`: sends an exit signal from `from` to `to`, as OTP does.
    pub fn exit_signal(&self, from: Pid, to: Pid, reason: Reason) {
        if self.is_remote(to) {
            let _ = self.host.route(Outbound::Exit {
                from,
                to,
                reason,
                link: false,
            });
            return;
        }
        if let Some(target) = self.lookup(to) {
            if reason == Reason::Kill {
                self.terminate(&target, Reason::Killed);
            } else if from == to && !target.lock().trap_exit {
                // A process signalling itself dies even with `normal`, as OTP's exit(self(), R).
                self.terminate(&target, reason);
            } else {
                self.deliver_exit(&target, from, reason);
            }
        }
    }

    /// An exit signal arriving at `target`: a message if it traps exits, else death unless normal.
    fn deliver_exit(&self, target: &Arc<Process<H>>, from: Pid, reason: Reason) {
        let trap = target.lock().trap_exit;
        if trap {
            let _ = self.deliver(target, Envelope::exit(from, reason));
        } else if !reason.is_normal() {
            self.terminate(target, reason);
        }
    }

    /// Ends a process: releases its name and tells the host, then fires links and monitors
    /// and fails calls waiting on it. Links that die too are handled here as well, iteratively.
    pub fn terminate(&self, process: &Arc<Process<H>>, reason: Reason) {
        let mut work = vec![(process.clone(), reason)];
        while let Some((p, reason)) = work.pop() {
            let Some(dead) = self.mark_exited(&p, &reason) else {
                continue;
            };
            STATS.exited.inc();
            if matches!(reason, Reason::Crash(_)) {
                STATS.crashed.inc();
            }
            if let Some(name) = &dead.name {
                self.names.release(name, p.pid);
            }
            // What the host keeps for the process (registry keys, groups, tables) goes with
            // its name: before links and monitors fire, so no one notified of the exit can
            // still find the dead process under a key.
            self.host.exited(&p, &reason);
            if dead.was_running {
                self.host.interrupt(&p);
            }
            for envelope in dead.mailbox {
                if let Envelope::Call { slot, .. } = envelope {
                    let _ = slot.complete(CallResult::Exit(reason.clone()));
                }
            }
            for slot in dead.pending_calls {
                let _ = slot.complete(CallResult::Exit(reason.clone()));
            }
            if let Some(slot) = dead.blocked_call {
                let _ = slot.complete(CallResult::CallerKilled);
            }
            for linked in dead.links {
                if self.is_remote(linked) {
                    let _ = self.host.route(Outbound::Exit {
                        from: p.pid,
                        to: linked,
                        reason: reason.clone(),
                        link: true,
                    });
                    continue;
                }
                if let Some(q) = self.lookup(linked) {
                    q.lock().links.retain(|x| *x != p.pid);
                    let trap = q.lock().trap_exit;
                    if trap {
                        let _ = self.deliver(&q, Envelope::exit(p.pid, reason.clone()));
                    } else if !reason.is_normal() {
                        work.push((q, reason.clone()));
                    }
                }
            }
            for (mref, watcher) in dead.watchers {
                if self.is_remote(watcher) {
                    let _ = self.host.route(Outbound::Down {
                        watcher,
                        target: p.pid,
                        mref,
                        reason: reason.clone(),
                    });
                    continue;
                }
                let _ = self.send(watcher, Envelope::down(mref, p.pid, reason.clone()));
            }
            for (mref, target) in dead.watching {
                self.drop_watcher(target, mref, p.pid);
            }
        }
    }

    /// Flips a process to `Exited` under its lock and takes what must be acted on.
    fn mark_exited(&self, p: &Arc<Process<H>>, reason: &Reason) -> Option<Dead<H::Msg>> {
        let dead = {
            let mut st = p.lock();
            if st.status == Status::Exited {
                return None;
            }
            let was_running = st.status == Status::Running;
            st.status = Status::Exited;
            p.exited.store(true, Ordering::Release);
            st.reason = Some(reason.clone());
            p.mail.notify_all();
            Dead {
                was_running,
                name: st.name.take(),
                mailbox: {
                    st.queued = 0;
                    st.queued_bytes = 0;
                    std::mem::take(&mut st.mailbox)
                },
                pending_calls: std::mem::take(&mut st.pending_calls),
                blocked_call: st.blocked_call.take(),
                links: std::mem::take(&mut st.links),
                watchers: std::mem::take(&mut st.watchers),
                watching: std::mem::take(&mut st.watching),
            }
        };
        self.table.remove(p.pid.serial);
        Some(dead)
    }

    /// Removes `watcher`'s monitor `mref` from `target`, wherever it lives.
    fn drop_watcher(&self, target: Pid, mref: Ref, watcher: Pid) {
        if self.is_remote(target) {
            let _ = self.host.route(Outbound::Demonitor {
                watcher,
                target,
                mref,
            });
        } else if let Some(t) = self.lookup(target) {
            t.lock()
                .watchers
                .retain(|(r, w)| !(*r == mref && *w == watcher));
        }
    }

    /// A peer node links its process `from` to our `to`; a dead `to` answers `noproc`.
    pub fn remote_link(&self, from: Pid, to: Pid) {
        let linked = match self.lookup(to) {
            Some(target) => {
                let mut st = target.lock();
                if st.status == Status::Exited {
                    false
                } else {
                    if !st.links.contains(&from) {
                        st.links.push(from);
                    }
                    true
                }
            }
            None => false,
        };
        if !linked {
            let _ = self.host.route(Outbound::Exit {
                from: to,
                to: from,
                reason: Reason::Noproc,
                link: true,
            });
        }
    }

    /// A peer node removes the link between its `from` and our `to`.
    pub fn remote_unlink(&self, from: Pid, to: Pid) {
        if let Some(target) = self.lookup(to) {
            target.lock().links.retain(|p| *p != from);
        }
    }

    /// An exit signal from a peer's process: along a link (`link`) or from `exit()`.
    pub fn remote_exit(&self, from: Pid, to: Pid, reason: Reason, link: bool) {
        let Some(target) = self.lookup(to) else {
            return;
        };
        if link {
            let was_linked = {
                let mut st = target.lock();
                let before = st.links.len();
                st.links.retain(|p| *p != from);
                before != st.links.len()
            };
            if was_linked {
                self.deliver_exit(&target, from, reason);
            }
        } else if reason == Reason::Kill {
            self.terminate(&target, Reason::Killed);
        } else {
            self.deliver_exit(&target, from, reason);
        }
    }

    /// A peer's process `watcher` monitors our `target`; a dead one answers `noproc`.
    pub fn remote_monitor(&self, watcher: Pid, target: Pid, mref: Ref) {
        let added = match self.lookup(target) {
            Some(t) => {
                let mut st = t.lock();
                if st.status == Status::Exited {
                    false
                } else {
                    st.watchers.push((mref, watcher));
                    true
                }
            }
            None => false,
        };
        if !added {
            let _ = self.host.route(Outbound::Down {
                watcher,
                target,
                mref,
                reason: Reason::Noproc,
            });
        }
    }

    /// A peer's process drops its monitor on our `target`.
    pub fn remote_demonitor(&self, watcher: Pid, target: Pid, mref: Ref) {
        if let Some(t) = self.lookup(target) {
            t.lock()
                .watchers
                .retain(|(r, w)| !(*r == mref && *w == watcher));
        }
    }

    /// A monitor our `watcher` holds on a peer's process fired.
    pub fn remote_down(&self, watcher: Pid, target: Pid, mref: Ref, reason: Reason) {
        let Some(w) = self.lookup(watcher) else {
            return;
        };
        let active = {
            let mut st = w.lock();
            let before = st.watching.len();
            st.watching.retain(|(r, t)| !(*r == mref && *t == target));
            before != st.watching.len()
        };
        if active {
            let _ = self.deliver(&w, Envelope::down(mref, target, reason));
        }
    }

    /// A peer node is gone: links to its processes fire `noconnection`, monitors on them
    /// deliver `Down(noconnection)`, and its monitors on ours are dropped.
    pub fn node_down(&self, node: NodeId) {
        for p in self.table.all() {
            let (links, downs) = {
                let mut st = p.lock();
                if st.status == Status::Exited {
                    continue;
                }
                let links: Vec<Pid> = st
                    .links
                    .iter()
                    .copied()
                    .filter(|l| l.node == node)
                    .collect();
                st.links.retain(|l| l.node != node);
                let downs: Vec<(Ref, Pid)> = st
                    .watching
                    .iter()
                    .copied()
                    .filter(|(_, t)| t.node == node)
                    .collect();
                st.watching.retain(|(_, t)| t.node != node);
                st.watchers.retain(|(_, w)| w.node != node);
                (links, downs)
            };
            for (mref, target) in downs {
                let _ = self.deliver(&p, Envelope::down(mref, target, Reason::Noconnection));
            }
            for linked in links {
                self.deliver_exit(&p, linked, Reason::Noconnection);
            }
        }
    }

    /// Registers a local name for a live process.
    pub fn register(&self, name: &str, pid: Pid) -> Result<(), RegistryError> {
        let process = self.lookup(pid).ok_or(RegistryError::Noproc)?;
        self.names.register(name, &process)
    }

    /// Removes a local name; false if it was not registered.
    pub fn unregister(&self, name: &str) -> bool {
        match self.names.unregister(name) {
            Some(pid) => {
                if let Some(p) = self.lookup(pid) {
                    p.lock().name = None;
                }
                true
            }
            None => false,
        }
    }

    /// The process registered under `name`.
    pub fn whereis(&self, name: &str) -> Option<Pid> {
        self.names.whereis(name)
    }

    /// Every registered name.
    pub fn registered(&self) -> Vec<(String, Pid)> {
        self.names.all()
    }

    /// Records that `process` is blocked waiting for `slot`, so a kill can wake it.
    pub fn block_on(&self, process: &Arc<Process<H>>, slot: Option<Arc<CallSlot<H::Msg>>>) {
        process.lock().blocked_call = slot;
    }
}

struct Dead<M> {
    was_running: bool,
    name: Option<Arc<str>>,
    mailbox: std::collections::VecDeque<Envelope<M>>,
    pending_calls: Vec<Arc<CallSlot<M>>>,
    blocked_call: Option<Arc<CallSlot<M>>>,
    links: Vec<Pid>,
    watchers: Vec<(Ref, Pid)>,
    watching: Vec<(Ref, Pid)>,
}
