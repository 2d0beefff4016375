//! The controller's network decoders: manifests, code archives, Raft payloads (JSON, then
//! the range checks, pre-vote and lease advertisement included) and the protobuf requests of
//! its services with the validation that turns them into domain values.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message;
use rebeam_controller::api::raft::{
    check_append_request, check_pre_vote, check_snapshot_request, check_vote_request, Advertised,
    PreVote,
};
use rebeam_controller::api::{node_ref, pid};
use rebeam_controller::types::{NodeUpgrade, TypeConfig};
use rebeam_controller::{archive, manifest, validate, Limits};
use rebeam_proto::v1 as pb;

/// The manifest every archive seed goes with (its children's modules are in the seeds).
pub const ARCHIVE_MANIFEST: &str = include_str!("../seeds/every_key.toml");

/// `manifest::parse` on the bytes as text (a gRPC string is UTF-8 before it gets here).
pub fn manifest(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = manifest::parse(text);
    }
}

/// `archive::check` of a code archive against [`ARCHIVE_MANIFEST`]: unpacking checks (path
/// escapes, sizes, counts, names) with nothing written.
pub fn archive(data: &[u8]) {
    let _ = archive::check(data, ARCHIVE_MANIFEST);
}

/// A `RaftPayload`'s JSON as each of the Raft service's methods reads it, then its checks.
pub fn raft_payload(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<VoteRequest<u64>>(data) {
        let _ = check_vote_request(&r);
    }
    if let Ok(r) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(data) {
        let _ = check_append_request(&r);
    }
    if let Ok(r) = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(data) {
        let _ = check_snapshot_request(&r);
    }
    if let Ok(r) = serde_json::from_slice::<PreVote>(data) {
        let _ = check_pre_vote(&r);
    }
    if let Ok(r) = serde_json::from_slice::<Advertised>(data) {
        let _ = validate::address(&r.lease_addr);
    }
}

/// `SubmitApp`/`UpgradeApp` up to the proposal: size limits, manifest, archive check.
pub fn submit_app(data: &[u8]) {
    let Ok(r) = pb::SubmitAppRequest::decode(data) else {
        return;
    };
    let limits = Limits::default();
    if r.manifest_toml.len() > limits.max_manifest_bytes || r.code.len() > limits.max_code_bytes {
        return;
    }
    if manifest::parse(&r.manifest_toml).is_ok() {
        let _ = archive::check(&r.code, &r.manifest_toml);
    }
}

/// The cluster and node services' other requests, validated into domain values as the
/// handlers do before they propose (selector: first byte).
pub fn request(data: &[u8]) {
    let Some((kind, body)) = crate::split(data) else {
        return;
    };
    match kind % 8 {
        0 => {
            if let Ok(r) = pb::RegisterNameRequest::decode(body) {
                let _ = validate::name("name", &r.name).and_then(|_| pid(r.pid));
            }
        }
        1 => {
            if let Ok(r) = pb::RegisterNamesRequest::decode(body) {
                for r in r.registrations {
                    let _ = validate::name("name", &r.name).and_then(|_| pid(r.pid));
                }
            }
        }
        2 => {
            if let Ok(r) = pb::PgRequest::decode(body) {
                let _ = validate::name("group", &r.group).and_then(|_| pid(r.pid));
            }
        }
        3 => {
            if let Ok(r) = pb::JoinRequest::decode(body) {
                let labels = r.labels.into_iter().collect();
                let _ = validate::node_id(&r.node)
                    .and_then(|_| validate::address(&r.address))
                    .and_then(|_| validate::labels(&labels));
            }
        }
        4 => {
            if let Ok(r) = pb::ReportExitRequest::decode(body) {
                if node_ref(r.node).is_ok() && r.exits.len() <= validate::MAX_EXITS_PER_REPORT {
                    for e in r.exits {
                        let _ = pid(e.pid);
                    }
                }
            }
        }
        5 => {
            if let Ok(r) = pb::ChildFailedRequest::decode(body) {
                let _ = node_ref(r.node);
                let _ = validate::required("app", &r.app, "");
                let _ = validate::tail(&r.error, validate::MAX_REPORT_ERROR_BYTES);
            }
        }
        6 => {
            if let Ok(r) = pb::UpgradeReportRequest::decode(body) {
                let _ = node_ref(r.node);
                if let Some(result) = r.result {
                    let _ = NodeUpgrade::try_from(result);
                }
            }
        }
        _ => {
            if let Ok(r) = pb::HeartbeatRequest::decode(body) {
                let _ = node_ref(r.node);
            }
        }
    }
}
