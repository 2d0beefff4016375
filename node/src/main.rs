//! `rebeam-node`: a Re:BEAM worker node embedding CPython.

use anyhow::{bail, Context, Result};
use clap::Parser;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rebeam_auth::secrets::{SecretArgs, Secrets};
use rebeam_auth::{read_token_file, Credentials, Guard, StaticToken, TokenDigest, TokenSource};
use rebeam_node::cluster::gateway::Gateway;
use rebeam_node::cluster::{control, Cluster, ClusterConfig};
use rebeam_node::python::{self, NodeConfig};
use rebeam_node::runtime::Reason;
use std::path::PathBuf;

mod scrub;

/// A Re:BEAM worker node: runs Python actors with OTP semantics.
#[derive(Parser, Debug)]
#[command(
    name = "rebeam-node",
    version,
    mut_arg("secret", |a| a.help(
        "The cluster secret: on --dev, the embedded controller's. A cluster node should be given the node secret instead; the cluster secret still works there but is not recommended, since app code could then administer the whole cluster"
    )),
    mut_arg("node_secret", |a| a.help(
        "The node secret the controllers were given (`--node-secret`): good only for what nodes call. Cluster mode needs it (or the cluster secret). Prefer --node-secret-file: app code can read the node's command line"
    ))
)]
struct Cli {
    /// Run a single-machine node (the embedded default).
    #[arg(long)]
    dev: bool,
    /// The node's name, the first part of its pids.
    #[arg(long, default_value = "dev", env = "REBEAM_NODE_NAME")]
    name: String,
    /// Run the application in this directory (with a rebeam.toml) until Ctrl-C.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run", "module"])]
    app: Option<PathBuf>,
    /// Run a Python script inside the node (wrap process code in rebeam.run(fn)).
    #[arg(long, value_name = "SCRIPT", conflicts_with = "module")]
    run: Option<PathBuf>,
    /// Run a Python module inside the node, like `python -m` (e.g. pytest).
    #[arg(short = 'm', long, value_name = "MODULE")]
    module: Option<String>,
    /// On --dev, how many worker nodes to run, this process included (each is a node of the
    /// same cluster with its own interpreter, so Python uses that many cores). Default: one
    /// per core when serving or running an app, 1 for --run and -m (tests of one node).
    #[arg(long, env = "REBEAM_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Executor threads to start with (the pool grows while handlers block).
    #[arg(long, default_value_t = 2, env = "REBEAM_EXECUTORS")]
    executors: usize,
    /// Join the cluster whose controllers listen here (comma-separated `host:port`).
    #[arg(long, value_delimiter = ',', env = "REBEAM_CONTROLLERS")]
    controllers: Vec<String>,
    /// Where this node's peer service listens (cluster mode).
    #[arg(long, default_value = "127.0.0.1:0", env = "REBEAM_LISTEN")]
    listen: std::net::SocketAddr,
    /// The peer address other nodes dial, if not the listen address.
    #[arg(long, env = "REBEAM_ADVERTISE")]
    advertise: Option<String>,
    /// A placement label `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Most messages a process's mailbox may hold unless its child spec says otherwise
    /// (0: unbounded); a delivery past it kills the process with `mailbox_limit`.
    #[arg(long, default_value_t = DEFAULT_MAX_MAILBOX, env = "REBEAM_MAX_MAILBOX")]
    max_mailbox: usize,
    /// Most bytes a process's mailbox may hold unless its child spec says otherwise
    /// (0: unbounded); a delivery past it kills the process with `mailbox_limit`.
    #[arg(long, default_value_t = DEFAULT_MAX_MAILBOX_BYTES, env = "REBEAM_MAX_MAILBOX_BYTES")]
    max_mailbox_bytes: usize,
    /// The memory this node may use, in bytes (default: its cgroup's memory.max, else the
    /// machine's memory); the memory guard acts at --memory-guard of it.
    #[arg(long, env = "REBEAM_MEMORY_LIMIT")]
    memory_limit: Option<u64>,
    /// Fraction of --memory-limit past which the memory guard ends the processes of the app
    /// holding the most queued messages (0: off).
    #[arg(long, default_value_t = 0.9, env = "REBEAM_MEMORY_GUARD")]
    memory_guard: f64,
    /// Most top-level children the controller may place here (0: no limit).
    #[arg(long, default_value_t = 0)]
    capacity: u32,
    /// Client tokens accepted at this node's gateway (and, on --dev, by the embedded
    /// controller), as ROLE:TOKEN (read, call, deploy, admin) or TOKEN (admin); repeat or
    /// comma-separate. Tokens issued with `rebeam token create` work without listing them.
    #[arg(
        long = "client-token",
        value_delimiter = ',',
        env = "REBEAM_CLIENT_TOKENS",
        hide_env_values = true
    )]
    client_tokens: Vec<StaticToken>,
    /// File of client tokens, one ROLE:TOKEN or TOKEN per line (`#` starts a comment line).
    #[arg(long, env = "REBEAM_CLIENT_TOKEN_FILE")]
    client_token_file: Option<PathBuf>,
    /// A client token accepted at this node's gateway, given by its digest: ROLE:SHA256 (or
    /// SHA256 for admin), the hex SHA-256 of the token's text. The node then does not hold
    /// the token, which app code could read; repeat or comma-separate.
    #[arg(
        long = "client-token-digest",
        value_delimiter = ',',
        env = "REBEAM_CLIENT_TOKEN_DIGESTS"
    )]
    client_token_digests: Vec<TokenDigest>,
    /// On --dev, where the embedded controller's client API listens (clients and the
    /// `rebeam` CLI connect here); the default picks a free port and prints it.
    #[arg(long, default_value = "127.0.0.1:0", env = "REBEAM_API_LISTEN")]
    api_listen: std::net::SocketAddr,
    #[command(flatten)]
    secrets: SecretArgs,
    /// Where the HTTP server listens (probes, metrics; the dashboard on --dev). Off in
    /// cluster mode unless given; --dev serves it on a free loopback port and prints it.
    #[arg(long, env = "REBEAM_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// Tokens that may read the node's HTTP server (and the dev dashboard) but change nothing.
    #[arg(
        long = "http-read-token",
        value_delimiter = ',',
        env = "REBEAM_HTTP_READ_TOKENS",
        hide_env_values = true
    )]
    http_read_tokens: Vec<String>,
    /// A host name the HTTP server answers to besides IP literals and localhost.
    #[arg(
        long = "http-allowed-host",
        value_delimiter = ',',
        env = "REBEAM_HTTP_ALLOWED_HOSTS"
    )]
    http_allowed_hosts: Vec<String>,
    /// Export traces of messages over OTLP/gRPC to this endpoint (`http://host:4317`), and
    /// on --dev those of the embedded controller's requests and Raft writes; tracing is off
    /// without it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Fraction (0 to 1) of new traces kept; a message in a kept trace is always kept.
    /// Without it, OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG decide (default: all).
    #[arg(long, env = "REBEAM_TRACE_SAMPLE_RATIO", value_name = "RATIO")]
    trace_sample_ratio: Option<f64>,
    /// Where fetched application code is kept.
    #[arg(long, env = "REBEAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain this node presents (and, on --dev, its embedded controller),
    /// with the URI SAN urn:rebeam:node:<name> and the advertised host as a DNS/IP SAN.
    /// TLS is off unless --tls-cert, --tls-key and --tls-ca are all given.
    #[arg(long, env = "REBEAM_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "REBEAM_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that sign members' (and clients') certificates.
    #[arg(long, env = "REBEAM_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    #[command(flatten)]
    serving: rebeam_auth::serving::ServingArgs,
    /// Arguments passed to the script or module as sys.argv[1:].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Default mailbox bound in messages: far above what a healthy process queues, low enough
