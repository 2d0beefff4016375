//! What each fuzz target runs, shared with the seed generator (`gen_corpus`) and the
//! regression replay: every function takes the raw bytes a peer, a client or a member could
//! send and runs the same public decoders and checks the services run on them. A decoder may
//! refuse; it must never panic, loop or allocate without bound.

pub mod controller;
pub mod node;
pub mod seeds;

/// The first byte picks which message the rest is read as (one target covers a service's
/// several request types, and libFuzzer learns the selector like any other byte).
pub fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(k, rest)| (*k, rest))
}

/// Runs a decoder future that never waits on anything but its in-memory input.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}
