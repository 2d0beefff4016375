//! Who is on the other end of a peer connection, proved before any frame is read: without
//! TLS both sides prove they hold the cluster secret (an HMAC over fresh nonces from both, so
//! the secret never travels and a recorded handshake cannot be replayed); with TLS the
//! dialler's verified certificate must name the node it says it is.

use super::frames::{write_message, FrameError, Reader, MAX_CONTROL};
use crate::runtime::NodeId;
use rebeam_proto as pb;
use rebeam_tls::Member;
use ring::hmac;
use tokio::io::{AsyncRead, AsyncWrite};

const HELLO: &[u8] = b"rebeam-peer-hello";
const WELCOME: &[u8] = b"rebeam-peer-welcome";
const NONCE_BYTES: usize = 32;

/// How a side proves itself.
#[derive(Clone)]
pub enum Proof {
    /// The cluster secret (TLS off).
    Secret(hmac::Key),
    /// The TLS certificate: on the accepting side, the members the dialler's verified
    /// certificate names (empty when it presented none).
    Certificate(Vec<Member>),
}

impl Proof {
    /// Proof by the cluster secret.
    pub fn secret(secret: &str) -> Proof {
        Proof::Secret(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing failed.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The connection closed during the handshake.
    #[error("the connection closed during the handshake")]
    Closed,
    /// The other side is not who it must be (refused by us or by it).
    #[error("peer refused: {0}")]
    Refused(String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        HandshakeError::Frame(FrameError::Io(e))
    }
}

/// What a proof signs: each part with its length, so no two transcripts read alike.
fn transcript(what: &[u8], challenge: &[u8], nonce: &[u8], node: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    for part in [what, challenge, nonce, node.as_bytes()] {
        msg.extend_from_slice(&(part.len() as u32).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg
}

fn tag(key: &hmac::Key, what: &[u8], challenge: &[u8], nonce: &[u8], node: &str) -> Vec<u8> {
    hmac::sign(key, &transcript(what, challenge, nonce, node))
        .as_ref()
        .to_vec()
}

fn nonce() -> Vec<u8> {
    rand::random::<[u8; NONCE_BYTES]>().to_vec()
}

async fn expect<M: prost::Message + Default, R: AsyncRead + Unpin>(
    reader: &mut Reader<R>,
) -> Result<M, HandshakeError> {
    reader
        .next::<M>(MAX_CONTROL)
        .await?
        .ok_or(HandshakeError::Closed)
}

/// The dialler's side, after it wrote `MAGIC`: says it is `me` and checks the acceptor.
pub async fn dial<R, W>(
    reader: &mut Reader<R>,
    writer: &mut W,
    me: &str,
    proof: &Proof,
) -> Result<(), HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let challenge: pb::PeerChallenge = expect(reader).await?;
    let nonce = nonce();
    let hello_proof = match proof {
        Proof::Secret(key) => tag(key, HELLO, &challenge.nonce, &nonce, me),
        Proof::Certificate(_) => Vec::new(),
    };
    let hello = pb::PeerHello {
        node: me.to_string(),
        nonce: nonce.clone(),
        proof: hello_proof,
    };
    write_message(writer, &hello).await?;
    let welcome: pb::PeerWelcome = expect(reader).await?;
    if !welcome.refused.is_empty() {
        return Err(HandshakeError::Refused(welcome.refused));
    }
    if let Proof::Secret(key) = proof {
        let msg = transcript(WELCOME, &challenge.nonce, &nonce, me);
        if hmac::verify(key, &msg, &welcome.proof).is_err() {
            return Err(HandshakeError::Refused(
                "the node answering does not hold the cluster secret".into(),
            ));
        }
    }
    Ok(())
}

/// The acceptor's side, after it read `MAGIC`: the dialling node, or the refusal (which the
/// dialler is told before the connection closes).
pub async fn accept<R, W>(
    reader: &mut Reader<R>,
    writer: &mut W,
    proof: &Proof,
) -> Result<NodeId, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let challenge = nonce();
    write_message(
        writer,
        &pb::PeerChallenge {
            nonce: challenge.clone(),
        },
    )
    .await?;
    let hello: pb::PeerHello = expect(reader).await?;
    let checked = check_hello(&hello, &challenge, proof);
    let (refused, welcome_proof) = match &checked {
        Ok(_) => {
            let welcome_proof = match proof {
                Proof::Secret(key) => tag(key, WELCOME, &challenge, &hello.nonce, &hello.node),
                Proof::Certificate(_) => Vec::new(),
            };
            (String::new(), welcome_proof)
        }
        Err(why) => (why.clone(), Vec::new()),
    };
    write_message(
        writer,
        &pb::PeerWelcome {
            refused,
            proof: welcome_proof,
        },
    )
    .await?;
    checked.map_err(HandshakeError::Refused)
}

fn check_hello(hello: &pb::PeerHello, challenge: &[u8], proof: &Proof) -> Result<NodeId, String> {
    match proof {
        Proof::Secret(key) => {
            let msg = transcript(HELLO, challenge, &hello.nonce, &hello.node);
            if hello.nonce.len() != NONCE_BYTES || hmac::verify(key, &msg, &hello.proof).is_err() {
                return Err("wrong cluster secret: peer links need the cluster's secret".into());
            }
        }
        Proof::Certificate(members) => {
            if members.is_empty() {
                return Err("peer links need a node certificate (URI SAN \
                            urn:rebeam:node:<name>) signed by the cluster CA"
                    .into());
            }
            if !members.contains(&Member::Node(hello.node.clone())) {
                let named: Vec<String> = members.iter().map(Member::uri).collect();
                return Err(format!(
                    "the peer says it is node {:?} but its certificate names {}",
                    hello.node,
                    named.join(", ")
                ));
            }
        }
    }
    NodeId::from_wire(&hello.node).map_err(|e| format!("not a node name: {e}"))
}
