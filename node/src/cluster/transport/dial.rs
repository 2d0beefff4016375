//! The dialling side of a peer connection: connect, prove who we are, then write the link's
//! outbox in batches (everything pending goes out in one write) while watching the
//! connection for the acceptor's control messages.

use super::frames::{FrameError, Reader, MAX_CONTROL};
use super::handshake::{self, HandshakeError, Proof};
use super::outbox::{self, Outbox, Sink};
use super::MAGIC;
use rebeam_proto as pb;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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

/// Connects to `address` with `dialer` (TLS when it has TLS) and carries the frames of
/// `outbox` until the connection breaks or its senders are gone (Ok). On a plaintext
/// connection, senders may also write to it themselves while it is idle.
pub async fn run(
    dialer: &rebeam_tls::Dialer,
    address: &str,
    me: &str,
    proof: &Proof,
    outbox: &Outbox,
) -> Result<(), LinkError> {
    if !dialer.is_tls() {
        if let Some(path) = super::local::socket_path(address) {
            // A peer on this host: its Unix socket, if it has one (else TCP, as to any).
            if let Ok(Ok(unix)) =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(&path)).await
            {
                let (r, w) = unix.into_split();
                return carry_direct(r, w, me, proof, outbox).await;
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
            carry_direct(r, w, me, proof, outbox).await
        }
        rebeam_tls::dial::ClientStream::Tls(tls) => carry(*tls, me, proof, outbox).await,
    }
}

/// Says who we are on `stream`, then carries the frames of `outbox` (see [`run`]).
pub async fn carry<S>(stream: S, me: &str, proof: &Proof, outbox: &Outbox) -> Result<(), LinkError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut reader = Reader::new(r);
    hello(&mut reader, &mut w, me, proof).await?;
    tokio::select! {
        written = outbox::write_frames_to(w, outbox) => written.map_err(LinkError::from),
        control = reader.next::<pb::PeerControl>(MAX_CONTROL) => ended(control),
    }
}

/// [`carry`] on a plaintext connection's two halves, the write half shared with direct
/// writers (see [`super::outbox`]).
pub async fn carry_direct<R, W>(
    r: R,
    mut w: W,
    me: &str,
    proof: &Proof,
    outbox: &Outbox,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Into<Sink>,
{
    let mut reader = Reader::new(r);
    hello(&mut reader, &mut w, me, proof).await?;
    tokio::select! {
        written = outbox::write_frames(w.into(), outbox) => written.map_err(LinkError::from),
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
