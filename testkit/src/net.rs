//! Addresses, channels and client types for talking to controllers from a harness.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
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

/// A loopback address nobody listens on right now (the listener is dropped at once).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(l.local_addr()?)
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
