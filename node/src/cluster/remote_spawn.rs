//! Remote spawn (Erlang's `spawn(Node, ...)`): the calling node sends a `PeerSpawn` request
//! naming the target by module and qualified name; the target node starts the process on a
//! thread of its own (a server's `init` may call other nodes, which the inbound thread must
//! never wait for), queues the answer, and only then lets the new process run, so that the
//! answer reaches the caller before any exit signal or `Down` of the new process.

use super::wire::{pid_from_pb, pid_to_pb, reason_from_pb, reason_to_pb};
use super::Cluster;
use crate::python::ports::{SpawnDone, SpawnReply, SpawnRequest};
use crate::runtime::{NodeId, Ref};
use parking_lot::Mutex;
use pb::peer_spawn::Kind;
use pb::peer_spawn_result::Result as Answer;
use rebeam_proto as pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Spawns waiting for their answer, by id, with the node asked. A process has one cluster,
/// so one table serves it (kept here rather than in `Cluster`, which another layer owns).
static PENDING: LazyLock<Mutex<HashMap<u64, (NodeId, SpawnDone)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Sends a spawn request to the node named `node`; `done` gets the answer.
pub fn request(
    cluster: &Arc<Cluster>,
    node: &str,
    request: SpawnRequest,
    done: SpawnDone,
) -> Result<(), String> {
    let id = NodeId::from_wire(node).map_err(|e| e.to_string())?;
    if id == cluster.rt.node() || cluster.address_of(id).is_none() {
        return Err(format!(
            "no live node named {node:?} in the cluster (rebeam.nodes() lists them)"
        ));
    }
    let spawn_id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    PENDING.lock().insert(spawn_id, (id, done));
    let frame = pb::PeerSpawnRequest {
        from: request.from.map(pid_to_pb),
        module: request.module,
        qualname: request.qualname,
        main_path: request.main_path,
        args: request.args,
        link: request.link,
        monitor_ref: request.monitor.map_or(0, |r| r.0),
    };
    cluster.push(id, spawn_frame(spawn_id, Kind::Request(frame)));
    Ok(())
}

fn spawn_frame(spawn_id: u64, kind: Kind) -> pb::PeerFrame {
    pb::PeerFrame {
        frame: Some(pb::peer_frame::Frame::Spawn(pb::PeerSpawn {
            spawn_id,
            kind: Some(kind),
        })),
    }
}

/// Applies a spawn frame from `from_node` (on the inbound thread); None when malformed.
pub fn apply(cluster: &Arc<Cluster>, from_node: NodeId, spawn: pb::PeerSpawn) -> Option<()> {
    match spawn.kind? {
        Kind::Request(r) => {
            serve(cluster, from_node, spawn.spawn_id, r);
            Some(())
        }
        Kind::Result(r) => {
            let reply = match r.result? {
                Answer::Pid(pid) => SpawnReply::Spawned(pid_from_pb(Some(&pid))?),
                Answer::InitFailed(reason) => SpawnReply::InitFailed(reason_from_pb(Some(reason))),
                Answer::Refused(text) => SpawnReply::Refused(text),
            };
            let waiting = {
                let mut pending = PENDING.lock();
                match pending.get(&spawn.spawn_id) {
                    Some((node, _)) if *node == from_node => pending.remove(&spawn.spawn_id),
                    // Only the node asked may answer.
                    _ => None,
                }
            };
            if let Some((_, done)) = waiting {
                done(reply);
            }
            Some(())
        }
    }
}

/// `node` was lost: its unanswered spawns end with `Lost`.
pub fn node_down(node: NodeId) {
    let lost: Vec<SpawnDone> = {
        let mut pending = PENDING.lock();
        let ids: Vec<u64> = pending
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| pending.remove(&id).map(|(_, done)| done))
            .collect()
    };
    for done in lost {
        done(SpawnReply::Lost);
    }
}

/// Starts the requested process on a thread of its own and answers `from_node`.
fn serve(cluster: &Arc<Cluster>, from_node: NodeId, spawn_id: u64, r: pb::PeerSpawnRequest) {
    let request = SpawnRequest {
        from: pid_from_pb(r.from.as_ref()),
        module: r.module,
        qualname: r.qualname,
        main_path: r.main_path,
        args: r.args,
        link: r.link,
        monitor: (r.monitor_ref != 0).then_some(Ref(r.monitor_ref)),
    };
    let cluster2 = cluster.clone();
    let started = std::thread::Builder::new()
        .name("rebeam-spawn".into())
        .spawn(move || {
            // A target in a version of an app this node never ran: its code comes from the
            // controller first, as for an assignment.
            if let Some(target) = cluster2.code.missing_for(&request.module) {
                let loaded = cluster2
                    .tokio
                    .block_on(cluster2.code.ensure(&cluster2, target.clone()));
                if let Err(why) = loaded {
                    let why = format!(
                        "cannot load version {} of app {} here: {why}",
                        target.version, target.app
                    );
                    answer(&cluster2, from_node, spawn_id, SpawnReply::Refused(why));
                    return;
                }
            }
            let (reply, run) = crate::python::cluster_glue::spawn_for_peer(request);
            answer(&cluster2, from_node, spawn_id, reply);
            if let Some(run) = run {
                run();
            }
        });
    if let Err(err) = started {
        let reply = SpawnReply::Refused(format!("cannot start a spawn thread: {err}"));
        answer(cluster, from_node, spawn_id, reply);
    }
}

fn answer(cluster: &Arc<Cluster>, node: NodeId, spawn_id: u64, reply: SpawnReply) {
    let result = match reply {
        SpawnReply::Spawned(pid) => Answer::Pid(pid_to_pb(pid)),
        SpawnReply::InitFailed(reason) => Answer::InitFailed(reason_to_pb(&reason)),
        SpawnReply::Refused(text) => Answer::Refused(text),
        SpawnReply::Lost => return,
    };
    let result = pb::PeerSpawnResult {
        result: Some(result),
    };
    cluster.push(node, spawn_frame(spawn_id, Kind::Result(result)));
}
