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
use rebeam_auth::streams::Slot;
use rebeam_proto as pb;
use rebeam_tls::{PeerInfo, ServerIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
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

/// Serves one client connection until it closes or sits idle past the server's idle
/// timeout. `read_magic`: the connection still starts with [`MAGIC`] (plaintext; on TLS the
/// ALPN protocol said what it is).
pub async fn serve(cluster: Arc<Cluster>, authorize: Authorize, io: ServerIo, read_magic: bool) {
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
    let (tx, rx) = mpsc::channel::<pb::ClientReply>(256);
    let writer = tokio::spawn(write_replies(w, rx));
    // The hello holds no slot: only requests are in flight.
    let hello = authorize(&token, &info, false).map(|_| None);
    let accepted = hello.is_ok();
    if tx.send(reply_to(0, hello)).await.is_err() || !accepted {
        drop(tx);
        let _ = writer.await;
        return;
    }
    let room = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Dropped when the connection ends, which ends every request still in flight on it.
    let (open, closed) = tokio::sync::watch::channel(());
    loop {
        let Ok(permit) = room.clone().acquire_owned().await else {
            break;
        };
        let request = match reader.next::<pb::ClientRequest>(MAX_REQUEST).await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "a client wire connection closed");
                break;
            }
        };
        let busy = info.activity.as_ref().map(|a| a.begin());
        let (cluster, authorize, info, token, tx, mut closed) = (
            cluster.clone(),
            authorize.clone(),
            info.clone(),
            token.clone(),
            tx.clone(),
            closed.clone(),
        );
        tokio::spawn(async move {
            let outcome = match authorize(&token, &info, true) {
                Ok(slot) => {
                    let answered = tokio::select! {
                        outcome = answer(&cluster, request.deliver, &request.traceparent) => outcome,
                        // The client is gone: nobody reads the reply.
                        _ = closed.changed() => return,
                    };
                    drop(slot);
                    answered
                }
                Err(status) => Err(status),
            };
            let _ = tx.send(reply_to(request.id, outcome.map(Some))).await;
            drop((busy, permit));
        });
    }
    drop(open);
    drop(tx);
    let _ = writer.await;
}

/// Delivers one request as the gRPC `Deliver` does.
async fn answer(
    cluster: &Arc<Cluster>,
    deliver: Option<pb::DeliverRequest>,
    traceparent: &str,
) -> Result<pb::DeliverReply, Status> {
    let Some(deliver) = deliver else {
        return Err(Status::invalid_argument(
            "a client request carries a delivery",
        ));
    };
    let traceparent = (!traceparent.is_empty()).then_some(traceparent);
    gateway::deliver(cluster, deliver, traceparent).await
}

/// The reply for request `id`: a delivery's outcome (none for the hello's acceptance), or
/// the status the gRPC `Deliver` would have failed with.
fn reply_to(id: u64, outcome: Result<Option<pb::DeliverReply>, Status>) -> pb::ClientReply {
    match outcome {
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
    }
}

/// Writes replies as they come, several per write when they queue up.
async fn write_replies<W>(mut w: W, mut rx: mpsc::Receiver<pb::ClientReply>)
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(16 << 10);
    while let Some(first) = rx.recv().await {
        buf.clear();
        encode_frame(&mut buf, &first);
        while buf.len() < (256 << 10) {
            match rx.try_recv() {
                Ok(next) => encode_frame(&mut buf, &next),
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// Appends `message` as one length-prefixed frame.
fn encode_frame(buf: &mut Vec<u8>, message: &pb::ClientReply) {
    use prost::Message;
    let len = message.encoded_len();
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode_raw(buf);
}

fn to_io(e: super::frames::FrameError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
