//! Bounded mutation fuzzing, on stable Rust, of every decoder the controller runs on bytes
//! from the network: manifests, code archives, Raft payloads (JSON, then the range checks)
//! and the protobuf requests of its services with their conversions to domain types.
//!
//! Seeds come from `tests/corpus/` (kept in the repo) and from values built here; each is
//! mutated (bit flips, byte overwrites, inserts, deletes, splices, interesting integers)
//! `REBEAM_FUZZ_ITERS` times (default 30,000 per target) with the seed `REBEAM_FUZZ_SEED`
//! (default fixed, so CI is reproducible; print and rerun a failing one). A decoder may
//! refuse; it must never panic. `cargo fuzz` would need a nightly toolchain in CI, which
//! the project does not require, hence this harness.

use std::path::Path;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rebeam_controller::api::raft::{
    check_append_request, check_snapshot_request, check_vote_request,
};
use rebeam_controller::types::TypeConfig;
use rebeam_proto::v1 as pb;

fn iterations() -> usize {
    std::env::var("REBEAM_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

fn rng() -> StdRng {
    let seed = std::env::var("REBEAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_cafe);
    eprintln!("fuzz seed {seed} (REBEAM_FUZZ_SEED)");
    StdRng::seed_from_u64(seed)
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

const INTERESTING: [u64; 8] = [0, 1, 0x7f, 0xff, 0xffff, 1 << 31, u64::MAX, 1 << 48];

/// One to eight random mutations of `seed`, sometimes spliced with `other`.
fn mutate(rng: &mut StdRng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        let len = data.len();
        match rng.random_range(0..7) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = (i + rng.random_range(1..=32)).min(len);
                data.drain(i..j);
            }
            4 if !other.is_empty() => {
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            5 if len >= 8 => {
                let i = rng.random_range(0..=len - 8);
                let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
                data[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                // ASCII digits where numbers are written in text formats.
                if len > 0 {
                    let i = rng.random_range(0..len);
                    data[i] = b"0123456789-e.\"[]{}"[rng.random_range(0..18)];
                }
            }
        }
    }
    data
}

/// Feeds `iterations()` mutants of the seeds to `target`.
fn fuzz(seeds: &[Vec<u8>], mut target: impl FnMut(&[u8])) {
    let mut rng = rng();
    for seed in seeds {
        target(seed);
    }
    for _ in 0..iterations() {
        let a = &seeds[rng.random_range(0..seeds.len())];
        let b = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, a, b);
        target(&input);
    }
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
    let seeds = vec![
        serde_json::to_vec(&vote).expect("vote"),
        serde_json::to_vec(&append).expect("append"),
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