/// that a flood of small messages costs a node at most a few hundred MB per process.
const DEFAULT_MAX_MAILBOX: usize = 1_000_000;
/// Default mailbox bound in bytes (256 MiB): a flood of large messages kills the receiver
/// long before it kills the node.
const DEFAULT_MAX_MAILBOX_BYTES: usize = 256 << 20;

/// Environment variables that carry credentials; removed before Python starts so app code
/// cannot read them from `os.environ`, and blanked in `/proc/self/environ`.
const CREDENTIAL_VARS: [&str; 4] = [
    "REBEAM_SECRET",
    "REBEAM_NODE_SECRET",
    "REBEAM_CLIENT_TOKENS",
    "REBEAM_HTTP_READ_TOKENS",
];

/// Flags whose value is a credential, blanked in `/proc/self/cmdline` once parsed.
const CREDENTIAL_FLAGS: [&str; 4] = [
    "--secret",
    "--node-secret",
    "--client-token",
    "--http-read-token",
];

fn main() {
    let cli = Cli::parse();
    for var in CREDENTIAL_VARS {
        // SAFETY: no other thread runs yet (the runtimes and the interpreter start later), so
        // nothing reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    // SAFETY: still single-threaded, the flags and variables are parsed (into copies) and
    // the variables removed, so nothing refers to the bytes being overwritten.
    unsafe { scrub::blank_original_blocks(&CREDENTIAL_VARS, &CREDENTIAL_FLAGS) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REBEAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rebeam-node: {err:#}");
            1
        }
    };
    exit_process(code);
}

/// Flushes Python's streams, removes the dev scratch directory and exits, without
/// finalizing the interpreter (executor threads stay attached to it).
fn exit_process(code: i32) -> ! {
    rebeam_node::dev::stop();
    flush_python();
    rebeam_node::observe::trace::flush();
    #[cfg(feature = "dev")]
    rebeam_controller::trace::flush();
    if let Some(dir) = DEV_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(code);
}

/// The cluster secret and the node secret given to this node (an empty flag counts as not
/// given).
fn given_secrets(cli: &Cli) -> Result<Secrets> {
    let given = cli.secrets.read().map_err(anyhow::Error::msg)?;
    Ok(Secrets {
        secret: given.secret.filter(|s| !s.is_empty()),
        node_secret: given.node_secret.filter(|s| !s.is_empty()),
    })
}

/// What a cluster node presents to controllers and peers: the node secret, or (not
/// recommended, but what nodes used before the node secret existed) the cluster secret.
fn node_credential(cli: &Cli) -> Result<String> {
    let given = given_secrets(cli)?;
    match (given.node_secret, given.secret) {
        (Some(_), Some(_)) => bail!(
            "give a cluster node the node secret only, not the cluster secret too: app code \
             can read what its node holds"
        ),
        (Some(node), None) => Ok(node),
        (None, Some(cluster)) => {
            tracing::warn!(
                "this node holds the cluster secret, with which its app code could administer \
                 the whole cluster; give it the node secret instead (--node-secret-file)"
            );
            Ok(cluster)
        }
        (None, None) => bail!(
            "cluster mode needs the node secret: --node-secret-file, --node-secret or \
             REBEAM_NODE_SECRET (the cluster secret also works, not recommended)"
        ),
    }
}

/// The client tokens from --client-token and --client-token-file, and on --dev the deploy
/// token `--app` submits with (the client it uses asks every node's gateway, workers too).
fn given_tokens(cli: &Cli) -> Result<Vec<StaticToken>> {
    let mut tokens = cli.client_tokens.clone();
    if let Some(path) = &cli.client_token_file {
        tokens.extend(read_token_file(path).map_err(anyhow::Error::msg)?);
    }
    if let Some((_, token)) = DEV_CLIENT.get() {
        tokens.push(StaticToken {
            role: rebeam_auth::Role::Deploy,
            token: token.clone(),
        });
    }
    Ok(tokens)
}

fn run(cli: Cli) -> Result<i32> {
    if cli.dev != cli.controllers.is_empty() {
        bail!("pass either --dev (a single-machine node) or --controllers ADDR[,ADDR...] (join a cluster)");
    }
    // Checked before anything starts, so a wrong file is reported at once.
    let tls = rebeam_tls::TlsFiles::from_options(
        cli.tls_cert.clone(),
        cli.tls_key.clone(),
        cli.tls_ca.clone(),
    )?
    .map(rebeam_tls::TlsSource::load)
    .transpose()
    .context("setting up TLS")?;
    pyo3::append_to_inittab!(_rebeam_native);
    Python::initialize();
    python_leaves_sigint_alone()?;
    let rt = python::start_node(&NodeConfig {
        name: cli.name.clone(),
        executors: cli.executors,
        ..NodeConfig::default()
    });
    rt.set_default_mailbox_limit(rebeam_node::runtime::MailboxLimit {
        messages: cli.max_mailbox,
        bytes: cli.max_mailbox_bytes,
    });
    if !(0.0..=1.0).contains(&cli.memory_guard) {
        bail!(
            "--memory-guard must be a fraction between 0 (off) and 1, got {}",
            cli.memory_guard
        );
    }
    rebeam_node::guard::start(
        rt.clone(),
        rebeam_node::guard::MemoryGuard {
            limit: cli
                .memory_limit
                .unwrap_or_else(rebeam_node::guard::default_limit),
            fraction: cli.memory_guard,
        },
    );
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rebeam-io")
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    let tracing = cli
        .otlp_endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .map(|endpoint| rebeam_node::observe::trace::TraceConfig {
            endpoint,
            sample_ratio: cli.trace_sample_ratio,
            node: cli.name.clone(),
        });
    if let Some(config) = &tracing {
        rebeam_node::observe::trace::init(tokio.handle(), config)?;
    }
    // Imported whole before any server starts: a request that reaches Python on another
    // thread (the gateway's ListTables imports `rebeam._table`) while this thread is still
    // inside `import rebeam` trips importlib's deadlock detection, and one of them gets a
    // partially initialized module (the node then exits at start, 1 in ~10 test runs).
    Python::attach(|py| -> Result<()> {
        py.import("rebeam")
            .map_err(|e| python_error(py, e))
            .context(
                "cannot import the rebeam package; install it with `pip install ./client-py`",
            )?;
        if let Some(config) = &tracing {
            rebeam_node::observe::trace::init_python(py, config);
        }
        Ok(())
    })?;
    // The HTTP server serves HTTPS with the same certificates when TLS is on.
    let http_tls = tls.clone();
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    if cli.dev {
        #[cfg(not(feature = "dev"))]
        bail!("this rebeam-node was built without the `dev` feature, so it embeds no controller: join a cluster with --controllers ADDR, or build with default features for --dev");
        #[cfg(feature = "dev")]
        {
            let (controllers, secret, data_dir, core) =
                start_dev_controller(&cli, &tokio, tls.clone())?;
            let workers = worker_count(&cli, tls.is_some())?;
            let issued = join_cluster(
                &cli,
                &rt,
                &tokio,
                controllers.clone(),
                secret.clone(),
                data_dir.clone(),
                tls,
            )?;
            if workers > 1 {
                start_workers(&cli, workers, &controllers, &secret, &data_dir)?;
            }
            // The dev dashboard is the embedded controller's: its members hold the cluster
            // secret, not the node secret the workers (and their app code) hold.
            let mut access = http_access(&cli, &core.config.secret, issued)?;
            access.tls = http_tls;
            let addr = cli
                .http_listen
                .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
            let bound = rebeam_node::observe::http::start(
                &tokio,
                addr,
                rt.clone(),
                Some(dev_routes(core)),
                access,
            )?;
            eprintln!("rebeam-node: dashboard at {http_scheme}://{bound}/");
        }
    } else {
        let secret = node_credential(&cli)?;
        let data_dir = cli
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("rebeam-data").join(&cli.name));
        let issued = join_cluster(
            &cli,
            &rt,
            &tokio,
            cli.controllers.clone(),
            secret.clone(),
            data_dir,
            tls,
        )?;
        let mut access = http_access(&cli, &secret, issued)?;
        access.tls = http_tls;
        if let Some(addr) = cli.http_listen {
            let bound = rebeam_node::observe::http::start(&tokio, addr, rt.clone(), None, access)?;
            eprintln!("rebeam-node: http at {http_scheme}://{bound}/");
        }
    }
    // The I/O runtime lives as long as the process.
    std::mem::forget(tokio);
    if let Some(dir) = &cli.app {
        // With worker nodes the app goes through the embedded controller, as a submitted
        // app: its children spread over the workers and `rebeam tree`, `upgrade` and
        // `rollback` work on it. One worker keeps the local root supervisor.
        let submit = DEV_CLIENT
            .get()
            .filter(|_| !rebeam_node::dev::pids().is_empty());
        return run_app(dir, submit);
    }
    if let Some(script) = &cli.run {
        let argv: Vec<String> = std::iter::once(script.display().to_string())
            .chain(cli.args.iter().cloned())
            .collect();
        return run_python(&argv, |py| {
            py.import("runpy")?
                .call_method1(
                    "run_path",
                    (script.display().to_string(), PyDict::new(py), "__main__"),
                )
                .map(drop)
        });
    }
    if let Some(module) = &cli.module {
        let argv: Vec<String> = std::iter::once(module.clone())
            .chain(cli.args.iter().cloned())
            .collect();
        return run_python(&argv, |py| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("run_name", "__main__")?;
            kwargs.set_item("alter_sys", true)?;
            py.import("runpy")?
                .call_method("run_module", (module.as_str(),), Some(&kwargs))
                .map(drop)
        });
    }
    // Nothing to run here: serve the cluster (a dev node waits for apps to be submitted).
    serve_cluster()
}

