//! The client wire: a client's `Deliver` requests as length-prefixed messages on a plain
//! (or TLS) connection to the gateway port, without HTTP/2. A call from outside the cluster
//! then costs one write and one read on each side instead of a gRPC exchange, which is most
//! of its latency (see gateway.proto, `ClientHello`).
//!
//! Every request is authorized as the gRPC `Deliver` is (same credentials, roles, rate
//! limits and cap on requests in flight per token), and delivered by the same function;
//! replies go back in completion order. When the connection ends, the requests still in
//! flight on it are abandoned at once: their waits end and their slots are given back.
//! (So a client does not half-close and then read its replies.)

use super::frames::Reader;
use crate::cluster::gateway;
use crate::cluster::Cluster;
use crate::observe::stats::STATS;
use parking_lot::Mutex;
use rebeam_auth::streams::Slot;
use rebeam_proto as pb;
use rebeam_tls::{PeerInfo, ServerIo, Slot as ConnSlot, Transport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tonic::Status;

/// What a client wire connection starts with (gRPC starts with `PRI * HTTP`, peers with
/// `RBPEER1`).
pub const MAGIC: &[u8; 8] = b"RBCLNT1\n";
/// Largest request, as for the gRPC `Deliver` (tonic's default decoding limit).
const MAX_REQUEST: usize = 4 << 20;
/// Requests one connection may have in flight; more wait to be read (backpressure).
const MAX_IN_FLIGHT: usize = 1024;
/// A connection that has not sent its hello by then is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides whether a connection may deliver: the presented token, the connection's remote
/// address and certificates; the same decision as for the gRPC `Deliver`. With `hold` (a
/// request, not the hello) a client's request takes its token's slot under the cap on
/// requests in flight, held until its reply is ready.
pub type Authorize =
    Arc<dyn Fn(&str, &PeerInfo, bool) -> Result<Option<Slot>, Status> + Send + Sync>;

/// Serves a plaintext client wire connection (its first bytes still unread) on the client
/// runtime, or here when there is none.
pub async fn serve_plain(
    cluster: Arc<Cluster>,
    authorize: Authorize,
    tcp: tokio::net::TcpStream,
    slot: ConnSlot,
) {
    let Some(runtime) = runtime() else {
        let direct = writer_of(&tcp);
        let io = ServerIo::from_parts(Transport::Plain(tcp), slot);
        return serve(cluster, authorize, io, true, direct).await;
    };
    let std = match tcp.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::info!(error = %e, "a client connection could not be taken over");
            return;
        }
    };
    let task = runtime.spawn(async move {
        // Registers the socket with this runtime's reactor (it is still non-blocking).
        match tokio::net::TcpStream::from_std(std) {
            Ok(tcp) => {
                let direct = writer_of(&tcp);
                let io = ServerIo::from_parts(Transport::Plain(tcp), slot);
                serve(cluster, authorize, io, true, direct).await;
            }
            Err(e) => tracing::info!(error = %e, "a client connection could not be taken over"),
        }
    });
    let _ = task.await;
}

/// A second handle on the socket for writes from any thread (it shares the non-blocking
/// mode); None when the descriptor cannot be duplicated (replies then all go through the
/// writer task).
fn writer_of(tcp: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    tcp.as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpStream::from)
        .map_err(|e| tracing::debug!(error = %e, "no direct replies on a client connection"))
        .ok()
}

