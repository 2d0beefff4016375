//! `rebeam-controller`: runs one member of the controller's Raft group.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rebeam_controller::auth::secrets::SecretArgs;
use rebeam_controller::auth::{read_token_file, StaticToken};
use rebeam_controller::types::MemberNode;
use rebeam_controller::{bootstrap, ControllerConfig, Limits, PeerSpec, Timings};
use rebeam_tls::{TlsFiles, TlsSource};

// glibc malloc showed up as a quarter of the leader's CPU under registration load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs one member of the Re:BEAM controller group.
#[derive(Parser, Debug)]
#[command(
    name = "rebeam-controller",
    version,
    about,
    mut_arg("secret", |a| a
        .required_unless_present("secret_file")
        .help("Cluster secret shared by members and nodes (prefer --secret-file: a command line is visible to every local user)")),
    mut_arg("node_secret", |a| a.help(
        "Node secret: give nodes this instead of the cluster secret; it is good only for what nodes call (join, heartbeat, watch, reports, code, registry writes). Prefer --node-secret-file"
    ))
)]
struct Cli {
    /// Raft member id, unique and non-zero (or --id-from-hostname).
    #[arg(
        long,
        env = "REBEAM_CONTROLLER_ID",
        required_unless_present = "id_from_hostname"
    )]
    id: Option<u64>,
    /// Take the id from the hostname's trailing ordinal: `rebeam-controller-0` is member 1.
    #[arg(long, env = "REBEAM_ID_FROM_HOSTNAME", conflicts_with = "id")]
    id_from_hostname: bool,
    /// Form or join the group without manual steps by asking these members' API addresses
    /// (comma-separated HOST:PORT; a name may resolve to several members).
    #[arg(long, env = "REBEAM_SEEDS", value_delimiter = ',', conflicts_with_all = ["init", "join"])]
    seeds: Vec<String>,
    /// With --seeds: how many members the group starts with; member 1 forms the group once
    /// that many members answered with empty logs.
    #[arg(long, env = "REBEAM_BOOTSTRAP_EXPECT", default_value_t = 1)]
    bootstrap_expect: usize,
    /// A file holding the number of voters the group should have (the chart's ConfigMap):
    /// the leader removes the voters with the highest ids above it and admits none there.
    /// Stopping a member never removes it; only a lower number here does.
    #[arg(long, env = "REBEAM_VOTERS_FILE")]
    voters_file: Option<PathBuf>,
    /// Directory for the Raft log and snapshots.
    #[arg(long, env = "REBEAM_DATA_DIR")]
    data_dir: PathBuf,
    /// Address of the Raft peer service.
    #[arg(long, default_value = "127.0.0.1:7001")]
    raft_listen: SocketAddr,
    /// Address of the node and client services.
    #[arg(long, default_value = "127.0.0.1:7100")]
    api_listen: SocketAddr,
    /// Address lease renewals are served on, on threads of their own so that watch streams
    /// and API calls cannot delay them (default: the --api-listen IP, a port the kernel
    /// picks; nodes learn it from the leader).
    #[arg(long, env = "REBEAM_LEASE_LISTEN")]
    lease_listen: Option<SocketAddr>,
    /// Lease address to advertise to nodes (default: the --api-advertise host with the bound
    /// lease port, else the bound address).
    #[arg(long, env = "REBEAM_LEASE_ADVERTISE")]
    lease_advertise: Option<String>,
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
    #[command(flatten)]
    secrets: SecretArgs,
    /// A client token as ROLE:TOKEN (read, call, deploy, admin) or TOKEN (admin); repeat or
    /// comma-separate.
    #[arg(
        long = "client-token",
        env = "REBEAM_CLIENT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    client_tokens: Vec<StaticToken>,
    /// File of client tokens, one ROLE:TOKEN or TOKEN per line (`#` starts a comment line).
    #[arg(long, env = "REBEAM_CLIENT_TOKEN_FILE")]
    client_token_file: Option<PathBuf>,
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
    #[arg(long, default_value_t = 100)]
    raft_heartbeat_ms: u64,
    /// Raft election timeout lower bound in ms.
    #[arg(long, default_value_t = 150)]
    election_timeout_ms: u64,
    /// Address of the HTTP server (dashboard, REST API, /metrics, /healthz, /readyz).
    #[arg(long, default_value = "127.0.0.1:7180", env = "REBEAM_HTTP_LISTEN")]
    http_listen: SocketAddr,
    /// Tokens that may read the dashboard and REST API but change nothing (comma-separated).
    #[arg(
        long = "http-read-token",
        env = "REBEAM_HTTP_READ_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    http_read_tokens: Vec<String>,
    /// A host name the HTTP server answers to besides IP literals and localhost (repeat, or
    /// comma-separate), e.g. the DNS name an ingress forwards; others are refused.
    #[arg(
        long = "http-allowed-host",
        env = "REBEAM_HTTP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    http_allowed_hosts: Vec<String>,
    /// Export traces of gRPC requests and their Raft writes over OTLP/gRPC to this endpoint
    /// (`http://host:4317`); tracing is off without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Fraction (0 to 1) of new traces kept; a request in a kept trace is always kept.
    /// Without it, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG decide (default: all).
    #[arg(long, env = "REBEAM_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    trace_sample_ratio: Option<f64>,
    /// Build a snapshot every this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind the last snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
    /// Largest accepted app code blob in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_code_bytes: usize,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    serving: rebeam_controller::config::ServingArgs,
}