/// The embedded default: a one-member controller in this process, state in `--data-dir`
/// (or a fresh directory removed at exit), so global names, groups and apps work on one
/// machine exactly as in a cluster.
#[cfg(feature = "dev")]
fn start_dev_controller(
    cli: &Cli,
    tokio: &tokio::runtime::Runtime,
    tls: Option<rebeam_tls::TlsSource>,
) -> Result<DevController> {
    let data_dir = match &cli.data_dir {
        Some(dir) => dir.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "rebeam-dev-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            DEV_DIR.set(dir.clone()).ok();
            dir
        }
    };
    let given = given_secrets(cli)?;
    let secret = given
        .secret
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let mut config =
        rebeam_controller::ControllerConfig::single(data_dir.join("controller"), secret.clone());
    // With a node secret the dev node and its workers present it, as cluster nodes do.
    let node_secret = given.node_secret;
    config.node_secret = node_secret.clone().unwrap_or_default();
    config.client_tokens = given_tokens(cli)?;
    // `--app` submits through this controller like `rebeam submit`, with a deploy token of
    // its own (never printed).
    let app_token = format!("{:032x}", rand::random::<u128>());
    config.client_tokens.push(StaticToken {
        role: rebeam_auth::Role::Deploy,
        token: app_token.clone(),
    });
    config.api_listen = cli.api_listen;
    config.connections = cli.serving.connections();
    config.rate_limit = cli.serving.rate_limit();
    config.max_streams_per_token = cli.serving.max_streams_per_token;
    let scheme = if tls.is_some() { "https" } else { "http" };
    config.tls = tls;
    if let Some(endpoint) = cli.otlp_endpoint.clone().filter(|e| !e.is_empty()) {
        // The embedded controller's requests and Raft writes are spans of their own
        // service, as a standalone controller's are (its exporter runs on `tokio`).
        let _entered = tokio.enter();
        rebeam_controller::trace::init(&rebeam_controller::trace::TraceConfig {
            endpoint,
            sample_ratio: cli.trace_sample_ratio,
            member: config.id,
        })?;
    }
    let handle = tokio
        .block_on(rebeam_controller::start(config))
        .context("starting the embedded controller")?;
    tokio
        .block_on(handle.wait_for_leader(std::time::Duration::from_secs(10)))
        .context("the embedded controller did not elect itself")?;
    let api = handle.api_addr().to_string();
    DEV_CLIENT
        .set((format!("{scheme}://{api}"), app_token))
        .ok();
    // Printed, not only logged: a user (or a test) needs the address to connect a client.
    eprintln!("rebeam-node: dev controller at {scheme}://{api}");
    let core = handle.core();
    // The controller lives as long as the process.
    std::mem::forget(handle);
    let presented = node_secret.unwrap_or(secret);
    Ok((vec![api], presented, data_dir.join("node"), core))
}

