//! The per-node watch stream: a full view first, then every relevant change in log order.

use std::sync::Arc;

use rebeam_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::convert::watch_event;
use crate::core::Core;
use crate::state::{Event, State};
use crate::store::EventBatch;

/// The cluster view one node caches.
pub fn view(state: &State, node: &str) -> pb::ClusterView {
    pb::ClusterView {
        nodes: state.nodes.values().cloned().map(Into::into).collect(),
        names: state
            .names
            .iter()
            .map(|(n, p)| pb::GlobalName {
                name: n.clone(),
                pid: Some(p.clone().into()),
            })
            .collect(),
        groups: state
            .groups
            .iter()
            .map(|(g, m)| pb::Group {
                name: g.clone(),
                members: m.iter().cloned().map(Into::into).collect(),
            })
            .collect(),
        assignments: state
            .all_assignments()
            .filter(|a| a.node.as_ref().is_some_and(|(n, _)| n == node))
            .map(|a| state.assignment_view(a).into())
            .collect(),
        apps: state.apps.values().cloned().map(Into::into).collect(),
    }
}

fn snapshot_event(
    core: &Core,
    node: &str,
) -> (pb::WatchEvent, broadcast::Receiver<Arc<EventBatch>>) {
    // Subscribing under the read lock means no applied event falls between view and stream.
    let a = core.shared.applied.read();
    let rx = core.shared.events.subscribe();
    let ev = pb::WatchEvent {
        log_index: a.last_applied.map(|l| l.index).unwrap_or(0),
        event: Some(pb::watch_event::Event::Snapshot(view(&a.state, node))),
    };
    (ev, rx)
}

/// Starts streaming to `node` (already checked live) until it disconnects or is declared dead.
pub fn start(
    core: Arc<Core>,
    node: String,
    incarnation: u64,
) -> mpsc::Receiver<Result<pb::WatchEvent, Status>> {
    let (tx, out) = mpsc::channel(1024);
    tokio::spawn(async move {
        let (first, mut rx) = snapshot_event(&core, &node);
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            let batch = tokio::select! {
                _ = tx.closed() => break,
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
                    let (snap, new_rx) = snapshot_event(&core, &node);
                    rx = new_rx;
                    if tx.send(Ok(snap)).await.is_err() {
                        return;
                    }
                    break;
                }
                if let Event::NodeChanged(n) = ev {
                    fenced |= n.id == node && (!n.alive || n.incarnation != incarnation);
                }
                if let Some(e) = watch_event(batch.index, ev, &node) {
                    if tx.send(Ok(e)).await.is_err() {
                        return;
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
        if core.ensure_leader().is_ok() {
            core.leases
                .stream_closed(&node, incarnation, core.config.timings.stream_fence);
        }
    });
    out
}
