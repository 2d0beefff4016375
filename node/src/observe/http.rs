//! The node's HTTP server: its readiness (holds its lease), its `/metrics`, and on `--dev`
//! the embedded controller's dashboard and API beside them, all behind the access guard.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::get;
use rebeam_http::auth::{guard, AccessPolicy, ClusterTokens, HttpAuth};
use rebeam_http::health::{self, Readiness};
use rebeam_http::HttpListener;

use crate::python::host::PyRuntime;

/// A node is ready once it joined a cluster and while it holds its lease.
pub struct NodeReadiness {
    rt: Arc<PyRuntime>,
}

impl Readiness for NodeReadiness {
    fn readiness(&self) -> Result<(), String> {
        if self.rt.host.remote.get().is_none() {
            return Err("not joined to a cluster yet".into());
        }
        if !self.rt.lease_ok() {
            return Err("the node's lease lapsed; it is fenced until it rejoins".into());
        }
        Ok(())
    }
}

/// Who may use a node's HTTP server: the cluster's credentials (roles as on gRPC) and
/// read-only tokens; host names besides IP literals and localhost.
pub struct NodeHttp {
    /// The cluster secret and client tokens with their roles.
    pub credentials: rebeam_auth::Credentials,
    /// Read-only tokens.
    pub read_tokens: Vec<String>,
    /// Extra host names answered.
    pub allowed_hosts: Vec<String>,
    /// The node's TLS files: the server speaks HTTPS with them when given.
    pub tls: Option<rebeam_tls::TlsSource>,
    /// Connection cap and idle timeout of the HTTP listener.
    pub connections: rebeam_tls::ConnLimits,
}

/// The routes of a controller embedded in this process (`--dev`), built with the node's
/// HTTP auth: a function, so this layer never names the controller crate.
pub type ControllerRoutes = Box<dyn FnOnce(Arc<HttpAuth>) -> axum::Router + Send>;

/// Binds `addr` and serves the node's routes (and the embedded controller's, on `--dev`)
/// on `tokio` for the life of the process; returns the bound address.
pub fn start(
    tokio: &tokio::runtime::Runtime,
    addr: SocketAddr,
    rt: Arc<PyRuntime>,
    controller: Option<ControllerRoutes>,
    access: NodeHttp,
) -> rebeam_grpc::Result<SocketAddr> {
    let _entered = tokio.enter();
    let rt_for_metrics = rt.clone();
    let listener = tokio
        .block_on(HttpListener::bind(addr))?
        .with_tls(access.tls)
        .with_limits(access.connections)
        .with_tracer(super::trace::tracer);
    let bound = listener.addr();
    let auth = Arc::new(HttpAuth::new(
        Arc::new(ClusterTokens::new(access.credentials, &access.read_tokens)),
        AccessPolicy {
            allowed_hosts: access.allowed_hosts,
        },
    ));
    let node_metrics = get(move || {
        let rt = rt_for_metrics.clone();
        async move { super::metrics::render(&rt).into_response() }
    });
    let mut router =
        health::routes(Arc::new(NodeReadiness { rt })).route("/node/metrics", node_metrics.clone());
    router = match controller {
        // On --dev, /metrics is the controller's; the node's own stay at /node/metrics.
        Some(routes) => router.merge(routes(auth.clone())),
        None => router.route("/metrics", node_metrics),
    };
    let router = router.layer(from_fn_with_state(auth, guard));
    tokio.spawn(listener.serve(router, std::future::pending()));
    Ok(bound)
}
