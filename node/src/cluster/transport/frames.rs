//! Length-prefixed prost messages: a 4-byte big-endian length, then the encoded message.
//! Frames for a peer travel as `PeerBatch` messages, encoded by the senders straight into
//! the link's outbox (`outbox`).

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest message a peer may send (a batch); a larger length ends the connection.
pub const MAX_MESSAGE: usize = 256 << 20;
/// Largest handshake or control message.
pub const MAX_CONTROL: usize = 4096;
/// A writer stops adding frames to a batch once it holds this many bytes.
pub const WRITE_CHUNK: usize = 1 << 20;
/// Largest frame a node sends: a batch of [`WRITE_CHUNK`] bytes plus one such frame stays
/// under [`MAX_MESSAGE`]. A larger message is dropped (and counted) by its sender.
pub const MAX_FRAME: usize = MAX_MESSAGE - WRITE_CHUNK - 64;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is beyond the limit.
    #[error("a message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    /// The bytes are not the expected message.
    #[error("cannot decode a message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Reads length-prefixed messages from `io`.
pub struct Reader<R> {
    io: R,
    buf: BytesMut,
    last_len: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `io`.
    pub fn new(io: R) -> Reader<R> {
        Reader {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            last_len: 0,
        }
    }

    /// The encoded size of the last message read.
    pub fn last_len(&self) -> usize {
        self.last_len
    }

    /// Reads the connection's first bytes; true when they are [`super::MAGIC`].
    pub async fn magic(&mut self) -> std::io::Result<bool> {
        self.magic_is(super::MAGIC).await
    }

    /// Reads as many bytes as `expected` has; true when they are those.
    pub async fn magic_is(&mut self, expected: &[u8]) -> std::io::Result<bool> {
        let n = expected.len();
        while self.buf.len() < n {
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(&self.buf.split_to(n)[..] == expected)
    }

    /// The next message of at most `max` bytes; None at a clean end of the stream.
    pub async fn next<M: Message + Default>(
        &mut self,
        max: usize,
    ) -> Result<Option<M>, FrameError> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > max {
                    return Err(FrameError::TooLarge(len, max));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    self.last_len = len;
                    let body = self.buf.split_to(len);
                    return Ok(Some(M::decode(body.freeze())?));
                }
                self.buf.reserve(4 + len - self.buf.len());
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
        }
    }
}

/// Writes one length-prefixed message and flushes it.
pub async fn write_message<W: AsyncWrite + Unpin, M: Message>(
    io: &mut W,
    message: &M,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + message.encoded_len());
    buf.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    io.write_all(&buf).await?;
    io.flush().await
}
