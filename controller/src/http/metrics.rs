//! The controller's `/metrics`: Raft progress, cluster contents and the HTTP server's own
//! traffic, read from state the member already keeps (no bookkeeping on the Raft path).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::core::Core;
use crate::http::api::{Api, ProcessList};
use crate::http::prom::{Exposition, Histogram, LATENCY_BOUNDS};
use crate::types::AppStatus;

/// Counters of the HTTP server itself.
pub struct HttpStats {
    requests: [AtomicU64; 5],
    latency: Histogram,
    /// Leader changes seen by this member (its term moved with a new leader).
    pub elections: AtomicU64,
}

impl Default for HttpStats {
    fn default() -> Self {
        HttpStats {
            requests: Default::default(),
            latency: Histogram::new(LATENCY_BOUNDS),
            elections: AtomicU64::new(0),
        }
    }
}

impl HttpStats {
    /// Requests answered so far.
    pub fn total(&self) -> u64 {
        self.requests.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Middleware counting requests by status class and their latency.
pub async fn count(State(stats): State<Arc<HttpStats>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let res = next.run(req).await;
    let class = (res.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    stats.requests[class].fetch_add(1, Relaxed);
    stats.latency.observe(started.elapsed());
    res
}

/// Counts leader changes for as long as `core`'s Raft runs.
pub async fn watch_elections(core: Arc<Core>, stats: Arc<HttpStats>) {
    let mut rx = core.raft.metrics();
    let mut last = rx.borrow().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow().current_leader;
        if now.is_some() && now != last {
            stats.elections.fetch_add(1, Relaxed);
        }
        last = now;
    }
}

/// The commit index as the leader knows it (the highest index a quorum of voters holds);
/// openraft 0.9 does not report it, and only the leader can compute it.
pub fn commit_index(m: &openraft::RaftMetrics<u64, crate::types::MemberNode>) -> Option<u64> {
    let rep = m.replication.as_ref()?;
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| {
            if *v == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                rep.get(v).and_then(|x| x.map(|l| l.index)).unwrap_or(0)
            }
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(voters.len() / 2).copied()
}

/// The exposition for `core`, with the stuck processes of `list` (the API's process list,
/// which the dashboard pages through too).
pub fn render(core: &Core, stats: &HttpStats, api: &Api, list: &ProcessList) -> Exposition {
    let mut e = Exposition::default();
    stuck(&mut e, api, list);
    let m = core.raft.metrics().borrow().clone();
    let last = m.last_log_index.unwrap_or(0) as f64;
    let id = core.id.to_string();
    let me = [("member", id.as_str())];
    e.family(
        "rebeam_raft_term",
        "gauge",
        "Current Raft term of this member.",
    )
    .sample("rebeam_raft_term", &me, m.current_term as f64);
    e.family(
        "rebeam_raft_is_leader",
        "gauge",
        "1 while this member leads.",
    )
    .sample(
        "rebeam_raft_is_leader",
        &me,
        f64::from(u8::from(m.state.is_leader())),
    );
    e.family(
        "rebeam_raft_last_log_index",
        "gauge",
        "Index of the last log entry.",
    )
    .sample("rebeam_raft_last_log_index", &me, last);
    e.family("rebeam_raft_commit_index", "gauge", "Index of the last committed entry (the leader's count; followers report their applied index).")
        .sample(
            "rebeam_raft_commit_index",
            &me,
            commit_index(&m)
                .or(m.last_applied.map(|l| l.index))
                .unwrap_or(0) as f64,
        );
    e.family(
        "rebeam_raft_applied_index",
        "gauge",
        "Index of the last applied entry.",
    )
    .sample(
        "rebeam_raft_applied_index",
        &me,
        m.last_applied.map(|l| l.index).unwrap_or(0) as f64,
    );
    e.family(
        "rebeam_raft_elections_total",
        "counter",
        "Leader changes this member saw since it started.",
    )
    .sample(
        "rebeam_raft_elections_total",
        &me,
        stats.elections.load(Relaxed) as f64,
    );
    e.family(
        "rebeam_raft_follower_lag",
        "gauge",
        "Entries a follower is behind the leader's log (reported by the leader).",
    );
    if let Some(rep) = &m.replication {
        for (peer, matched) in rep {
            let lag = last - matched.map(|l| l.index).unwrap_or(0) as f64;
            let p = peer.to_string();
            e.sample(
                "rebeam_raft_follower_lag",
                &[("member", p.as_str())],
                lag.max(0.0),
            );
        }
    }
    {
        let a = core.shared.applied.read();
        let s = &a.state;
        let alive = s.nodes.values().filter(|n| n.alive).count();
        e.family("rebeam_nodes", "gauge", "Member nodes by status.")
            .sample("rebeam_nodes", &[("status", "alive")], alive as f64)
            .sample(
                "rebeam_nodes",
                &[("status", "dead")],
                (s.nodes.len() - alive) as f64,
            );
        e.family("rebeam_apps", "gauge", "Applications by status.");
        for (status, label) in [
            (AppStatus::Running, "running"),
            (AppStatus::Stopped, "stopped"),
            (AppStatus::Failed, "failed"),
        ] {
            let n = s.apps.values().filter(|x| x.status == status).count();
            e.sample("rebeam_apps", &[("status", label)], n as f64);
        }
        e.family(
            "rebeam_top_level_restarts",
            "gauge",
            "Restarts of each app's top-level children in its kept history.",
        );
        for (app, children) in &s.assignments {
            let n: usize = children.values().map(|x| x.history.len()).sum();
            e.sample("rebeam_top_level_restarts", &[("app", app)], n as f64);
        }
        e.single(
            "rebeam_global_names",
            "gauge",
            "Names in the global registry.",
            s.names.len() as f64,
        );
        e.single(
            "rebeam_groups",
            "gauge",
            "Process groups.",
            s.groups.len() as f64,
        );
        e.single(
            "rebeam_events_total",
            "counter",
            "Entries written to the event journal.",
            s.journal.next_seq.saturating_sub(1) as f64,
        );
    }
    e.family(
        "rebeam_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
    );
    for (i, c) in stats.requests.iter().enumerate() {
        let class = format!("{}xx", i + 1);
        e.sample(
            "rebeam_http_requests_total",
            &[("code", class.as_str())],
            c.load(Relaxed) as f64,
        );
    }
    stats.latency.write(
        &mut e,
        "rebeam_http_request_duration_seconds",
        "Time to answer an HTTP request.",
        &[],
    );
    e.connections(&[]);
    e
}

/// `rebeam_processes_stuck` by node, app and reason, and how old the list judged is (a
/// scrape serves the cached list and refreshes it behind, so the judgement may lag).
fn stuck(e: &mut Exposition, api: &Api, list: &ProcessList) {
    let now = Instant::now();
    e.single(
        "rebeam_process_list_age_seconds",
        "gauge",
        "Age of the process list the stuck-process counts come from.",
        now.saturating_duration_since(list.gathered_at())
            .as_secs_f64(),
    );
    e.family(
        "rebeam_processes_stuck",
        "gauge",
        "Processes whose handler has run, or whose mailbox has grown unhandled, for 5 s or more.",
    );
    for ((node, app, reason), n) in api.stuck.count(list.rows(), now) {
        e.sample(
            "rebeam_processes_stuck",
            &[
                ("node", node.as_str()),
                ("app", app.as_str()),
                ("reason", reason),
            ],
            n as f64,
        );
    }
}
