//! A peer link's outbox: senders encode their frames straight into one byte buffer (the
//! `PeerBatch` messages the link's writer will send as they are), so that a message costs
//! no allocation, no channel slot and no encoding pass on the I/O thread; the writer takes
//! the whole buffer at once and writes it.
//!
//! Direct writes: when a link is idle, the sending thread writes its frame to the socket itself
//! (a non-blocking write) instead of queueing it and waking the link's I/O task, which saves a
//! thread wake-up per frame (a cross-node call's request and its reply each save one).
//!
//! Order: every frame is encoded under the outbox's lock, in the order senders take it. A
//! frame is written directly only when no earlier frame is still unwritten (none pending and
//! none in the writer's hands), and the writer writes only what it took, so bytes of two
//! writers never interleave. A direct write that the socket takes only in part leaves the
//! rest as the first pending bytes, written before anything else; one that would block is
//! queued like any other frame. Only plaintext TCP and Unix connections take direct writes;
//! TLS links always go through the writer.
//!
//! Backpressure: at most `capacity` frames wait for the writer; a sender finding the outbox
//! full gets its frame back and may wait for room ([`Outbox::wait_for_room`]).

use super::frames::{MAX_FRAME, WRITE_CHUNK};
use crate::observe::stats::STATS;
use parking_lot::{Condvar, Mutex};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use rebeam_proto as pb;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Largest batch (one frame, encoded with its length prefix) written directly; a larger one
/// goes through the writer (writing it would hold the link's lock, and the sender's thread,
/// for long).
pub const DIRECT_MAX: usize = 16 << 10;

/// A frame is written directly only when the link's previous frame came at least this long
/// before: a sender flooding the link (casts in a loop) has its frames queued and written in
/// batches by the I/O task, one write for many frames, instead of one write each.
pub const IDLE: Duration = Duration::from_micros(20);

/// A buffer the writer keeps between writes is cut back to this capacity (a burst of large
/// frames must not pin its memory for the link's life).
const KEEP_BUFFER: usize = 4 << 20;

/// The write half of a plaintext peer connection, shared by the I/O task and direct writers.
pub enum Sink {
    /// A TCP connection.
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    /// A Unix socket (a peer on this host).
    Unix(tokio::net::unix::OwnedWriteHalf),
}

impl Sink {
    /// Writes what the socket takes now, from any thread (no runtime needed).
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        let n = match self {
            Sink::Tcp(w) => w.try_write(bytes)?,
            Sink::Unix(w) => w.try_write(bytes)?,
        };
        if n == 0 && !bytes.is_empty() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok(n)
    }

    /// Waits until the socket may take more.
    async fn writable(&self) -> io::Result<()> {
        match self {
            Sink::Tcp(w) => w.writable().await,
            Sink::Unix(w) => w.writable().await,
        }
    }
}

impl From<tokio::net::tcp::OwnedWriteHalf> for Sink {
    fn from(w: tokio::net::tcp::OwnedWriteHalf) -> Sink {
        Sink::Tcp(w)
    }
}

impl From<tokio::net::unix::OwnedWriteHalf> for Sink {
    fn from(w: tokio::net::unix::OwnedWriteHalf) -> Sink {
        Sink::Unix(w)
    }
}

/// A frame as the outbox encodes it: its encoded length and the encoding itself.
pub trait Frame {
    /// The frame's encoded length (without the batch field's key and length).
    fn body_len(&self) -> usize;
    /// Appends the frame's encoding (`body_len` bytes).
    fn encode_body(&self, out: &mut Vec<u8>);
}

impl Frame for pb::PeerFrame {
    fn body_len(&self) -> usize {
        self.encoded_len()
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        self.encode_raw(out);
    }
}

/// A message frame (`PeerFrame.send`) encoded from borrowed parts: the same bytes as the
/// `pb::PeerFrame` it stands for, without building that (its strings and payload vector).
pub struct SendFrame<'a> {
    /// The receiving process: its node's name, incarnation and serial.
    pub node: &'a str,
    /// The node's incarnation.
    pub incarnation: u64,
    /// The process's serial.
    pub serial: u64,
    /// The pickled message.
    pub payload: &'a [u8],
    /// A cast (else a plain message).
    pub cast: bool,
    /// The W3C trace context, empty when not traced.
    pub traceparent: &'a str,
}

