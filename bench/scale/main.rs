//! Scale harness (issue 16): many simulated nodes against a real 3-member controller group.
//!
//! Each simulated node is what a real node is to the controllers, without Python: it joins,
//! renews its lease every heartbeat through whichever member leads, and follows its watch
//! stream (the full view, then every change). Real `rebeam-node` processes can run beside
//! them (`--real-nodes`). Measured: lease renewals/s, watch fan-out latency (a name
//! registered → seen by every node), registry writes/s with many names held, time to detect
//! a dead node and reassign its child, controller memory, snapshot size and time, and leader
//! failover under that load. `make bench-scale`; `--check` fails the run when a healthy node
//! was declared dead or went a fence without a renewal, or a probe did not reach every node.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use parking_lot::Mutex;
use rebeam_grpc::Leaders;
use rebeam_proto::v1 as pb;
use rebeam_testkit::{app_archive, sibling, Client, ControllerGroup, GroupOptions, NodeClient};
use serde_json::json;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

const SECRET: &str = "scale-bench-secret";

#[derive(Parser, Debug)]
#[command(about = "Simulated nodes against a real 3-member controller group")]
struct Args {
    /// Simulated nodes (lease and watch clients).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Global names registered before the write measurements.
    #[arg(long, default_value_t = 100_000)]
    names: usize,
    /// Seconds of each throughput measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent registry writers (one connection each).
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Names registered per call in the batched write measurement (as a node batches its
    /// processes' concurrent registrations).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Watch fan-out probes (one name each, registered one after the other).
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Real `rebeam-node` processes started beside the simulated ones.
    #[arg(long, default_value_t = 2)]
    real_nodes: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Exit non-zero when a healthy node was declared dead or went a fence without renewal,
    /// or a probe did not reach every watching node.
    #[arg(long)]
    check: bool,
    /// Simulated nodes ask for one watch message per change, as nodes did before batched
    /// watch streams (`WatchRequest.batched`), to compare the two.
    #[arg(long)]
    unbatched: bool,
    /// Decode every batched change, as a real node does (the default counts most of them
    /// without decoding: see `scan`).
    #[arg(long)]
    decode_all: bool,
    /// Simulated nodes cache every global name (every name change goes to every node), as
    /// nodes did before they followed only the names they use (`WatchRequest.followed_names`),
    /// to compare the two.
    #[arg(long)]
    all_names: bool,
    /// Nice value of the simulated nodes' renewal threads (negative needs CAP_SYS_NICE, as
    /// root has; 0 leaves them as every other thread): 1,000 nodes renew from 1,000 machines,
    /// not from the CPU this harness shares with the controllers and its own watch decoding.
    #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
    renewals_nice: i32,
}

/// Every batched change is decoded (`--decode-all`).
static DECODE_ALL: AtomicBool = AtomicBool::new(false);

/// Simulated nodes ask for batched watch streams (`--unbatched` clears it).
static BATCHED: AtomicBool = AtomicBool::new(true);

/// Simulated nodes follow only the probe names (and those their processes hold), as real
/// nodes follow the names they look up (`--all-names` clears it).
static FOLLOWED_NAMES: AtomicBool = AtomicBool::new(true);

/// How many probe names the simulated nodes follow (`--probes`).
static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Three real controller processes (the shared harness), logging at `SCALE_CONTROLLER_LOG`.
type Cluster = ControllerGroup;

/// Kills the members when the run ends, whichever way: tasks on the renewals runtime (a
/// static) keep the group's `Arc` alive past `main`, so its own drop never ran and every
/// run left its three controllers behind.
struct KillOnExit(Arc<Cluster>);

impl Drop for KillOnExit {
    fn drop(&mut self) {
        self.0.kill_all();
    }
}

fn start_cluster() -> anyhow::Result<Cluster> {
    let mut opts = GroupOptions::new(sibling("rebeam-controller")?, SECRET);
    opts.log_filter = std::env::var("SCALE_CONTROLLER_LOG").unwrap_or_else(|_| "warn".into());
    opts.dir_prefix = "rebeam-scale-".into();
    // Each simulated node holds two connections per member (its watch stream and joins on
    // one, its renewals on another runtime's), twice what a real node holds: 1,000 of them
    // pass the default cap of 1,024 connections, which refused them mid-join.
    opts.extra = vec!["--max-connections".into(), "16384".into()];
    ControllerGroup::start(3, opts)
}

fn node_client(ch: Channel) -> NodeClient {
    rebeam_testkit::node_client(ch, SECRET)
}

fn cluster_client(ch: Channel) -> Client {
    rebeam_testkit::cluster_client(ch, SECRET)
}

/// A party's own connections to the members and how it follows their leader: the one
/// policy of real nodes ([`Leaders`]: the hint followed, a member that failed skipped for
/// the round, pauses doubling with jitter between rounds). An earlier policy here retried
/// every 10 ms: 1,000 simulated nodes then sent some 600,000 requests a second at the
/// surviving members while they elected a leader, which no real node does.
struct Route {
    leaders: Leaders,
    addrs: Vec<String>,
    chans: Vec<Channel>,
}

impl Route {
    /// Follows the leader's API address (joins, watch streams, registry writes).
    fn api(c: &Cluster) -> anyhow::Result<Route> {
        let addrs: Vec<String> = c.members.iter().map(|m| m.api.to_string()).collect();
        Ok(Route {
            leaders: Leaders::new(addrs.clone()),
            addrs,
            chans: c.channels()?,
        })
    }

