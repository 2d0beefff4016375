//! The node's `/metrics`: the runtime's counters (relaxed atomics, see `runtime::stats` and
//! `observe::stats`), processes and mailboxes, per-app crashes and restarts, peer links,
//! the lease, the gateway and call latency, stuck processes. Names and labels:
//! docs/operations.md.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use rebeam_http::prom::Exposition;
use rebeam_http::stuck::{Observed, StuckWatch};

use super::stats::{CALL_LATENCY, GATEWAY_LATENCY, STATS};
use crate::python::host::{PyProcess, PyRuntime};
use crate::runtime::stats::STATS as RUNTIME;
use crate::runtime::{Kind, Pid};

/// The exposition for this node.
pub fn render(rt: &PyRuntime) -> Exposition {
    let mut e = Exposition::default();
    let node = rt.node().name().to_string();
    let l = [("node", node.as_str())];
    let processes = rt.processes();
    let (queued, deepest) = processes.iter().fold((0usize, 0usize), |(sum, max), p| {
        let n = p.mailbox_len() + p.data.held.load(Relaxed);
        (sum + n, max.max(n))
    });
    let stuck = stuck_processes(&processes);
    let gauges: [(&str, &str, f64); 5] = [
        (
            "rebeam_node_processes",
            "Live processes on the node.",
            processes.len() as f64,
        ),
        (
            "rebeam_node_incarnation",
            "The node's current incarnation.",
            rt.incarnation() as f64,
        ),
        (
            "rebeam_node_lease_held",
            "1 while the node holds its cluster lease (may run process code).",
            f64::from(u8::from(rt.lease_ok())),
        ),
        (
            "rebeam_mailbox_messages",
            "Messages waiting in all mailboxes of the node.",
            queued as f64,
        ),
        (
            "rebeam_mailbox_messages_max",
            "Messages waiting in the fullest mailbox.",
            deepest as f64,
        ),
    ];
    drop(processes);
    for (name, help, value) in gauges {
        e.family(name, "gauge", help).sample(name, &l, value);
    }
    e.family(
        "rebeam_node_processes_stuck",
        "gauge",
        "Processes of this node whose handler has run (holding its executor and the GIL), or \
         whose mailbox has grown unhandled, for 5 s or more, as successive scrapes saw them.",
    );
    for ((app, reason), n) in stuck {
        e.sample(
            "rebeam_node_processes_stuck",
            &[
                ("node", node.as_str()),
                ("app", app.as_str()),
                ("reason", reason),
            ],
            n as f64,
        );
    }
    let counters = [
        (
            "rebeam_messages_sent_total",
            "Messages sent by processes, the gateway and peers (send, cast, call).",
            RUNTIME.sent.get(),
        ),
        (
            "rebeam_messages_delivered_total",
            "Messages delivered to a local process (its mailbox, or an inline call).",
            RUNTIME.delivered.get(),
        ),
        (
            "rebeam_messages_routed_total",
            "Messages handed to a peer link for another node.",
            RUNTIME.routed.get(),
        ),
        (
            "rebeam_messages_dropped_total",
            "Messages dropped: target dead or unreachable.",
            RUNTIME.dropped.get(),
        ),
        (
            "rebeam_servers_scheduled_total",
            "Times a server was put in the run queue for an executor thread.",
            rt.runq.scheduled(),
        ),
        (
            "rebeam_executor_wakeups_total",
            "Times a parked executor thread was woken for a queued server.",
            RUNTIME.executor_wakeups.get(),
        ),
        (
            "rebeam_spawns_total",
            "Processes spawned.",
            RUNTIME.spawned.get(),
        ),
        (
            "rebeam_crashes_total",
            "Processes that ended with an uncaught exception.",
            RUNTIME.crashed.get(),
        ),
        (
            "rebeam_exits_total",
            "Processes that ended, whatever the reason.",
            RUNTIME.exited.get(),
        ),
        (
            "rebeam_mailbox_limit_kills_total",
            "Processes killed because a delivery would have passed their mailbox limit.",
            RUNTIME.mailbox_limit.get(),
        ),
        (
            "rebeam_memory_guard_actions_total",
            "Times the memory guard ended an app's processes on this node.",
            RUNTIME.memory_guard.get(),
        ),
        (
            "rebeam_restarts_total",
            "Children restarted by supervisors on the node.",
            STATS.restarts.get(),
        ),
        (
            "rebeam_peer_frames_sent_total",
            "Frames sent on peer links.",
            STATS.peer_frames_out.get(),
        ),
        (
            "rebeam_peer_frames_direct_total",
            "Frames sent on peer links that the sending thread wrote itself (the link was idle).",
            STATS.peer_frames_direct.get(),
        ),
        (
            "rebeam_client_replies_direct_total",
            "Client wire replies written by the thread that made them (the connection was idle).",
            STATS.client_replies_direct.get(),
        ),
        (
            "rebeam_peer_frames_received_total",
            "Frames received from peers.",
            STATS.peer_frames_in.get(),
        ),
        (
            "rebeam_peer_bytes_sent_total",
            "Encoded bytes sent on peer links.",
            STATS.peer_bytes_out.get(),
        ),
        (
            "rebeam_peer_bytes_received_total",
            "Encoded bytes received from peers.",
            STATS.peer_bytes_in.get(),
        ),
        (
            "rebeam_peer_send_waits_total",
            "Times a process waited for room on a peer link whose queue was full.",
            STATS.peer_send_waits.get(),
        ),
        (
            "rebeam_peer_links_opened_total",
            "Peer links opened: one per peer, then one per reconnect.",
            STATS.peer_links_opened.get(),
        ),
        (
            "rebeam_lease_renewals_total",
            "Lease renewals the controller acknowledged.",
            STATS.lease_renewals.get(),
        ),
        (
            "rebeam_fences_total",
            "Times the node lost its lease and killed its processes.",
            STATS.fences.get(),
        ),
    ];
    for (name, help, count) in counters {
        e.family(name, "counter", help)
            .sample(name, &l, count as f64);
    }
    let peer_drops = rt.host.remote.get().map_or(0, |r| r.dropped_frames());
    e.family(
        "rebeam_peer_frames_dropped_total",
        "counter",
        "Frames dropped because a peer link's queue was full.",
    )
    .sample("rebeam_peer_frames_dropped_total", &l, peer_drops as f64);
    let apps = crate::python::apps::all();
    for (name, help, pick) in [
        (
            "rebeam_app_crashes_total",
            "Processes of the app on this node that crashed.",
            (|a: &crate::python::apps::AppTag| a.crashes.load(Relaxed)) as fn(&_) -> u64,
        ),
        (
            "rebeam_app_restarts_total",
            "Children the app's supervisors on this node restarted.",
            |a| a.restarts.load(Relaxed),
        ),
    ] {
        e.family(name, "counter", help);
        for app in &apps {
            e.sample(
                name,
                &[("node", node.as_str()), ("app", app.name.as_str())],
                pick(app) as f64,
            );
        }
    }
    e.family(
        "rebeam_gateway_requests_total",
        "counter",
        "Messages clients delivered through this node's gateway, by kind.",
    );
    for (kind, counter) in ["send", "cast", "call"].iter().zip(&STATS.gateway_requests) {
        e.sample(
            "rebeam_gateway_requests_total",
            &[("node", node.as_str()), ("kind", kind)],
            counter.get() as f64,
        );
    }
    GATEWAY_LATENCY.write(
        &mut e,
        "rebeam_gateway_call_duration_seconds",
        "Time the gateway took to answer a client's call.",
        &l,
    );
    CALL_LATENCY.write(
        &mut e,
        "rebeam_call_duration_seconds",
        "Time from rebeam.call in process code to its reply (or failure); one call in 16 per thread is timed.",
        &l,
    );
    e.connections(&[("node", node.as_str())]);
    e
}

