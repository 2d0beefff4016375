//! The seed corpus of each target, built from valid encodings (and a few hostile ones the
//! decoders must refuse): `gen_corpus` writes them under `corpus/<target>/`.

use std::io::Write;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta, StoredMembership, Vote,
};
use pb::peer_frame::Frame;
use prost::Message;
use rebeam_controller::api::raft::{Advertised, PreVote};
use rebeam_controller::types::TypeConfig;
use rebeam_proto::v1 as pb;

use crate::controller::ARCHIVE_MANIFEST;

/// Each target's name and its seeds.
pub fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        ("peer_frames", peer_frames()),
        ("client_wire", client_wire()),
        ("gateway_requests", gateway_requests()),
        ("manifest", manifests()),
        ("archive", archives()),
        ("raft_payloads", raft_payloads()),
        ("controller_requests", controller_requests()),
        ("submit_app", submit_app()),
    ]
}

fn framed(m: &impl Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn with_kind(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(body);
    out
}

fn pid(node: &str) -> Option<pb::Pid> {
    Some(pb::Pid {
        node: node.into(),
        incarnation: 0x1234,
        serial: 7,
    })
}

fn crash() -> pb::WireReason {
    pb::WireReason {
        kind: Some(pb::wire_reason::Kind::Crash(pb::WireCrash {
            r#type: "ValueError".into(),
            message: "boom".into(),
            traceback: "Traceback".into(),
        })),
    }
}

/// One frame of each kind a peer sends.
pub fn frames() -> Vec<Frame> {
    let link = pb::PeerLink {
        from: pid("node-b"),
        to: pid("node-a"),
    };
    let monitor = pb::PeerMonitor {
        watcher: pid("node-a"),
        target: pid("node-b"),
        r#ref: 3,
    };
    vec![
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
        Frame::Reply(pb::PeerReply {
            call_id: 9,
            result: Some(pb::peer_reply::Result::Exit(pb::WireReason {
                kind: Some(pb::wire_reason::Kind::Atom("noproc".into())),
            })),
        }),
        Frame::Link(link.clone()),
        Frame::Unlink(link),
        Frame::Exit(pb::PeerExit {
            from: pid("node-b"),
            to: pid("node-a"),
            reason: Some(crash()),
            link: true,
        }),
        Frame::Monitor(monitor.clone()),
        Frame::Demonitor(monitor),
        Frame::Down(pb::PeerDown {
            watcher: pid("node-a"),
            target: pid("node-b"),
            r#ref: 3,
            reason: Some(pb::WireReason {
                kind: Some(pb::wire_reason::Kind::ShutdownTerm(b"\x80\x05N.".to_vec())),
            }),
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
                result: Some(pb::peer_spawn_result::Result::Pid(pb::Pid {
                    node: "node-c".into(),
                    incarnation: 2,
                    serial: 1,
                })),
            })),
        }),
        Frame::Spawn(pb::PeerSpawn {
            spawn_id: 4,
            kind: Some(pb::peer_spawn::Kind::Result(pb::PeerSpawnResult {
                result: Some(pb::peer_spawn_result::Result::InitFailed(crash())),
            })),
        }),
    ]
}

fn batch(frames: Vec<Frame>) -> pb::PeerBatch {
    pb::PeerBatch {
        frames: frames
            .into_iter()
            .map(|f| pb::PeerFrame { frame: Some(f) })
            .collect(),
    }
}

fn peer_frames() -> Vec<Vec<u8>> {
    let mut seeds = vec![
        with_kind(
            0,
            framed(&pb::PeerHello {
                node: "node-b".into(),
                nonce: vec![7; 32],
                proof: vec![1; 32],
            }),
        ),
        with_kind(0, framed(&pb::PeerHello::default())),
        with_kind(1, framed(&batch(frames()))),
    ];
    for f in frames() {
        seeds.push(with_kind(1, framed(&batch(vec![f]))));
    }
    // Two batches, the second cut short.
    let mut two = framed(&batch(frames()));
    let second = framed(&batch(frames()));
    two.extend_from_slice(&second[..second.len() / 2]);
    seeds.push(with_kind(1, two));
    seeds
}

