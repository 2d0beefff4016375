//! Re:BEAM controller: a Raft-replicated control plane holding membership, the global registry,
//! process groups, applications and the top-level supervision tree.

pub mod api;
pub mod archive;
pub mod bootstrap;
pub mod config;
pub mod convert;
pub mod core;
pub mod error;
pub mod http;
pub mod lease;
pub mod manifest;
pub mod network;
pub mod proposer;
pub mod server;
pub mod state;
pub mod store;
pub mod trace;
pub mod types;
pub mod validate;
pub mod voters;

/// Who may call what: shared with nodes, so it lives in its own crate.
pub use rebeam_auth as auth;

pub use config::{ControllerConfig, Limits, PeerSpec, Timings};
pub use error::{Error, Result, LEADER_METADATA_KEY, LEASE_METADATA_KEY};
pub use server::{start, ControllerHandle};
