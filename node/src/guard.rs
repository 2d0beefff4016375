//! The node's memory guard: when the node's resident memory passes a set fraction of its
//! limit, the app whose processes hold the most queued message bytes here loses its
//! processes on this node (reason `memory_guard`) before the kernel kills the whole node
//! and every innocent app with it. Its supervisors (and the controller, for top-level
//! children) then decide, as for any other exit.

use crate::python::PyRuntime;
use crate::runtime::Reason;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the guard reads the node's resident memory.
const INTERVAL: Duration = Duration::from_millis(100);

/// The guard's settings.
#[derive(Clone, Copy, Debug)]
pub struct MemoryGuard {
    /// The memory the node may use, in bytes.
    pub limit: u64,
    /// The fraction of `limit` past which the guard acts (0 turns it off).
    pub fraction: f64,
}

impl MemoryGuard {
    /// The resident size past which the guard acts; `None` when it is off.
    pub fn threshold(&self) -> Option<u64> {
        (self.fraction > 0.0 && self.limit > 0)
            .then_some((self.limit as f64 * self.fraction) as u64)
    }
}

/// The memory this node may use when not told: its cgroup's `memory.max` if one is set,
/// else the machine's memory.
pub fn default_limit() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    cgroup.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    })
}

/// This process's resident set size in bytes (0 when /proc cannot be read).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Queued message bytes per app on this node, largest first.
pub fn mailbox_bytes_by_app(rt: &PyRuntime) -> Vec<(String, u64)> {
    let mut by_app: HashMap<String, u64> = HashMap::new();
    for p in rt.processes() {
        let Some(app) = p.data.app.as_ref() else {
            continue;
        };
        let bytes = p.lock().queued_bytes as u64;
        *by_app.entry(app.name.clone()).or_default() += bytes;
    }
    let mut apps: Vec<_> = by_app.into_iter().collect();
    apps.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    apps
}

/// Starts the guard's thread; it runs for the life of the node.
pub fn start(rt: Arc<PyRuntime>, guard: MemoryGuard) {
    let Some(threshold) = guard.threshold() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("rebeam-memguard".into())
        .spawn(move || {
            let mut quiet_until = std::time::Instant::now();
            loop {
                std::thread::sleep(INTERVAL);
                let rss = resident_bytes();
                if rss <= threshold || std::time::Instant::now() < quiet_until {
                    continue;
                }
                // After acting (or finding no culprit), give freed memory time to show:
                // an allocator may keep pages a while, and the guard must not take that
                // for a second offender.
                quiet_until = std::time::Instant::now() + act(&rt, rss, threshold);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the memory guard");
    }
}

/// The node is past its threshold: the app holding the most queued bytes loses its
/// processes here, if it holds at least 1/16 of the threshold (a culprit, not a bystander
/// with a few messages queued). Returns how long to wait before looking again.
fn act(rt: &PyRuntime, rss: u64, threshold: u64) -> Duration {
    let apps = mailbox_bytes_by_app(rt);
    let Some((app, bytes)) = apps.first().filter(|(_, b)| *b >= threshold / 16).cloned() else {
        tracing::warn!(
            rss,
            threshold,
            "node memory past the guard's threshold, but no app holds many queued messages"
        );
        return Duration::from_secs(2);
    };
    tracing::error!(
        app = %app,
        queued_bytes = bytes,
        rss,
        threshold,
        "memory guard: node memory past its threshold; the app holding the most queued \
         messages loses its processes on this node (memory_guard)"
    );
    crate::runtime::stats::STATS.memory_guard.inc();
    for p in rt.processes() {
        if p.data.app.as_ref().is_some_and(|a| a.name == app) {
            rt.terminate(&p, Reason::MemoryGuard);
        }
    }
    Duration::from_secs(1)
}
