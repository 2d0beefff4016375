//! `rebeam-controller`: runs one member of the controller's Raft group.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rebeam_controller::{ControllerConfig, Limits, PeerSpec, Timings};

// glibc malloc showed up as a quarter of the leader's CPU under registration load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs one member of the Re:BEAM controller group.
#[derive(Parser, Debug)]
#[command(name = "rebeam-controller", version, about)]
struct Cli {
    /// Raft member id, unique and non-zero.
    #[arg(long, env = "REBEAM_CONTROLLER_ID")]
    id: u64,
    /// Directory for the Raft log and snapshots.
    #[arg(long, env = "REBEAM_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the Raft peer service.
    #[arg(long, default_value = "127.0.0.1:7001")]
    raft_listen: SocketAddr,
    /// Address of the node and client services.
    #[arg(long, default_value = "127.0.0.1:7100")]
    api_listen: SocketAddr,
    /// Raft address to advertise to peers (default: the bound address).
    #[arg(long)]
    raft_advertise: Option<String>,
    /// API address to advertise in leader redirects (default: the bound address).
    #[arg(long)]
    api_advertise: Option<String>,
    /// Another initial member as ID=RAFT_ADDR/API_ADDR (repeat, or comma-separate).
    #[arg(long = "peer", env = "REBEAM_PEERS", value_delimiter = ',')]
    peers: Vec<PeerSpec>,
    /// Initialize the group from this member and --peer if the log is empty.
    #[arg(long)]
    init: bool,
    /// API address of a running member to ask for admission into the group.
    #[arg(long)]
    join: Option<String>,
    /// Cluster secret required on every service.
    #[arg(long, env = "REBEAM_SECRET", hide_env_values = true)]
    secret: String,
    /// Extra tokens accepted by the client service only (comma-separated).
    #[arg(
        long = "client-token",
        env = "REBEAM_CLIENT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    client_tokens: Vec<String>,
    /// Node lease in ms: a node silent this long is declared dead.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Heartbeat interval nodes are told to use, in ms.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Nodes fence themselves when they could not renew for this long (ms, below --lease-ms).
    #[arg(long, default_value_t = 1400)]
    node_fence_ms: u64,
    /// Nodes fence this long after their watch stream broke (ms).
    #[arg(long, default_value_t = 300)]
    stream_fence_ms: u64,
    /// Raft leader heartbeat interval in ms.
    #[arg(long, default_value_t = 50)]
    raft_heartbeat_ms: u64,
    /// Raft election timeout lower bound in ms.
    #[arg(long, default_value_t = 150)]
    election_timeout_ms: u64,
    /// Build a snapshot every this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind the last snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
    /// Largest accepted app code blob in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_code_bytes: usize,
}

fn config(cli: Cli) -> ControllerConfig {
    ControllerConfig {
        id: cli.id,
        data_dir: cli.data_dir,
        raft_listen: cli.raft_listen,
        api_listen: cli.api_listen,
        raft_advertise: cli.raft_advertise,
        api_advertise: cli.api_advertise,
        peers: cli.peers,
        init: cli.init,
        join: cli.join,
        secret: cli.secret,
        client_tokens: cli.client_tokens,
        timings: Timings {
            lease: Duration::from_millis(cli.lease_ms),
            heartbeat: Duration::from_millis(cli.heartbeat_ms),
            node_fence: Duration::from_millis(cli.node_fence_ms),
            stream_fence: Duration::from_millis(cli.stream_fence_ms),
            raft_heartbeat: Duration::from_millis(cli.raft_heartbeat_ms),
            election_timeout: Duration::from_millis(cli.election_timeout_ms),
        },
        limits: Limits {
            max_code_bytes: cli.max_code_bytes,
            ..Limits::default()
        },
        snapshot_logs: cli.snapshot_logs,
        keep_logs: cli.keep_logs,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let cfg = config(Cli::parse());
    let handle = rebeam_controller::start(cfg)
        .await
        .context("starting the controller")?;
    // Machine-readable line so supervisors and tests learn ports chosen with :0.
    println!(
        "rebeam-controller listening raft={} api={}",
        handle.raft_addr(),
        handle.api_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await.context("shutting down")?;
    Ok(())
}