fn deliveries() -> Vec<pb::DeliverRequest> {
    vec![
        pb::DeliverRequest {
            target: Some(pb::deliver_request::Target::Global("lobby".into())),
            kind: pb::DeliveryKind::Call as i32,
            payload: b"\x80\x05N.".to_vec(),
            timeout_s: 5.0,
        },
        pb::DeliverRequest {
            target: Some(pb::deliver_request::Target::Pid(pb::Pid {
                node: "node-a".into(),
                incarnation: 3,
                serial: 11,
            })),
            kind: pb::DeliveryKind::Cast as i32,
            payload: b"\x80\x05K\x01.".to_vec(),
            timeout_s: 0.0,
        },
        pb::DeliverRequest {
            target: None,
            kind: pb::DeliveryKind::Send as i32,
            payload: Vec::new(),
            timeout_s: f64::NAN,
        },
    ]
}

fn client_wire() -> Vec<Vec<u8>> {
    let magic = rebeam_node::cluster::transport::client::MAGIC.to_vec();
    let hello = framed(&pb::ClientHello {
        token: "rbm_0123456789abcdef".into(),
    });
    let mut seeds = Vec::new();
    let mut all = [magic.clone(), hello.clone()].concat();
    for (i, d) in deliveries().into_iter().enumerate() {
        let request = framed(&pb::ClientRequest {
            id: i as u64 + 1,
            deliver: Some(d),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        });
        seeds.push([magic.clone(), hello.clone(), request.clone()].concat());
        all.extend(request);
    }
    seeds.push(all);
    seeds.push([magic.clone(), hello].concat());
    seeds.push(magic);
    seeds
}

fn gateway_requests() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = deliveries()
        .into_iter()
        .map(|d| with_kind(0, d.encode_to_vec()))
        .collect();
    for sort in ["pid", "memory", "name", "reductions", "bogus"] {
        let query = pb::ProcessQuery {
            sort: sort.into(),
            descending: true,
            limit: 50,
            offset: 100,
            text: "Room".into(),
            stuck: Some(true),
            after: Some(pb::ProcessCursor {
                pid: pid("node-a"),
                number: 42,
                text: "lobby".into(),
            }),
            pid: pid("node-a"),
            named_only: true,
        };
        let r = pb::ListProcessesRequest {
            app: "chat".into(),
            query: Some(query),
        };
        seeds.push(with_kind(1, r.encode_to_vec()));
    }
    seeds.push(with_kind(
        2,
        pb::KillRequest { pid: pid("node-a") }.encode_to_vec(),
    ));
    seeds.push(with_kind(
        3,
        pb::LogsRequest {
            app: "chat".into(),
            follow: true,
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    seeds
}

fn manifests() -> Vec<Vec<u8>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut seeds = Vec::new();
    for path in [
        "fuzz/seeds/chat.toml",
        "fuzz/seeds/every_key.toml",
        "examples/chat/rebeam.toml",
        "examples/sessions/rebeam.toml",
        "examples/jobqueue/rebeam.toml",
    ] {
        if let Ok(bytes) = std::fs::read(format!("{root}/{path}")) {
            seeds.push(bytes);
        }
    }
    for extra in [
        "[app]\nname = \"a\"\nversion = \"1\"\n\n[[children]]\nstart = \"m:f\"\n",
        "[app]\nname = \"a\"\nversion = \"1\"\nunknown = 1\n",
        "[app]\nname = \"../a\"\nversion = \"1\"\n",
        "[app]\nname = \"a\"\nversion = 1\n",
        "[app]\nname = \"a\"\nversion = \"1\"\n[[children]]\nstart = \"m:f\"\nshutdown = -1\nmax_mailbox = 18446744073709551615\n",
    ] {
        seeds.push(extra.as_bytes().to_vec());
    }
    seeds
}

fn zip_of(entries: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut out);
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, content) in entries {
            if name.ends_with('/') {
                let _ = zip.add_directory(*name, options);
            } else if zip.start_file(*name, options).is_ok() {
                let _ = zip.write_all(content);
            }
        }
        let _ = zip.finish();
    }
    out.into_inner()
}

