//! Counters of the node outside the actor core (peer links, lease, gateway, call latency),
//! bumped with relaxed atomics where the event happens and read by `/metrics`.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Instant;

use rebeam_http::prom::{Histogram, LATENCY_BOUNDS};

use crate::runtime::stats::Counter;

/// The node's counters besides the runtime's (`runtime::stats::STATS`).
pub struct NodeStats {
    /// Frames sent on peer links.
    pub peer_frames_out: Counter,
    /// Of those, frames the sending thread wrote to an idle link itself.
    pub peer_frames_direct: Counter,
    /// Frames received from peers.
    pub peer_frames_in: Counter,
    /// Encoded bytes of the batches sent on peer links.
    pub peer_bytes_out: Counter,
    /// Encoded bytes of the batches received from peers.
    pub peer_bytes_in: Counter,
    /// Peer links opened (the first to a node, then one per reconnect).
    pub peer_links_opened: Counter,
    /// Times a process waited for room on a peer link whose queue was full.
    pub peer_send_waits: Counter,
    /// Frames dropped because one frame alone was over the peer transport's size limit.
    pub peer_frames_oversized: Counter,
    /// Lease renewals the controller acknowledged.
    pub lease_renewals: Counter,
    /// Times the node fenced itself (lost its lease and killed its processes).
    pub fences: Counter,
    /// Gateway deliveries: send, cast, call.
    pub gateway_requests: [Counter; 3],
    /// Client wire replies written to the socket by the thread that had them (the
    /// connection was idle), without its writer task.
    pub client_replies_direct: Counter,
    /// Children restarted by supervisors on this node.
    pub restarts: Counter,
}

/// The node's counters (one node per OS process).
pub static STATS: NodeStats = NodeStats {
    peer_frames_out: Counter::new(),
    peer_frames_direct: Counter::new(),
    peer_frames_in: Counter::new(),
    peer_bytes_out: Counter::new(),
    peer_bytes_in: Counter::new(),
    peer_links_opened: Counter::new(),
    peer_send_waits: Counter::new(),
    peer_frames_oversized: Counter::new(),
    lease_renewals: Counter::new(),
    client_replies_direct: Counter::new(),
    fences: Counter::new(),
    gateway_requests: [Counter::new(), Counter::new(), Counter::new()],
    restarts: Counter::new(),
};

/// One call in this many (per thread) is timed for `CALL_LATENCY`: reading the clock twice
/// on every call would cost about a tenth of an inline call's round trip.
pub const CALL_SAMPLE: u32 = 16;

/// Starts timing a call made by process code, for one call in `CALL_SAMPLE`.
#[inline]
pub fn call_clock() -> Option<Instant> {
    thread_local! {
        static CALLS: Cell<u32> = const { Cell::new(0) };
    }
    CALLS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        (next % CALL_SAMPLE == 0).then(Instant::now)
    })
}

/// Time from `rebeam.call` to its reply (or failure), for the sampled calls made by process
/// code (see `CALL_SAMPLE`).
pub static CALL_LATENCY: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY_BOUNDS));

/// Time the gateway took to answer a client's call.
pub static GATEWAY_LATENCY: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(LATENCY_BOUNDS));
