//! The seam between the actor core and whatever runs handlers (embedded Python, or tests).

use super::process::Process;
use super::reason::Reason;
use std::sync::Arc;

/// What the core needs from the layer that executes process code.
pub trait Host: Send + Sync + Sized + 'static {
    /// A message payload as carried in mailboxes.
    type Msg: Send + 'static;
    /// Per-process data owned by the host (e.g. the Python object behind a GenServer).
    type Data: Send + Sync + 'static;

    /// A process was killed while its code was running on some thread: stop that code.
    fn interrupt(&self, process: &Arc<Process<Self>>);

    /// A process exited; called after its name was released and before its links and
    /// monitors fire, with no core lock held.
    fn exited(&self, process: &Arc<Process<Self>>, reason: &Reason);
}