    /// Follows the leader's lease address (renewals), starting at `lease`, the one the
    /// join gave. Its channels are driven by the runtime this is made on.
    fn renewals(c: &Cluster, lease: &str) -> anyhow::Result<Route> {
        let addrs: Vec<String> = c.members.iter().map(|m| m.lease.to_string()).collect();
        let leaders = Leaders::for_renewals(addrs.clone());
        if !lease.is_empty() {
            leaders.lead_to(lease.to_string());
        }
        Ok(Route {
            leaders,
            addrs,
            chans: c.lease_channels()?,
        })
    }

    /// Runs `f` on the leader until `deadline`, each attempt bounded by `attempt`.
    async fn call<T, F, Fut>(&self, deadline: Instant, attempt: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let f = &f;
        self.leaders
            .follow(deadline, attempt, |a| {
                let call = self
                    .addrs
                    .iter()
                    .position(|x| x == a)
                    .map(|i| f(self.chans[i].clone()));
                let a = a.to_string();
                async move {
                    match call {
                        Some(call) => call.await.map(tonic::Response::into_inner),
                        None => Err(Status::unavailable(format!("no member at {a}"))),
                    }
                }
            })
            .await
            .map(|(t, _)| t)
    }
}

#[derive(Default)]
struct Stats {
    renewals: AtomicU64,
    renew_failures: AtomicU64,
    declared_dead: AtomicU64,
    fence_gaps: AtomicU64,
    max_gap_ms: AtomicU64,
    /// When the leader was killed, and each node's renewal gap across that moment (ms).
    killed_at: Mutex<Option<Instant>>,
    /// (gap, first renewal's send after the kill), in ms.
    gaps_over_kill: Mutex<Vec<(f64, f64)>>,
    events: AtomicU64,
    lagged: AtomicU64,
    reopened: AtomicU64,
    full_views: AtomicU64,
    /// Why renewal attempts failed (code and the start of the message), to tell a refusing
    /// leader from a slow one.
    renew_errors: Mutex<HashMap<String, u64>>,
    /// Why single renewal attempts failed (each retry counted), to see what a node meets on
    /// its way to a new leader.
    attempt_errors: Mutex<HashMap<String, u64>>,
    probes: Mutex<HashMap<String, Vec<Instant>>>,
    dead_seen: Mutex<HashMap<String, Instant>>,
    assigned: Mutex<Vec<(String, Instant)>>,
}

/// One simulated node.
struct Sim {
    name: String,
    incarnation: u64,
    heartbeat: Duration,
    fence: Duration,
    /// Where the join said renewals go (the leader's lease address).
    lease: String,
    api: Route,
    last_ok: Mutex<Instant>,
    /// Stops renewing (a silent node, its stream still open).
    silent: AtomicBool,
    /// Its watch stream is open (said with each renewal, as a real node does).
    watching: AtomicBool,
    /// Breaks of its watch stream, and how many of them a successful renewal has told the
    /// controller about: it says "watching" only once every break was told, as a real node
    /// does (a renewal saying "watching" after an untold break would undo nothing, and the
    /// stream close would cut the lease of a node that never fenced).
    breaks: AtomicU64,
    told: AtomicU64,
    /// The number of its latest attempt to open a watch stream, and whether that one is
    /// over (it ended or was given up): each renewal says the highest stream number that
    /// is over, as a real node does.
    streams_asked: AtomicU64,
    latest_over: AtomicBool,
    /// The stream broke: renew at once, as a real node does.
    renew_now: tokio::sync::Notify,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Sim {
    fn node_ref(&self) -> pb::NodeRef {
        pb::NodeRef {
            node: self.name.clone(),
            incarnation: self.incarnation,
        }
    }

    fn pid(&self, serial: u64) -> pb::Pid {
        pb::Pid {
            node: self.name.clone(),
            incarnation: self.incarnation,
            serial,
        }
    }

    /// Numbers the next attempt to open a watch stream.
    fn next_stream(&self) -> u64 {
        self.latest_over.store(false, Ordering::SeqCst);
        self.streams_asked.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The highest stream number that is over for this node (as `rebeam-node` says it).
    fn streams_ended(&self) -> u64 {
        let asked = self.streams_asked.load(Ordering::SeqCst);
        if self.latest_over.load(Ordering::SeqCst) {
            asked
        } else {
            asked.saturating_sub(1)
        }
    }

    /// A crash: no more renewals, the watch stream closes.
    fn crash(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

async fn join(c: &Arc<Cluster>, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Arc<Sim>> {
    let api = Route::api(c)?;
    let req = pb::JoinRequest {
        node: name.into(),
        address: "127.0.0.1:9".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: 0,
    };
    let r = api
        .call(
            Instant::now() + Duration::from_secs(30),
            Duration::from_secs(5),
            |ch| {
                let req = req.clone();
                async move { node_client(ch).join(req).await }
            },
        )
        .await
        .with_context(|| format!("joining {name}"))?;
    Ok(Arc::new(Sim {
        name: name.into(),
        incarnation: r.incarnation,
        heartbeat: Duration::from_millis(r.heartbeat_ms.max(10)),
        fence: Duration::from_millis(r.fence_ms.max(50)),
        lease: r.lease_address,
        api,
        last_ok: Mutex::new(Instant::now()),
        silent: AtomicBool::new(false),
        watching: AtomicBool::new(false),
        breaks: AtomicU64::new(0),
        told: AtomicU64::new(0),
        streams_asked: AtomicU64::new(0),
        latest_over: AtomicBool::new(false),
        renew_now: tokio::sync::Notify::new(),
        tasks: Mutex::new(Vec::new()),
    }))
}

/// Nice value of the renewal threads (`--renewals-nice`), set once before they start.
static RENEWALS_NICE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// Renewal threads that could not take that nice value (no privilege to raise priority).
static NICE_REFUSED: AtomicU64 = AtomicU64::new(0);

/// The runtime the simulated nodes' renewals run on, apart from their watch streams and the
/// writers: a real node renews from its own process, so the CPU this harness spends decoding
/// a hundred nodes' watch streams must not delay renewals and pass for a slow controller.
/// Its threads run at `--renewals-nice`: measured at 1,000 nodes on the shared 2 cores, they
/// waited for a CPU 90 % of the time they were runnable (schedstat), up to a second at a
/// stretch, like every other thread on the box, while 1,000 real nodes would each renew from
/// a machine of their own.
fn renewals_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("renewals")
            .on_thread_start(|| {
                let nice = RENEWALS_NICE.load(Ordering::Relaxed);
                // SAFETY: setpriority only reads its arguments; `who` 0 is the calling thread.
                if nice != 0 && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
                    NICE_REFUSED.fetch_add(1, Ordering::Relaxed);
                }
            })
            .enable_all()
            .build()
            .expect("a runtime for renewals")
    })
}

/// Milliseconds of this process's monotonic clock (`HeartbeatRequest.sent_ms`; never 0).
fn monotonic_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn start_sim(c: &Arc<Cluster>, s: &Arc<Sim>, st: &Arc<Stats>, watch: bool) {
    let mut tasks = vec![renewals_runtime().spawn(heartbeats(c.clone(), s.clone(), st.clone()))];
    if watch {
        tasks.push(tokio::spawn(follow(s.clone(), st.clone())));
    }
    s.tasks.lock().extend(tasks);
}

async fn heartbeats(c: Arc<Cluster>, s: Arc<Sim>, st: Arc<Stats>) {
    // Channels of this runtime (a channel's connection is driven where it was made), to the
    // members' lease listeners, as a real node renews (a redirect names the leader's API
    // address, which the harness maps to that member's index).
    let Ok(route) = Route::renewals(&c, &s.lease) else {
        return;
    };
    let mut tick = tokio::time::interval(s.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let attempt = rebeam_grpc::renewal_attempt(s.fence);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = s.renew_now.notified() => {}
        }
        if s.silent.load(Ordering::Relaxed) {
            continue;
        }
        let breaks = s.breaks.load(Ordering::SeqCst);
        let req = pb::HeartbeatRequest {
            node: Some(s.node_ref()),
            watching: s.watching.load(Ordering::SeqCst) && s.told.load(Ordering::SeqCst) == breaks,
            streams_ended: s.streams_ended(),
            sent_ms: 0,
            attempt_ms: attempt.as_millis() as u64,
        };
        let deadline = *s.last_ok.lock() + s.fence;
        let tried = Mutex::new(Instant::now());
        let r = route
            .call(deadline.max(Instant::now() + attempt), attempt, |ch| {
                let mut req = req.clone();
                // Stamped per attempt, as a real node does: the leader measures how late it serves.
                req.sent_ms = monotonic_ms();
                *tried.lock() = Instant::now();
                let st = st.clone();
                async move {
                    let r = node_client(ch).heartbeat(req).await;
                    if let Err(e) = &r {
                        let why: String = format!("{:?}: {}", e.code(), e.message())
                            .chars()
                            .take(60)
                            .collect();
                        *st.attempt_errors.lock().entry(why).or_default() += 1;
                    }
                    r
                }
            })
            .await;
        match r {
            Ok(_) => {
                // The lease counts from the send of the attempt that succeeded, as a real
                // node counts it (not from the first attempt: retries take time).
                let sent = *tried.lock();
                s.told.fetch_max(breaks, Ordering::SeqCst);
                st.renewals.fetch_add(1, Ordering::Relaxed);
                let mut last = s.last_ok.lock();
                let gap = sent.saturating_duration_since(*last);
                if gap > s.fence {
                    st.fence_gaps.fetch_add(1, Ordering::Relaxed);
                }
                st.max_gap_ms
                    .fetch_max(gap.as_millis() as u64, Ordering::Relaxed);
                if let Some(k) = (*st.killed_at.lock()).filter(|k| *last < *k && *k <= sent) {
                    st.gaps_over_kill.lock().push((ms(gap), ms(sent - k)));
                }
                *last = sent;
            }
            Err(e) if matches!(e.code(), Code::FailedPrecondition | Code::NotFound) => {
                st.declared_dead.fetch_add(1, Ordering::Relaxed);
                eprintln!("{} declared dead: {}", s.name, e.message());
                return;
            }
            Err(e) => {
                st.renew_failures.fetch_add(1, Ordering::Relaxed);
                let why: String = format!("{:?}: {}", e.code(), e.message())
                    .chars()
                    .take(60)
                    .collect();
                *st.renew_errors.lock().entry(why).or_default() += 1;
            }
        }
    }
}

async fn follow(s: Arc<Sim>, st: Arc<Stats>) {
    // Where the node's view stands (resumed there after a break, as a real node does).
    let mut position: Option<u64> = None;
    let mut mid_view = false;
    loop {
        if mid_view {
            position = None;
            mid_view = false;
        }
        let req = pb::WatchRequest {
            node: Some(s.node_ref()),
            resume_from: position.unwrap_or(0),
            stream: 0,
            batched: BATCHED.load(Ordering::Relaxed),
            followed_names: FOLLOWED_NAMES.load(Ordering::Relaxed),
            follow: (0..PROBES.load(Ordering::Relaxed))
                .map(|p| format!("probe-{p}"))
                .collect(),
        };
        let opened = s
            .api
            .call(
                Instant::now() + Duration::from_secs(10),
                Duration::from_secs(2),
                |ch| {
                    let mut req = req.clone();
                    req.stream = s.next_stream();
                    async move { node_client(ch).watch(req).await }
                },
            )
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) if e.code() == Code::FailedPrecondition => return,
            Err(_) => {
                s.latest_over.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        s.watching.store(true, Ordering::SeqCst);
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    match &ev.event {
                        Some(pb::watch_event::Event::Snapshot(v)) => {
                            mid_view = !v.last;
                            position = v.last.then_some(ev.log_index);
                            if v.last {
                                st.full_views.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ if !mid_view => {
                            position = Some(position.unwrap_or(0).max(ev.log_index));
                        }
                        _ => {}
                    }
                    if let Some(pb::watch_event::Event::Changes(bytes)) = &ev.event {
                        if !scan(&s, &st, bytes) {
                            eprintln!("{}: undecodable batch of changes", s.name);
                            position = None;
                            break;
                        }
                        continue;
                    }
                    seen(&s, &st, ev)
                }
                Ok(None) => break,
                Err(e) => {
                    if e.code() == Code::ResourceExhausted {
                        st.lagged.fetch_add(1, Ordering::Relaxed);
                    }
                    if e.code() == Code::FailedPrecondition {
                        return;
                    }
                    break;
                }
            }
        }
        s.watching.store(false, Ordering::SeqCst);
        s.latest_over.store(true, Ordering::SeqCst);
        s.breaks.fetch_add(1, Ordering::SeqCst);
        s.renew_now.notify_one();
        st.reopened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Takes a batch of changes (an encoded `WatchChanges`): counts them all and hands `seen`
/// those it looks at (node changes, assignments, probe names), without decoding the rest
/// unless `--decode-all`. This process plays every node on the controllers' own cores:
/// decoding each change once per simulated node (a real node decodes only its own stream,
/// on its own machine) took most of the CPU at 1,000 nodes and starved the controllers.
/// False when the bytes do not parse.
fn scan(s: &Sim, st: &Stats, mut buf: &[u8]) -> bool {
    use prost::encoding::{decode_key, decode_varint};
    use prost::Message;
    let decode_all = DECODE_ALL.load(Ordering::Relaxed);
    while !buf.is_empty() {
        let Ok((_, _)) = decode_key(&mut buf) else {
            return false;
        };
        let Ok(len) = decode_varint(&mut buf) else {
            return false;
        };
        let len = len as usize;
        if len > buf.len() {
            return false;
        }
        let (entry, rest) = buf.split_at(len);
        buf = rest;
        // The event's field number: the first key after the log index (field 1, a varint).
        let mut e = entry;
        let mut field = 0;
        while let Ok((f, _)) = decode_key(&mut e) {
            if f != 1 {
                field = f;
                break;
            }
            if decode_varint(&mut e).is_err() {
                return false;
            }
        }
        let looked_at = match field {
            3 | 8 => true,
            4 => entry.windows(6).any(|w| w == b"probe-"),
            _ => false,
        };
        if decode_all || looked_at {
            let Ok(ev) = pb::WatchEvent::decode(entry) else {
                return false;
            };
            seen(s, st, ev);
        } else {
            st.events.fetch_add(1, Ordering::Relaxed);
        }
    }
    true
}

fn seen(s: &Sim, st: &Stats, ev: pb::WatchEvent) {
    use pb::watch_event::Event;
    let now = Instant::now();
    st.events.fetch_add(1, Ordering::Relaxed);
    match ev.event {
        Some(Event::NameRegistered(n)) if n.name.starts_with("probe-") => {
            st.probes.lock().entry(n.name).or_default().push(now);
        }
        Some(Event::NodeChanged(n)) if n.status != pb::NodeStatus::Alive as i32 => {
            st.dead_seen.lock().entry(n.id).or_insert(now);
        }
        Some(Event::Assignment(_)) => st.assigned.lock().push((s.name.clone(), now)),
        Some(Event::Snapshot(v)) if !v.assignments.is_empty() => {
            st.assigned.lock().push((s.name.clone(), now))
        }
        _ => {}
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return f64::NAN };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(f64::NAN)
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counters of the simulated nodes, to report a phase's share.
fn counters(st: &Stats) -> [u64; 6] {
    [
        st.renewals.load(Ordering::Relaxed),
        st.renew_failures.load(Ordering::Relaxed),
        st.declared_dead.load(Ordering::Relaxed),
        st.fence_gaps.load(Ordering::Relaxed),
        st.lagged.load(Ordering::Relaxed),
        st.events.load(Ordering::Relaxed),
    ]
}

fn delta(a: [u64; 6], b: [u64; 6], secs: f64) -> serde_json::Value {
    json!({
        "renewals_per_s": ((b[0] - a[0]) as f64 / secs).round(),
        "renewal_failures": b[1] - a[1],
        "declared_dead": b[2] - a[2],
        "fence_gaps": b[3] - a[3],
        "watch_lagged": b[4] - a[4],
        "watch_events_per_s": ((b[5] - a[5]) as f64 / secs).round(),
    })
}

/// Registers and releases names as fast as `writers` concurrent callers can, for `secs`;
/// with `batch` > 1 each call registers that many fresh names at once.
async fn write_load(
    c: &Arc<Cluster>,
    owners: &[Arc<Sim>],
    writers: usize,
    batch: usize,
    secs: Duration,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<(Instant, Instant)>>>,
) -> anyhow::Result<(u64, u64)> {
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + secs;
    let mut set = JoinSet::new();
    for w in 0..writers {
        let c = c.clone();
        let owner = owners[w % owners.len()].clone();
        let (acked, failed, stop, acks) =
            (acked.clone(), failed.clone(), stop.clone(), acks.clone());
        let route = Route::api(&c)?;
        set.spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let pid = owner.pid(1_000_000 + w as u64);
                let deadline = Instant::now() + Duration::from_secs(10);
                let attempt = Duration::from_secs(1);
                let ok = if batch > 1 {
                    let req = pb::RegisterNamesRequest {
                        registrations: (0..batch)
                            .map(|k| pb::RegisterNameRequest {
                                name: format!("b-{w}-{i}-{k}"),
                                pid: Some(pid.clone()),
                            })
                            .collect(),
                    };
                    route
                        .call(deadline, attempt, |ch| {
                            let req = req.clone();
                            async move { cluster_client(ch).register_names(req).await }
                        })
                        .await
                        .map(|r| r.outcomes.iter().filter(|o| o.registered).count() as u64)
                } else {
                    let name = format!("w-{w}-{i}");
                    let req = pb::RegisterNameRequest {
                        name: name.clone(),
                        pid: Some(pid.clone()),
                    };
                    let reg = route
                        .call(deadline, attempt, |ch| {
                            let req = req.clone();
                            async move { cluster_client(ch).register_name(req).await }
                        })
                        .await;
                    let un = pb::UnregisterNameRequest {
                        name,
                        pid: Some(pid.clone()),
                    };
                    match reg {
                        Ok(_) => route
                            .call(deadline, attempt, |ch| {
                                let un = un.clone();
                                async move { cluster_client(ch).unregister_name(un).await }
                            })
                            .await
                            .map(|_| 2),
                        Err(e) => Err(e),
                    }
                };
                match ok {
                    Ok(n) => {
                        acked.fetch_add(n, Ordering::Relaxed);
                        // When an acknowledged write was sent and acknowledged: the first
                        // one sent after a fault shows when the group took writes again.
                        acks.lock().push((sent, Instant::now()));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok((
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    ))
}

async fn submit(control: &Route, manifest_toml: String) -> anyhow::Result<()> {
    let req = pb::SubmitAppRequest {
        code: app_archive(&manifest_toml, &[], 0)?,
        manifest_toml,
    };
    control
        .call(
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(5),
            |ch| {
                let req = req.clone();
                async move { cluster_client(ch).submit_app(req).await }
            },
        )
        .await?;
    Ok(())
}

async fn wait_until<F: Fn() -> bool>(what: &str, timeout: Duration, f: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// A node crashes (stream closed) or goes silent (stream open, no renewals); times how long
/// until every... the others see it dead and its child is assigned to another node.
async fn dead_node(
    st: &Arc<Stats>,
    holder: &Arc<Sim>,
    crash: bool,
) -> anyhow::Result<serde_json::Value> {
    let before = st.assigned.lock().len();
    let t0 = Instant::now();
    if crash {
        holder.crash();
    } else {
        holder.silent.store(true, Ordering::Relaxed);
    }
    wait_until("node seen dead", Duration::from_secs(20), || {
        st.dead_seen.lock().contains_key(&holder.name)
    })
    .await?;
    let dead_at = st.dead_seen.lock()[&holder.name];
    wait_until("child reassigned", Duration::from_secs(20), || {
        st.assigned.lock()[before..]
            .iter()
            .any(|(n, _)| *n != holder.name)
    })
    .await?;
    let moved = st.assigned.lock()[before..]
        .iter()
        .find(|(n, _)| *n != holder.name)
        .map(|(_, t)| *t)
        .unwrap_or(t0);
    if !crash {
        holder.crash();
    }
    Ok(json!({
        "fault": if crash { "crash (stream closed)" } else { "silent (lease expiry)" },
        "declared_dead_ms": ms(dead_at - t0),
        "child_reassigned_ms": ms(moved - t0),
    }))
}

fn start_real_node(c: &Cluster, i: usize) -> anyhow::Result<Child> {
    let exe = sibling("rebeam-node")?;
    let dir = c.root().join(format!("real-{i}"));
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET)?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    Ok(Command::new(exe)
        .args(["--name", &format!("real-{i}")])
        .args(["--controllers", &c.api_list()])
        .arg("--secret-file")
        .arg(&secret)
        .arg("--data-dir")
        .arg(&dir)
        .env("REBEAM_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut report = serde_json::Map::new();
    let mut problems: Vec<String> = Vec::new();
    report.insert("loadavg_start".into(), json!(loadavg()));
    BATCHED.store(!a.unbatched, Ordering::Relaxed);
    FOLLOWED_NAMES.store(!a.all_names, Ordering::Relaxed);
    PROBES.store(a.probes, Ordering::Relaxed);
    RENEWALS_NICE.store(a.renewals_nice, Ordering::Relaxed);
    DECODE_ALL.store(a.decode_all, Ordering::Relaxed);
    report.insert("watch_batched".into(), json!(!a.unbatched));
    report.insert("followed_names".into(), json!(!a.all_names));
    report.insert(
        "config".into(),
        json!({"nodes": a.nodes, "names": a.names, "seconds": a.seconds,
               "writers": a.writers, "batch": a.batch, "real_nodes": a.real_nodes,
               "renewals_nice": a.renewals_nice}),
    );
    let c = Arc::new(start_cluster()?);
    let _members = KillOnExit(c.clone());
    c.leader(Duration::from_secs(30)).await?;
    let st = Arc::new(Stats::default());
    let control = Arc::new(Route::api(&c)?);

    // Nodes join, renew and watch.
    let t = Instant::now();
    let mut set = JoinSet::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..a.nodes {
        let (c, gate, st) = (c.clone(), gate.clone(), st.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let s = join(&c, &format!("sim-{i:05}"), &[("role", "sim")]).await?;
            // Renewing from the moment it joined, as a real node does: with many nodes,
            // the first ones would otherwise wait for the last join past their lease.
            start_sim(&c, &s, &st, true);
            anyhow::Ok(s)
        });
    }
    let mut sims = Vec::new();
    while let Some(r) = set.join_next().await {
        sims.push(r??);
    }
    sims.sort_by(|x, y| x.name.cmp(&y.name));
    let mut real = Vec::new();
    for i in 0..a.real_nodes {
        real.push(start_real_node(&c, i)?);
    }
    if NICE_REFUSED.load(Ordering::Relaxed) > 0 {
        println!(
            "renewal threads run at the default priority: nice {} refused (needs CAP_SYS_NICE)",
            a.renewals_nice
        );
        report.insert("renewals_nice_refused".into(), json!(true));
    }
    let joined_s = t.elapsed().as_secs_f64();
    println!("{} nodes joined in {joined_s:.1} s", sims.len());
    report.insert("join_s".into(), json!(joined_s));
    // Every watch delivered its first view.
    wait_until("first views", Duration::from_secs(60), || {
        st.events.load(Ordering::Relaxed) >= sims.len() as u64
    })
    .await?;

    // Steady state: renewals only.
    let secs = Duration::from_secs(a.seconds);
    let c0 = counters(&st);
    tokio::time::sleep(secs).await;
    let idle = delta(c0, counters(&st), secs.as_secs_f64());
    println!("idle: {idle}");
    report.insert("idle".into(), idle);

    // Dead-node detection and reassignment among all the nodes.
    let spares: Vec<Arc<Sim>> = {
        let mut v = Vec::new();
        for k in 0..3 {
            let s = join(&c, &format!("victim-{k}"), &[("role", "victim")]).await?;
            start_sim(&c, &s, &st, true);
            v.push(s);
        }
        v
    };
    submit(
        &control,
        "[app]\nname = \"scale-app\"\nversion = \"1\"\n[[children]]\nstart = \"m:C\"\nname = \"c\"\nplacement = \"role=victim\"\n".into(),
    )
    .await?;
    wait_until("child placed", Duration::from_secs(10), || {
        !st.assigned.lock().is_empty()
    })
    .await?;
    let mut dead = Vec::new();
    for crash in [true, false] {
        let holder = st.assigned.lock().last().map(|(n, _)| n.clone());
        let Some(holder) = holder.and_then(|h| spares.iter().find(|s| s.name == h).cloned()) else {
            bail!("the child is not on a victim node");
        };
        let r = dead_node(&st, &holder, crash).await?;
        println!("dead node: {r}");
        dead.push(r);
    }
    report.insert("dead_node".into(), json!(dead));

    // Names held.
    let t = Instant::now();
    let c0 = counters(&st);
    let mut set = JoinSet::new();
    let per = 1000usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    for chunk in 0..a.names.div_ceil(per) {
        let (gate, owner, control) = (
            gate.clone(),
            sims[chunk % sims.len()].clone(),
            control.clone(),
        );
        let n = per.min(a.names - chunk * per);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let req = pb::RegisterNamesRequest {
                registrations: (0..n)
                    .map(|k| pb::RegisterNameRequest {
                        name: format!("held-{chunk}-{k}"),
                        pid: Some(owner.pid(k as u64 + 1)),
                    })
                    .collect(),
            };
            let r = control
                .call(
                    Instant::now() + Duration::from_secs(30),
                    Duration::from_secs(10),
                    |ch| {
                        let req = req.clone();
                        async move { cluster_client(ch).register_names(req).await }
                    },
                )
                .await?;
            anyhow::Ok(r.outcomes.iter().filter(|o| o.registered).count())
        });
    }
    let mut held = 0;
    while let Some(r) = set.join_next().await {
        held += r??;
    }
    let fill = t.elapsed();
    let fill_phase = delta(c0, counters(&st), fill.as_secs_f64());
    println!(
        "{held} names registered in {:.1} s ({:.0}/s, batches of {per}): {fill_phase}",
        fill.as_secs_f64(),
        held as f64 / fill.as_secs_f64()
    );
    report.insert(
        "names_fill".into(),
        json!({"names": held, "s": fill.as_secs_f64(),
               "per_s": (held as f64 / fill.as_secs_f64()).round(), "nodes": fill_phase}),
    );

    // Watch fan-out: one name registered, seen by every watching node.
    let watchers = sims.len();
    let mut lat = Vec::new();
    let mut all = Vec::new();
    let mut incomplete = 0;
    for p in 0..a.probes {
        let name = format!("probe-{p}");
        let req = pb::RegisterNameRequest {
            name: name.clone(),
            pid: Some(sims[0].pid(999)),
        };
        let t0 = Instant::now();
        control
            .call(t0 + Duration::from_secs(10), Duration::from_secs(5), |ch| {
                let req = req.clone();
                async move { cluster_client(ch).register_name(req).await }
            })
            .await?;
        let done = wait_until("probe seen by every node", Duration::from_secs(10), || {
            st.probes.lock().get(&name).map_or(0, |v| v.len()) >= watchers
        })
        .await;
        if done.is_err() {
            incomplete += 1;
        }
        let seen: Vec<f64> = st
            .probes
            .lock()
            .get(&name)
            .map(|v| v.iter().map(|t| ms(*t - t0)).collect())
            .unwrap_or_default();
        if let Some(m) = seen.iter().cloned().reduce(f64::max) {
            all.push(m);
        }
        lat.extend(seen);
    }
    let fanout = json!({
        "probes": a.probes, "watchers": watchers, "incomplete": incomplete,
        "per_node_ms": {"p50": pct(&mut lat, 0.5), "p99": pct(&mut lat, 0.99)},
        "all_nodes_ms": {"p50": pct(&mut all, 0.5), "p99": pct(&mut all, 0.99), "max": pct(&mut all, 1.0)},
    });
    println!("watch fan-out: {fanout}");
    if incomplete > 0 {
        problems.push(format!("{incomplete} probes did not reach every node"));
    }
    report.insert("fanout".into(), fanout);

    // Registry writes with the names held, one name per call and batched.
    let mut writes = Vec::new();
    for batch in [1, a.batch] {
        let c0 = counters(&st);
        let t = Instant::now();
        let (acked, failed) = write_load(
            &c,
            &sims,
            a.writers,
            batch,
            secs,
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
        )
        .await?;
        let el = t.elapsed().as_secs_f64();
        let nodes = delta(c0, counters(&st), el);
        let r = json!({"names_per_call": batch, "writes": acked, "failed_calls": failed,
                       "writes_per_s": (acked as f64 / el).round(), "nodes": nodes});
        println!("registry writes: {r}");
        writes.push(r);
    }
    report.insert("registry_writes".into(), json!(writes));

    // Memory and snapshot.
    let rss: Vec<f64> = (0..c.members.len()).map(|i| rss_mib(c.pid(i))).collect();
    let l = c.leader(Duration::from_secs(10)).await?;
    let t = Instant::now();
    let snap = c.control_client(l).snapshot(pb::SnapshotRequest {}).await?;
    let snap_s = t.elapsed().as_secs_f64();
    let snap_bytes = dir_bytes(&c.members[l].dir.join("snapshots"));
    let mem = json!({"rss_mib": rss, "snapshot_s": snap_s, "snapshot_bytes": snap_bytes,
                     "snapshot_index": snap.get_ref().snapshot_index,
                     "data_dir_bytes": dir_bytes(&c.members[l].dir)});
    println!("memory and snapshot: {mem}");
    report.insert("controller".into(), mem);

    // Leader failover under load: writers and every node's renewals keep going.
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (c, sims, stop, acks) = (c.clone(), sims.clone(), stop.clone(), acks.clone());
        let writers = a.writers;
        tokio::spawn(async move {
            write_load(&c, &sims, writers, 1, Duration::from_secs(3600), stop, acks).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c0 = counters(&st);
    let old = c.leader(Duration::from_secs(10)).await?;
    let views0 = st.full_views.load(Ordering::Relaxed);
    let reopened0 = st.reopened.load(Ordering::Relaxed);
    // The longest gap between two renewals of one node before the kill, and from the kill
    // on (the margin left to the node fence).
    let gap_before = st.max_gap_ms.swap(0, Ordering::Relaxed);
    st.attempt_errors.lock().clear();
    let t0 = Instant::now();
    *st.killed_at.lock() = Some(t0);
    c.kill9(old);
    let new = c.leader(Duration::from_secs(20)).await?;
    let elected = t0.elapsed();
    wait_until("a write after the kill", Duration::from_secs(20), || {
        acks.lock().iter().any(|(sent, _)| *sent > t0)
    })
    .await?;
    let first_write = acks
        .lock()
        .iter()
        .filter(|(sent, _)| *sent > t0)
        .map(|(_, acked)| *acked - t0)
        .min()
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (_, failed) = load.await??;
    let nodes = delta(c0, counters(&st), t0.elapsed().as_secs_f64());
    let gap_after = st.max_gap_ms.fetch_max(gap_before, Ordering::Relaxed);
    // Every node's renewal gap across the kill: how the whole cluster, not only its
    // slowest node, fared.
    let (mut over, mut after): (Vec<f64>, Vec<f64>) =
        st.gaps_over_kill.lock().iter().copied().unzip();
    let over_kill = json!({"nodes": over.len(), "p50": pct(&mut over, 0.5),
                           "p99": pct(&mut over, 0.99), "max": pct(&mut over, 1.0)});
    let renewed_after = json!({"min": pct(&mut after, 0.0), "p50": pct(&mut after, 0.5),
                               "p99": pct(&mut after, 0.99), "max": pct(&mut after, 1.0)});
    let fo = json!({"killed": c.members[old].id, "new_leader": c.members[new].id,
                    "max_renewal_gap_ms": gap_after, "max_renewal_gap_before_ms": gap_before,
                    "renewal_gap_over_kill_ms": over_kill,
                    "first_renewal_after_kill_ms": renewed_after,
                    "failed_renewal_attempts": json!(st.attempt_errors.lock().clone()),
                    "leader_elected_ms": ms(elected), "first_write_ms": ms(first_write),
                    "failed_write_calls": failed, "nodes": nodes,
                    "watch_reopened": st.reopened.load(Ordering::Relaxed) - reopened0,
                    "full_views_sent": st.full_views.load(Ordering::Relaxed) - views0});
    println!("leader failover under load: {fo}");
    c.spawn(old)?;
    report.insert("failover".into(), fo);

    let dead = st.declared_dead.load(Ordering::Relaxed);
    let gaps = st.fence_gaps.load(Ordering::Relaxed);
    if dead > 0 {
        problems.push(format!("{dead} healthy simulated nodes were declared dead"));
    }
    if gaps > 0 {
        problems.push(format!(
            "{gaps} renewals came more than a fence after the previous one (max gap {} ms)",
            st.max_gap_ms.load(Ordering::Relaxed)
        ));
    }
    for mut r in real {
        let _ = r.kill();
        let _ = r.wait();
    }
    let errors = st.renew_errors.lock().clone();
    if !errors.is_empty() {
        println!("renewal failures by cause: {}", json!(errors));
    }
    report.insert("renewal_failures_by_cause".into(), json!(errors));
    report.insert("loadavg_end".into(), json!(loadavg()));
    report.insert("problems".into(), json!(problems));
    let out = serde_json::Value::Object(report);
    if let Some(p) = &a.out {
        std::fs::write(p, serde_json::to_string_pretty(&out)? + "\n")?;
    }
    for p in &problems {
        println!("PROBLEM {p}");
    }
    if a.check && !problems.is_empty() {
        bail!("{} problems", problems.len());
    }
    Ok(())
}
