//! Direct writes: when a link is idle, the sending thread writes its frame to the socket itself
//! (a non-blocking write) instead of queueing it and waking the link's I/O task, which saves a
//! thread wake-up per frame (a cross-node call's request and its reply each save one).
//!
//! Order: a frame is written directly only when no frame given to the link before it is still
//! unwritten (`queued` counts frames from the moment they are queued until their last byte is
//! written), and every write to the socket, direct or by the I/O task, happens under the
//! link's lock, so bytes of two writers never interleave. A direct write that the socket takes
//! only in part leaves the rest as the link's `tail`, written before anything else; one that
//! would block goes to the queue like any other frame. Only plaintext TCP and Unix connections
//! take direct writes; TLS links always use the queue.

use super::frames::BatchWriter;
use crate::observe::stats::STATS;
use parking_lot::Mutex;
use rebeam_proto as pb;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Largest batch (one frame, encoded with its length prefix) written directly; a larger one
/// goes through the queue (writing it would hold the link's lock, and the sender's thread,
/// for long).
pub const DIRECT_MAX: usize = 16 << 10;

/// A frame is written directly only when the link's previous frame came at least this long
/// before: a sender flooding the link (casts in a loop) has its frames queued and written in
/// batches by the I/O task, one write for many frames, instead of one write each.
pub const IDLE: Duration = Duration::from_micros(20);

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

/// A link's shared write state (one per outbound link, for its whole life).
pub struct Direct {
    /// Frames given to the link and not yet fully written: queued ones, those in the I/O
    /// task's hands, and one while a direct write's tail waits.
    queued: AtomicUsize,
    state: Mutex<State>,
    /// Wakes the I/O task to write a tail.
    kick: Notify,
    /// When the last frame was given to the link (nanoseconds since [`EPOCH`]).
    last: AtomicU64,
    /// How long the link must have been idle for a direct write ([`IDLE`]).
    idle: u64,
    /// Frames written directly, and of those, the ones the socket took only in part.
    direct_writes: AtomicU64,
    tails: AtomicU64,
}

impl Default for Direct {
    fn default() -> Direct {
        Direct::with_idle(IDLE)
    }
}

/// The origin of [`Direct`]'s timestamps.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

#[derive(Default)]
struct State {
    /// The connection, once its handshake is done; None before and after.
    sink: Option<Arc<Sink>>,
    /// The unwritten end of a direct write: goes out before any other byte.
    tail: Vec<u8>,
    /// Reused encoding buffer for direct writes.
    batch: BatchWriter,
}

impl Direct {
    /// A link's state where a direct write needs `idle` since the previous frame.
    pub fn with_idle(idle: Duration) -> Direct {
        Direct {
            queued: AtomicUsize::new(0),
            state: Mutex::default(),
            kick: Notify::new(),
            last: AtomicU64::new(0),
            idle: idle.as_nanos() as u64,
            direct_writes: AtomicU64::new(0),
            tails: AtomicU64::new(0),
        }
    }

    /// Frames written directly so far, and how many of them left a tail.
    pub fn direct_writes(&self) -> (u64, u64) {
        (
            self.direct_writes.load(Ordering::Relaxed),
            self.tails.load(Ordering::Relaxed),
        )
    }

    /// Writes `frame` to the socket now when the link is idle and the socket takes it without
    /// blocking (None); gives it back otherwise (the caller queues it, see [`Direct::queue`]).
    pub fn try_write(&self, frame: pb::PeerFrame) -> Option<pb::PeerFrame> {
        let now = EPOCH.elapsed().as_nanos() as u64;
        let before = self.last.swap(now, Ordering::Relaxed);
        if now.saturating_sub(before) < self.idle || self.queued.load(Ordering::Acquire) != 0 {
            return Some(frame);
        }
        // Another writer holds the lock: the link is busy, queue behind it.
        let Some(mut state) = self.state.try_lock() else {
            return Some(frame);
        };
        let State { sink, tail, batch } = &mut *state;
        let Some(sink) = sink.as_ref() else {
            return Some(frame);
        };
        if self.queued.load(Ordering::Acquire) != 0 || !tail.is_empty() {
            return Some(frame);
        }
        batch.clear();
        // A frame over the size limit goes to the queue, whose writer counts and drops it.
        if !batch.push(&frame) {
            return Some(frame);
        }
        let bytes = batch.finish();
        if bytes.len() > DIRECT_MAX {
            return Some(frame);
        }
        let written = match sink.try_write(bytes) {
            Ok(n) => n,
            // Would block, or the connection broke: the queue's writer will see it.
            Err(_) => return Some(frame),
        };
        if written < bytes.len() {
            tail.extend_from_slice(&bytes[written..]);
            self.queued.fetch_add(1, Ordering::AcqRel);
            self.tails.fetch_add(1, Ordering::Relaxed);
            self.kick.notify_one();
        }
        self.direct_writes.fetch_add(1, Ordering::Relaxed);
        STATS.peer_frames_out.inc();
        STATS.peer_frames_direct.inc();
        STATS.peer_bytes_out.add(bytes.len() as u64);
        None
    }

    /// Frames given to the link and not yet written.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts a frame about to be queued (before it is, so that no later frame overtakes it).
    pub fn queue(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Uncounts a frame that could not be queued after all.
    pub fn unqueue(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Writes `bytes` (holding `frames` queued frames) after any tail, waiting for the socket
    /// as needed; then those frames no longer count as queued.
    async fn write_out(&self, sink: &Sink, bytes: &[u8], frames: usize) -> io::Result<()> {
        let mut done = 0;
        loop {
            {
                let mut state = self.state.lock();
                while !state.tail.is_empty() {
                    match sink.try_write(&state.tail) {
                        Ok(n) => {
                            state.tail.drain(..n);
                            if state.tail.is_empty() {
                                self.queued.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if state.tail.is_empty() {
                    while done < bytes.len() {
                        match sink.try_write(&bytes[done..]) {
                            Ok(n) => done += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                    }
                    if done == bytes.len() {
                        self.queued.fetch_sub(frames, Ordering::AcqRel);
                        return Ok(());
                    }
                }
            }
            sink.writable().await?;
        }
    }
}

/// Takes the connection away from direct writers when the I/O task stops writing (also when
/// its future is dropped).
struct Installed<'a>(&'a Direct);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        self.0.state.lock().sink = None;
    }
}

/// Writes the frames of `rx` to `sink` as `dial::write_frames` does (everything queued in one
/// write), letting senders write directly through `direct` while the link is idle.
pub async fn write_frames(
    sink: Sink,
    mut rx: mpsc::Receiver<pb::PeerFrame>,
    direct: &Direct,
) -> io::Result<()> {
    let sink = Arc::new(sink);
    direct.state.lock().sink = Some(sink.clone());
    let _installed = Installed(direct);
    let mut batch = BatchWriter::default();
    loop {
        tokio::select! {
            biased;
            () = direct.kick.notified() => direct.write_out(&sink, &[], 0).await?,
            first = rx.recv() => {
                let Some(first) = first else {
                    // Senders are gone; a direct write's tail may still be unwritten.
                    direct.write_out(&sink, &[], 0).await?;
                    break;
                };
                let taken = batch.fill(first, &mut rx);
                if batch.frames() == 0 {
                    direct.write_out(&sink, &[], taken).await?;
                    continue;
                }
                STATS.peer_frames_out.add(batch.frames() as u64);
                let bytes = batch.finish();
                STATS.peer_bytes_out.add(bytes.len() as u64);
                direct.write_out(&sink, bytes, taken).await?;
            }
        }
    }
    Ok(())
}
