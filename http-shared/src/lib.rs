//! The HTTP side controllers and nodes share: one listener for HTTP and HTTPS with the
//! connection limits of the gRPC servers, the dashboard and API auth guard, health probes,
//! the Prometheus text format and the stuck-process rules. Served by axum beside (never
//! inside) the gRPC services.

pub mod auth;
pub mod health;
pub mod prom;
pub mod ptable;
pub mod stuck;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use futures::{Stream, StreamExt};
use rebeam_tls::{Activity, ConnLimits, ServerIo};
use tokio::net::TcpListener;

use rebeam_grpc::{Error, Result};

/// A bound HTTP listener, so the caller learns the port (`:0`) before serving.
pub struct HttpListener {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<rebeam_tls::TlsSource>,
    limits: ConnLimits,
    tracer: Option<trace::TracerSource>,
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
            limits: ConnLimits::default(),
            tracer: None,
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

    /// Holds connections to `limits` (cap and idle timeout) instead of the defaults.
    pub fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Gives each request a server span from `tracer` (see [`trace::server_span`]).
    pub fn with_tracer(mut self, tracer: trace::TracerSource) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `stop` completes, through the same accept loop as the gRPC
    /// servers (connection cap, idle timeout, `TCP_NODELAY`: small JSON answers written after
    /// an await otherwise wait out a delayed ACK).
    pub async fn serve(self, router: Router, stop: impl Future<Output = ()> + Send + 'static) {
        // Outermost, so refused requests (the auth guard's 401s) have spans too.
        let router = match self.tracer {
            Some(t) => router.layer(axum::middleware::from_fn_with_state(t, trace::server_span)),
            None => router,
        };
        if let Some(tls) = self.tls {
            let listener = tls::HttpsListener::new(self.listener, self.addr, tls, self.limits);
            let router = router.layer(axum::middleware::from_fn(auth::secure_cookies));
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
        let listener = Limited {
            conns: Box::pin(rebeam_tls::incoming(
                self.listener,
                None,
                self.limits,
                "http",
            )),
            local: self.addr,
        };
        let router = router.layer(axum::middleware::from_fn(in_flight));
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<HttpConn>(),
        )
        .with_graceful_shutdown(stop)
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http listener failed");
        }
    }
}

/// What a handler may learn about the connection a request came on.
#[derive(Debug, Clone)]
pub struct HttpConn {
    /// The remote address.
    pub remote: Option<SocketAddr>,
    activity: Option<Arc<Activity>>,
}

/// The limited connections of one HTTP listener, as axum accepts them.
struct Limited {
    conns: Pin<Box<dyn Stream<Item = std::io::Result<ServerIo>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for Limited {
    type Io = ServerIo;
    type Addr = HttpConn;

    async fn accept(&mut self) -> (ServerIo, HttpConn) {
        loop {
            match self.conns.next().await {
                Some(Ok(io)) => {
                    let info = io.peer_info();
                    let conn = HttpConn {
                        remote: info.remote,
                        activity: info.activity,
                    };
                    return (io, conn);
                }
                Some(Err(_)) => continue,
                // The accept loop ended (it never does while the listener lives).
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<HttpConn> {
        Ok(HttpConn {
            remote: Some(self.local),
            activity: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Limited>> for HttpConn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Limited>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Marks each request in flight on its connection until its body is sent, so the idle
/// timeout spares a connection serving an event stream.
async fn in_flight(req: Request, next: Next) -> Response {
    let busy = req
        .extensions()
        .get::<ConnectInfo<HttpConn>>()
        .and_then(|c| c.0.activity.as_ref())
        .map(|a| a.begin());
    let response = next.run(req).await;
    match busy {
        Some(busy) => response.map(|body| {
            axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                let _in_flight = &busy;
                frame
            }))
        }),
        None => response,
    }
}