/// The length of a length-delimited field `tag` holding `len` bytes.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// The length of a varint field, left out (as prost does) when zero.
fn varint_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

impl SendFrame<'_> {
    fn pid_len(&self) -> usize {
        let node = if self.node.is_empty() {
            0
        } else {
            delimited_len(self.node.len())
        };
        node + varint_len(self.incarnation) + varint_len(self.serial)
    }

    fn send_len(&self) -> usize {
        let payload = if self.payload.is_empty() {
            0
        } else {
            delimited_len(self.payload.len())
        };
        let traceparent = if self.traceparent.is_empty() {
            0
        } else {
            delimited_len(self.traceparent.len())
        };
        delimited_len(self.pid_len()) + payload + 2 * usize::from(self.cast) + traceparent
    }
}

/// Appends field `tag` as `len` bytes that `body` then writes.
fn delimited(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Appends a varint field unless it is zero.
fn varint(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

/// Appends a bytes (or string) field unless it is empty.
fn bytes_field(tag: u32, value: &[u8], out: &mut Vec<u8>) {
    if !value.is_empty() {
        delimited(tag, value.len(), out);
        out.extend_from_slice(value);
    }
}

impl Frame for SendFrame<'_> {
    fn body_len(&self) -> usize {
        delimited_len(self.send_len())
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        // PeerFrame { send = 1: PeerSend { to = 1: Pid { node = 1, incarnation = 2,
        // serial = 3 }, payload = 2, cast = 3, traceparent = 4 } }
        delimited(1, self.send_len(), out);
        delimited(1, self.pid_len(), out);
        bytes_field(1, self.node.as_bytes(), out);
        varint(2, self.incarnation, out);
        varint(3, self.serial, out);
        bytes_field(2, self.payload, out);
        varint(3, u64::from(self.cast), out);
        bytes_field(4, self.traceparent.as_bytes(), out);
    }
}

/// What became of a frame given to [`Outbox::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Written, or pending for the writer (or over the size limit: dropped and counted).
    Yes,
    /// The outbox holds its capacity of frames: the caller keeps the frame.
    Full,
    /// The link is gone.
    Gone,
}

/// A link's outbox (one per outbound link, for its whole life).
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer: frames are pending, or the senders are gone.
    kick: Notify,
    /// Wakes senders waiting for room.
    room: Condvar,
    /// Frames that may wait for the writer before senders are refused.
    capacity: usize,
    /// When the last frame was given to the link (nanoseconds since [`EPOCH`]).
    last: AtomicU64,
    /// How long the link must have been idle for a direct write ([`IDLE`]).
    idle: u64,
    /// Frames written directly, and of those, the ones the socket took only in part.
    direct_writes: AtomicU64,
    tails: AtomicU64,
    /// Times the writer found the socket full and waited for room.
    writer_waits: AtomicU64,
}

/// The origin of [`Outbox`]'s timestamps.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Default)]
struct State {
    /// The connection, once its handshake is done; None before and after.
    sink: Option<Arc<Sink>>,
    /// Length-prefixed `PeerBatch` messages waiting for the writer (the unwritten end of a
    /// direct write first, if any).
    pending: Vec<u8>,
    /// Where the last batch of `pending` starts (its length prefix), while frames may still
    /// be added to it.
    open: Option<usize>,
    /// Frames in `pending`.
    frames: usize,
    /// Frames the writer took and has not written yet.
    in_flight: usize,
    /// The writer waits for a kick.
    writer_waiting: bool,
    /// Senders waiting for room.
    room_waiters: usize,
    /// The link ended: nothing is taken any more.
    closed: bool,
    /// Every sender let go of the link: the writer ends once the pending frames are written.
    senders_gone: bool,
    /// Reused encoding buffer for direct writes.
    scratch: Vec<u8>,
}

impl State {
    /// Appends `frame` to the pending batches, starting a new batch when the open one is
    /// full.
    fn append(&mut self, frame: &impl Frame, len: usize) {
        let start = match self.open {
            Some(start) if self.pending.len() - start - 4 < WRITE_CHUNK => start,
            _ => {
                self.close_batch();
                let start = self.pending.len();
                self.pending.extend_from_slice(&[0; 4]);
                self.open = Some(start);
                start
            }
        };
        debug_assert!(start + 4 <= self.pending.len());
        delimited(1, len, &mut self.pending);
        frame.encode_body(&mut self.pending);
        self.frames += 1;
    }

