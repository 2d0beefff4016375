//! Generated gRPC types and services of Re:BEAM (package `rebeam.v1`).

/// Protocol version 1: every message and service of the cluster.
pub mod v1 {
    tonic::include_proto!("rebeam.v1");
}

pub use v1::*;
