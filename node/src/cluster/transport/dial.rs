//! The dialling side of a peer connection: connect, prove who we are, then write the link's
//! queued frames in batches (everything queued goes out in one write) while watching the
//! connection for the acceptor's control messages.

use super::direct::{self, Direct, Sink};
use super::frames::{BatchWriter, FrameError, Reader, MAX_CONTROL};
use super::handshake::{self, HandshakeError, Proof};
use super::MAGIC;
use crate::observe::stats::STATS;
use rebeam_proto as pb;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How an outbound link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Connecting or the handshake failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// Connecting or the handshake took too long.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection broke.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The acceptor closed the connection (EOF or an unexpected message).
    #[error("the peer closed the connection")]
    Closed,
    /// The acceptor cut the connection because its own link back to us broke.
    #[error("the peer reset the link: its link back to this node broke")]
    Reset,
}

/// Connects to `address` with `dialer` (TLS when it has TLS) and carries the frames of `rx`
/// until the connection breaks or the queue's senders are gone (Ok). On a plaintext
/// connection, senders may also write to it themselves through `direct` while it is idle.
pub async fn run(
    dialer: &rebeam_tls::Dialer,
    address: &str,
    me: &str,
    proof: &Proof,
    rx: mpsc::Receiver<pb::PeerFrame>,
    direct: &Direct,
) -> Result<(), LinkError> {
    if !dialer.is_tls() {
        if let Some(path) = super::local::socket_path(address) {
            // A peer on this host: its Unix socket, if it has one (else TCP, as to any).
            if let Ok(Ok(unix)) =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&path)).await
            {
                let (r, w) = unix.into_split();
                return carry_direct(r, w, me, proof, rx, direct).await;
            }
        }
    }
    let connect = dialer.stream(address, rebeam_tls::PEER_ALPN);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??;
    match stream {
        rebeam_tls::dial::ClientStream::Plain(tcp) => {
            let (r, w) = tcp.into_split();
            carry_direct(r, w, me, proof, rx, direct).await
        }
        rebeam_tls::dial::ClientStream::Tls(tls) => carry(*tls, me, proof, rx).await,
    }
}

/// Says who we are on `stream`, then carries the frames of `rx` (see [`run`]).
pub async fn carry<S>(
    stream: S,
    me: &str,
    proof: &Proof,
    rx: mpsc::Receiver<pb::PeerFrame>,
) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = Reader::new(r);
    hello(&mut reader, &mut w, me, proof).await?;
    tokio::select! {
        written = write_frames(w, rx) => written.map_err(LinkError::from),
        control = reader.next::<pb::PeerControl>(MAX_CONTROL) => ended(control),
    }
}

/// [`carry`] on a plaintext connection's two halves, the write half shared with direct
/// writers through `direct` (see [`super::direct`]).
pub async fn carry_direct<R, W>(
    r: R,
    mut w: W,
    me: &str,
    proof: &Proof,
    rx: mpsc::Receiver<pb::PeerFrame>,
    direct: &Direct,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Into<Sink>,
{
    let mut reader = Reader::new(r);
    hello(&mut reader, &mut w, me, proof).await?;
    tokio::select! {
        written = direct::write_frames(w.into(), rx, direct) => written.map_err(LinkError::from),
        control = reader.next::<pb::PeerControl>(MAX_CONTROL) => ended(control),
    }
}

/// The magic and the handshake, within [`CONNECT_TIMEOUT`].
async fn hello<R, W>(
    reader: &mut Reader<R>,
    w: &mut W,
    me: &str,
    proof: &Proof,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = async {
        w.write_all(MAGIC).await?;
        handshake::dial(reader, w, me, proof).await
    };
    tokio::time::timeout(CONNECT_TIMEOUT, hello)
        .await
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??;
    Ok(())
}

/// How a link ends when the acceptor sends something (it only ever sends a reset) or closes.
fn ended(control: Result<Option<pb::PeerControl>, FrameError>) -> Result<(), LinkError> {
    match control {
        Ok(Some(c)) if c.reset => Err(LinkError::Reset),
        Ok(_) => Err(LinkError::Closed),
        Err(e) => Err(LinkError::Io(std::io::Error::other(e.to_string()))),
    }
}

/// Writes the frames of `rx` until its senders are gone: each write carries everything
/// queued by then (up to a batch's size), so a busy link makes few, large writes and an idle
/// one sends a lone frame at once.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<pb::PeerFrame>,
) -> std::io::Result<()> {
    let mut batch = BatchWriter::default();
    while let Some(first) = rx.recv().await {
        batch.fill(first, &mut rx);
        if batch.frames() == 0 {
            continue;
        }
        STATS.peer_frames_out.add(batch.frames() as u64);
        let bytes = batch.finish();
        STATS.peer_bytes_out.add(bytes.len() as u64);
        w.write_all(bytes).await?;
        w.flush().await?;
    }
    w.shutdown().await
}