    /// Writes the open batch's length prefix: no frame is added to it any more.
    fn close_batch(&mut self) {
        if let Some(start) = self.open.take() {
            let len = (self.pending.len() - start - 4) as u32;
            self.pending[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new(crate::cluster::peers::QUEUE_FRAMES, IDLE)
    }
}

impl Outbox {
    /// An outbox holding up to `capacity` frames, where a direct write needs `idle` since
    /// the previous frame.
    pub fn new(capacity: usize, idle: Duration) -> Outbox {
        Outbox {
            state: Mutex::default(),
            kick: Notify::new(),
            room: Condvar::new(),
            capacity,
            last: AtomicU64::new(0),
            idle: idle.as_nanos() as u64,
            direct_writes: AtomicU64::new(0),
            tails: AtomicU64::new(0),
            writer_waits: AtomicU64::new(0),
        }
    }

    /// Times the writer found the socket full and waited for room (the peer reads slower
    /// than this node writes).
    pub fn writer_waits(&self) -> u64 {
        self.writer_waits.load(Ordering::Relaxed)
    }

    /// Frames written directly so far, and how many of them left a tail.
    pub fn direct_writes(&self) -> (u64, u64) {
        (
            self.direct_writes.load(Ordering::Relaxed),
            self.tails.load(Ordering::Relaxed),
        )
    }

    /// Frames given to the link and not yet written.
    pub fn queued(&self) -> usize {
        let state = self.state.lock();
        state.frames + state.in_flight
    }

    /// Writes `frame` to the socket now when the link is idle and the socket takes it without
    /// blocking, else adds it to the pending batches; [`Taken::Full`] when the outbox holds
    /// its capacity.
    pub fn push(&self, frame: &impl Frame) -> Taken {
        let len = frame.body_len();
        if len > MAX_FRAME {
            STATS.peer_frames_oversized.inc();
            tracing::warn!(bytes = len, "a peer frame over the size limit was dropped");
            return Taken::Yes;
        }
        let now = EPOCH.elapsed().as_nanos() as u64;
        let before = self.last.swap(now, Ordering::Relaxed);
        let idle = now.saturating_sub(before) >= self.idle;
        let mut state = self.state.lock();
        if state.closed {
            return Taken::Gone;
        }
        if idle
            && state.frames == 0
            && state.in_flight == 0
            && self.write_now(&mut state, frame, len)
        {
            return Taken::Yes;
        }
        if state.frames >= self.capacity {
            return Taken::Full;
        }
        self.queue(&mut state, frame, len);
        Taken::Yes
    }

    /// Waits until `deadline` for room, then adds `frame` (true); false when the link went
    /// away or no room came in time. Blocks the calling thread.
    pub fn wait_for_room(&self, frame: &impl Frame, deadline: Instant) -> bool {
        let len = frame.body_len();
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return false;
            }
            if state.frames < self.capacity {
                self.queue(&mut state, frame, len);
                return true;
            }
            state.room_waiters += 1;
            let timed_out = self.room.wait_until(&mut state, deadline).timed_out();
            state.room_waiters -= 1;
            if timed_out && (state.closed || state.frames >= self.capacity) {
                return false;
            }
        }
    }

    fn queue(&self, state: &mut State, frame: &impl Frame, len: usize) {
        state.append(frame, len);
        if state.writer_waiting {
            state.writer_waiting = false;
            self.kick.notify_one();
        }
    }

    /// The direct write of `frame` (`len` bytes), with nothing pending; false when it must
    /// be queued instead (no connection, too large, or the socket would block or broke: the
    /// writer will see that).
    fn write_now(&self, state: &mut State, frame: &impl Frame, len: usize) -> bool {
        let Some(sink) = state.sink.clone() else {
            return false;
        };
        let field = delimited_len(len);
        if 4 + field > DIRECT_MAX {
            return false;
        }
        let mut bytes = std::mem::take(&mut state.scratch);
        bytes.clear();
        bytes.extend_from_slice(&(field as u32).to_be_bytes());
        delimited(1, len, &mut bytes);
        frame.encode_body(&mut bytes);
        let written = sink.try_write(&bytes);
        let done = match written {
            Ok(n) => {
                if n < bytes.len() {
                    // The rest goes before anything else, as the writer's first bytes (the
                    // writer counts the frame as written).
                    state.close_batch();
                    state.pending.extend_from_slice(&bytes[n..]);
                    state.frames += 1;
                    self.tails.fetch_add(1, Ordering::Relaxed);
                    if state.writer_waiting {
                        state.writer_waiting = false;
                        self.kick.notify_one();
                    }
                } else {
                    STATS.peer_frames_out.inc();
                }
                self.direct_writes.fetch_add(1, Ordering::Relaxed);
                STATS.peer_frames_direct.inc();
                STATS.peer_bytes_out.add(n as u64);
                true
            }
            Err(_) => false,
        };
        state.scratch = bytes;
        done
    }