/// How many worker nodes a dev node runs, itself included (see `--workers`).
#[cfg(feature = "dev")]
fn worker_count(cli: &Cli, tls: bool) -> Result<usize> {
    let quiet = cli.run.is_some() || cli.module.is_some();
    match cli.workers {
        Some(n) if n > 1 && tls => {
            bail!("--workers {n} with TLS: worker nodes need certificates of their own; run them as cluster nodes instead")
        }
        Some(n) => Ok(usize::from(n)),
        None if quiet || tls => Ok(1),
        None => Ok(rebeam_node::dev::default_count()),
    }
}

/// Starts `count - 1` worker node processes joined to the embedded controller and waits
/// (up to 30 s) until they are members, so apps and `rebeam.nodes()` see them all.
#[cfg(feature = "dev")]
fn start_workers(
    cli: &Cli,
    count: usize,
    controllers: &[String],
    secret: &str,
    data_dir: &std::path::Path,
) -> Result<()> {
    // Workers run app code: they get the tokens' digests, not the tokens.
    let tokens: Vec<String> = given_tokens(cli)?
        .iter()
        .map(|t| format!("{}:{}", t.role, rebeam_auth::token_hash(&t.token)))
        .chain(
            cli.client_token_digests
                .iter()
                .map(|d| format!("{}:{}", d.role, d.sha256)),
        )
        .collect();

    let specs: Vec<rebeam_node::dev::WorkerSpec> = (1..count)
        .map(|i| {
            let name = format!("{}-w{i}", cli.name);
            let args = vec![
                "--controllers".to_string(),
                controllers.join(","),
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                data_dir
                    .with_file_name(format!("node-w{i}"))
                    .display()
                    .to_string(),
                "--executors".into(),
                cli.executors.to_string(),
                "--max-mailbox".into(),
                cli.max_mailbox.to_string(),
                "--max-mailbox-bytes".into(),
                cli.max_mailbox_bytes.to_string(),
                "--memory-guard".into(),
                cli.memory_guard.to_string(),
            ];
            // What this node presents (the embedded controller's secret unless a node secret
            // was given), passed as the node secret so that a worker takes it for one.
            let mut env = vec![("REBEAM_NODE_SECRET", secret.to_string())];
            if !tokens.is_empty() {
                // Clients reach processes through the gateway of the node holding them.
                env.push(("REBEAM_CLIENT_TOKEN_DIGESTS", tokens.join(",")));
            }
            rebeam_node::dev::WorkerSpec { name, args, env }
        })
        .collect();
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    rebeam_node::dev::start(specs).context("starting the worker nodes")?;
    let rt = python::node_runtime().map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let alive: Vec<String> = rt
            .host
            .remote
            .get()
            .map(|r| r.members())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, _, _, alive)| *alive)
            .map(|(name, ..)| name)
            .collect();
        if names.iter().all(|n| alive.contains(n)) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!("rebeam-node: not every worker joined within 30 s; going on without them");
            break;
        }
        Python::attach(|py| py.detach(|| std::thread::sleep(std::time::Duration::from_millis(20))));
    }
    eprintln!(
        "rebeam-node: {count} worker nodes: {}, {}",
        cli.name,
        names.join(", ")
    );
    Ok(())
}

