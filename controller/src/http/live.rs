//! What makes the dashboard live without Prometheus: a bounded in-memory time series of
//! the controller's rates, and a server-sent-event stream telling pages when to refresh.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{json, Value};

use rebeam_proto::v1 as pb;

use crate::core::Core;
use crate::http::api::Api;
use crate::http::metrics::HttpStats;

/// Samples kept: ten minutes at one a second.
pub const MAX_SAMPLES: usize = 600;
/// How often a sample is taken and the stream ticks.
pub const PERIOD: Duration = Duration::from_secs(1);
/// How often the live nodes are asked for their stats.
pub const NODE_PERIOD: Duration = Duration::from_secs(2);
/// A node's stats older than this (it stopped answering) count no more.
const NODE_STALE: Duration = Duration::from_secs(10);

/// One second of the cluster.
#[derive(Clone, Serialize)]
pub struct Sample {
    /// Wall clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// Raft entries applied per second.
    pub commits_per_s: f64,
    /// Events journalled per second.
    pub events_per_s: f64,
    /// Top-level restarts in that second.
    pub restarts: u64,
    /// HTTP requests per second.
    pub http_per_s: f64,
    /// Live nodes.
    pub nodes_alive: u64,
    /// Messages delivered per second, summed over the nodes.
    pub messages_per_s: f64,
    /// Messages waiting in all mailboxes of all nodes.
    pub mailbox_depth: u64,
    /// Peer link bytes per second (sent plus received), summed over the nodes.
    pub peer_bytes_per_s: f64,
}

/// A node's resource use, and its rates between its last two answers (`None` until there
/// are two).
#[derive(Clone, Default, Serialize)]
pub struct NodeLoad {
    /// Resident set size of the node's OS process.
    pub memory_bytes: u64,
    /// CPU used, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Messages sent per second.
    pub sent_per_s: Option<f64>,
    /// Messages delivered per second.
    pub delivered_per_s: Option<f64>,
    /// Messages waiting in the node's mailboxes.
    pub mailbox_depth: u64,
    /// Peer link bytes per second, received.
    pub peer_bytes_in_per_s: Option<f64>,
    /// Peer link bytes per second, sent.
    pub peer_bytes_out_per_s: Option<f64>,
    /// Peer link frames per second, sent plus received.
    pub peer_frames_per_s: Option<f64>,
    /// When the node answered, ms since the Unix epoch.
    pub sampled_at_ms: u64,
}

/// The nodes' last stats answers and the loads computed from them.
#[derive(Default)]
pub struct NodeLoads {
    by_node: Mutex<HashMap<String, (Instant, pb::NodeStatsReply, NodeLoad)>>,
}

impl NodeLoads {
    /// The load of `node`, when it answered recently.
    pub fn get(&self, node: &str) -> Option<NodeLoad> {
        let m = self.by_node.lock();
        m.get(node)
            .filter(|(at, _, _)| at.elapsed() < NODE_STALE)
            .map(|(_, _, l)| l.clone())
    }

    /// Cluster-wide delivered messages/s, mailbox depth and peer bytes/s over the nodes
    /// that answered recently.
    fn totals(&self) -> (f64, u64, f64) {
        let m = self.by_node.lock();
        m.values()
            .filter(|(at, _, _)| at.elapsed() < NODE_STALE)
            .fold((0.0, 0, 0.0), |(msgs, depth, bytes), (_, _, l)| {
                (
                    msgs + l.delivered_per_s.unwrap_or(0.0),
                    depth + l.mailbox_depth,
                    bytes
                        + l.peer_bytes_in_per_s.unwrap_or(0.0)
                        + l.peer_bytes_out_per_s.unwrap_or(0.0),
                )
            })
    }

