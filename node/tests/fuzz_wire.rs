//! Bounded mutation fuzzing of what a node decodes from its peers: peer frame batches and
//! the pid and reason conversions every frame goes through (the mutation engine is the
//! controller's, shared by path). A decoder may refuse; it must never panic, and a node
//! name from the wire is never kept beyond the node id grammar.

#[path = "../../controller/tests/fuzz_support/mod.rs"]
#[allow(dead_code)]
mod fuzz_support;

use pb::peer_frame::Frame;
use prost::Message;
use rebeam_node::cluster::wire::{pid_from_pb, reason_from_pb};
use rebeam_node::runtime::pid::MAX_NODE_NAME;
use rebeam_proto::v1 as pb;

fn pid(node: &str) -> Option<pb::Pid> {
    Some(pb::Pid {
        node: node.into(),
        incarnation: 0x1234,
        serial: 7,
    })
}

fn check_pid(p: Option<&pb::Pid>) {
    if let Some(pid) = pid_from_pb(p) {
        assert!(pid.node.name().len() <= MAX_NODE_NAME);
    }
}

#[test]
fn peer_batches() {
    let reason = Some(pb::WireReason {
        kind: Some(pb::wire_reason::Kind::Crash(pb::WireCrash {
            r#type: "ValueError".into(),
            message: "boom".into(),
            traceback: "Traceback".into(),
        })),
    });
    let frames = vec![
        Frame::Send(pb::PeerSend {
            to: pid("node-a"),
            payload: b"\x80\x05K\x01.".to_vec(),
            cast: true,
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        }),
        Frame::Call(pb::PeerCall {
            to: pid("node-a"),
            from: pid("node-b"),
            call_id: 9,
            request: b"\x80\x05N.".to_vec(),
            traceparent: String::new(),
        }),
        Frame::Exit(pb::PeerExit {
            from: pid("node-b"),
            to: pid("node-a"),
            reason: reason.clone(),
            link: true,
        }),
        Frame::Down(pb::PeerDown {
            watcher: pid("node-a"),
            target: pid("node-b"),
            r#ref: 3,
            reason,
        }),
        Frame::Spawn(pb::PeerSpawn {
            spawn_id: 4,
            kind: Some(pb::peer_spawn::Kind::Request(pb::PeerSpawnRequest {
                from: pid("node-b"),
                module: "app.work".into(),
                qualname: "Worker".into(),
                main_path: String::new(),
                args: b"\x80\x05N.".to_vec(),
                link: true,
                monitor_ref: 5,
            })),
        }),
        Frame::Spawn(pb::PeerSpawn {
            spawn_id: 4,
            kind: Some(pb::peer_spawn::Kind::Result(pb::PeerSpawnResult {
                result: Some(pb::peer_spawn_result::Result::InitFailed(
                    pb::WireReason::default(),
                )),
            })),
        }),
    ];
    let batch = pb::PeerBatch {
        frames: frames
            .into_iter()
            .map(|f| pb::PeerFrame { frame: Some(f) })
            .collect(),
    };
    let seeds = vec![batch.encode_to_vec()];
    fuzz_support::fuzz(&seeds, |bytes| {
        let Ok(batch) = pb::PeerBatch::decode(bytes) else {
            return;
        };
        for frame in batch.frames.into_iter().filter_map(|f| f.frame) {
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
    });
}
