//! The one harness the Rust tests and benchmarks share (issue 15): controller groups started
//! as real `rebeam-controller` processes on loopback, clients carrying the cluster secret,
//! one leader-following policy, and app archives as the Python client packs them.
//!
//! Directories are removed when a group is dropped, unless `REBEAM_KEEP_TEST_DIRS` is set (the
//! variable the Python harness reads too) or the thread is panicking; kept paths are printed.

mod archive;
mod group;
mod net;

pub use archive::app_archive;
pub use group::{ControllerGroup, GroupOptions, Member};
pub use net::{channel, cluster_client, free_port, node_client, sibling, Client, NodeClient};
