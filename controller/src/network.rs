//! openraft network over the `RaftPeer` gRPC service; payloads are the openraft types as JSON.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use parking_lot::Mutex;
use rebeam_proto::v1::raft_peer_client::RaftPeerClient;
use rebeam_proto::v1::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::api::raft::{Advertised, AdvertisedReply, Contact, PreVote, PreVoteReply};
use crate::auth::BearerInjector;
use crate::types::{MemberNode, TypeConfig};

/// A client of the Raft peer service that sends the cluster secret.
type PeerRpc = RaftPeerClient<InterceptedService<Channel, BearerInjector>>;

/// Largest Raft message accepted or sent (entries may carry app code).
pub const MAX_RAFT_MESSAGE: usize = 1 << 30;

/// Builds a client per peer.
#[derive(Clone)]
pub struct Network {
    bearer: BearerInjector,
    dialer: rebeam_tls::Dialer,
    /// One channel per peer address, shared by every client openraft asks for: openraft
    /// builds a client for each leadership confirmation (every Raft heartbeat while leases
    /// are renewed) and each election round, and a fresh channel is a fresh connection
    /// (with TLS a handshake), which under load missed the heartbeat-long deadline.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Told when a voter refuses this member's campaign for a longer log.
    contact: Arc<Contact>,
}

impl Network {
    /// A network factory dialing with `dialer`; it authenticates with `secret` only when
    /// the dialer is plaintext (with TLS the certificate is the credential).
    pub fn new(secret: String, dialer: rebeam_tls::Dialer, contact: Arc<Contact>) -> Self {
        Network {
            bearer: BearerInjector::for_member(&secret, &dialer),
            dialer,
            channels: Arc::default(),
            contact,
        }
    }
}

/// A lazily connected client to one peer.
pub struct PeerClient {
    target: u64,
    client: Option<PeerRpc>,
    contact: Arc<Contact>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        let client = self.channel(&node.raft_addr).map(|channel| {
            RaftPeerClient::with_interceptor(channel, self.bearer.clone())
                .max_decoding_message_size(MAX_RAFT_MESSAGE)
                .max_encoding_message_size(MAX_RAFT_MESSAGE)
        });
        PeerClient {
            target,
            client,
            contact: self.contact.clone(),
        }
    }
}

impl Network {
    /// Asks the member at `address` whether it would vote for `req`'s candidate now, within
    /// `timeout` (the election timer's own traffic, not openraft's).
    pub async fn pre_vote(
        &self,
        address: &str,
        req: &PreVote,
        timeout: std::time::Duration,
    ) -> Result<PreVoteReply, tonic::Status> {
        self.ask(address, req, timeout, "pre-vote", |mut c, r| async move {
            c.pre_vote(r).await
        })
        .await
    }

    /// Asks the leader at `address` to record this member's lease address, within `timeout`.
    pub async fn advertise(
        &self,
        address: &str,
        req: &Advertised,
        timeout: std::time::Duration,
    ) -> Result<(), tonic::Status> {
        self.ask(
            address,
            req,
            timeout,
            "advertisement",
            |mut c, r| async move { c.advertise(r).await },
        )
        .await
        .map(|AdvertisedReply {}| ())
    }

    /// Sends `req` as JSON to the member at `address` through `rpc` (one of the controller's
    /// own methods beside openraft's), within `timeout`, and reads the JSON answer; `what`
    /// names the message in errors.
    async fn ask<Q, A, F, Fut>(
        &self,
        address: &str,
        req: &Q,
        timeout: std::time::Duration,
        what: &str,
        rpc: F,
    ) -> Result<A, tonic::Status>
    where
        Q: Serialize,
        A: DeserializeOwned,
        F: FnOnce(PeerRpc, tonic::Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let channel = self
            .channel(address)
            .ok_or_else(|| tonic::Status::unavailable("peer address is malformed"))?;
        let client = RaftPeerClient::with_interceptor(channel, self.bearer.clone());
        let data = serde_json::to_vec(req)
            .map_err(|e| tonic::Status::internal(format!("cannot encode {what}: {e}")))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(timeout);
        let reply = tokio::time::timeout(timeout, rpc(client, request))
            .await
            .map_err(|_| {
                tonic::Status::deadline_exceeded(format!("{what} not answered in time"))
            })??;
        serde_json::from_slice(&reply.into_inner().data)
            .map_err(|e| tonic::Status::internal(format!("malformed {what} reply: {e}")))
    }

    /// The shared channel to `address` (dialed lazily), None if the address is malformed.
    fn channel(&self, address: &str) -> Option<Channel> {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get(address) {
            return Some(c.clone());
        }
        let c = self
            .dialer
            .channel(address, |e| {
                e.connect_timeout(std::time::Duration::from_millis(500))
            })
            .ok()?;
        channels.insert(address.to_string(), c.clone());
        Some(c)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, MemberNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&Msg(
                "peer address is malformed".into(),
            ))));
        };
        let data = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let reply = match which {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        // Only a peer that cannot be reached is Unreachable, which makes openraft back off
        // (see `backoff`). A slow answer is not: under load a follower that answered late
        // would otherwise get no heartbeat for the whole backoff and call an election.
        let reply = reply.map_err(|s| match s.code() {
            tonic::Code::Unavailable => {
                RPCError::Unreachable(Unreachable::new(&Msg(s.message().to_string())))
            }
            _ => RPCError::Network(NetworkError::new(&Msg(format!(
                "{}: {}",
                s.code(),
                s.message()
            )))),
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            serde_json::from_slice(&reply.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// A peer that could not be reached is tried again after 100 ms (openraft's default is
    /// 500 ms, longer than an election timeout, so a restarted member waited needlessly).
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(std::time::Duration::from_millis(100)))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, MemberNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, MemberNode, RaftError<u64>>> {
        let r: VoteResponse<u64> = self.call("vote", &rpc, &option).await?;
        if !r.vote_granted && r.last_log_id > rpc.last_log_id {
            self.contact.behind();
        }
        Ok(r)
    }
}
