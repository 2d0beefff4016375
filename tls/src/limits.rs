//! Bounds on the connections one server holds: a cap on how many are open at once, an idle
//! timeout for connections with no request in flight, and the HTTP/2 settings every gRPC
//! server shares (keepalive, streams per connection, header size).
//!
//! A connection counts from accept (before its TLS handshake) until it closes; past the cap a
//! new one is accepted and closed at once, so the client learns promptly instead of waiting
//! in the kernel's backlog, and the refusal is counted for `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};

/// Connections one server holds open at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a connection with no request in flight stays open, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Concurrent requests (HTTP/2 streams) one connection may have open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// Largest header block a client may send (a bearer token is well under 1 KiB).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// Server-sent HTTP/2 pings find dead peers behind NATs and half-open sockets.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A ping not answered by then closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection limits of one server (`--max-connections`, `--idle-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections at most; 0 means no cap.
    pub max_connections: usize,
    /// Close a connection after this long with no request in flight; zero means never.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl ConnLimits {
    /// A tonic server with the shared HTTP/2 settings: keepalive pings, bounded streams per
    /// connection and a bounded header block.
    pub fn grpc_server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
    }
}

/// What one server's connections did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed at accept because the cap was reached.
    pub refused: AtomicU64,
    /// Connections closed by the idle timeout.
    pub idle_closed: AtomicU64,
}

/// A snapshot of one server's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnStats {
    /// Which server (`api`, `raft`, `gateway`, `http`).
    pub server: &'static str,
    /// Connections open now.
    pub open: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused at the cap since start.
    pub refused: u64,
    /// Connections closed idle since start.
    pub idle_closed: u64,
}

static SERVERS: Mutex<Vec<(&'static str, Arc<ConnCounters>)>> = Mutex::new(Vec::new());

/// The counters of the server called `server` in this process (shared when several servers
/// use one name, e.g. two controllers in a test process).
pub fn counters(server: &'static str) -> Arc<ConnCounters> {
    let mut servers = SERVERS.lock();
    if let Some((_, c)) = servers.iter().find(|(n, _)| *n == server) {
        return c.clone();
    }
    let c = Arc::new(ConnCounters::default());
    servers.push((server, c.clone()));
    c
}

/// Every server's counters in this process, in the order they started.
pub fn stats() -> Vec<ConnStats> {
    SERVERS
        .lock()
        .iter()
        .map(|(server, c)| ConnStats {
            server,
            open: c.open.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            idle_closed: c.idle_closed.load(Ordering::Relaxed),
        })
        .collect()
}

/// Requests in flight on one connection, so the idle timeout spares a connection serving a
/// long stream (a watch, a peer link, a log follow) while HTTP/2 pings alone do not keep one
/// alive.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    /// Marks a request in flight until the returned guard drops (hold it in the response
    /// body, so a streamed reply counts until its end).
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// When the connection may be closed as idle, or None while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock() + timeout)
    }
}

/// One request in flight on a connection; dropping it ends the request.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *since = Instant::now();
        }
    }
}

/// Holds a connection's slot under the cap and decides when it is idle.
/// One connection's place under its server's cap, given back when dropped.
pub struct Slot {
    counters: Arc<ConnCounters>,
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Slot {
    /// Takes a slot for a new connection, or None (counted) when the cap is reached.
    pub(crate) fn take(limits: &ConnLimits, counters: &Arc<ConnCounters>) -> Option<Slot> {
        let open = counters.open.fetch_add(1, Ordering::AcqRel);
        if limits.max_connections != 0 && open as usize >= limits.max_connections {
            counters.open.fetch_sub(1, Ordering::AcqRel);
            let refused = counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
            // Once, then rarely: a flood must not become a log flood.
            if refused.is_power_of_two() {
                tracing::warn!(
                    max = limits.max_connections,
                    refused,
                    "connection cap reached; closing new connections (--max-connections)"
                );
            }
            return None;
        }
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let timeout = limits.idle_timeout;
        Some(Slot {
            counters: counters.clone(),
            activity: Arc::default(),
            timeout,
            timer: (!timeout.is_zero()).then(|| Box::pin(tokio::time::sleep(timeout))),
        })
    }

    /// The connection's request counter, for the request handlers.
    pub(crate) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Whether the idle timeout has passed with no request in flight; otherwise the timer is
    /// armed to wake the reader at the next deadline.
    pub(crate) fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timer) = self.timer.as_mut() else {
            return false;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.activity.idle_deadline(self.timeout) {
                Some(deadline) if deadline <= now => {
                    self.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Some(deadline) => timer.as_mut().reset(deadline),
                None => timer.as_mut().reset(now + self.timeout),
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let limits = ConnLimits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(10),
        };
        let counters = Arc::new(ConnCounters::default());
        let mut slot = Slot::take(&limits, &counters).expect("first slot");
        assert!(Slot::take(&limits, &counters).is_none(), "the cap holds");
        assert_eq!(counters.refused.load(Ordering::Relaxed), 1);
        let busy = slot.activity().begin();
        tokio::time::advance(Duration::from_secs(30)).await;
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            !slot.poll_idle(&mut cx),
            "a request in flight keeps it open"
        );
        drop(busy);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!slot.poll_idle(&mut cx));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(slot.poll_idle(&mut cx), "idle past the timeout");
        drop(slot);
        assert!(
            Slot::take(&limits, &counters).is_some(),
            "the slot came back"
        );
    }
}