/// The embedded controller's addresses, the secret the dev node presents, the node's data
/// dir and its shared handles.
#[cfg(feature = "dev")]
type DevController = (
    Vec<String>,
    String,
    PathBuf,
    std::sync::Arc<rebeam_controller::core::Core>,
);

/// The embedded controller's REST API, metrics and dashboard, served by the node's HTTP
/// server.
#[cfg(feature = "dev")]
fn dev_routes(
    core: std::sync::Arc<rebeam_controller::core::Core>,
) -> rebeam_node::observe::http::ControllerRoutes {
    Box::new(move |auth| rebeam_controller::http::member::api_routes(core, auth))
}

/// Who may use the node's HTTP server: its flags, the cluster secret in use and the tokens
/// the controller issued (as the gateway: they arrive through the watch stream).
fn http_access(
    cli: &Cli,
    secret: &str,
    issued: std::sync::Arc<dyn TokenSource>,
) -> Result<rebeam_node::observe::http::NodeHttp> {
    let issued = Some(issued);
    Ok(rebeam_node::observe::http::NodeHttp {
        credentials: Credentials::new(secret.to_string(), given_tokens(cli)?, issued)
            .with_token_digests(cli.client_token_digests.clone())
            .with_rate_limit(cli.serving.rate_limit())
            .with_stream_limit(cli.serving.max_streams_per_token),
        connections: cli.serving.connections(),
        read_tokens: cli.http_read_tokens.clone(),
        allowed_hosts: cli.http_allowed_hosts.clone(),
        tls: None,
    })
}

