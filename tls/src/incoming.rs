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

use crate::source::TlsSource;

/// A handshake that has not finished by then is dropped (a silent client holds no slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One accepted connection, plaintext or TLS.
pub enum ServerIo {
    /// TLS is off.
    Plain(TcpStream),
    /// A finished TLS handshake.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
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
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            ServerIo::Plain(tcp) => PeerInfo {
                remote: tcp.peer_addr().ok(),
                certs: None,
            },
            ServerIo::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                PeerInfo {
                    remote: tcp.peer_addr().ok(),
                    certs: session
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
                }
            }
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connections accepted on `listener`, with `TCP_NODELAY` set and, when `tls` is given,
/// each one's handshake done (concurrently, with the configuration current at accept time,
/// so a rotated certificate applies to the next connection). Failed handshakes are logged
/// and dropped: a plaintext client, a wrong CA or a wrong name never reaches a service.
///
/// `TCP_NODELAY` matters: without it a reply written in two parts (headers, then the body
/// of a handler that awaited) sat out the peer's 40 ms delayed ACK (Nagle).
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsSource>,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    accept_loop(listener, tls, None)
}

/// Like [`incoming`], for an HTTP/1.1 server (the dashboard, REST API and metrics): the
/// same certificates and reload, but ALPN offers `http/1.1` instead of gRPC's `h2`, so a
/// browser does not pick a protocol the server does not speak. A client certificate is
/// optional, as on the gRPC side (browsers have none; tokens authenticate).
pub fn incoming_http1(
    listener: TcpListener,
    tls: TlsSource,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    accept_loop(listener, Some(tls), Some(b"http/1.1"))
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsSource>,
    alpn: Option<&'static [u8]>,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<ServerIo>>(64);
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
            let _ = tcp.set_nodelay(true);
            match &tls {
                None => {
                    if tx.send(Ok(ServerIo::Plain(tcp))).await.is_err() {
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
                                let _ = tx.send(Ok(ServerIo::Tls(Box::new(stream)))).await;
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