    /// Records `reply`, from `node`, answered at `at`.
    fn record(&self, node: String, at: Instant, reply: pb::NodeStatsReply) {
        let mut m = self.by_node.lock();
        let previous = m.get(&node).map(|(t, r, _)| (*t, r.clone()));
        let mut load = NodeLoad {
            memory_bytes: reply.rss_bytes,
            mailbox_depth: reply.mailbox_depth,
            sampled_at_ms: crate::http::api::now_ms(),
            ..NodeLoad::default()
        };
        if let Some((then, prev)) = previous {
            let secs = at.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                // A restarted node's counters start again from zero: no rate rather than a
                // negative one.
                let rate = |now: u64, before: u64| Some(now.saturating_sub(before) as f64 / secs);
                load.cpu_percent =
                    Some(((reply.cpu_seconds - prev.cpu_seconds).max(0.0) / secs) * 100.0);
                load.sent_per_s = rate(reply.messages_sent, prev.messages_sent);
                load.delivered_per_s = rate(reply.messages_delivered, prev.messages_delivered);
                load.peer_bytes_in_per_s = rate(reply.peer_bytes_in, prev.peer_bytes_in);
                load.peer_bytes_out_per_s = rate(reply.peer_bytes_out, prev.peer_bytes_out);
                load.peer_frames_per_s = rate(
                    reply.peer_frames_in + reply.peer_frames_out,
                    prev.peer_frames_in + prev.peer_frames_out,
                );
            }
        }
        m.insert(node, (at, reply, load));
    }

    /// Forgets nodes that have not answered for long (dead or gone).
    fn prune(&self) {
        self.by_node
            .lock()
            .retain(|_, (at, _, _)| at.elapsed() < NODE_STALE);
    }
}

/// Asks the live nodes for their stats every [`NODE_PERIOD`] for as long as the process
/// runs, keeping them in `api.loads`.
pub async fn poll_nodes(api: Arc<Api>) {
    let mut tick = tokio::time::interval(NODE_PERIOD);
    // A slow round (a node timing out) delays the next rather than bunching them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let g = api.nodes.stats().await;
        let at = Instant::now();
        for (node, reply) in g.answers {
            api.loads.record(node, at, reply);
        }
        for (node, why) in g.missing {
            tracing::debug!(%node, %why, "node stats not answered");
        }
        api.loads.prune();
    }
}

/// The bounded series.
#[derive(Default)]
pub struct Series {
    samples: Mutex<VecDeque<Sample>>,
}

impl Series {
    /// The kept samples, oldest first.
    pub fn all(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }
}

fn counts(core: &Core) -> (u64, u64, u64, u64) {
    let a = core.shared.applied.read();
    let s = &a.state;
    let restarts = s
        .journal
        .entries
        .iter()
        .filter(|e| e.kind == "restart")
        .count() as u64;
    (
        a.last_applied.map(|l| l.index).unwrap_or(0),
        s.journal.next_seq,
        restarts,
        s.nodes.values().filter(|n| n.alive).count() as u64,
    )
}

/// Samples every [`PERIOD`] for as long as the process runs.
pub async fn sample(core: Arc<Core>, stats: Arc<HttpStats>, series: Arc<Series>, api: Arc<Api>) {
    let mut tick = tokio::time::interval(PERIOD);
    let (mut applied, mut seq, mut restarts, _) = counts(&core);
    let mut http = stats.total();
    loop {
        tick.tick().await;
        let (a, s, r, alive) = counts(&core);
        let h = stats.total();
        let secs = PERIOD.as_secs_f64();
        let (messages_per_s, mailbox_depth, peer_bytes_per_s) = api.loads.totals();
        let sample = Sample {
            at_ms: crate::http::api::now_ms(),
            commits_per_s: a.saturating_sub(applied) as f64 / secs,
            events_per_s: s.saturating_sub(seq) as f64 / secs,
            restarts: r.saturating_sub(restarts),
            http_per_s: h.saturating_sub(http) as f64 / secs,
            nodes_alive: alive,
            messages_per_s,
            mailbox_depth,
            peer_bytes_per_s,
        };
        (applied, seq, restarts, http) = (a, s, r, h);
        let mut q = series.samples.lock();
        q.push_back(sample);
        while q.len() > MAX_SAMPLES {
            q.pop_front();
        }
    }
}

/// `/api/v1/series`: the kept samples.
pub async fn series(State(series): State<Arc<Series>>) -> Json<Value> {
    Json(json!({ "period_ms": PERIOD.as_millis() as u64, "samples": series.all() }))
}

/// `/api/v1/stream`: a `tick` event whenever the applied state moved (at most every 250 ms),
/// carrying the journal's next sequence number; pages refetch what they show.
pub async fn stream(
    State(core): State<Arc<Core>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let s = futures::stream::unfold((core, None::<(u64, u64)>), |(core, last)| async move {
        loop {
            let now = {
                let a = core.shared.applied.read();
                (
                    a.last_applied.map(|l| l.index).unwrap_or(0),
                    a.state.journal.next_seq,
                )
            };
            if last != Some(now) {
                let ev = Event::default()
                    .event("tick")
                    .data(json!({"applied": now.0, "next_seq": now.1}).to_string());
                return Some((Ok(ev), (core, Some(now))));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
