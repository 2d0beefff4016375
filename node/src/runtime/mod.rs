//! The actor core: processes, mailboxes, links, monitors, exit signals, names and timers.
//! It knows nothing of Python; a `Host` runs the code.

pub mod call;
pub mod clock;
pub mod hand_off;
pub mod host;
pub mod node;
pub mod pid;
pub mod process;
pub mod reason;
pub mod registry;
pub mod runqueue;
pub mod spin;
pub mod stats;
pub mod table;
pub mod timer;

#[cfg(test)]
mod tests;

pub use call::{CallResult, CallSlot};
pub use host::{Host, Outbound};
pub use node::Runtime;
pub use pid::{NodeId, Pid, Ref};
pub use process::{DownSignal, Envelope, ExitSignal, Kind, MailboxLimit, Payload, Process, Status};
pub use reason::{Crash, Reason, Term};
pub use registry::RegistryError;
pub use timer::Timers;
