//! The data plane between nodes: peer frames on a plain TCP (or TLS) connection to the peer
//! port, length-prefixed and batched, instead of a gRPC stream. Control RPCs stay on tonic;
//! the peer port serves both, told apart by the connection's first bytes (or, on TLS, its
//! ALPN protocol).
//!
//! Between nodes on one host (loopback peer addresses) the same protocol runs on a Unix
//! socket (`local`) when TLS is off.
//!
//! One connection per direction and per pair of nodes, as before: the dialler writes batches
//! of frames, the acceptor applies them in order and answers only with control messages.

pub mod accept;
pub mod client;
pub mod dial;
pub mod frames;
pub mod handshake;
pub mod local;
pub mod outbox;

#[cfg(test)]
mod tests;

/// What a plaintext peer connection starts with (a gRPC connection starts with `PRI * HTTP`).
pub const MAGIC: &[u8; 8] = b"RBPEER1\n";
