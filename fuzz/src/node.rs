//! The node's network decoders: the peer link (handshake, then `PeerBatch` frames with the
//! pid, reason and term conversions each frame goes through), the client wire, and the
//! gateway's gRPC requests.

use pb::peer_frame::Frame;
use rebeam_node::cluster::gateway::table_query;
use rebeam_node::cluster::transport::frames::{Reader, MAX_CONTROL, MAX_MESSAGE};
use rebeam_node::cluster::transport::handshake::{self, Proof};
use rebeam_node::cluster::wire::{pid_from_pb, reason_from_pb};
use rebeam_node::runtime::pid::{NodeId, MAX_NODE_NAME};
use rebeam_proto::v1 as pb;

/// The client wire's largest request (`transport::client`'s private bound).
pub const MAX_CLIENT_REQUEST: usize = 4 << 20;

fn check_pid(p: Option<&pb::Pid>) {
    if let (Some(pid), Some(p)) = (pid_from_pb(p), p) {
        // A node name from the wire is never kept beyond the node id grammar, and reads
        // back as sent unless the name table was full (then the node is unknown here).
        let name = pid.node.name();
        assert!(name.len() <= MAX_NODE_NAME);
        assert!(*name == *p.node || (pid.node == NodeId::UNKNOWN && &*name == "?"));
        assert_eq!((pid.incarnation, pid.serial), (p.incarnation, p.serial));
    }
}

/// Every conversion a received peer frame goes through before it reaches a process.
pub fn check_frame(frame: Frame) {
    match frame {
        Frame::Send(s) => check_pid(s.to.as_ref()),
        Frame::Call(c) => {
            check_pid(c.to.as_ref());
            check_pid(c.from.as_ref());
        }
        Frame::Reply(r) => {
            if let Some(pb::peer_reply::Result::Exit(e)) = r.result {
                let _ = reason_from_pb(Some(e));
            }
        }
        Frame::Link(l) | Frame::Unlink(l) => {
            check_pid(l.from.as_ref());
            check_pid(l.to.as_ref());
        }
        Frame::Exit(e) => {
            check_pid(e.from.as_ref());
            check_pid(e.to.as_ref());
            let _ = reason_from_pb(e.reason);
        }
        Frame::Monitor(m) | Frame::Demonitor(m) => {
            check_pid(m.watcher.as_ref());
            check_pid(m.target.as_ref());
        }
        Frame::Down(d) => {
            check_pid(d.watcher.as_ref());
            check_pid(d.target.as_ref());
            let _ = reason_from_pb(d.reason);
        }
        Frame::Spawn(s) => match s.kind {
            Some(pb::peer_spawn::Kind::Request(r)) => check_pid(r.from.as_ref()),
            Some(pb::peer_spawn::Kind::Result(r)) => match r.result {
                Some(pb::peer_spawn_result::Result::Pid(p)) => check_pid(Some(&p)),
                Some(pb::peer_spawn_result::Result::InitFailed(e)) => {
                    let _ = reason_from_pb(Some(e));
                }
                _ => {}
            },
            None => {}
        },
    }
}

/// A peer connection after its magic: even selector, the acceptor's handshake (what an
/// unauthenticated dialler reaches); odd, the stream of batches of an authenticated peer.
pub fn peer_stream(data: &[u8]) {
    let Some((mode, rest)) = crate::split(data) else {
        return;
    };
    let mut reader = Reader::new(rest);
    if mode % 2 == 0 {
        let proof = Proof::secret("fuzz-secret");
        let mut sink = tokio::io::sink();
        let _ = crate::block_on(handshake::accept(&mut reader, &mut sink, &proof));
        return;
    }
    while let Ok(Some(batch)) = crate::block_on(reader.next::<pb::PeerBatch>(MAX_MESSAGE)) {
        for frame in batch.frames.into_iter().filter_map(|f| f.frame) {
            check_frame(frame);
        }
    }
}

/// The checks `gateway::deliver` makes before it resolves and sends (kind, then target).
pub fn check_delivery(r: pb::DeliverRequest) {
    let kind = pb::DeliveryKind::try_from(r.kind)
        .ok()
        .filter(|k| *k != pb::DeliveryKind::Unspecified);
    if kind.is_none() {
        return;
    }
    match r.target {
        Some(pb::deliver_request::Target::Pid(p)) => check_pid(Some(&p)),
        Some(pb::deliver_request::Target::Global(name)) => {
            let _ = name.is_empty() || name.len() > 255;
        }
        None => {}
    }
    let _ = r.timeout_s > 0.0 && r.timeout_s.is_finite();
}

/// A client wire connection from its first byte: magic, hello, then requests.
pub fn client_stream(data: &[u8]) {
    let mut reader = Reader::new(data);
    let opened = crate::block_on(async {
        if !reader
            .magic_is(rebeam_node::cluster::transport::client::MAGIC)
            .await?
        {
            return Ok(None);
        }
        reader
            .next::<pb::ClientHello>(MAX_CONTROL)
            .await
            .map_err(std::io::Error::other)
    });
    if !matches!(opened, Ok(Some(_))) {
        return;
    }
    while let Ok(Some(request)) =
        crate::block_on(reader.next::<pb::ClientRequest>(MAX_CLIENT_REQUEST))
    {
        if let Some(deliver) = request.deliver {
            check_delivery(deliver);
        }
    }
}

/// The gateway's gRPC requests and what the node makes of them before it acts.
pub fn gateway_request(data: &[u8]) {
    use prost::Message;
    let Some((kind, body)) = crate::split(data) else {
        return;
    };
    match kind % 4 {
        0 => {
            if let Ok(r) = pb::DeliverRequest::decode(body) {
                check_delivery(r);
            }
        }
        1 => {
            if let Ok(r) = pb::ListProcessesRequest::decode(body) {
                if let Some(q) = r.query {
                    let _ = table_query(q);
                }
            }
        }
        2 => {
            if let Ok(r) = pb::KillRequest::decode(body) {
                check_pid(r.pid.as_ref());
            }
        }
        _ => {
            let _ = pb::LogsRequest::decode(body);
        }
    }
}
