//! A controller member over HTTP: its readiness (a voter that sees a leader) and the
//! routes it serves.

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;

use crate::core::Core;
use crate::http::api::{self, Api};
use crate::http::auth::{self, AccessPolicy, ClusterTokens, HttpAuth};
use crate::http::health::{self, Readiness};
use crate::http::live::{self, Series};
use crate::http::metrics::{self, HttpStats};
use crate::http::pages;

impl Readiness for Core {
    fn readiness(&self) -> Result<(), String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if let Err(e) = &m.running_state {
            return Err(format!("raft stopped: {e}"));
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return Err(format!(
                "member {} is not a voter of the controller group (yet)",
                self.id
            ));
        }
        match m.current_leader {
            // openraft keeps a leader cut off from its quorum a leader; only a recent quorum
            // acknowledgement (the one lease renewals also need) shows it still leads.
            Some(leader)
                if leader == self.id
                    && !self
                        .leases
                        .confirmed_within(m.current_term, self.config.timings.confirm_within()) =>
            {
                Err("leader without a recent quorum acknowledgement; it may be cut off".into())
            }
            // The pre-vote keeps a follower cut off from its quorum from raising the term,
            // so openraft goes on naming the last leader: only its recent word counts.
            Some(leader)
                if leader != self.id
                    && !self
                        .contact
                        .leader_within(self.config.timings.election_timeout * 4) =>
            {
                Err(format!(
                    "no word from leader {leader} within twice its lease; it may be gone or cut off"
                ))
            }
            Some(_) => Ok(()),
            None => Err("no leader known; waiting for an election".into()),
        }
    }
}

/// Options of the HTTP server beyond the controller's configuration.
#[derive(Clone, Debug, Default)]
pub struct HttpOptions {
    /// Tokens that may read everything and change nothing.
    pub read_tokens: Vec<String>,
    /// Host names answered besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// The authentication of `core`'s HTTP server: the cluster's credentials (secret, static
/// and issued tokens with their roles), plus `opts`' read-only tokens.
pub fn http_auth(core: &Core, opts: &HttpOptions) -> Arc<HttpAuth> {
    let tokens = ClusterTokens::new(core.credentials(), &opts.read_tokens);
    Arc::new(HttpAuth::new(
        Arc::new(tokens),
        AccessPolicy {
            allowed_hosts: opts.allowed_hosts.clone(),
        },
    ))
}

/// Everything a controller member serves over HTTP, behind the access guard.
pub fn router(core: Arc<Core>, opts: &HttpOptions) -> Router {
    let auth = http_auth(&core, opts);
    health::routes(core.clone())
        .merge(api_routes(core, auth.clone()))
        .layer(from_fn_with_state(auth, auth::guard))
}

/// The routes besides the probes, unguarded (the caller adds [`auth::guard`]); a dev node
/// serves these next to its own probes. Starts the sampling and election-watching tasks.
pub fn api_routes(core: Arc<Core>, auth: Arc<HttpAuth>) -> Router {
    let stats = Arc::new(HttpStats::default());
    let series = Arc::new(Series::default());
    tokio::spawn(metrics::watch_elections(core.clone(), stats.clone()));
    let api = Api::new(core.clone());
    tokio::spawn(live::poll_nodes(api.clone()));
    tokio::spawn(live::sample(
        core.clone(),
        stats.clone(),
        series.clone(),
        api.clone(),
    ));
    let metrics_core = core.clone();
    let metrics_stats = stats.clone();
    let metrics_api = api.clone();
    Router::new()
        .merge(api::routes(api))
        .merge(pages::routes(auth))
        .route(
            "/metrics",
            get(move || {
                let (c, s, a) = (
                    metrics_core.clone(),
                    metrics_stats.clone(),
                    metrics_api.clone(),
                );
                async move {
                    // A scrape gathers the processes when no list is cached, else serves
                    // the cached one (refreshed behind), as a dashboard page does.
                    let list = a.processes("").await;
                    metrics::render(&c, &s, &a, &list).into_response()
                }
            }),
        )
        .route("/api/v1/series", get(live::series).with_state(series))
        .route("/api/v1/stream", get(live::stream).with_state(core))
        .layer(from_fn_with_state(stats, metrics::count))
}
