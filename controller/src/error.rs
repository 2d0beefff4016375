//! The controller's one error type: the model shared with the node (`rebeam-grpc`).

pub use rebeam_grpc::error::{Error, Result, LEADER_METADATA_KEY, LEASE_METADATA_KEY};
