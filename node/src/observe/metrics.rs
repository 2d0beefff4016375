//! The node's `/metrics`: the runtime's counters (relaxed atomics, see `runtime::stats`),
//! processes, lease and peer-link drops.

use rebeam_controller::http::prom::Exposition;

use crate::python::host::PyRuntime;

/// The exposition for this node.
pub fn render(rt: &PyRuntime) -> Exposition {
    let mut e = Exposition::default();
    let node = rt.node().name().to_string();
    let l = [("node", node.as_str())];
    e.family(
        "rebeam_node_processes",
        "gauge",
        "Live processes on the node.",
    )
    .sample("rebeam_node_processes", &l, rt.process_count() as f64);
    e.family(
        "rebeam_node_incarnation",
        "gauge",
        "The node's current incarnation.",
    )
    .sample("rebeam_node_incarnation", &l, rt.incarnation() as f64);
    e.family(
        "rebeam_node_lease_held",
        "gauge",
        "1 while the node holds its cluster lease (may run process code).",
    )
    .sample(
        "rebeam_node_lease_held",
        &l,
        f64::from(u8::from(rt.lease_ok())),
    );
    let st = &crate::runtime::stats::STATS;
    for (name, help, value) in [
        (
            "rebeam_messages_delivered_total",
            "Messages put in a local mailbox.",
            st.delivered.get(),
        ),
        (
            "rebeam_messages_routed_total",
            "Messages handed to a peer link for another node.",
            st.routed.get(),
        ),
        (
            "rebeam_messages_dropped_total",
            "Messages dropped: target dead or unreachable.",
            st.dropped.get(),
        ),
        (
            "rebeam_spawns_total",
            "Processes spawned.",
            st.spawned.get(),
        ),
        (
            "rebeam_crashes_total",
            "Processes that ended with an uncaught exception.",
            st.crashed.get(),
        ),
        (
            "rebeam_exits_total",
            "Processes that ended, whatever the reason.",
            st.exited.get(),
        ),
        (
            "rebeam_mailbox_limit_kills_total",
            "Processes killed because a delivery would have passed their mailbox limit.",
            st.mailbox_limit.get(),
        ),
        (
            "rebeam_memory_guard_actions_total",
            "Times the memory guard ended an app's processes on this node.",
            st.memory_guard.get(),
        ),
    ] {
        e.family(name, "counter", help)
            .sample(name, &l, value as f64);
    }
    if let Some(cluster) = rt.host.cluster.get() {
        e.family(
            "rebeam_peer_frames_dropped_total",
            "counter",
            "Frames dropped because a peer link's queue was full.",
        )
        .sample(
            "rebeam_peer_frames_dropped_total",
            &l,
            cluster.dropped.load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
    }
    e
}
