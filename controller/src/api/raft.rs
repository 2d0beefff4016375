//! Server side of the `RaftPeer` service: hands requests to openraft.

use rebeam_proto::v1::raft_peer_server::RaftPeer;
use rebeam_proto::v1::RaftPayload;
use tonic::{Request, Response, Status};

use crate::types::Raft;

/// Serves Raft RPCs from the other members.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    /// Wraps the local Raft handle.
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "malformed raft payload: {e}; peers must run the same version"
        ))
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftPeer for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.append_entries(decode(req)?).await;
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.vote(decode(req)?).await;
        encode(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.install_snapshot(decode(req)?).await;
        encode(&r)
    }
}