/// Archives: a valid one, then ones that must be refused (escapes, duplicates by case,
/// a file under a file, no manifest).
pub fn archives() -> Vec<Vec<u8>> {
    let m = ARCHIVE_MANIFEST.as_bytes();
    let mut seeds = vec![
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/seeds/small.zip")).unwrap_or_default(),
    ];
    let valid: &[(&str, &[u8])] = &[
        ("rebeam.toml", m),
        ("m.py", b"def f(*a):\n    pass\n"),
        ("pkg/", b""),
        ("pkg/__init__.py", b""),
        ("pkg/mod.py", b"X = 1\n"),
    ];
    seeds.push(zip_of(valid, false));
    seeds.push(zip_of(valid, true));
    for hostile in [
        "../x.py",
        "/etc/passwd",
        "a/../../b.py",
        "a\\..\\b.py",
        "C:/x.py",
        "M.py",
        "m.py/x.py",
        "a\u{0}b.py",
        "\u{212b}.py",
    ] {
        seeds.push(zip_of(
            &[("rebeam.toml", m), ("m.py", b"x = 1\n"), (hostile, b"y")],
            false,
        ));
    }
    seeds.push(zip_of(&[("m.py", b"x = 1\n")], false));
    seeds.push(zip_of(&[("rebeam.toml", b"[app]\n")], true));
    seeds.push(zip_of(
        &[("rebeam.toml", m), ("big.py", &[b'a'; 4096])],
        true,
    ));
    seeds
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn raft_payloads() -> Vec<Vec<u8>> {
    let vote = VoteRequest::new(Vote::new(3, 1), Some(log_id(3, 7)));
    let entries = |n: u64| {
        (4..4 + n)
            .map(|i| Entry::<TypeConfig> {
                log_id: log_id(5, i),
                payload: EntryPayload::Blank,
            })
            .collect::<Vec<_>>()
    };
    let append = |n| AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(5, 1),
        prev_log_id: Some(log_id(5, 3)),
        entries: entries(n),
        leader_commit: Some(log_id(5, 3)),
    };
    let snapshot = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new(5, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(5, 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "5-9-1".into(),
        },
        offset: 0,
        data: b"{}".to_vec(),
        done: true,
    };
    let pre = PreVote {
        candidate: 2,
        term: 6,
        last_log_id: Some(log_id(5, 9)),
    };
    let pre_empty = PreVote {
        candidate: 3,
        term: 1,
        last_log_id: None,
    };
    let advertised = Advertised {
        id: 2,
        lease_addr: "controller-1:7110".into(),
    };
    let mut seeds = Vec::new();
    for v in [
        serde_json::to_vec(&vote),
        serde_json::to_vec(&VoteRequest::<u64>::new(Vote::new(1, 2), None)),
        serde_json::to_vec(&append(0)),
        serde_json::to_vec(&append(2)),
        serde_json::to_vec(&append(5)),
        serde_json::to_vec(&snapshot),
        serde_json::to_vec(&pre),
        serde_json::to_vec(&pre_empty),
        serde_json::to_vec(&advertised),
    ]
    .into_iter()
    .flatten()
    {
        seeds.push(v);
    }
    seeds
}

fn node_ref() -> Option<pb::NodeRef> {
    Some(pb::NodeRef {
        node: "node-a".into(),
        incarnation: 3,
    })
}

