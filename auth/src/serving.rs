//! The flags that bound what clients may hold and ask of a server, shared by the
//! controller and node binaries so both take the same names and defaults.

/// Bounds on what clients may hold and ask of a server (`--max-connections`,
/// `--idle-timeout-ms`, `--rate-limit`, `--rate-burst`, `--max-streams-per-token`), shared
/// by controllers and nodes.
#[derive(clap::Args, Debug, Clone)]
pub struct ServingArgs {
    /// Connections each listener (API, Raft, HTTP) holds open at most; past it new ones are
    /// closed at once. 0 means no cap.
    #[arg(long, env = "REBEAM_MAX_CONNECTIONS", default_value_t = rebeam_tls::limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Close a connection with no request in flight after this long (ms); 0 never.
    #[arg(long, env = "REBEAM_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub idle_timeout_ms: u64,
    /// Requests per second each client token may make (and failed authentications per
    /// address); 0 turns the limit off.
    #[arg(long, env = "REBEAM_RATE_LIMIT", default_value_t = crate::rate::DEFAULT_RATE)]
    pub rate_limit: f64,
    /// Requests a client token may make at once after a quiet spell.
    #[arg(long, env = "REBEAM_RATE_BURST", default_value_t = crate::rate::DEFAULT_BURST)]
    pub rate_burst: f64,
    /// Requests and streams (log follows, live views, pending calls) each client token may
    /// have in flight at once on each server; past it `resource_exhausted` / HTTP 429. 0
    /// means no cap.
    #[arg(long, env = "REBEAM_MAX_STREAMS_PER_TOKEN", default_value_t = crate::streams::DEFAULT_MAX_STREAMS)]
    pub max_streams_per_token: usize,
}

impl ServingArgs {
    /// The connection limits these flags set.
    pub fn connections(&self) -> rebeam_tls::ConnLimits {
        rebeam_tls::ConnLimits {
            max_connections: self.max_connections,
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// The request rate limit these flags set.
    pub fn rate_limit(&self) -> crate::rate::RateLimit {
        crate::rate::RateLimit {
            per_second: self.rate_limit,
            burst: self.rate_burst,
        }
    }
}