/// The single-threaded runtime on its own thread ("rebeam-client-io") that serves plaintext
/// client wire connections, started on first use; None when it cannot be started. On the
/// node's multi-thread runtime a request woke two workers (the one that read it and a second
/// one it woke to steal the spawned task), each wake-up a context switch in a call's time.
fn runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| tracing::warn!("no client I/O runtime: {e}"))
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("rebeam-client-io".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| tracing::warn!("no client I/O thread: {e}"))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Serves one client connection until it closes or sits idle past the server's idle
/// timeout. `read_magic`: the connection still starts with [`MAGIC`] (plaintext; on TLS the
/// ALPN protocol said what it is). `direct`: the plaintext socket, for replies written by the
/// thread that made them (see [`Replies`]).
pub async fn serve(
    cluster: Arc<Cluster>,
    authorize: Authorize,
    io: ServerIo,
    read_magic: bool,
    direct: Option<std::net::TcpStream>,
) {
    let info = io.peer_info();
    let (r, w) = tokio::io::split(io);
    let mut reader = Reader::new(r);
    let hello = async {
        if read_magic && !reader.magic_is(MAGIC).await? {
            return Ok(None);
        }
        reader.next::<pb::ClientHello>(4096).await.map_err(to_io)
    };
    let token = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
        Ok(Ok(Some(hello))) => hello.token,
        Ok(_) | Err(_) => return,
    };
    let replies = Arc::new(Replies::new(direct));
    let writer = tokio::spawn(write_replies(w, replies.clone()));
    // The hello holds no slot: only requests are in flight.
    let hello = authorize(&token, &info, false).map(|_| None);
    let accepted = hello.is_ok();
    replies.push(&reply_to(0, hello), false);
    if !accepted {
        replies.close();
        let _ = writer.await;
        return;
    }
    let room = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Dropped when the connection ends, which ends every request still in flight on it.
    let (open, closed) = tokio::sync::watch::channel(());
    loop {
        // Requests whose replies were written elsewhere end when this task wakes up anyway
        // (for the next request), or after `FINISH_AFTER` while some are in flight; also
        // while it waits for one of them to give back its place.
        let permit = loop {
            replies.finish_taken();
            if let Ok(permit) = room.clone().try_acquire_owned() {
                break Some(permit);
            }
            tokio::select! {
                permit = room.clone().acquire_owned() => break permit.ok(),
                () = tokio::time::sleep(FINISH_AFTER) => {}
            }
        };
        let Some(permit) = permit else {
            break;
        };
        let next = reader.next::<pb::ClientRequest>(MAX_REQUEST);
        tokio::pin!(next);
        let next = loop {
            replies.finish_taken();
            let in_flight = room.available_permits() + 1 < MAX_IN_FLIGHT;
            tokio::select! {
                next = &mut next => break next,
                () = tokio::time::sleep(FINISH_AFTER), if in_flight => {}
            }
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "a client wire connection closed");
                break;
            }
        };
        let busy = info.activity.as_ref().map(|a| a.begin());
        let (cluster, authorize, info, token, replies, mut closed) = (
            cluster.clone(),
            authorize.clone(),
            info.clone(),
            token.clone(),
            replies.clone(),
            closed.clone(),
        );
        replies.unanswered.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let id = request.id;
            let outcome = match authorize(&token, &info, true) {
                Ok(slot) => {
                    // The token's slot is given back before its reply goes out, wherever
                    // that is written, so a client's next request never finds it still held.
                    let held = Arc::new(Mutex::new(slot));
                    let now: gateway::ReplyNow = {
                        let (held, replies) = (held.clone(), replies.clone());
                        Box::new(move |reply: &pb::DeliverReply, done: gateway::Done| {
                            drop(held.lock().take());
                            replies.push(&taken_reply(id, reply), true);
                            replies.defer(done);
                        })
                    };
                    let answered = tokio::select! {
                        outcome = answer(&cluster, request.deliver, &request.traceparent, now) => outcome,
                        // The client is gone: nobody reads the reply.
                        _ = closed.changed() => {
                            drop(held.lock().take());
                            replies.unanswered.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    drop(held.lock().take());
                    answered
                }
                Err(status) => Err(status),
            };
            match outcome {
                // Written already by the thread that made it.
                Ok(None) => {}
                Ok(Some(reply)) => replies.push(&reply_to(id, Ok(Some(reply))), true),
                Err(status) => replies.push(&reply_to(id, Err(status)), true),
            }
            // The request counts as in flight until its reply fits under the queue's bound:
            // a client that does not read its replies stops being read.
            replies.room().await;
            drop((busy, permit));
        });
    }
    drop(open);
    replies.close();
    let _ = writer.await;
}

/// Delivers one request as the gRPC `Deliver` does; None when `now` took the reply.
async fn answer(
    cluster: &Arc<Cluster>,
    deliver: Option<pb::DeliverRequest>,
    traceparent: &str,
    now: gateway::ReplyNow,
) -> Result<Option<pb::DeliverReply>, Status> {
    let Some(deliver) = deliver else {
        return Err(Status::invalid_argument(
            "a client request carries a delivery",
        ));
    };
    let traceparent = (!traceparent.is_empty()).then_some(traceparent);
    gateway::deliver_to(cluster, deliver, traceparent, Some(now)).await
}

