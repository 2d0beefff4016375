//! TLS for every Re:BEAM connection (rustls with the ring provider): certificate files that
//! are re-read while running, one acceptor every server uses, one dialer every member-side
//! client uses, and the member identities carried in certificates.

pub mod dial;
pub mod files;
pub mod identity;
pub mod incoming;
pub mod limits;
pub mod source;

pub use dial::Dialer;
pub use files::{TlsError, TlsFiles};
pub use identity::Member;
pub use incoming::{incoming, incoming_http1, PeerInfo, ServerIo, Transport};
pub use limits::{Activity, Busy, ConnLimits, Slot};
pub use source::TlsSource;

/// The ALPN protocol of the nodes' peer transport: a TLS connection to a node's peer port
/// that negotiates it carries peer frames instead of gRPC.
pub const PEER_ALPN: &[u8] = b"rebeam-peer/1";

/// The ALPN protocol of the client wire: a TLS connection to a node's gateway port that
/// negotiates it carries a client's framed `Deliver` requests instead of gRPC.
pub const CLIENT_ALPN: &[u8] = b"rebeam-client/1";
