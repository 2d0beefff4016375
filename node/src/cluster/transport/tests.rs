//! The peer transport on in-memory pipes: who may connect, and frames in order.

use super::dial::{carry, carry_direct, LinkError};
use super::frames::{write_message, Reader, MAX_MESSAGE};
use super::handshake::{self, HandshakeError, Proof};
use super::outbox::{Outbox, DIRECT_MAX};
use crate::cluster::peers::{PeerLink, Queued};
use crate::runtime::NodeId;
use rebeam_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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

/// The call ids of every frame of `batches`, in the order read.
fn frame_ids(batches: &[pb::PeerBatch]) -> Vec<u64> {
    batches
        .iter()
        .flat_map(|b| b.frames.iter().map(call_id))
        .collect()
}

/// The acceptor's side on `io`: the node it let in, then every batch it read.
async fn acceptor<S: AsyncRead + AsyncWrite>(
    io: S,
    proof: Proof,
) -> Result<(NodeId, Vec<pb::PeerBatch>), HandshakeError> {
    acceptor_after(io, proof, std::future::ready(())).await
}

/// [`acceptor`], reading no frame before `go` is ready.
async fn acceptor_after<S: AsyncRead + AsyncWrite>(
    io: S,
    proof: Proof,
    go: impl std::future::Future<Output = ()>,
) -> Result<(NodeId, Vec<pb::PeerBatch>), HandshakeError> {
    let (r, mut w) = tokio::io::split(io);
    let mut reader = Reader::new(r);
    if !reader.magic().await? {
        return Err(HandshakeError::Refused("no magic".into()));
    }
    let node = handshake::accept(&mut reader, &mut w, &proof).await?;
    go.await;
    let mut batches = Vec::new();
    while let Some(batch) = reader.next::<pb::PeerBatch>(MAX_MESSAGE).await? {
        batches.push(batch);
    }
    Ok((node, batches))
}

/// A link with room for `capacity` frames, and its outbox (for the link's writer).
fn link(capacity: usize) -> (PeerLink, Arc<Outbox>) {
    let outbox = Arc::new(Outbox::new(capacity, Duration::ZERO));
    (
        PeerLink::new(1, NodeId::intern("test-peer"), outbox.clone()),
        outbox,
    )
}

/// A direct-write link to an acceptor that reads no frame until `go` fires, so that the
/// socket's buffers fill up.
struct HeldLink {
    server: tokio::task::JoinHandle<Result<(NodeId, Vec<pb::PeerBatch>), HandshakeError>>,
    link: tokio::task::JoinHandle<Result<(), LinkError>>,
    peer: PeerLink,
    outbox: Arc<Outbox>,
    go: tokio::sync::oneshot::Sender<()>,
}

