//! The peer transport on in-memory pipes: who may connect, and frames in order.

use super::dial::{carry, LinkError};
use super::frames::{write_message, Reader, MAX_MESSAGE};
use super::handshake::{self, HandshakeError, Proof};
use crate::runtime::NodeId;
use rebeam_proto as pb;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

fn frame(call_id: u64) -> pb::PeerFrame {
    pb::PeerFrame {
        frame: Some(pb::peer_frame::Frame::Reply(pb::PeerReply {
            call_id,
            result: Some(pb::peer_reply::Result::Value(vec![7; 64])),
        })),
    }
}

fn call_id(f: &pb::PeerFrame) -> u64 {
    match &f.frame {
        Some(pb::peer_frame::Frame::Reply(r)) => r.call_id,
        other => panic!("not a reply frame: {other:?}"),
    }
}

/// The acceptor's side on `io`: the node it let in, then every batch it read.
async fn acceptor(
    io: DuplexStream,
    proof: Proof,
) -> Result<(NodeId, Vec<pb::PeerBatch>), HandshakeError> {
    let (r, mut w) = tokio::io::split(io);
    let mut reader = Reader::new(r);
    if !reader.magic().await? {
        return Err(HandshakeError::Refused("no magic".into()));
    }
    let node = handshake::accept(&mut reader, &mut w, &proof).await?;
    let mut batches = Vec::new();
    while let Some(batch) = reader.next::<pb::PeerBatch>(MAX_MESSAGE).await? {
        batches.push(batch);
    }
    Ok((node, batches))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn frames_arrive_in_order_in_few_batches() {
    let rt = runtime();
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(acceptor(b, Proof::secret("s3cret")));
        let (tx, rx) = mpsc::channel(100_000);
        // Queued before the link starts: they leave in large batches.
        for i in 0..20_000 {
            tx.try_send(frame(i)).expect("room");
        }
        let sender = tokio::spawn(async move {
            let tx = tx;
            for i in 20_000..30_000 {
                tx.send(frame(i)).await.expect("link up");
                if i % 1000 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let link =
            tokio::spawn(
                async move { carry(a, "links-order-a", &Proof::secret("s3cret"), rx).await },
            );
        sender.await.expect("sender");
        let (node, batches) = server.await.expect("server").expect("accepted");
        let _ = link.await.expect("link");
        assert_eq!(node, NodeId::intern("links-order-a"));
        let ids: Vec<u64> = batches
            .iter()
            .flat_map(|b| b.frames.iter().map(call_id))
            .collect();
        assert_eq!(
            ids,
            (0..30_000).collect::<Vec<_>>(),
            "every frame, in order"
        );
        assert!(
            batches.len() < 1_000,
            "writes carry many frames each ({} batches for 30,000 frames)",
            batches.len()
        );
    });
}

#[test]
fn a_dialler_without_the_secret_is_refused_and_told_why() {
    let rt = runtime();
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(acceptor(b, Proof::secret("right")));
        let (tx, rx) = mpsc::channel(8);
        tx.try_send(frame(1)).expect("room");
        let dialled = carry(a, "intruder", &Proof::secret("wrong"), rx).await;
        match dialled {
            Err(LinkError::Handshake(HandshakeError::Refused(why))) => {
                assert!(why.contains("wrong cluster secret"), "{why}")
            }
            other => panic!("the dialler must learn it was refused: {other:?}"),
        }
        let accepted = server.await.expect("server");
        assert!(
            matches!(accepted, Err(HandshakeError::Refused(_))),
            "no frame read from an unauthenticated peer: {accepted:?}"
        );
    });
}

#[test]
fn frames_sent_without_a_handshake_are_never_read() {
    let rt = runtime();
    rt.block_on(async {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(acceptor(b, Proof::secret("right")));
        a.write_all(super::MAGIC).await.expect("write");
        // A batch where the hello belongs: it does not decode as a proof of the secret.
        let batch = pb::PeerBatch {
            frames: vec![frame(1)],
        };
        write_message(&mut a, &batch).await.expect("write");
        let accepted = server.await.expect("server");
        assert!(
            matches!(accepted, Err(HandshakeError::Refused(_))),
            "{accepted:?}"
        );
    });
}

#[test]
fn an_acceptor_without_the_secret_is_not_trusted_by_the_dialler() {
    let rt = runtime();
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        // A fake acceptor that welcomes anyone but cannot prove it holds the secret.
        let fake = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(b);
            let mut reader = Reader::new(r);
            assert!(reader.magic().await.expect("magic"));
            let challenge = pb::PeerChallenge { nonce: vec![1; 32] };
            write_message(&mut w, &challenge).await.expect("write");
            let _hello: Option<pb::PeerHello> = reader.next(4096).await.expect("hello");
            let welcome = pb::PeerWelcome::default();
            write_message(&mut w, &welcome).await.expect("write");
        });
        let (_tx, rx) = mpsc::channel(8);
        let dialled = carry(a, "a", &Proof::secret("s"), rx).await;
        assert!(
            matches!(
                dialled,
                Err(LinkError::Handshake(HandshakeError::Refused(_)))
            ),
            "{dialled:?}"
        );
        fake.await.expect("fake");
    });
}

#[test]
fn with_tls_the_certificate_must_name_the_node() {
    let rt = runtime();
    rt.block_on(async {
        for (members, ok) in [
            (vec![rebeam_tls::Member::Node("tls-a".into())], true),
            (vec![rebeam_tls::Member::Node("other".into())], false),
            (vec![rebeam_tls::Member::Controller(1)], false),
            (vec![], false),
        ] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn(acceptor(b, Proof::Certificate(members.clone())));
            let (tx, rx) = mpsc::channel(8);
            drop(tx);
            let dialled = carry(a, "tls-a", &Proof::Certificate(Vec::new()), rx).await;
            let accepted = server.await.expect("server");
            assert_eq!(dialled.is_ok(), ok, "{members:?}: {dialled:?}");
            assert_eq!(accepted.is_ok(), ok, "{members:?}: {accepted:?}");
        }
    });
}

#[test]
fn the_acceptor_reset_is_told_apart_from_a_close() {
    let rt = runtime();
    rt.block_on(async {
        for reset in [true, false] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(b);
                let mut reader = Reader::new(r);
                assert!(reader.magic().await.expect("magic"));
                handshake::accept(&mut reader, &mut w, &Proof::secret("s"))
                    .await
                    .expect("accepted");
                if reset {
                    write_message(&mut w, &pb::PeerControl { reset: true })
                        .await
                        .expect("write");
                }
            });
            let (_tx, rx) = mpsc::channel(8);
            let dialled = carry(a, "a", &Proof::secret("s"), rx).await;
            server.await.expect("server");
            if reset {
                assert!(matches!(dialled, Err(LinkError::Reset)), "{dialled:?}");
            } else {
                assert!(
                    matches!(dialled, Err(LinkError::Closed | LinkError::Io(_))),
                    "{dialled:?}"
                );
            }
        }
    });
}
