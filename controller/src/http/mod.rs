//! The HTTP side of a controller or node: health probes, the REST API, metrics and the
//! dashboard, served by axum beside (never inside) the gRPC services.

pub mod api;
pub mod auth;
pub mod health;
pub mod live;
pub mod logs;
pub mod member;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod pages;
pub mod prom;
pub mod stuck;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

/// A bound HTTP listener, so the caller learns the port (`:0`) before serving.
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<rebeam_tls::TlsSource>,
}

impl HttpListener {
    /// Binds `addr`; a clear error names the flag to change when the port is taken.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::invalid(format!(
                "cannot listen on {addr} for http: {e}; pick another --http-listen"
            ))
        })?;
        let addr = listener.local_addr().map_err(Error::internal)?;
        Ok(HttpListener {
            listener,
            addr,
            tls: None,
        })
    }

    /// Serves HTTPS with `tls` (the member's certificates) when given.
    pub fn with_tls(mut self, tls: Option<rebeam_tls::TlsSource>) -> Self {
        self.tls = tls;
        self
    }

    /// `https` when serving TLS, else `http`: for the URL a binary prints.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `stop` completes.
    pub async fn serve(self, router: Router, stop: impl Future<Output = ()> + Send + 'static) {
        if let Some(tls) = self.tls {
            let listener = tls::HttpsListener::new(self.listener, self.addr, tls);
            // No `ConnectInfo` here: axum provides it for its own listener only, and no
            // handler reads it.
            let served = axum::serve(listener, router.into_make_service())
                .with_graceful_shutdown(stop)
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "https listener failed");
            }
            return;
        }
        // Small JSON answers written after an await otherwise wait out a delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http listener failed");
        }
    }
}
