//! Peer links: one outbound gRPC stream per remote node carrying batched frames, and the
//! service that applies inbound frames to local processes.

use super::wire::{pid_from_pb, pid_to_pb, reason_from_pb, reason_to_pb};
use super::Cluster;
use crate::observe::stats::STATS;
use crate::observe::trace;
use crate::python::host::with_thread_state;
use crate::python::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, NodeId, Outbound, Ref};
use futures::StreamExt;
use pb::peer_frame::Frame;
use rebeam_grpc::Error;
use rebeam_proto as pb;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Frames queued toward one node before sends start being dropped (at-most-once delivery:
/// a sender never blocks). About 64 MiB for 1 KiB messages.
pub const QUEUE_FRAMES: usize = 65_536;
/// Frames carried by one stream message.
const BATCH_FRAMES: usize = 1024;

/// Metadata naming the node a peer link comes from (checked against its certificate on TLS).
pub const NODE_HEADER: &str = rebeam_tls::identity::PEER_NODE_HEADER;

/// The message a node's peer service ends an inbound stream with when it cut it because its
/// own link back broke: the dialling side then loses the peer without cutting back.
const PEER_RESET: &str = "peer link reset: the link back to you broke";

/// The sending half of the link to one node.
pub struct PeerLink {
    id: u64,
    tx: mpsc::Sender<pb::PeerFrame>,
}

impl PeerLink {
    /// A link numbered `id` whose frames go to `tx`.
    pub fn new(id: u64, tx: mpsc::Sender<pb::PeerFrame>) -> PeerLink {
        PeerLink { id, tx }
    }

    /// Which link this is (a node opens a new one after each loss).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a frame; false when the queue is full or the link is gone.
    pub fn push(&self, frame: pb::PeerFrame) -> bool {
        self.tx.try_send(frame).is_ok()
    }
}

/// Opens the outbound stream to `address` for `node`; the link ends when the stream breaks.
pub fn open(cluster: &Arc<Cluster>, node: NodeId, address: String) -> PeerLink {
    static NEXT_LINK: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<pb::PeerFrame>(QUEUE_FRAMES);
    STATS.peer_links_opened.inc();
    let cluster2 = cluster.clone();
    cluster.tokio.spawn(async move {
        let result = stream_to(&cluster2, &address, rx).await;
        let reset_by_peer = match &result {
            Err(err) => {
                tracing::info!(peer = %node.name(), "peer link to {address} closed: {err}");
                err.downcast_ref::<Status>()
                    .is_some_and(|s| s.code() == tonic::Code::Aborted && s.message() == PEER_RESET)
            }
            Ok(()) => false,
        };
        cluster2.link_ended(node, id, !reset_by_peer);
    });
    PeerLink::new(id, tx)
}

async fn stream_to(
    cluster: &Arc<Cluster>,
    address: &str,
    rx: mpsc::Receiver<pb::PeerFrame>,
) -> anyhow::Result<()> {
    tracing::debug!("opening a peer link to {address}");
    let channel = cluster.dialer.channel(address, |e| {
        e.connect_timeout(std::time::Duration::from_secs(2))
    })?;
    let mut client = pb::peer_service_client::PeerServiceClient::with_interceptor(
        channel,
        cluster.bearer.clone(),
    );
    let batches = futures::stream::unfold(rx, |mut rx| async move {
        let first = rx.recv().await?;
        let mut frames = Vec::with_capacity(16);
        frames.push(first);
        while frames.len() < BATCH_FRAMES {
            match rx.try_recv() {
                Ok(frame) => frames.push(frame),
                Err(_) => break,
            }
        }
        let batch = pb::PeerBatch { frames };
        STATS.peer_frames_out.add(batch.frames.len() as u64);
        STATS
            .peer_bytes_out
            .add(prost::Message::encoded_len(&batch) as u64);
        Some((batch, rx))
    });
    let mut request = Request::new(batches);
    let me = cluster.rt.node().name();
    request.metadata_mut().insert(NODE_HEADER, me.parse()?);
    client.stream(request).await?;
    Ok(())
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
                Envelope::Call {
                    request,
                    from,
                    slot,
                } => {
                    let traceparent = trace::to_wire(request.trace());
                    let request = match request.encode() {
                        Ok(bytes) => bytes,
                        Err(_) => {
                            let envelope = Envelope::Call {
                                request,
                                from,
                                slot,
                            };
                            return Err(Outbound::Message { to, envelope });
                        }
                    };
                    let call_id = cluster.next_call.fetch_add(1, Ordering::Relaxed);
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

fn wire_send(
    to: crate::runtime::Pid,
    term: Term,
    cast: bool,
) -> Result<(NodeId, pb::PeerFrame), Outbound<Term>> {
    match term.encode() {
        Ok(payload) => Ok((
            to.node,
            pb::PeerFrame {
                frame: Some(Frame::Send(pb::PeerSend {
                    to: Some(pid_to_pb(to)),
                    payload,
                    cast,
                    traceparent: trace::to_wire(term.trace()),
                })),
            },
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

/// The peer service: applies frames from one dialling node, in order.
pub struct PeerService {
    /// The cluster this node belongs to.
    pub cluster: Arc<Cluster>,
}

#[tonic::async_trait]
impl pb::peer_service_server::PeerService for PeerService {
    async fn stream(
        &self,
        request: Request<tonic::Streaming<pb::PeerBatch>>,
    ) -> Result<Response<pb::PeerStreamEnd>, Status> {
        let from_node = request
            .metadata()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::from(Error::invalid("peer stream without x-rebeam-node metadata"))
            })
            .and_then(|name| {
                NodeId::from_wire(name).map_err(|e| Status::from(Error::invalid(e.to_string())))
            })?;
        let mut frames = request.into_inner();
        let stream = InboundStream::open(&self.cluster, from_node);
        loop {
            let batch = tokio::select! {
                batch = frames.next() => batch,
                () = stream.cut.notified() => return Err(Status::aborted(PEER_RESET)),
            };
            let Some(batch) = batch else { break };
            let batch = batch?;
            STATS.peer_frames_in.add(batch.frames.len() as u64);
            STATS
                .peer_bytes_in
                .add(prost::Message::encoded_len(&batch) as u64);
            // Applied on the inbound thread, which may need the interpreter (a kill
            // interrupts running code); a tokio worker must not wait for the GIL.
            if self
                .cluster
                .inbound
                .send(Inbound::Batch(from_node, batch))
                .is_err()
            {
                return Err(Error::Unavailable("node is shutting down".into()).into());
            }
        }
        Ok(Response::new(pb::PeerStreamEnd {}))
    }
}

/// An inbound stream's place in the node's links, from its start until it ends or its
/// handler is dropped (the peer went away).
struct InboundStream {
    cluster: Arc<Cluster>,
    node: NodeId,
    id: u64,
    cut: Arc<tokio::sync::Notify>,
}

impl InboundStream {
    fn open(cluster: &Arc<Cluster>, node: NodeId) -> InboundStream {
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
    /// Frames from a peer, in order.
    Batch(NodeId, pb::PeerBatch),
    /// A peer is gone: links and monitors to it fire `noconnection`.
    NodeDown(NodeId),
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
            Inbound::Batch(node, batch) => {
                tracing::debug!(peer = %node.name(), frames = batch.frames.len(), "inbound batch");
                for frame in batch.frames {
                    apply(cluster, node, frame);
                }
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
            let slot = Arc::new(CallSlot::forwarding(Box::new(move |result| {
                reply_cluster.send_reply(from_node, call_id, result);
            })));
            let envelope = Envelope::Call {
                request: Term::from_wire(c.request).traced(trace::from_wire(&c.traceparent)),
                from,
                slot: slot.clone(),
            };
            // Never run on this thread (no inline fast path here): a handler that calls
            // another node would wait for a reply only this thread can apply, stalling every
            // frame from this peer until its call timed out.
            match rt.lookup(to) {
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