/// The reply for request `id`: a delivery's outcome (none for the hello's acceptance), or
/// the status the gRPC `Deliver` would have failed with.
fn reply_to(id: u64, outcome: Result<Option<pb::DeliverReply>, Status>) -> Frame<'static> {
    Frame::Owned(match outcome {
        Ok(reply) => pb::ClientReply {
            id,
            reply,
            code: 0,
            message: String::new(),
        },
        Err(status) => pb::ClientReply {
            id,
            reply: None,
            code: status.code() as u32,
            message: status.message().to_string(),
        },
    })
}

/// The reply for request `id` that a `ReplyNow` was given (not copied: it is encoded from
/// where it lies).
fn taken_reply(id: u64, reply: &pb::DeliverReply) -> Frame<'_> {
    Frame::Borrowed(id, reply)
}

/// A `ClientReply` to encode.
enum Frame<'a> {
    Owned(pb::ClientReply),
    /// A successful reply to request `id`, its delivery borrowed.
    Borrowed(u64, &'a pb::DeliverReply),
}

impl Frame<'_> {
    /// Appends the reply as one length-prefixed frame.
    fn encode(&self, buf: &mut Vec<u8>) {
        use prost::Message;
        match self {
            Frame::Owned(message) => {
                let len = message.encoded_len();
                buf.extend_from_slice(&(len as u32).to_be_bytes());
                message.encode_raw(buf);
            }
            Frame::Borrowed(id, reply) => {
                // A `ClientReply` with `id` (field 1) and `reply` (field 2); code 0 and an
                // empty message are not encoded.
                let len = prost::encoding::uint64::encoded_len(1, id)
                    + prost::encoding::message::encoded_len(2, *reply);
                buf.extend_from_slice(&(len as u32).to_be_bytes());
                prost::encoding::uint64::encode(1, id, buf);
                prost::encoding::message::encode(2, *reply, buf);
            }
        }
    }
}

/// How long a request whose reply was written by the thread that made it may wait to end
/// (giving back its place among the connection's requests in flight) when no other request
/// wakes the connection's task first.
const FINISH_AFTER: Duration = Duration::from_millis(20);

/// Bytes of replies a connection may have queued before its requests wait (and with them
/// the reading of more requests).
const QUEUED_MAX: usize = 1 << 20;

/// A connection's replies on their way out. A reply is written to the socket at once by
/// the thread that has it when nothing is queued or being written (plaintext only: the
/// thread that made a call's reply writes it without waking this connection's task); else
/// it is queued for the writer task, which writes everything queued in one write.
struct Replies {
    state: Mutex<Queue>,
    /// Requests read and not yet answered.
    unanswered: AtomicUsize,
    /// Wakes the writer task: something was queued, or the connection ended.
    queued: Notify,
    /// Wakes requests waiting for room in the queue.
    drained: Notify,
}

struct Queue {
    /// Frames not yet written, in order.
    frames: Vec<u8>,
    /// The writer task has frames in hand: nobody else may write until it is done.
    writing: bool,
    /// The socket, for direct writes; None on TLS and once the connection has ended (so
    /// the descriptor is closed with the connection).
    direct: Option<std::net::TcpStream>,
    /// The connection has ended: nothing more is queued.
    closed: bool,
    /// Requests whose replies were written (or queued) by the thread that made them, to be
    /// ended by the connection's task without waking it for each (see `defer`).
    taken: Vec<gateway::Done>,
}

impl Replies {
    fn new(direct: Option<std::net::TcpStream>) -> Replies {
        Replies {
            state: Mutex::new(Queue {
                frames: Vec::new(),
                writing: false,
                direct,
                closed: false,
                taken: Vec::new(),
            }),
            unanswered: AtomicUsize::new(0),
            queued: Notify::new(),
            drained: Notify::new(),
        }
    }

    /// Writes `frame` now if the socket is free and takes it all, else queues it (also its
    /// unwritten rest) for the writer task. `answers`: it is the reply to a request. While
    /// other requests await their replies, it is queued all the same: the writer then
    /// sends the replies that come close together in one write (a stream of calls, as
    /// `call_many` sends, would otherwise cost the callee's thread a write for each).
    fn push(&self, frame: &Frame<'_>, answers: bool) {
        let others = if answers {
            self.unanswered.fetch_sub(1, Ordering::Relaxed) - 1
        } else {
            0
        };
        let mut q = self.state.lock();
        if q.closed {
            return;
        }
        let was_empty = q.frames.is_empty();
        frame.encode(&mut q.frames);
        if was_empty && !q.writing && others == 0 {
            let q = &mut *q;
            if let Some(sock) = &q.direct {
                use std::io::Write;
                // Full (or broken: the writer task finds out and ends the connection)
                // leaves it all queued.
                if let Ok(n) = (&*sock).write(&q.frames) {
                    q.frames.drain(..n);
                }
                if q.frames.is_empty() {
                    STATS.client_replies_direct.inc();
                    return;
                }
            }
        }
        drop(q);
        self.queued.notify_one();
    }

