//! Peer links: one outbound connection per remote node carrying batched frames (the peer
//! transport, `transport/`), and the inbound thread that applies frames to local processes.

use super::transport::dial::{self, LinkError};
use super::transport::outbox::{Outbox, SendFrame, Taken};
use super::wire::{pid_from_pb, pid_to_pb, reason_from_pb, reason_to_pb};
use super::Cluster;
use crate::observe::stats::STATS;
use crate::observe::trace;
use crate::python::host::with_thread_state;
use crate::python::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, NodeId, Outbound, Pid, Ref};
use pb::peer_frame::Frame;
use rebeam_proto as pb;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames waiting for a link's writer before senders wait for room (and, after
/// [`SEND_WAIT`], drop). About 64 MiB for 1 KiB messages.
pub const QUEUE_FRAMES: usize = 65_536;

/// How long a process waits for room on a full link before its frame is dropped.
pub const SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What became of a frame given to [`PeerLink::push`].
pub enum Queued {
    /// Written or pending.
    Yes,
    /// The outbox is full: the frame back.
    Full(pb::PeerFrame),
    /// The link is gone.
    Gone,
}

/// The sending half of the link to one node. Clones share the link; when the last one goes,
/// the link's writer ends once it has written what is pending.
#[derive(Clone)]
pub struct PeerLink {
    id: u64,
    /// The node the link goes to, and its name (a message frame names its receiver's node).
    node: NodeId,
    name: Arc<str>,
    senders: Arc<Senders>,
}

/// The senders' hold on a link's outbox.
struct Senders(Arc<Outbox>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.senders_gone();
    }
}

impl std::fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerLink").field("id", &self.id).finish()
    }
}

impl PeerLink {
    /// A link numbered `id` to `node` whose frames go to `outbox` (written by the link's
    /// writer, or straight to the connection when it has one and is idle).
    pub fn new(id: u64, node: NodeId, outbox: Arc<Outbox>) -> PeerLink {
        PeerLink {
            id,
            node,
            name: node.name(),
            senders: Arc::new(Senders(outbox)),
        }
    }

    /// Which link this is (a node opens a new one after each loss).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The link's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.senders.0
    }

    /// Writes a frame to the connection when the link is idle, else queues it; gives it back
    /// when the outbox is full.
    pub fn push(&self, frame: pb::PeerFrame) -> Queued {
        match self.outbox().push(&frame) {
            Taken::Yes => Queued::Yes,
            Taken::Full => Queued::Full(frame),
            Taken::Gone => Queued::Gone,
        }
    }

    /// Queues a frame once there is room, waiting up to `wait` (blocking the calling thread);
    /// false when the link went away or no room came in time.
    pub fn wait_for_room(&self, frame: &pb::PeerFrame, wait: Duration) -> bool {
        self.outbox().wait_for_room(frame, Instant::now() + wait)
    }

    /// [`PeerLink::push`] of a message to `to` with an encoded payload, without building its
    /// frame unless the outbox is full.
    fn push_send(&self, to: Pid, payload: &[u8], cast: bool, traceparent: &str) -> Queued {
        let other;
        let node = if to.node == self.node {
            &*self.name
        } else {
            other = to.node.name();
            &*other
        };
        let frame = SendFrame {
            node,
            incarnation: to.incarnation,
            serial: to.serial,
            payload,
            cast,
            traceparent,
        };
        match self.outbox().push(&frame) {
            Taken::Yes => Queued::Yes,
            Taken::Full => Queued::Full(send_frame(to, payload.to_vec(), cast, traceparent)),
            Taken::Gone => Queued::Gone,
        }
    }
}

