//! The accepting side: connections to the peer port that open with the peer transport's
//! first bytes (or, on TLS, negotiate its ALPN protocol) are served here; every other one
//! goes on to the gRPC server.

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

/// Serves the peer connections among `incoming` and passes the others on, for gRPC.
pub fn split(
    cluster: Arc<Cluster>,
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
                    let (cluster, tx) = (cluster.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(io) = classify(&cluster, io).await {
                            let _ = tx.send(Ok(io)).await;
                        }
                    });
                }
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serves `io` if it is a peer connection (None), else gives it back for gRPC.
async fn classify(cluster: &Arc<Cluster>, io: ServerIo) -> Option<ServerIo> {
    let (stream, slot) = io.into_parts();
    match stream {
        Transport::Tls(tls) => {
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(rebeam_tls::PEER_ALPN) {
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
            let peer = tokio::time::timeout(FIRST_BYTES_TIMEOUT, starts_with_magic(&tcp)).await;
            match peer {
                Ok(Ok(true)) if cluster.dialer.is_tls() => {
                    // With TLS on, a plaintext peer connection is never accepted.
                    tracing::info!("a plaintext peer connection refused: this node uses TLS");
                    None
                }
                Ok(Ok(true)) => {
                    let proof = Proof::secret(&cluster.config.secret);
                    serve(cluster.clone(), tcp, proof).await;
                    drop(slot);
                    None
                }
                Ok(Ok(false)) => Some(ServerIo::from_parts(Transport::Plain(tcp), slot)),
                Ok(Err(_)) | Err(_) => None,
            }
        }
    }
}

/// Whether the connection's first bytes are the peer transport's, without consuming them.
async fn starts_with_magic(tcp: &tokio::net::TcpStream) -> io::Result<bool> {
    let magic = super::MAGIC;
    let mut buf = [0u8; 8];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != magic[..n] {
            return Ok(false);
        }
        if n == magic.len() {
            return Ok(true);
        }
        // A prefix of the magic: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(1)).await;
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