/// The embedded controller's client URL and the deploy token `--app` submits with.
static DEV_CLIENT: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// The dev node's scratch directory, removed at exit.
static DEV_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Starts the cluster side: the peer service, then join (waits until a controller answers).
fn join_cluster(
    cli: &Cli,
    rt: &std::sync::Arc<python::PyRuntime>,
    tokio: &tokio::runtime::Runtime,
    controllers: Vec<String>,
    secret: String,
    data_dir: PathBuf,
    tls: Option<rebeam_tls::TlsSource>,
) -> Result<std::sync::Arc<dyn TokenSource>> {
    let mut labels = std::collections::HashMap::new();
    for label in &cli.labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--label {label:?} must be KEY=VALUE"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let listener = tokio
        .block_on(tokio::net::TcpListener::bind(cli.listen))
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let bound = listener.local_addr()?;
    let config = ClusterConfig {
        controllers,
        listen: bound,
        advertise: cli.advertise.clone(),
        labels,
        capacity: cli.capacity,
        secret: secret.clone(),
        data_dir,
        tls: tls.clone(),
    };
    let cluster = Cluster::new(rt.clone(), tokio.handle().clone(), config);
    let ports = std::sync::Arc::new(rebeam_node::cluster::ports::Ports(cluster.clone()));
    rt.host.connect(ports.clone(), ports);
    // auth::RPC_TABLE decides per method: the gateway needs a client role (tokens issued by
    // the controller arrive through the watch stream). Peer connections authenticate in the
    // peer transport's own handshake (the secret, or a node certificate with TLS).
    let credentials = Credentials::new(
        secret,
        given_tokens(cli)?,
        Some(cluster.tokens.clone() as std::sync::Arc<dyn TokenSource>),
    )
    .with_token_digests(cli.client_token_digests.clone())
    .with_mtls(tls.is_some())
    .with_rate_limit(cli.serving.rate_limit())
    .with_stream_limit(cli.serving.max_streams_per_token);
    let wire_credentials = credentials.clone();
    let authorize: rebeam_node::cluster::transport::client::Authorize = std::sync::Arc::new(
        move |token: &str, info: &rebeam_tls::PeerInfo, hold: bool| {
            // The client wire asks exactly what a gRPC `Deliver` with this bearer would.
            let mut headers = tonic::codegen::http::HeaderMap::new();
            let bearer = tonic::codegen::http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| tonic::Status::unauthenticated("the token is not valid text"))?;
            headers.insert("authorization", bearer);
            let members = info
                .certs
                .as_ref()
                .and_then(|c| c.first())
                .map(rebeam_tls::identity::members_of)
                .unwrap_or_default();
            let (path, remote) = (
                "/rebeam.v1.GatewayService/Deliver",
                info.remote.map(|a| a.ip()),
            );
            if hold {
                wire_credentials
                    .admit(path, &headers, &members, remote)
                    .map(|admitted| admitted.slot)
            } else {
                wire_credentials
                    .authorize(path, &headers, &members, remote)
                    .map(|_| None)
            }
        },
    );
    let gateway = Guard::new(
        rebeam_proto::gateway_service_server::GatewayServiceServer::new(Gateway {
            cluster: cluster.clone(),
        }),
        credentials.clone(),
    );
    if let Some(tls) = &tls {
        let _guard = tokio.enter();
        tls.watch();
    }
    // Peers on this host may connect on a Unix socket too.
    rebeam_node::cluster::transport::local::listen(&cluster, bound);
    // The peer port serves the peer transport (the data plane) and gRPC (the gateway).
    let peers = cluster.clone();
    let split = rebeam_node::cluster::transport::accept::split;
    let connections = cli.serving.connections();
    tokio.spawn(async move {
        let served = connections
            .grpc_server()
            .add_service(gateway)
            .serve_with_incoming(split(
                peers,
                authorize,
                rebeam_tls::incoming(listener, tls, connections, "gateway"),
            ))
            .await;
        // The controller takes a refused connection at this address, after this node's
        // watch stream closed, as proof that the process is gone (and declares it dead at
        // once): the process must not outlive its listener.
        match served {
            Err(err) => tracing::error!("peer service stopped: {err}; exiting"),
            Ok(()) => tracing::error!("peer service stopped; exiting"),
        }
        std::process::exit(70);
    });
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let issued = cluster.tokens.clone() as std::sync::Arc<dyn TokenSource>;
    tokio.spawn(control::run(cluster, joined_tx));
    let incarnation = Python::attach(|py| py.detach(|| tokio.block_on(joined_rx)))
        .context("the control loop stopped before joining")?;
    if !cli.dev {
        eprintln!(
            "rebeam-node: {} joined the cluster (incarnation {incarnation}), peers dial {bound}",
            cli.name
        );
    }
    Ok(issued)
}

