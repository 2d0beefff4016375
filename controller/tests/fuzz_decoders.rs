//! Bounded mutation fuzzing, on stable Rust, of every decoder the controller runs on bytes
//! from the network: manifests, code archives, Raft payloads (JSON, then the range checks,
//! pre-votes included) and the protobuf requests of its services with their conversions to
//! domain types.
//!
//! Seeds come from `tests/corpus/` (kept in the repo) and from values built here; each is
//! mutated (bit flips, byte overwrites, inserts, deletes, splices, interesting integers)
//! `REBEAM_FUZZ_ITERS` times (default 30,000 per target) with the seed `REBEAM_FUZZ_SEED`
//! (default fixed, so CI is reproducible; print and rerun a failing one). A decoder may
//! refuse; it must never panic. This runs in every `cargo test`, on stable; the
//! coverage-guided cargo-fuzz targets of the same decoders (nightly) are in `fuzz/`
//! (`make fuzz`, `make test-fuzz`).

use std::path::Path;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;
use rebeam_controller::api::raft::{
    check_append_request, check_pre_vote, check_snapshot_request, check_vote_request, PreVote,
};
use rebeam_controller::types::TypeConfig;
use rebeam_proto::v1 as pb;

#[allow(dead_code)]
mod fuzz_support;

use fuzz_support::fuzz;

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    fuzz_support::corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus"),
        kind,
    )
}

#[test]
fn manifests() {
    fuzz(&corpus("manifest"), |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = rebeam_controller::manifest::parse(text);
        }
    });
}

#[test]
fn archives() {
    let manifest = String::from_utf8(corpus("manifest").remove(1)).expect("utf-8 seed");
    fuzz(&corpus("archive"), |bytes| {
        let _ = rebeam_controller::archive::check(bytes, &manifest);
    });
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

#[test]
fn raft_payloads() {
    let vote = VoteRequest::new(Vote::new(3, 1), Some(log_id(3, 7)));
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new(5, 1),
        prev_log_id: Some(log_id(5, 3)),
        entries: vec![
            Entry {
                log_id: log_id(5, 4),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(5, 5),
                payload: EntryPayload::Blank,
            },
        ],
        leader_commit: Some(log_id(5, 3)),
    };
    let pre_vote = PreVote {
        candidate: 2,
        term: 6,
        last_log_id: Some(log_id(5, 9)),
    };
    let seeds = vec![
        serde_json::to_vec(&vote).expect("vote"),
        serde_json::to_vec(&append).expect("append"),
        serde_json::to_vec(&pre_vote).expect("pre-vote"),
    ];
    fuzz(&seeds, |bytes| {
        if let Ok(r) = serde_json::from_slice::<VoteRequest<u64>>(bytes) {
            let _ = check_vote_request(&r);
        }
        if let Ok(r) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(bytes) {
            let _ = check_append_request(&r);
        }
        if let Ok(r) = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(bytes) {
            let _ = check_snapshot_request(&r);
        }
        if let Ok(r) = serde_json::from_slice::<PreVote>(bytes) {
            let _ = check_pre_vote(&r);
        }
    });
}

#[test]
fn protobuf_requests() {
    let upgrade = pb::UpgradeReportRequest {
        app: "chat".into(),
        ..Default::default()
    };
    let failed = pb::ChildFailedRequest {
        app: "chat".into(),
        child: "lobby".into(),
        generation: 3,
        error: "boom".into(),
        ..Default::default()
    };
    let seeds = vec![upgrade.encode_to_vec(), failed.encode_to_vec()];
    fuzz(&seeds, |bytes| {
        if let Ok(r) = pb::UpgradeReportRequest::decode(bytes) {
            if let Some(result) = r.result {
                let _ = rebeam_controller::types::NodeUpgrade::try_from(result);
            }
        }
        let _ = pb::ChildFailedRequest::decode(bytes);
        let _ = pb::SubmitAppRequest::decode(bytes);
        let _ = pb::RegisterNamesRequest::decode(bytes);
        let _ = pb::JoinRequest::decode(bytes);
        let _ = pb::RaftPayload::decode(bytes);
    });
}