/// TLS on every service; off unless all three files are given (re-read every 2 s).
#[derive(clap::Args, Debug)]
struct TlsArgs {
    /// PEM certificate chain this member presents, with the URI SAN
    /// urn:rebeam:controller:<id> and its advertised host names/IPs as DNS/IP SANs.
    #[arg(long, env = "REBEAM_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "REBEAM_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that sign members' (and clients') certificates.
    #[arg(long, env = "REBEAM_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

fn config(cli: Cli, id: u64) -> anyhow::Result<ControllerConfig> {
    let given = cli.secrets.read().map_err(anyhow::Error::msg)?;
    let Some(secret) = given.secret else {
        anyhow::bail!("give the cluster secret with --secret-file or --secret");
    };
    let node_secret = given.node_secret.unwrap_or_default();
    let mut client_tokens = cli.client_tokens;
    if let Some(path) = &cli.client_token_file {
        client_tokens.extend(read_token_file(path).map_err(anyhow::Error::msg)?);
    }
    let tls = TlsFiles::from_options(cli.tls.tls_cert, cli.tls.tls_key, cli.tls.tls_ca)?
        .map(TlsSource::load)
        .transpose()?;
    Ok(ControllerConfig {
        id,
        data_dir: cli.data_dir,
        raft_listen: cli.raft_listen,
        api_listen: cli.api_listen,
        lease_listen: cli.lease_listen,
        raft_advertise: cli.raft_advertise,
        api_advertise: cli.api_advertise,
        lease_advertise: cli.lease_advertise,
        peers: cli.peers,
        init: cli.init,
        join: cli.join,
        secret,
        node_secret,
        client_tokens,
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
        tls,
        connections: cli.serving.connections(),
        rate_limit: cli.serving.rate_limit(),
        max_streams_per_token: cli.serving.max_streams_per_token,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let cli = Cli::parse();
    let id = match cli.id {
        Some(id) => id,
        None => bootstrap::id_from_hostname(&bootstrap::hostname()?)?,
    };
    let http_listen = cli.http_listen;
    let http_opts = rebeam_controller::http::member::HttpOptions {
        read_tokens: cli.http_read_tokens.clone(),
        allowed_hosts: cli.http_allowed_hosts.clone(),
    };
    if let Some(endpoint) = cli.otlp_endpoint.clone().filter(|e| !e.is_empty()) {
        rebeam_controller::trace::init(&rebeam_controller::trace::TraceConfig {
            endpoint,
            sample_ratio: cli.trace_sample_ratio,
            member: id,
        })?;
    }
    let seeds = cli.seeds.clone();
    let expect = cli.bootstrap_expect;
    let voters_file = cli.voters_file.clone();
    let cfg = config(cli, id).context("reading the configuration")?;
    let mut boot = (!seeds.is_empty() || expect > 1).then(|| bootstrap::BootstrapConfig {
        id,
        me: MemberNode {
            raft_addr: cfg.raft_advertise.clone().unwrap_or_default(),
            api_addr: cfg.api_advertise.clone().unwrap_or_default(),
            // Filled in by this member once it leads (`lease::advertise`).
            lease_addr: String::new(),
        },
        seeds,
        expect,
        secret: cfg.secret.clone(),
        dialer: rebeam_tls::Dialer::new(cfg.tls.clone()),
    });
    if let Some(b) = &boot {
        bootstrap::validate(b)?;
    }
    let http_tls = cfg.tls.clone();
    let connections = cfg.connections;
    let handle = rebeam_controller::start(cfg)
        .await
        .context("starting the controller")?;
    let http = rebeam_controller::http::HttpListener::bind(http_listen)
        .await?
        .with_tls(http_tls)
        .with_limits(connections)
        .with_tracer(rebeam_controller::trace::tracer);
    let (boot_stop, boot_stopped) = tokio::sync::watch::channel(false);
    let boot_task = boot.take().map(|mut b| {
        // Without advertised addresses the bound ones are all the others can dial.
        if b.me.raft_addr.is_empty() {
            b.me.raft_addr = handle.raft_addr().to_string();
        }
        if b.me.api_addr.is_empty() {
            b.me.api_addr = handle.api_addr().to_string();
        }
        tokio::spawn(bootstrap::run(handle.raft().clone(), b, boot_stopped))
    });
    let voters_task = voters_file.map(|path| {
        tokio::spawn(rebeam_controller::voters::run(
            handle.core(),
            path,
            boot_stop.subscribe(),
        ))
    });
    // Machine-readable line so supervisors and tests learn ports chosen with :0.
    println!(
        "rebeam-controller listening raft={} api={} http={} lease={}",
        handle.raft_addr(),
        handle.api_addr(),
        http.addr(),
        handle.lease_addr()
    );
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = tokio::spawn(http.serve(
        rebeam_controller::http::member::router(handle.core(), &http_opts),
        async move {
            let _ = http_stopped.await;
        },
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    let _ = boot_stop.send(true);
    if let Some(t) = boot_task {
        let _ = t.await;
    }
    if let Some(t) = voters_task {
        let _ = t.await;
    }
    let _ = http_stop.send(());
    // An open event stream would hold a graceful shutdown forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    handle.shutdown().await.context("shutting down")?;
    // The exporter's flush blocks until the collector answered (or gave up).
    let _ = tokio::task::spawn_blocking(rebeam_controller::trace::flush).await;
    Ok(())
}
