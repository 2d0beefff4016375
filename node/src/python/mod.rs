//! The embedding: CPython runs process code on executor threads, through the `_rebeam_native`
//! module that the `rebeam` package uses inside a node.

pub mod aio;
pub mod apps;
pub mod cluster_glue;
pub mod convert;
pub mod executor;
pub mod host;
pub mod inspect;
pub mod logs;
pub mod native;
pub mod objects;
pub mod ports;
pub mod term;
pub mod upgrade;

pub use host::{node_runtime, start_node, NodeConfig, PyRuntime};
