//! The accepted connections every Re:BEAM server serves: plaintext TCP, or TLS handshaken
//! with the member's current certificate, with the peer's verified certificates attached.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::limits::{counters, Activity, ConnLimits, Slot};
use crate::source::TlsSource;

/// A handshake that has not finished by then is dropped (a silent client holds no slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One accepted connection, plaintext or TLS, holding its slot under the server's
/// connection cap; it reads as closed once idle past the server's idle timeout.
pub struct ServerIo {
    stream: Transport,
    slot: Slot,
}

/// The stream of an accepted connection, for a server that hands some connections to
/// another protocol (the node's peer transport shares the gateway's port).
pub enum Transport {
    /// TLS is off.
    Plain(TcpStream),
    /// A finished TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ServerIo {
    /// The stream and the slot it holds under the cap (keep the slot while serving it).
    pub fn into_parts(self) -> (Transport, Slot) {
        (self.stream, self.slot)
    }

    /// A connection put back together after [`ServerIo::into_parts`].
    pub fn from_parts(stream: Transport, slot: Slot) -> ServerIo {
        ServerIo { stream, slot }
    }

    /// What request handlers may learn about this connection.
    pub fn peer_info(&self) -> PeerInfo {
        let activity = Some(self.slot.activity());
        match &self.stream {
            Transport::Plain(tcp) => PeerInfo {
                remote: tcp.peer_addr().ok(),
                certs: None,
                activity,
            },
            Transport::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                PeerInfo {
                    remote: tcp.peer_addr().ok(),
                    certs: session
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
                    activity,
                }
            }
        }
    }
}

/// What a request's handler may learn about the connection it came on (in the request's
/// extensions): the remote address and, on TLS, the client's certificate chain, which the
/// handshake already verified against the CA.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote socket address.
    pub remote: Option<SocketAddr>,
    /// The verified client certificate chain (leaf first), when one was presented.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The connection's requests in flight: a handler marks its request with
    /// [`Activity::begin`] so the idle timeout spares the connection meanwhile.
    pub activity: Option<Arc<Activity>>,
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer_info()
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.slot.poll_idle(cx) {
            // End of stream: hyper closes the connection as if the client had.
            return Poll::Ready(Ok(()));
        }
        match &mut this.stream {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener` for the server called `server` (its counters in
/// [`crate::limits::stats`]), with `TCP_NODELAY` set and, when `tls` is given, each one's
/// handshake done (concurrently, with the configuration current at accept time, so a rotated
/// certificate applies to the next connection). Failed handshakes are logged and dropped: a
/// plaintext client, a wrong CA or a wrong name never reaches a service. Past
/// `limits.max_connections` a new connection is closed at once.
///
/// `TCP_NODELAY` matters: without it a reply written in two parts (headers, then the body
/// of a handler that awaited) sat out the peer's 40 ms delayed ACK (Nagle).
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsSource>,
    limits: ConnLimits,
    server: &'static str,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    accept_loop(listener, tls, None, limits, server)
}

/// Like [`incoming`], for an HTTP/1.1 server (the dashboard, REST API and metrics): the
/// same certificates and reload, but ALPN offers `http/1.1` instead of gRPC's `h2`, so a
/// browser does not pick a protocol the server does not speak. A client certificate is
/// optional, as on the gRPC side (browsers have none; tokens authenticate).
pub fn incoming_http1(
    listener: TcpListener,
    tls: TlsSource,
    limits: ConnLimits,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    accept_loop(listener, Some(tls), Some(b"http/1.1"), limits, "http")
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsSource>,
    alpn: Option<&'static [u8]>,
    limits: ConnLimits,
    server: &'static str,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<ServerIo>>(64);
    let counters = counters(server);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Taken before the handshake: connections still handshaking count too.
            let Some(slot) = Slot::take(&limits, &counters) else {
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    let io = ServerIo {
                        stream: Transport::Plain(tcp),
                        slot,
                    };
                    if tx.send(Ok(io)).await.is_err() {
                        return;
                    }
                }
                Some(source) => {
                    let config = match alpn {
                        None => source.server_config(),
                        Some(protocol) => {
                            let mut c = (*source.server_config()).clone();
                            c.alpn_protocols = vec![protocol.to_vec()];
                            Arc::new(c)
                        }
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let io = ServerIo {
                                    stream: Transport::Tls(Box::new(stream)),
                                    slot,
                                };
                                let _ = tx.send(Ok(io)).await;
                            }
                            Ok(Err(e)) => {
                                tracing::info!(%remote, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<io::Result<ServerIo>>,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
