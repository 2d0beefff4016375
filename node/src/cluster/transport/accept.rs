//! The accepting side: connections to the peer port that open with the peer transport's
//! first bytes (or, on TLS, negotiate its ALPN protocol) are served here, those of the
//! client wire by `client`; every other one goes on to the gRPC server.

use super::client;
use super::frames::{write_message, Reader, MAX_MESSAGE};
use super::handshake::{self, Proof};
use crate::cluster::peers::{self, InboundStream};
use crate::cluster::Cluster;
use crate::observe::stats::STATS;
use futures::{Stream, StreamExt};
use rebeam_proto as pb;
use rebeam_tls::{ServerIo, Transport};
use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// A connection that has not said what it is by then is dropped.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the peer and client-wire connections among `incoming` and passes the others on,
/// for gRPC.
pub fn split(
    cluster: Arc<Cluster>,
    authorize: client::Authorize,
    incoming: impl Stream<Item = io::Result<ServerIo>> + Send + 'static,
) -> impl Stream<Item = io::Result<ServerIo>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel::<io::Result<ServerIo>>(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                next = incoming.next() => next,
                () = tx.closed() => return,
            };
            match next {
                None => return,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(io)) => {
                    let (cluster, authorize, tx) = (cluster.clone(), authorize.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(io) = classify(&cluster, authorize, io).await {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves `io` if it is a peer or client-wire connection (None), else gives it back for
/// gRPC.
async fn classify(
    cluster: &Arc<Cluster>,
    authorize: client::Authorize,
    io: ServerIo,
) -> Option<ServerIo> {
    let (stream, slot) = io.into_parts();
    match stream {
        Transport::Tls(tls) => {
            let (_, session) = tls.get_ref();
            let alpn = session.alpn_protocol();
            if alpn == Some(rebeam_tls::CLIENT_ALPN) {
                let io = ServerIo::from_parts(Transport::Tls(tls), slot);
                client::serve(cluster.clone(), authorize, io, false, None).await;
                return None;
            }
            if alpn != Some(rebeam_tls::PEER_ALPN) {
                return Some(ServerIo::from_parts(Transport::Tls(tls), slot));
            }
            let members = session
                .peer_certificates()
                .and_then(|c| c.first())
                .map(rebeam_tls::identity::members_of)
                .unwrap_or_default();
            serve(cluster.clone(), *tls, Proof::Certificate(members)).await;
            drop(slot);
            None
        }
        Transport::Plain(tcp) => {
            let first = tokio::time::timeout(FIRST_BYTES_TIMEOUT, first_bytes(&tcp)).await;
            match first {
                Ok(Ok(Opening::Peer)) if cluster.dialer.is_tls() => {
                    // With TLS on, a plaintext peer connection is never accepted.
                    tracing::info!("a plaintext peer connection refused: this node uses TLS");
                    None
                }
                Ok(Ok(Opening::Peer)) => {
                    let proof = Proof::secret(&cluster.config.secret);
                    serve_on_peer_runtime(cluster, tcp, proof).await;
                    drop(slot);
                    None
                }
                Ok(Ok(Opening::Client)) => {
                    client::serve_plain(cluster.clone(), authorize, tcp, slot).await;
                    None
                }
                Ok(Ok(Opening::Other)) => Some(ServerIo::from_parts(Transport::Plain(tcp), slot)),
                Ok(Err(_)) | Err(_) => None,
            }
        }
    }
}

/// Serves a plaintext peer connection on the peer runtime (`Cluster::peer_io`), where the
/// dialling side's connections also run (dropped in the rare case it cannot be moved there).
async fn serve_on_peer_runtime(cluster: &Arc<Cluster>, tcp: tokio::net::TcpStream, proof: Proof) {
    let std = match tcp.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::info!(error = %e, "a peer connection could not be taken over");
            return;
        }
    };
    let served = cluster.clone();
    let task = cluster.peer_io.spawn(async move {
        // Registers the socket with this runtime's reactor (it is still non-blocking).
        match tokio::net::TcpStream::from_std(std) {
            Ok(tcp) => serve(served, tcp, proof).await,
            Err(e) => tracing::info!(error = %e, "a peer connection could not be taken over"),
        }
    });
    let _ = task.await;
}

/// What a plaintext connection's first bytes say it is.
enum Opening {
    /// The peer transport's [`super::MAGIC`].
    Peer,
    /// The client wire's [`client::MAGIC`].
    Client,
    /// Anything else (gRPC).
    Other,
}

/// Reads which protocol the connection opens with, without consuming its bytes.
async fn first_bytes(tcp: &tokio::net::TcpStream) -> io::Result<Opening> {
    let mut buf = [0u8; 8];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let peer = buf[..n] == super::MAGIC[..n];
        let client = buf[..n] == client::MAGIC[..n];
        match (peer, client, n == buf.len()) {
            (false, false, _) => return Ok(Opening::Other),
            (true, _, true) => return Ok(Opening::Peer),
            (_, true, true) => return Ok(Opening::Client),
            // A prefix of a magic: the rest is on its way.
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Authenticates the dialler, then applies its frames in order (see [`peers::deliver`]) until
/// the connection ends or this node cuts it (its own link back broke).
pub async fn serve<S>(cluster: Arc<Cluster>, io: S, proof: Proof)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(io);
    let mut reader = Reader::new(r);
    let hello = async {
        if !reader.magic().await? {
            return Err(handshake::HandshakeError::Refused(
                "not a peer connection".into(),
            ));
        }
        handshake::accept(&mut reader, &mut w, &proof).await
    };
    let node = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, hello).await {
        Ok(Ok(node)) => node,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a peer connection was refused");
            return;
        }
        Err(_) => {
            tracing::info!("a peer connection did not finish its handshake in time");
            return;
        }
    };
    tracing::debug!(peer = %node.name(), "peer connection accepted");
    let stream = InboundStream::open(&cluster, node);
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        let next = tokio::select! {
            next = reader.next::<pb::PeerBatch>(MAX_MESSAGE) => next,
            () = stream.cut.notified() => {
                let _ = write_message(&mut w, &pb::PeerControl { reset: true }).await;
                return;
            }
        };
        match next {
            Ok(Some(batch)) => {
                STATS.peer_bytes_in.add(reader.last_len() as u64);
                if !peers::deliver(&cluster, node, batch, &pending) {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::info!(peer = %node.name(), error = %e, "peer connection closed");
                return;
            }
        }
    }
}