fn controller_requests() -> Vec<Vec<u8>> {
    let reg = pb::RegisterNameRequest {
        name: "lobby".into(),
        pid: pid("node-a"),
    };
    vec![
        with_kind(0, reg.encode_to_vec()),
        with_kind(
            1,
            pb::RegisterNamesRequest {
                registrations: vec![reg.clone(), reg.clone(), pb::RegisterNameRequest::default()],
            }
            .encode_to_vec(),
        ),
        with_kind(
            2,
            pb::PgRequest {
                group: "rooms".into(),
                pid: pid("node-b"),
            }
            .encode_to_vec(),
        ),
        with_kind(
            3,
            pb::JoinRequest {
                node: "node-a".into(),
                address: "10.0.0.7:7100".into(),
                labels: [("zone".to_string(), "eu".to_string())]
                    .into_iter()
                    .collect(),
                capacity: 1000,
            }
            .encode_to_vec(),
        ),
        with_kind(
            4,
            pb::ReportExitRequest {
                node: node_ref(),
                exits: vec![pb::ProcessExit {
                    pid: pid("node-a"),
                    reason: "normal".into(),
                }],
            }
            .encode_to_vec(),
        ),
        with_kind(
            5,
            pb::ChildFailedRequest {
                node: node_ref(),
                app: "chat".into(),
                child: "lobby".into(),
                generation: 3,
                error: "Traceback ... ValueError: boom".into(),
            }
            .encode_to_vec(),
        ),
        with_kind(
            6,
            pb::UpgradeReportRequest {
                node: node_ref(),
                app: "chat".into(),
                result: Some(pb::NodeUpgrade {
                    node: "node-a".into(),
                    code_hash: "ab".repeat(32),
                    version: "1.0.1".into(),
                    status: 2,
                    error: String::new(),
                    upgraded: 4,
                    stayed: vec![pb::StayedProcess::default()],
                }),
            }
            .encode_to_vec(),
        ),
        with_kind(
            7,
            pb::HeartbeatRequest {
                node: node_ref(),
                watching: true,
                streams_ended: 2,
                sent_ms: 0,
                attempt_ms: 0,
            }
            .encode_to_vec(),
        ),
    ]
}

fn submit_app() -> Vec<Vec<u8>> {
    let archives = archives();
    let mut seeds = Vec::new();
    for code in archives.iter().take(4) {
        seeds.push(
            pb::SubmitAppRequest {
                manifest_toml: ARCHIVE_MANIFEST.into(),
                code: code.clone(),
            }
            .encode_to_vec(),
        );
    }
    seeds.push(
        pb::SubmitAppRequest {
            manifest_toml: "[app]\nname = \"a\"\nversion = \"1\"\n".into(),
            code: archives[0].clone(),
        }
        .encode_to_vec(),
    );
    seeds
}

/// With `REBEAM_FUZZ_WRITE_CORPUS=<dir>` set, a target binary writes its seeds into
/// `<dir>/<target>/` and exits instead of fuzzing (`make fuzz-corpus`): the seeds are built
/// from the project's own types, so they follow the protocol when it changes, and a
/// separate generator binary would lack libFuzzer's coverage hooks.
pub fn write_if_asked(target: &str) {
    let Some(root) = std::env::var_os("REBEAM_FUZZ_WRITE_CORPUS") else {
        return;
    };
    let seeds = all()
        .into_iter()
        .find(|(name, _)| *name == target)
        .map(|(_, seeds)| seeds)
        .unwrap_or_default();
    let dir = std::path::Path::new(&root).join(target);
    let written = std::fs::create_dir_all(&dir).and_then(|_| {
        seeds
            .iter()
            .enumerate()
            .try_for_each(|(i, seed)| std::fs::write(dir.join(format!("seed-{i:03}")), seed))
    });
    match written {
        Ok(()) => {
            println!("{target}: {} seeds in {}", seeds.len(), dir.display());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{target}: cannot write seeds in {}: {e}", dir.display());
            std::process::exit(1)
        }
    }
}
