//! Addresses, channels and client types for talking to controllers from a harness.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use rebeam_grpc::BearerInjector;
use rebeam_proto::v1::cluster_service_client::ClusterServiceClient;
use rebeam_proto::v1::node_service_client::NodeServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A cluster-service client sending a bearer credential, as nodes and members do.
pub type Client = ClusterServiceClient<InterceptedService<Channel, BearerInjector>>;
/// A node-service client sending a bearer credential.
pub type NodeClient = NodeServiceClient<InterceptedService<Channel, BearerInjector>>;

/// A cluster-service client on `ch` sending `token`, with room for large replies.
pub fn cluster_client(ch: Channel, token: &str) -> Client {
    ClusterServiceClient::with_interceptor(ch, BearerInjector::new(token))
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A node-service client on `ch` sending `token`, with room for full watch views.
pub fn node_client(ch: Channel, token: &str) -> NodeClient {
    NodeServiceClient::with_interceptor(ch, BearerInjector::new(token))
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A loopback address nobody listens on right now, for a server a test starts.
///
/// Picked below the kernel's ephemeral range: a port the kernel handed out (bind to 0)
/// goes back into that range when released, where any outbound connection may take it as
/// its local port before the test's server binds it ("address in use"). No port is handed
/// out twice by one process.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let first: u16 = if low > 12000 { 10000 } else { 1024 };
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = first + (rand_u32() % u32::from(low - first)) as u16;
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed.push(port);
            return Ok(l.local_addr()?);
        }
    }
    bail!("no free loopback port between {first} and {low}")
}

/// A random number from the standard library's per-process hash seed, mixed with a counter
/// and the clock, so that parallel test processes pick different ports.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// A lazily connecting plaintext channel to `addr` with the timings a node uses: short
/// connects, keepalive that notices a frozen peer within a second, no Nagle delay.
pub fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(500))
            .keep_alive_timeout(Duration::from_millis(500))
            .keep_alive_while_idle(true)
            .connect_lazy(),
    )
}

/// The binary `name` next to the running executable (benchmarks find the workspace's other
/// binaries this way), or an error saying how to build it.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to this binary; build the workspace in release",
            p.display()
        );
    }
    Ok(p)
}