    /// Every sender let go of the link: the writer ends after writing what is pending.
    pub fn senders_gone(&self) {
        self.state.lock().senders_gone = true;
        self.kick.notify_one();
    }

    /// The link ended: later frames are refused ([`Taken::Gone`]) and waiting senders give up.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.sink = None;
        state.pending = Vec::new();
        state.open = None;
        state.frames = 0;
        self.room.notify_all();
    }

    /// Takes the pending batches into `buf` (which must be empty), waiting for some; returns
    /// how many frames they hold, or None once the senders are gone and nothing is left.
    async fn take(&self, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            {
                let mut state = self.state.lock();
                if state.frames > 0 {
                    state.close_batch();
                    std::mem::swap(&mut state.pending, buf);
                    let frames = std::mem::take(&mut state.frames);
                    state.in_flight = frames;
                    if state.room_waiters > 0 {
                        self.room.notify_all();
                    }
                    return Some(frames);
                }
                if state.senders_gone || state.closed {
                    return None;
                }
                state.writer_waiting = true;
            }
            self.kick.notified().await;
        }
    }

    /// The writer wrote what it took into `buf`.
    fn written(&self, buf: &mut Vec<u8>, frames: usize) {
        STATS.peer_bytes_out.add(buf.len() as u64);
        buf.clear();
        if buf.capacity() > KEEP_BUFFER {
            buf.shrink_to(KEEP_BUFFER);
        }
        let mut state = self.state.lock();
        state.in_flight -= frames;
    }

    /// Senders waiting for room: for tests.
    #[cfg(test)]
    pub fn room_waiters(&self) -> usize {
        self.state.lock().room_waiters
    }

    /// The frames pending (not yet taken by a writer), taken out as a writer takes them
    /// (waking senders waiting for room): for tests.
    #[cfg(test)]
    pub fn take_frames(&self) -> Vec<pb::PeerFrame> {
        let bytes = {
            let mut state = self.state.lock();
            state.close_batch();
            state.frames = 0;
            self.room.notify_all();
            std::mem::take(&mut state.pending)
        };
        let mut frames = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let batch = pb::PeerBatch::decode(&rest[4..4 + len]).expect("a batch");
            frames.extend(batch.frames);
            rest = &rest[4 + len..];
        }
        frames
    }
}

/// Takes the connection away from direct writers when the writer stops (also when its future
/// is dropped).
struct Installed<'a>(&'a Outbox);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.0.state.lock().sink = None;
    }
}

/// Writes the outbox's batches to `sink` as they come (everything pending in one write)
/// until the senders are gone, letting senders write directly while the link is idle.
pub async fn write_frames(sink: Sink, outbox: &Outbox) -> io::Result<()> {
    let sink = Arc::new(sink);
    outbox.state.lock().sink = Some(sink.clone());
    let _installed = Installed(outbox);
    let mut buf = Vec::new();
    while let Some(frames) = outbox.take(&mut buf).await {
        let mut done = 0;
        while done < buf.len() {
            match sink.try_write(&buf[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    outbox.writer_waits.fetch_add(1, Ordering::Relaxed);
                    sink.writable().await?
                }
                Err(e) => return Err(e),
            }
        }
        STATS.peer_frames_out.add(frames as u64);
        outbox.written(&mut buf, frames);
    }
    Ok(())
}

/// Writes the outbox's batches to `w` (a TLS stream: no direct writes) until the senders are
/// gone, then shuts it down.
pub async fn write_frames_to<W: AsyncWrite + Unpin>(mut w: W, outbox: &Outbox) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(frames) = outbox.take(&mut buf).await {
        w.write_all(&buf).await?;
        w.flush().await?;
        STATS.peer_frames_out.add(frames as u64);
        outbox.written(&mut buf, frames);
    }
    w.shutdown().await
}
