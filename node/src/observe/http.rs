//! The node's HTTP server: its readiness (holds its lease), and on `--dev` the embedded
//! controller's routes beside it.

use std::net::SocketAddr;
use std::sync::Arc;

use rebeam_controller::http::health::{self, Readiness};
use rebeam_controller::http::HttpListener;

use crate::python::host::PyRuntime;

/// A node is ready once it joined a cluster and while it holds its lease.
pub struct NodeReadiness {
    rt: Arc<PyRuntime>,
}

impl Readiness for NodeReadiness {
    fn readiness(&self) -> Result<(), String> {
        if self.rt.host.cluster.get().is_none() {
            return Err("not joined to a cluster yet".into());
        }
        if !self.rt.lease_ok() {
            return Err("the node's lease lapsed; it is fenced until it rejoins".into());
        }
        Ok(())
    }
}

/// Binds `addr` and serves the node's routes (and `controller`'s, on `--dev`) on `tokio`
/// for the life of the process; returns the bound address.
pub fn start(
    tokio: &tokio::runtime::Runtime,
    addr: SocketAddr,
    rt: Arc<PyRuntime>,
    controller: Option<Arc<rebeam_controller::core::Core>>,
) -> rebeam_controller::Result<SocketAddr> {
    let listener = tokio.block_on(HttpListener::bind(addr))?;
    let bound = listener.addr();
    let mut router = health::routes(Arc::new(NodeReadiness { rt }));
    if let Some(core) = controller {
        // Probes answer for the node; the controller adds what only it knows.
        router = router.merge(rebeam_controller::http::member::api_routes(core));
    }
    tokio.spawn(listener.serve(router, std::future::pending()));
    Ok(bound)
}