/// A cluster node with nothing else to run serves its placed children until SIGINT/SIGTERM.
fn serve_cluster() -> Result<i32> {
    let (stop, stopped) = std::sync::mpsc::channel();
    on_shutdown_signal(move || {
        eprintln!("rebeam-node: stopping (again to exit at once)");
        let _ = stop.send(());
    })?;
    let _ = Python::attach(|py| py.detach(move || stopped.recv()));
    // Workers first: they depart through the embedded controller, which stops with us.
    Python::attach(|py| py.detach(rebeam_node::dev::stop));
    if let Ok(rt) = python::node_runtime() {
        Python::attach(|py| py.detach(|| rebeam_node::shutdown::depart(rt)));
    }
    Ok(0)
}

/// Runs `first` on the first SIGINT/SIGTERM and exits at once on the next: an orderly stop
/// that a second Ctrl-C can always cut short.
fn on_shutdown_signal(first: impl FnOnce() + Send + 'static) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("rebeam-signals".into())
        .spawn(move || {
            let mut first = Some(first);
            for _ in signals.forever() {
                match first.take() {
                    Some(first) => first(),
                    None => exit_process(130),
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The `_rebeam_native` module, registered before the interpreter starts.
#[pymodule]
fn _rebeam_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    python::native::init_module(m)
}

/// Runs Python code on the main thread with `sys.argv` set; maps SystemExit and errors
/// to an exit status.
fn run_python(argv: &[String], body: impl FnOnce(Python<'_>) -> PyResult<()>) -> Result<i32> {
    Python::attach(|py| {
        let sys = py.import("sys")?;
        sys.setattr("argv", PyList::new(py, argv)?)?;
        Ok(match body(py) {
            Ok(()) => 0,
            Err(err) => exit_status(py, err),
        })
    })
}

fn exit_status(py: Python<'_>, err: PyErr) -> i32 {
    if err.is_instance_of::<pyo3::exceptions::PySystemExit>(py) {
        let code = err.value(py).getattr("code").ok();
        return match code {
            Some(c) if c.is_none() => 0,
            Some(c) => c.extract::<i32>().unwrap_or_else(|_| {
                eprintln!("{c}");
                1
            }),
            None => 1,
        };
    }
    err.print(py);
    1
}

fn python_error(py: Python<'_>, err: PyErr) -> anyhow::Error {
    let text = err
        .traceback(py)
        .and_then(|tb| tb.format().ok())
        .unwrap_or_default();
    anyhow::anyhow!("{text}{}", err.value(py))
}

/// Gives SIGINT back to its default in Python. Importing `signal` (asyncio does, so
/// `import rebeam` does) installs Python's handler even in an interpreter started without
/// signal handlers, and that handler raises KeyboardInterrupt in whatever process the main
/// thread runs; the node turns SIGINT into an orderly shutdown itself (signal-hook).
fn python_leaves_sigint_alone() -> Result<()> {
    Python::attach(|py| -> PyResult<()> {
        let signal = py.import("signal")?;
        signal.call_method1(
            "signal",
            (signal.getattr("SIGINT")?, signal.getattr("SIG_DFL")?),
        )?;
        Ok(())
    })
    .context("resetting Python's SIGINT handler")
}

/// Runs an application until SIGINT/SIGTERM, then shuts its tree down in order.
fn run_app(dir: &std::path::Path, submit: Option<&(String, String)>) -> Result<i32> {
    on_shutdown_signal(|| {
        let master = python::node_runtime()
            .ok()
            .and_then(|rt| rt.whereis("$app_master").map(|pid| (rt, pid)));
        match master {
            Some((rt, pid)) => {
                eprintln!("rebeam-node: shutting down (press Ctrl-C again to exit at once)");
                rt.exit_signal(pid, pid, Reason::Shutdown);
            }
            None => exit_process(130),
        }
    })?;
    let dir = dir.display().to_string();
    run_python(std::slice::from_ref(&dir), |py| {
        let app = py.import("rebeam._app")?;
        let rebeam = py.import("rebeam")?;
        let code = match submit {
            Some((url, token)) => rebeam.call_method1(
                "run",
                (
                    app.getattr("run_submitted")?,
                    dir.as_str(),
                    url.as_str(),
                    token.as_str(),
                ),
            )?,
            None => rebeam.call_method1("run", (app.getattr("run_app")?, dir.as_str()))?,
        };
        Err(pyo3::exceptions::PySystemExit::new_err(code.unbind()))
    })
}

fn flush_python() {
    Python::attach(|py| {
        if let Ok(sys) = py.import("sys") {
            for stream in ["stdout", "stderr"] {
                if let Ok(s) = sys.getattr(stream) {
                    let _ = s.call_method0("flush");
                }
            }
        }
    });
}