/// The node's resource use and cumulative traffic counters (`GatewayService.NodeStats`).
pub fn node_stats(rt: &PyRuntime) -> rebeam_proto::v1::NodeStatsReply {
    let processes = rt.processes();
    let mailbox_depth: usize = processes
        .iter()
        .map(|p| p.mailbox_len() + p.data.held.load(Relaxed))
        .sum();
    rebeam_proto::v1::NodeStatsReply {
        node: rt.node().name().to_string(),
        rss_bytes: crate::guard::resident_bytes(),
        cpu_seconds: cpu_seconds(),
        messages_sent: RUNTIME.sent.get(),
        messages_delivered: RUNTIME.delivered.get(),
        mailbox_depth: mailbox_depth as u64,
        peer_bytes_in: STATS.peer_bytes_in.get(),
        peer_bytes_out: STATS.peer_bytes_out.get(),
        peer_frames_in: STATS.peer_frames_in.get(),
        peer_frames_out: STATS.peer_frames_out.get(),
        processes: processes.len() as u64,
    }
}

/// User plus system CPU time this OS process has used (0 when the kernel does not say).
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: the call succeeded, so the struct is initialised (it was zeroed anyway).
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// This node's processes as the scrapes of `/metrics` and the process table's queries saw
/// them (the controller judges the lists of nodes that predate queries by the same rules).
pub static STUCK: LazyLock<StuckWatch<Pid>> = LazyLock::new(StuckWatch::default);

/// What the stuck rules see of `p` now.
pub fn observed(p: &PyProcess) -> Observed {
    Observed {
        handled: p.data.handled.load(Relaxed),
        mailbox: (p.mailbox_len() + p.data.held.load(Relaxed)) as u64,
        // Set while a thread runs the process's code (what `rebeam ps` shows as its current
        // function rather than "waiting").
        running: p.data.thread.load(Acquire) != 0,
        function: p.kind == Kind::Thread,
    }
}

/// Records this scrape's view of `processes` and counts the stuck ones by app and reason.
fn stuck_processes(processes: &[Arc<PyProcess>]) -> BTreeMap<(String, &'static str), u64> {
    let now = Instant::now();
    let rows: Vec<(Pid, Observed)> = processes.iter().map(|p| (p.pid, observed(p))).collect();
    let pairs = || rows.iter().map(|(pid, o)| (pid, *o));
    STUCK.observe(pairs(), now);
    let mut out = BTreeMap::new();
    for (p, stuck) in processes.iter().zip(STUCK.judge_all(pairs(), now)) {
        if let Some(stuck) = stuck {
            let app = p
                .data
                .app
                .as_ref()
                .map(|a| a.name.clone())
                .unwrap_or_default();
            *out.entry((app, stuck.reason)).or_default() += 1;
        }
    }
    out
}
