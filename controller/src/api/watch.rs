//! The per-node watch stream: a full view first, then every relevant change in log order.

use std::sync::Arc;
use std::time::Instant;

use rebeam_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::convert::watch_event;
use crate::core::Core;
use crate::state::{Event, State};
use crate::store::EventBatch;

/// Names or group members per view chunk, so no message nears the 4 MiB gRPC default.
const CHUNK: usize = 20_000;

/// The cluster view one node caches, split into chunks (the last one has `last` set).
pub fn view_chunks(state: &State, node: &str) -> Vec<pb::ClusterView> {
    let mut first = pb::ClusterView {
        nodes: state.nodes.values().cloned().map(Into::into).collect(),
        assignments: state
            .all_assignments()
            .filter(|a| a.node.as_ref().is_some_and(|(n, _)| n == node))
            .map(|a| state.assignment_view(a).into())
            .collect(),
        apps: state.apps.values().cloned().map(Into::into).collect(),
        ..Default::default()
    };
    let mut chunks = Vec::new();
    let mut current = std::mem::take(&mut first);
    let mut size = 0usize;
    for (n, p) in &state.names {
        if size >= CHUNK {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        current.names.push(pb::GlobalName {
            name: n.clone(),
            pid: Some(p.clone().into()),
        });
        size += 1;
    }
    for (g, members) in &state.groups {
        let mut members = members.iter().peekable();
        while members.peek().is_some() {
            if size >= CHUNK {
                chunks.push(std::mem::take(&mut current));
                size = 0;
            }
            let room = CHUNK - size;
            let part: Vec<pb::Pid> = members
                .by_ref()
                .take(room)
                .cloned()
                .map(Into::into)
                .collect();
            size += part.len();
            current.groups.push(pb::Group {
                name: g.clone(),
                members: part,
            });
        }
    }
    current.last = true;
    current.tokens = state.tokens.values().map(Into::into).collect();
    chunks.push(current);
    chunks
}

fn snapshot_events(
    core: &Core,
    node: &str,
) -> (Vec<pb::WatchEvent>, broadcast::Receiver<Arc<EventBatch>>) {
    // Subscribing under the read lock means no applied event falls between view and stream.
    let a = core.shared.applied.read();
    let rx = core.shared.events.subscribe();
    let index = a.last_applied.map(|l| l.index).unwrap_or(0);
    let events = view_chunks(&a.state, node)
        .into_iter()
        .map(|v| pb::WatchEvent {
            log_index: index,
            event: Some(pb::watch_event::Event::Snapshot(v)),
        })
        .collect();
    (events, rx)
}

/// The node went away (crash or lost connection). It fences itself within the stream fence,
/// so the leader need not wait for the whole lease.
fn gone(core: &Core, node: &str, incarnation: u64, opened: Instant) {
    if core.ensure_leader().is_ok() {
        core.leases
            .stream_closed(node, incarnation, opened, core.config.timings.stream_fence);
    }
}

/// Starts streaming to `node` (already checked live) until it disconnects or is declared dead.
pub fn start(
    core: Arc<Core>,
    node: String,
    incarnation: u64,
) -> mpsc::Receiver<Result<pb::WatchEvent, Status>> {
    let (tx, out) = mpsc::channel(1024);
    let opened = Instant::now();
    tokio::spawn(async move {
        let (first, mut rx) = snapshot_events(&core, &node);
        for ev in first {
            if tx.send(Ok(ev)).await.is_err() {
                return gone(&core, &node, incarnation, opened);
            }
        }
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => return gone(&core, &node, incarnation, opened),
                r = rx.recv() => r,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "watch fell {n} changes behind; open a new watch to get a fresh view"
                        ))))
                        .await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            };
            let mut fenced = false;
            for ev in &batch.events {
                if let Event::Reset = ev {
                    let (snap, new_rx) = snapshot_events(&core, &node);
                    rx = new_rx;
                    for ev in snap {
                        if tx.send(Ok(ev)).await.is_err() {
                            return gone(&core, &node, incarnation, opened);
                        }
                    }
                    break;
                }
                if let Event::NodeChanged(n) = ev {
                    fenced |= n.id == node && (!n.alive || n.incarnation != incarnation);
                }
                if let Some(e) = watch_event(batch.index, ev, &node) {
                    if tx.send(Ok(e)).await.is_err() {
                        return gone(&core, &node, incarnation, opened);
                    }
                }
            }
            if fenced {
                let _ = tx
                    .send(Err(Status::failed_precondition(format!(
                        "node `{node}` incarnation {incarnation} was declared dead; fence, then rejoin"
                    ))))
                    .await;
                return;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pid;

    #[test]
    fn large_views_come_in_bounded_chunks() {
        let mut s = State::default();
        for i in 0..45_000u64 {
            s.names.insert(
                format!("n{i}"),
                Pid {
                    node: "a".into(),
                    incarnation: 1,
                    serial: i,
                },
            );
        }
        let g = s.groups.entry("g".into()).or_default();
        for i in 0..30_000u64 {
            g.insert(Pid {
                node: "a".into(),
                incarnation: 1,
                serial: i,
            });
        }
        let chunks = view_chunks(&s, "a");
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().rev().skip(1).all(|c| !c.last));
        assert!(chunks.last().is_some_and(|c| c.last));
        let names: usize = chunks.iter().map(|c| c.names.len()).sum();
        let members: usize = chunks
            .iter()
            .flat_map(|c| &c.groups)
            .map(|g| g.members.len())
            .sum();
        assert_eq!((names, members), (45_000, 30_000));
        assert!(chunks.iter().all(|c| c.names.len()
            + c.groups.iter().map(|g| g.members.len()).sum::<usize>()
            <= CHUNK));
    }
}
