//! The seam between the actor core and whatever runs handlers (embedded Python, or tests).

use super::pid::{Pid, Ref};
use super::process::{Envelope, Payload, Process};
use super::reason::Reason;
use std::sync::Arc;

/// A message or signal for a process on another node.
#[derive(Debug)]
pub enum Outbound<M> {
    /// A message (raw send, cast, or call with its reply slot).
    Message {
        /// The remote process.
        to: Pid,
        /// What to deliver.
        envelope: Envelope<M>,
    },
    /// Link our `from` to the remote `to`.
    Link {
        /// Our process.
        from: Pid,
        /// The remote process.
        to: Pid,
    },
    /// Remove that link.
    Unlink {
        /// Our process.
        from: Pid,
        /// The remote process.
        to: Pid,
    },
    /// An exit signal: along a link when `link`, else from `exit()`.
    Exit {
        /// The process it comes from.
        from: Pid,
        /// The remote process.
        to: Pid,
        /// The reason.
        reason: Reason,
        /// True for link propagation.
        link: bool,
    },
    /// Our `watcher` monitors the remote `target`.
    Monitor {
        /// Our process.
        watcher: Pid,
        /// The remote process.
        target: Pid,
        /// The monitor's reference.
        mref: Ref,
    },
    /// Our `watcher` drops that monitor.
    Demonitor {
        /// Our process.
        watcher: Pid,
        /// The remote process.
        target: Pid,
        /// The monitor's reference.
        mref: Ref,
    },
    /// Our `target` died: the remote `watcher`'s monitor fires.
    Down {
        /// The remote watcher.
        watcher: Pid,
        /// Our process.
        target: Pid,
        /// The monitor's reference.
        mref: Ref,
        /// Why it died.
        reason: Reason,
    },
}

/// What the core needs from the layer that executes process code.
pub trait Host: Send + Sync + Sized + 'static {
    /// A message payload as carried in mailboxes.
    type Msg: Payload + Send + 'static;
    /// Per-process data owned by the host (e.g. the Python object behind a GenServer).
    type Data: Send + Sync + 'static;

    /// A process was killed while its code was running on some thread: stop that code.
    fn interrupt(&self, process: &Arc<Process<Self>>);

    /// A process exited; called after its name was released and before its links and
    /// monitors fire, with no core lock held.
    fn exited(&self, process: &Arc<Process<Self>>, reason: &Reason);

    /// Mail was queued for a process that was not idle (it runs, or waits in a receive):
    /// the host may have a waiter to wake that the core does not know (an async receive).
    /// Called with no core lock held.
    fn mail_arrived(&self, _process: &Arc<Process<Self>>) {}

    /// Sends something to another node; gives it back when that node is unknown or lost.
    fn route(&self, out: Outbound<Self::Msg>) -> Result<(), Outbound<Self::Msg>>;
}