/// Starts a [`HeldLink`] named `name` writing to `(r, w)`, whose other end `b` the acceptor
/// holds.
fn held_link<R, W, S>(
    rt: &tokio::runtime::Runtime,
    (r, w): (R, W),
    b: S,
    name: &'static str,
) -> HeldLink
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Into<super::outbox::Sink> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(acceptor_after(b, Proof::secret("s"), async move {
        let _ = wait.await;
    }));
    let outbox = Arc::new(Outbox::new(1 << 20, Duration::ZERO));
    let writer = outbox.clone();
    let link =
        rt.spawn(async move { carry_direct(r, w, name, &Proof::secret("s"), &writer).await });
    let peer = PeerLink::new(1, NodeId::intern(name), outbox.clone());
    HeldLink {
        server,
        link,
        peer,
        outbox,
        go,
    }
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
        let outbox = Arc::new(Outbox::new(100_000, Duration::ZERO));
        let peer = PeerLink::new(1, NodeId::intern("links-order-b"), outbox.clone());
        // Queued before the link starts: they leave in large batches.
        for i in 0..20_000 {
            push(&peer, frame(i));
        }
        let sender = tokio::spawn(async move {
            for i in 20_000..30_000 {
                push(&peer, frame(i));
                if i % 1000 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let link = tokio::spawn(async move {
            carry(a, "links-order-a", &Proof::secret("s3cret"), &outbox).await
        });
        sender.await.expect("sender");
        let (node, batches) = server.await.expect("server").expect("accepted");
        let _ = link.await.expect("link");
        assert_eq!(node, NodeId::intern("links-order-a"));
        let ids = frame_ids(&batches);
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
        let (peer, outbox) = link(8);
        push(&peer, frame(1));
        let dialled = carry(a, "intruder", &Proof::secret("wrong"), &outbox).await;
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
        let (_peer, outbox) = link(8);
        let dialled = carry(a, "a", &Proof::secret("s"), &outbox).await;
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
            let (peer, outbox) = link(8);
            drop(peer);
            let dialled = carry(a, "tls-a", &Proof::Certificate(Vec::new()), &outbox).await;
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
            let (_peer, outbox) = link(8);
            let dialled = carry(a, "a", &Proof::secret("s"), &outbox).await;
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

/// A reply frame numbered `call_id` with `size` bytes of payload.
fn sized_frame(call_id: u64, size: usize) -> pb::PeerFrame {
    pb::PeerFrame {
        frame: Some(pb::peer_frame::Frame::Reply(pb::PeerReply {
            call_id,
            result: Some(pb::peer_reply::Result::Value(vec![7; size])),
        })),
    }
}

/// Pushes on `link`, which must take the frame (written or queued).
fn push(link: &PeerLink, frame: pb::PeerFrame) {
    assert!(matches!(link.push(frame), Queued::Yes), "the link takes it");
}

/// Every frame of `batches`, as (sender, sequence number) from its call id.
fn senders_order(batches: &[pb::PeerBatch]) -> std::collections::BTreeMap<u64, Vec<u64>> {
    let mut seen = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for id in batches.iter().flat_map(|b| b.frames.iter().map(call_id)) {
        seen.entry(id >> 32).or_default().push(id & 0xffff_ffff);
    }
    seen
}

#[test]
fn direct_and_queued_frames_from_many_threads_keep_each_senders_order() {
    const THREADS: u64 = 4;
    const FRAMES: u64 = 3_000;
    let rt = runtime();
    let _guard = rt.enter();
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    let server = rt.spawn(acceptor(b, Proof::secret("s")));
    // Every frame may go direct when the link is idle, however close the frames come.
    let direct = Arc::new(Outbox::new(1 << 20, Duration::ZERO));
    let writer = direct.clone();
    let link = rt.spawn(async move {
        let (r, w) = a.into_split();
        carry_direct(r, w, "direct-order", &Proof::secret("s"), &writer).await
    });
    let peer = PeerLink::new(1, NodeId::intern("direct-peer"), direct.clone());
    // Sender 0 pushes until one of its frames went out directly: the link is up.
    let mut first = 0;
    while direct.direct_writes().0 == 0 {
        push(&peer, sized_frame(first, 64));
        first += 1;
        assert!(first < 1_000_000, "no direct write on an idle link");
        std::thread::yield_now();
    }
    let threads: Vec<_> = (1..=THREADS)
        .map(|t| {
            let peer = peer.clone();
            std::thread::spawn(move || {
                for i in 0..FRAMES {
                    // Small frames (direct when the link is idle), frames of a few KiB (the
                    // socket may take them in part) and frames too large to go direct.
                    let size = match i % 10 {
                        0 => DIRECT_MAX + 1,
                        1..=3 => 6_000,
                        _ => 64,
                    };
                    push(&peer, sized_frame(t << 32 | i, size));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sender thread");
    }
    drop(peer);
    let (_, batches) = rt.block_on(server).expect("server").expect("accepted");
    let _ = rt.block_on(link).expect("link");
    let seen = senders_order(&batches);
    assert_eq!(
        seen[&0],
        (0..first).collect::<Vec<_>>(),
        "sender 0 in order"
    );
    for t in 1..=THREADS {
        assert_eq!(
            seen[&t],
            (0..FRAMES).collect::<Vec<_>>(),
            "sender {t}: every frame, in order"
        );
    }
    let (direct_writes, tails) = direct.direct_writes();
    let total = first + THREADS * FRAMES;
    assert!(
        direct_writes > 0 && direct_writes < total,
        "both paths were taken: {direct_writes} of {total} frames direct ({tails} in part)"
    );
}

#[test]
fn the_rest_of_a_partial_direct_write_goes_before_frames_queued_after_it() {
    let rt = runtime();
    let _guard = rt.enter();
    let (a, b) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    });
    let HeldLink {
        server,
        link,
        peer,
        outbox: direct,
        go,
    } = held_link(&rt, a.into_split(), b, "direct-tail");
    // Small frames until one goes direct (the link is up), then frames of 15 KB until the
    // socket takes one only in part (on TCP it takes what fits).
    let mut sent = 0;
    while direct.direct_writes().0 == 0 {
        push(&peer, sized_frame(sent, 64));
        sent += 1;
        assert!(sent < 1_000_000, "no direct write on an idle link");
        std::thread::yield_now();
    }
    while direct.direct_writes().1 == 0 {
        if direct.queued() > 0 {
            // Queued frames are still being written: wait for the link to be idle again.
            std::thread::yield_now();
            continue;
        }
        push(&peer, sized_frame(sent, 15_000));
        sent += 1;
        assert!(sent < 100_000, "the socket never took a frame in part");
    }
    // These queue behind the tail (small frames would go direct on an idle link).
    for _ in 0..100 {
        push(&peer, sized_frame(sent, 64));
        sent += 1;
    }
    let _ = go.send(());
    drop(peer);
    let (_, batches) = rt.block_on(server).expect("server").expect("accepted");
    let _ = rt.block_on(link).expect("link");
    let ids = frame_ids(&batches);
    assert_eq!(ids, (0..sent).collect::<Vec<_>>(), "every frame, in order");
}

#[test]
fn on_a_unix_socket_a_writer_finding_it_full_waits_for_room() {
    let rt = runtime();
    let _guard = rt.enter();
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    let HeldLink {
        server,
        link,
        peer,
        outbox,
        go,
    } = held_link(&rt, a.into_split(), b, "unix-full");
    // 9 MB of frames, far more than the socket buffers: direct writes that find it full
    // are queued, and the writer must wait for room.
    const FRAMES: u64 = 600;
    for i in 0..FRAMES {
        push(&peer, sized_frame(i, 15_000));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while outbox.writer_waits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never found the socket full"
        );
        std::thread::yield_now();
    }
    let _ = go.send(());
    drop(peer);
    let waited = rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), server).await });
    let (_, batches) = waited
        .expect("the writer woke when the socket had room")
        .expect("server")
        .expect("accepted");
    let _ = rt.block_on(link).expect("link");
    assert_eq!(
        frame_ids(&batches),
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame, in order"
    );
}

