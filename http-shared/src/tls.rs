//! HTTPS for the HTTP server: when the member has TLS files, its dashboard, REST API and
//! metrics take their connections through the same acceptor as its gRPC services (same
//! certificates, same reload), so nothing is served in plaintext beside a TLS cluster.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use rebeam_tls::{ServerIo, TlsSource};
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

/// TLS-handshaken connections on a bound listener, as axum serves them.
pub struct HttpsListener {
    incoming: Pin<Box<dyn Stream<Item = io::Result<ServerIo>> + Send>>,
    addr: SocketAddr,
}

impl HttpsListener {
    /// Handshakes every connection accepted on `listener` with `tls`' current certificate.
    pub fn new(
        listener: TcpListener,
        addr: SocketAddr,
        tls: TlsSource,
        limits: rebeam_tls::ConnLimits,
    ) -> Self {
        HttpsListener {
            incoming: Box::pin(rebeam_tls::incoming_http1(listener, tls, limits)),
            addr,
        }
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerIo, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => {
                    // A remote address the socket no longer knows is reported as unspecified.
                    let remote = io
                        .connect_info()
                        .remote
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (io, remote);
                }
                // The accept loop logs and backs off on its own errors.
                Some(Err(_)) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