    /// Keeps `done` for the connection's task to run at its next wake-up instead of waking
    /// it now: its request's reply is out already.
    fn defer(&self, done: gateway::Done) {
        let mut q = self.state.lock();
        if !q.closed {
            q.taken.push(done);
        }
    }

    /// Ends the requests whose replies were taken (on the connection's task).
    fn finish_taken(&self) {
        let taken = std::mem::take(&mut self.state.lock().taken);
        drop(taken);
    }

    /// Returns once the queue is under its bound (or the connection has ended).
    async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let q = self.state.lock();
                if q.closed || q.frames.len() < QUEUED_MAX {
                    return;
                }
            }
            drained.await;
        }
    }

    /// Ends the connection's replies: what is queued is still written, then the socket is
    /// shut down.
    fn close(&self) {
        let taken = {
            let mut q = self.state.lock();
            q.closed = true;
            q.direct = None;
            std::mem::take(&mut q.taken)
        };
        drop(taken);
        self.queued.notify_one();
        self.drained.notify_waiters();
    }
}

/// Writes queued replies, all that queued up in one write, until the connection ends.
async fn write_replies<W>(mut w: W, replies: Arc<Replies>)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(16 << 10);
    loop {
        let idle = {
            let mut q = replies.state.lock();
            if q.frames.is_empty() {
                q.writing = false;
                if q.closed {
                    break;
                }
                true
            } else {
                buf.clear();
                std::mem::swap(&mut buf, &mut q.frames);
                q.writing = true;
                false
            }
        };
        if idle {
            // A frame queued since is not missed: `notify_one` keeps a permit.
            replies.queued.notified().await;
            continue;
        }
        replies.drained.notify_waiters();
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            replies.close();
            return;
        }
        if buf.capacity() > QUEUED_MAX {
            // A large reply's buffer is not kept for the connection's life.
            buf = Vec::new();
        }
    }
    let _ = w.shutdown().await;
}

fn to_io(e: super::frames::FrameError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn framed(frame: &Frame<'_>) -> Vec<u8> {
        let mut buf = Vec::new();
        frame.encode(&mut buf);
        buf
    }

    /// The borrowed reply is encoded by hand, field by field: it must be the very bytes prost
    /// makes of the same `ClientReply`, so that any client decoding it sees the same message.
    #[test]
    fn a_borrowed_reply_is_encoded_as_prost_encodes_the_message() {
        use pb::deliver_reply::Result as R;
        let pid = pb::Pid {
            node: "n1".into(),
            incarnation: 7,
            serial: 1 << 40,
        };
        let replies = [
            pb::DeliverReply {
                result: Some(R::Value(b"\x80\x05K\x01.".to_vec())),
                pid: Some(pid.clone()),
            },
            pb::DeliverReply {
                result: Some(R::Value(vec![0; 70_000])),
                pid: None,
            },
            pb::DeliverReply {
                result: Some(R::Accepted(true)),
                pid: Some(pid),
            },
            pb::DeliverReply {
                result: Some(R::TimedOut(true)),
                pid: None,
            },
            pb::DeliverReply {
                result: Some(R::Exit(pb::WireReason::default())),
                pid: None,
            },
            pb::DeliverReply::default(),
        ];
        for id in [1, 127, 128, 300, u64::from(u32::MAX) + 1, u64::MAX] {
            for (k, reply) in replies.iter().enumerate() {
                let owned = Frame::Owned(pb::ClientReply {
                    id,
                    reply: Some(reply.clone()),
                    code: 0,
                    message: String::new(),
                });
                assert_eq!(
                    framed(&Frame::Borrowed(id, reply)),
                    framed(&owned),
                    "id {id}, reply {k}"
                );
            }
        }
    }

    #[test]
    fn a_frame_is_its_length_then_the_message() {
        let reply = pb::DeliverReply::default();
        let buf = framed(&Frame::Borrowed(5, &reply));
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(len, buf.len() - 4);
        let decoded = pb::ClientReply::decode(&buf[4..]).expect("a ClientReply");
        assert_eq!(decoded.id, 5);
        assert_eq!(decoded.reply, Some(reply));
        assert_eq!(decoded.code, 0);
    }
}
