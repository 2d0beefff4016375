//! Server side of the `RaftPeer` service: hands requests to openraft.

use rebeam_proto::v1::raft_peer_server::RaftPeer;
use rebeam_proto::v1::RaftPayload;
use tonic::{Request, Response, Status};

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{LogId, Vote};

use crate::types::{Raft, TypeConfig};

/// Highest term accepted from a peer. Terms grow by one per election, so a real group never
/// nears this; openraft computes `term + 1` and would overflow (and panic) on `u64::MAX`.
pub const MAX_WIRE_TERM: u64 = 1 << 48;
/// Highest log index accepted from a peer (far beyond any real log, far below overflow).
pub const MAX_WIRE_INDEX: u64 = 1 << 56;
/// Highest snapshot chunk offset accepted (a snapshot larger than this is refused).
pub const MAX_SNAPSHOT_OFFSET: u64 = 1 << 36;
/// Longest snapshot id accepted.
pub const MAX_SNAPSHOT_ID: usize = 256;

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

fn refuse(what: &str) -> Status {
    Status::invalid_argument(format!("raft {what} is out of range; refused"))
}

fn check_vote(v: &Vote<u64>) -> Result<(), Status> {
    if v.leader_id.term > MAX_WIRE_TERM {
        return Err(refuse("term"));
    }
    if v.leader_id.node_id == 0 {
        return Err(refuse("node id"));
    }
    Ok(())
}

fn check_log_id(l: &Option<LogId<u64>>, term_at_most: u64) -> Result<(), Status> {
    if let Some(l) = l {
        if l.leader_id.term > term_at_most {
            return Err(refuse("log term"));
        }
        if l.index > MAX_WIRE_INDEX {
            return Err(refuse("log index"));
        }
    }
    Ok(())
}

/// Checks a peer's vote request before openraft sees it.
pub fn check_vote_request(r: &VoteRequest<u64>) -> Result<(), Status> {
    check_vote(&r.vote)?;
    check_log_id(&r.last_log_id, r.vote.leader_id.term)
}

/// Checks a peer's entries: bounded terms and indexes, and entries that follow `prev_log_id`
/// one by one.
pub fn check_append_request(r: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
    let term = r.vote.leader_id.term;
    check_vote(&r.vote)?;
    check_log_id(&r.prev_log_id, term)?;
    check_log_id(&r.leader_commit, term)?;
    let mut next = r.prev_log_id.map(|l| l.index + 1);
    for e in &r.entries {
        check_log_id(&Some(e.log_id), term)?;
        if next.is_some_and(|n| n != e.log_id.index) {
            return Err(refuse("entry index sequence"));
        }
        next = Some(e.log_id.index + 1);
    }
    Ok(())
}

/// Checks a peer's snapshot chunk's header.
pub fn check_snapshot_request(r: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Status> {
    let term = r.vote.leader_id.term;
    check_vote(&r.vote)?;
    check_log_id(&r.meta.last_log_id, term)?;
    check_log_id(r.meta.last_membership.log_id(), term)?;
    if r.offset > MAX_SNAPSHOT_OFFSET {
        return Err(refuse("snapshot offset"));
    }
    if r.meta.snapshot_id.len() > MAX_SNAPSHOT_ID {
        return Err(refuse("snapshot id"));
    }
    Ok(())
}

#[tonic::async_trait]
impl RaftPeer for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req = decode(req)?;
        check_append_request(&req)?;
        let r = self.raft.append_entries(req).await;
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req = decode(req)?;
        check_vote_request(&req)?;
        let r = self.raft.vote(req).await;
        encode(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req = decode(req)?;
        check_snapshot_request(&req)?;
        let r = self.raft.install_snapshot(req).await;
        encode(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    fn vote(term: u64) -> Vote<u64> {
        Vote::new(term, 1)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn a_vote_with_an_overflowing_term_is_refused() {
        let ok = VoteRequest::new(vote(7), None);
        assert!(check_vote_request(&ok).is_ok());
        let bad = VoteRequest::new(vote(u64::MAX), None);
        assert_eq!(
            check_vote_request(&bad).expect_err("refused").code(),
            tonic::Code::InvalidArgument
        );
        let bad_log = VoteRequest::new(
            vote(3),
            Some(LogId::new(CommittedLeaderId::new(3, 1), u64::MAX)),
        );
        assert!(check_vote_request(&bad_log).is_err());
    }

    #[test]
    fn entries_must_follow_on_and_stay_within_the_term() {
        let req = |entries, prev: Option<u64>| AppendEntriesRequest::<TypeConfig> {
            vote: vote(5),
            prev_log_id: prev.map(|i| LogId::new(CommittedLeaderId::new(5, 1), i)),
            entries,
            leader_commit: None,
        };
        assert!(check_append_request(&req(vec![entry(5, 4), entry(5, 5)], Some(3))).is_ok());
        assert!(check_append_request(&req(vec![entry(5, 4), entry(5, 9)], Some(3))).is_err());
        assert!(check_append_request(&req(vec![entry(6, 4)], Some(3))).is_err());
        assert!(check_append_request(&req(vec![entry(5, u64::MAX)], None)).is_err());
    }
}