#[test]
fn a_message_frame_encoded_from_its_parts_is_the_frame_prost_encodes() {
    use super::outbox::{Frame, SendFrame};
    use prost::Message;
    let long = "x".repeat(300);
    for (node, incarnation, serial, payload, cast, traceparent) in [
        ("node-a", 7, 42, vec![0x80, 4, b'N', b'.'], true, ""),
        ("n", 0, 0, vec![], false, ""),
        (
            long.as_str(),
            u64::MAX,
            1 << 40,
            vec![9; 70_000],
            false,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
    ] {
        let parts = SendFrame {
            node,
            incarnation,
            serial,
            payload: &payload,
            cast,
            traceparent,
        };
        let frame = pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Send(pb::PeerSend {
                to: Some(pb::Pid {
                    node: node.to_string(),
                    incarnation,
                    serial,
                }),
                payload: payload.clone(),
                cast,
                traceparent: traceparent.to_string(),
            })),
        };
        let mut bytes = Vec::new();
        parts.encode_body(&mut bytes);
        assert_eq!(parts.body_len(), bytes.len());
        assert_eq!(bytes, frame.encode_to_vec(), "the same bytes as prost's");
        assert_eq!(pb::PeerFrame::decode(&bytes[..]).expect("decodes"), frame);
    }
}

#[test]
fn frames_queued_while_the_writer_writes_go_out_after_in_order_and_fill_batches() {
    // A unix socket pair: the writer writes (no direct writes on an idle link: IDLE is
    // long) while this thread keeps pushing; every frame arrives once, in order, and
    // the frames fill far fewer batches than there are frames.
    let rt = runtime();
    let _guard = rt.enter();
    let (a, b) = tokio::net::UnixStream::pair().expect("socket pair");
    let server = rt.spawn(acceptor(b, Proof::secret("s")));
    let outbox = Arc::new(Outbox::new(1 << 20, Duration::from_secs(3600)));
    let writer = outbox.clone();
    let link = rt.spawn(async move {
        let (r, w) = a.into_split();
        carry_direct(r, w, "queued-order", &Proof::secret("s"), &writer).await
    });
    let peer = PeerLink::new(1, NodeId::intern("queued-peer"), outbox.clone());
    const FRAMES: u64 = 200_000;
    for i in 0..FRAMES {
        push(&peer, sized_frame(i, 16 + (i % 7) as usize * 300));
    }
    drop(peer);
    let (_, batches) = rt.block_on(server).expect("server").expect("accepted");
    let _ = rt.block_on(link).expect("link");
    let ids = frame_ids(&batches);
    assert_eq!(
        ids,
        (0..FRAMES).collect::<Vec<_>>(),
        "every frame, in order"
    );
    assert!(
        (batches.len() as u64) < FRAMES / 4,
        "{} batches for {FRAMES} frames",
        batches.len()
    );
    assert!(
        batches
            .iter()
            .all(|b| prost::Message::encoded_len(b) <= super::frames::WRITE_CHUNK + 4096),
        "no batch much over a write chunk"
    );
    assert_eq!(outbox.direct_writes().0, 0);
}