thread_local! {
    /// A sending thread's buffer for encoding payloads (taken out while in use: encoding may
    /// run Python code, which may send).
    static PAYLOAD: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Sends a message (`cast` or not) on `link`, encoding its payload into a reused buffer and
/// the frame straight into the link's outbox. None when the payload cannot be encoded.
pub fn push_message(link: &PeerLink, to: Pid, term: &Term, cast: bool) -> Option<Queued> {
    let mut payload = PAYLOAD.take();
    let queued = match term.encode_into(&mut payload) {
        Ok(()) => {
            let traceparent = trace::to_wire(term.trace());
            Some(link.push_send(to, &payload, cast, &traceparent))
        }
        Err(_) => None,
    };
    if payload.capacity() <= 64 << 10 {
        PAYLOAD.set(payload);
    }
    queued
}

/// Opens the outbound connection to `address` for `node` (the peer transport); the link ends
/// when the connection breaks.
pub fn open(cluster: &Arc<Cluster>, node: NodeId, address: String) -> PeerLink {
    static NEXT_LINK: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(Outbox::default());
    STATS.peer_links_opened.inc();
    let cluster2 = cluster.clone();
    let writer = outbox.clone();
    cluster.peer_io.spawn(async move {
        tracing::debug!("opening a peer link to {address}");
        let me = cluster2.rt.node().name().to_string();
        let proof = &cluster2.proof;
        let result = dial::run(&cluster2.dialer, &address, &me, proof, &writer).await;
        writer.close();
        if let Err(err) = &result {
            tracing::info!(peer = %node.name(), "peer link to {address} closed: {err}");
        }
        let reset_by_peer = matches!(result, Err(LinkError::Reset));
        cluster2.link_ended(node, id, !reset_by_peer);
    });
    PeerLink::new(id, node, outbox)
}

/// Turns an outbound message or signal into a frame; a call's slot waits in `calls`.
pub fn frame_for(
    cluster: &Cluster,
    out: Outbound<Term>,
) -> Result<(NodeId, pb::PeerFrame), Outbound<Term>> {
    let frame = |f: Frame| pb::PeerFrame { frame: Some(f) };
    let link = |from, to| pb::PeerLink {
        from: Some(pid_to_pb(from)),
        to: Some(pid_to_pb(to)),
    };
    let monitor = |watcher, target, mref: Ref| pb::PeerMonitor {
        watcher: Some(pid_to_pb(watcher)),
        target: Some(pid_to_pb(target)),
        r#ref: mref.0,
    };
    Ok(match out {
        Outbound::Message { to, envelope } => {
            let f = match envelope {
                Envelope::Info(term) => return wire_send(to, term, false),
                Envelope::Cast(term) => return wire_send(to, term, true),
                Envelope::Call { request, slot } => {
                    let traceparent = trace::to_wire(request.trace());
                    let request = match request.encode() {
                        Ok(bytes) => bytes,
                        Err(_) => {
                            let envelope = Envelope::Call { request, slot };
                            return Err(Outbound::Message { to, envelope });
                        }
                    };
                    let call_id = cluster.next_call.fetch_add(1, Ordering::Relaxed);
                    let from = slot.from();
                    cluster.calls.lock().insert(call_id, (to.node, slot));
                    Frame::Call(pb::PeerCall {
                        to: Some(pid_to_pb(to)),
                        from: from.map(pid_to_pb),
                        call_id,
                        request,
                        traceparent,
                    })
                }
                // Exit/Down/Timeout envelopes only arise locally.
                other => {
                    return Err(Outbound::Message {
                        to,
                        envelope: other,
                    })
                }
            };
            (to.node, frame(f))
        }
        Outbound::Link { from, to } => (to.node, frame(Frame::Link(link(from, to)))),
        Outbound::Unlink { from, to } => (to.node, frame(Frame::Unlink(link(from, to)))),
        Outbound::Exit {
            from,
            to,
            reason,
            link,
        } => (
            to.node,
            frame(Frame::Exit(pb::PeerExit {
                from: Some(pid_to_pb(from)),
                to: Some(pid_to_pb(to)),
                reason: Some(reason_to_pb(&reason)),
                link,
            })),
        ),
        Outbound::Monitor {
            watcher,
            target,
            mref,
        } => (
            target.node,
            frame(Frame::Monitor(monitor(watcher, target, mref))),
        ),
        Outbound::Demonitor {
            watcher,
            target,
            mref,
        } => (
            target.node,
            frame(Frame::Demonitor(monitor(watcher, target, mref))),
        ),
        Outbound::Down {
            watcher,
            target,
            mref,
            reason,
        } => (
            watcher.node,
            frame(Frame::Down(pb::PeerDown {
                watcher: Some(pid_to_pb(watcher)),
                target: Some(pid_to_pb(target)),
                r#ref: mref.0,
                reason: Some(reason_to_pb(&reason)),
            })),
        ),
    })
}

fn wire_send(to: Pid, term: Term, cast: bool) -> Result<(NodeId, pb::PeerFrame), Outbound<Term>> {
    match term.encode() {
        Ok(payload) => Ok((
            to.node,
            send_frame(to, payload, cast, &trace::to_wire(term.trace())),
        )),
        Err(_) => {
            let envelope = if cast {
                Envelope::Cast(term)
            } else {
                Envelope::Info(term)
            };
            Err(Outbound::Message { to, envelope })
        }
    }
}

/// The frame of a message to `to`.
fn send_frame(to: Pid, payload: Vec<u8>, cast: bool, traceparent: &str) -> pb::PeerFrame {
    pb::PeerFrame {
        frame: Some(Frame::Send(pb::PeerSend {
            to: Some(pid_to_pb(to)),
            payload,
            cast,
            traceparent: traceparent.to_string(),
        })),
    }
}

/// An inbound stream's place in the node's links, from its start until it ends or its
/// handler is dropped (the peer went away).
pub struct InboundStream {
    cluster: Arc<Cluster>,
    node: NodeId,
    id: u64,
    /// Notified when the node cuts the stream (its own link back broke).
    pub cut: Arc<tokio::sync::Notify>,
}

impl InboundStream {
    /// Registers a stream from `node` that just opened.
    pub fn open(cluster: &Arc<Cluster>, node: NodeId) -> InboundStream {
        let (id, cut) = cluster.links.lock().stream_opened(node);
        InboundStream {
            cluster: cluster.clone(),
            node,
            id,
            cut,
        }
    }
}

impl Drop for InboundStream {
    fn drop(&mut self) {
        self.cluster.links.lock().stream_closed(self.node, self.id);
    }
}

/// Work for the inbound thread.
pub enum Inbound {
    /// Frames from a peer, in order; `pending` counts the connection's batches not yet
    /// applied (see [`deliver`]).
    Batch(NodeId, pb::PeerBatch, Arc<AtomicUsize>),
    /// A peer is gone: links and monitors to it fire `noconnection`.
    NodeDown(NodeId),
}

/// Whether a frame may be applied on the connection's I/O task rather than the inbound
/// thread: messages, calls and replies only put an envelope in a mailbox or complete a call
/// slot; they never run a handler. (A delivery past a mailbox limit kills the receiver,
/// which may take the GIL briefly: a rare path.) Signals, and frames kinds added later,
/// go to the inbound thread.
fn direct(frame: &pb::PeerFrame) -> bool {
    matches!(
        frame.frame,
        Some(Frame::Send(_) | Frame::Call(_) | Frame::Reply(_))
    )
}

/// Applies a batch from `node` read by its connection's I/O task: frames that allow it are
/// applied at once, saving a thread hand-off; from the first that does not, the rest goes to
/// the inbound thread, and so does every later batch until the inbound thread has caught up
/// (`pending`, per connection), so frames from one peer stay in order. False when the node is
/// shutting down.
pub fn deliver(
    cluster: &Arc<Cluster>,
    node: NodeId,
    batch: pb::PeerBatch,
    pending: &Arc<AtomicUsize>,
) -> bool {
    STATS.peer_frames_in.add(batch.frames.len() as u64);
    let mut frames = batch.frames;
    if pending.load(Ordering::Acquire) == 0 {
        let split = frames
            .iter()
            .position(|f| !direct(f))
            .unwrap_or(frames.len());
        let rest = frames.split_off(split);
        for frame in frames {
            apply(cluster, node, frame);
        }
        frames = rest;
    }
    if frames.is_empty() {
        return true;
    }
    pending.fetch_add(1, Ordering::AcqRel);
    let batch = pb::PeerBatch { frames };
    cluster
        .inbound
        .send(Inbound::Batch(node, batch, pending.clone()))
        .is_ok()
}

/// The inbound thread: applies peer frames and node losses in arrival order.
pub fn inbound_loop(cluster: Arc<Cluster>, rx: std::sync::mpsc::Receiver<Inbound>) {
    // The thread keeps a Python thread state for life but runs without the GIL: most frames
    // need none, and those that do (a call run in place, a kill) take it cheaply.
    let rx = parking_lot::Mutex::new(rx);
    with_thread_state(|| {
        let rx = rx.lock();
        while let Ok(next) = rx.recv() {
            handle_inbound(&cluster, next);
        }
    })
}

fn handle_inbound(cluster: &Arc<Cluster>, next: Inbound) {
    {
        match next {
            Inbound::Batch(node, batch, pending) => {
                tracing::debug!(peer = %node.name(), frames = batch.frames.len(), "inbound batch");
                for frame in batch.frames {
                    apply(cluster, node, frame);
                }
                pending.fetch_sub(1, Ordering::AcqRel);
            }
            Inbound::NodeDown(node) => cluster.apply_node_down(node),
        }
    }
}

/// Applies one inbound frame to local processes; malformed frames are dropped and logged.
fn apply(cluster: &Arc<Cluster>, from_node: NodeId, frame: pb::PeerFrame) {
    let rt = &cluster.rt;
    let Some(frame) = frame.frame else { return };
    let ok = match frame {
        Frame::Send(m) => pid_from_pb(m.to.as_ref()).map(|to| {
            let term = Term::from_wire(m.payload).traced(trace::from_wire(&m.traceparent));
            let envelope = if m.cast {
                Envelope::Cast(term)
            } else {
                Envelope::Info(term)
            };
            let _ = rt.send(to, envelope);
        }),
        Frame::Call(c) => pid_from_pb(c.to.as_ref()).map(|to| {
            let from = pid_from_pb(c.from.as_ref());
            let reply_cluster = cluster.clone();
            let call_id = c.call_id;
            let slot = Arc::new(CallSlot::forwarding(
                from,
                Box::new(move |result| {
                    reply_cluster.send_reply(from_node, call_id, result);
                }),
            ));
            let envelope = Envelope::Call {
                request: Term::from_wire(c.request).traced(trace::from_wire(&c.traceparent)),
                slot: slot.clone(),
            };
            // Never run on this thread (no inline fast path here): a handler that calls
            // another node would wait for a reply only this thread can apply, stalling every
            // frame from this peer until its call timed out.
            match rt.lookup_callee(to) {
                Some(callee) => {
                    if rt.deliver(&callee, envelope).is_err() {
                        let _ = slot.complete(CallResult::Exit(crate::runtime::Reason::Noproc));
                    }
                }
                None => {
                    let _ = slot.complete(CallResult::Exit(crate::runtime::Reason::Noproc));
                }
            }
        }),
        Frame::Reply(r) => {
            let slot = cluster
                .calls
                .lock()
                .remove(&r.call_id)
                .map(|(_, slot)| slot);
            if let Some(slot) = slot {
                let result = match r.result {
                    Some(pb::peer_reply::Result::Value(v)) => CallResult::Reply(Term::from_wire(v)),
                    Some(pb::peer_reply::Result::Exit(reason)) => {
                        CallResult::Exit(reason_from_pb(Some(reason)))
                    }
                    None => CallResult::Exit(crate::runtime::Reason::Noconnection),
                };
                let _ = slot.complete(result);
            }
            Some(())
        }
        Frame::Link(l) => pid_from_pb(l.from.as_ref())
            .zip(pid_from_pb(l.to.as_ref()))
            .map(|(from, to)| rt.remote_link(from, to)),
        Frame::Unlink(l) => pid_from_pb(l.from.as_ref())
            .zip(pid_from_pb(l.to.as_ref()))
            .map(|(from, to)| rt.remote_unlink(from, to)),
        Frame::Exit(e) => pid_from_pb(e.from.as_ref())
            .zip(pid_from_pb(e.to.as_ref()))
            .map(|(from, to)| rt.remote_exit(from, to, reason_from_pb(e.reason), e.link)),
        Frame::Monitor(m) => pid_from_pb(m.watcher.as_ref())
            .zip(pid_from_pb(m.target.as_ref()))
            .map(|(w, t)| rt.remote_monitor(w, t, Ref(m.r#ref))),
        Frame::Demonitor(m) => pid_from_pb(m.watcher.as_ref())
            .zip(pid_from_pb(m.target.as_ref()))
            .map(|(w, t)| rt.remote_demonitor(w, t, Ref(m.r#ref))),
        Frame::Down(d) => pid_from_pb(d.watcher.as_ref())
            .zip(pid_from_pb(d.target.as_ref()))
            .map(|(w, t)| rt.remote_down(w, t, Ref(d.r#ref), reason_from_pb(d.reason))),
        Frame::Spawn(s) => super::remote_spawn::apply(cluster, from_node, s),
    };
    if ok.is_none() {
        tracing::warn!(peer = %from_node.name(), "dropped a malformed peer frame");
    }
}
