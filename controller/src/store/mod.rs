//! Durable storage for openraft: the log in redb, the state machine in memory with snapshots on disk.

mod log;
mod recent;
mod sm;

pub use log::LogStore;
pub use recent::Recent;
pub use sm::{EventBatch, SharedState, StateMachineStore};

/// Wraps any error as an openraft storage error for `subject`/`verb` reporting.
pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
