//! Controller benchmarks on three real `rebeam-controller` processes on loopback.
//!
//! Measures: registrations/s sustained with concurrent clients, lookup latency, time from a
//! leader kill -9 to the first acknowledged write, and time from a node's last heartbeat (or
//! its crash) to its top-level child being reassigned. Run a release build:
//! `cargo run --release -p rebeam-controller-bench` (needs `rebeam-controller` built beside it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use parking_lot::Mutex;
use rebeam_proto::v1 as pb;
use rebeam_testkit::{app_archive, sibling, Client, ControllerGroup, GroupOptions};

/// Three members started with `BENCH_CONTROLLER_ARGS` (to explore timings, e.g.
/// "--election-timeout-ms 100") and quiet logs.
type Cluster = ControllerGroup;

fn start_cluster() -> anyhow::Result<Cluster> {
    let mut opts = GroupOptions::new(sibling("rebeam-controller")?, "bench-secret");
    opts.extra = std::env::var("BENCH_CONTROLLER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    opts.log_filter = "warn".into();
    opts.dir_prefix = "rebeam-ctl-bench-".into();
    ControllerGroup::start(3, opts)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn join(c: &Cluster, node: &str, labels: &[(&str, &str)]) -> anyhow::Result<u64> {
    let req = pb::JoinRequest {
        node: node.into(),
        address: "127.0.0.1:9".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = c
        .on_leader(deadline, Duration::from_secs(3), |i| {
            let req = req.clone();
            async move { c.control_node_client(i).join(req).await }
        })
        .await?;
    Ok(reply.incarnation)
}

/// Submits an app to the leader, following leader changes.
async fn submit(c: &Cluster, manifest_toml: String) -> anyhow::Result<()> {
    let req = pb::SubmitAppRequest {
        code: app_archive(&manifest_toml, &[], 0)?,
        manifest_toml,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    c.on_leader(deadline, Duration::from_secs(3), |i| {
        let req = req.clone();
        async move { c.control_client(i).submit_app(req).await }
    })
    .await?;
    Ok(())
}

/// Heartbeats a node to the leader until `stop`; records the last acknowledged heartbeat.
fn heartbeat(
    c: Arc<Cluster>,
    node: String,
    inc: u64,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Option<Instant>>> {
    let last = Arc::new(Mutex::new(None));
    let last2 = last.clone();
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(l) = c.leader(Duration::from_millis(500)).await {
                let mut nc = c.control_node_client(l);
                let req = pb::HeartbeatRequest {
                    node: Some(pb::NodeRef {
                        node: node.clone(),
                        incarnation: inc,
                    }),
                    // The crash rounds hold a watch stream for this node.
                    watching: true,
                    streams_ended: 0,
                    sent_ms: 0,
                    attempt_ms: 0,
                };
                if nc.heartbeat(req).await.is_ok() && !stop.load(Ordering::Relaxed) {
                    *last2.lock() = Some(Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    last
}

/// Registrations sent `batch` at a time per call (`batch` 1 uses the unary RegisterName).
/// Keeps the bench node alive: heartbeats, and rejoins if it was declared dead (counted).
fn keep_bench_node(
    c: Arc<Cluster>,
    inc: Arc<AtomicU64>,
    deaths: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(l) = c.leader(Duration::from_millis(500)).await {
                let mut nc = c.control_node_client(l);
                let node = pb::NodeRef {
                    node: "bench-node".into(),
                    incarnation: inc.load(Ordering::Relaxed),
                };
                let r = nc
                    .heartbeat(pb::HeartbeatRequest {
                        node: Some(node),
                        watching: false,
                        streams_ended: 0,
                        sent_ms: 0,
                        attempt_ms: 0,
                    })
                    .await;
                if r.is_err_and(|e| e.code() == tonic::Code::FailedPrecondition) {
                    deaths.fetch_add(1, Ordering::Relaxed);
                    if let Ok(new) = join(&c, "bench-node", &[]).await {
                        inc.store(new, Ordering::Relaxed);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn bench_registrations(
    c: &Arc<Cluster>,
    inc: Arc<AtomicU64>,
    secs: u64,
    concurrency: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let leader = c.leader(Duration::from_secs(5)).await?;
    let conns: Vec<Client> = (0..8)
        .map(|_| c.client(leader))
        .collect::<anyhow::Result<_>>()?;
    let done = Arc::new(AtomicU64::new(0));
    let serial = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (mut cl, done, serial, stop) = (
            conns[t % conns.len()].clone(),
            done.clone(),
            serial.clone(),
            stop.clone(),
        );
        let (inc, c) = (inc.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reqs: Vec<pb::RegisterNameRequest> = (0..batch)
                    .map(|_| {
                        let s = serial.fetch_add(1, Ordering::Relaxed);
                        pb::RegisterNameRequest {
                            name: format!("bench-{s}"),
                            pid: Some(pb::Pid {
                                node: "bench-node".into(),
                                incarnation: inc.load(Ordering::Relaxed),
                                serial: s,
                            }),
                        }
                    })
                    .collect();
                let failed = if batch == 1 {
                    let req = reqs.into_iter().next().expect("one request");
                    match cl.register_name(req).await {
                        Ok(r) => {
                            if r.get_ref().registered {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            false
                        }
                        Err(_) => true,
                    }
                } else {
                    match cl
                        .register_names(pb::RegisterNamesRequest {
                            registrations: reqs,
                        })
                        .await
                    {
                        Ok(r) => {
                            let ok = r.get_ref().outcomes.iter().filter(|o| o.registered).count();
                            done.fetch_add(ok as u64, Ordering::Relaxed);
                            false
                        }
                        Err(_) => true,
                    }
                };
                if failed {
                    // Leadership may have moved: follow it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if let Ok(l) = c.leader(Duration::from_secs(5)).await {
                        if let Ok(n) = c.client(l) {
                            cl = n;
                        }
                    }
                }
            }
        }));
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_count = done.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let n = done.load(Ordering::Relaxed) - start_count;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(rate)
}

/// The current Raft term as the leader reports it.
async fn term(c: &Cluster) -> u64 {
    match c.leader(Duration::from_secs(5)).await {
        Ok(l) => match c.client(l) {
            Ok(mut cl) => cl
                .status(pb::StatusRequest {})
                .await
                .map(|s| s.get_ref().current_term)
                .unwrap_or(0),
            Err(_) => 0,
        },
        Err(_) => 0,
    }
}

/// Waits until every running member has applied what the leader has.
async fn settle(c: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut applied = Vec::new();
        for i in 0..c.members.len() {
            if c.is_running(i) {
                if let Ok(s) = c.client(i)?.status(pb::StatusRequest {}).await {
                    applied.push(s.get_ref().last_applied_index);
                }
            }
        }
        if applied.len() == c.members.len() && applied.iter().all(|a| *a == applied[0]) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("members did not converge within 60 s")
}

async fn bench_lookups(c: &Cluster, linearizable: bool, n: usize) -> anyhow::Result<Vec<Duration>> {
    settle(c).await?;
    let leader = c.leader(Duration::from_secs(5)).await?;
    let mut cl = c.client(leader)?;
    let mut lat = Vec::with_capacity(n);
    for k in 0..n {
        let req = pb::WhereisRequest {
            name: format!("bench-{}", k + 1),
            linearizable,
            ..Default::default()
        };
        let t = Instant::now();
        cl.whereis(req).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

async fn bench_leader_kill(c: &Cluster, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    for round in 0..rounds {
        settle(c).await?;
        let leader = c.leader(Duration::from_secs(10)).await?;
        c.kill9(leader);
        let killed = Instant::now();
        let mut k = 0u64;
        let mut last_err = String::new();
        'found: loop {
            for i in 0..c.members.len() {
                if !c.is_running(i) {
                    continue;
                }
                k += 1;
                // A join is a write that is valid whatever else happened to the cluster.
                let req = pb::JoinRequest {
                    node: format!("probe-{round}-{k}"),
                    address: "127.0.0.1:9".into(),
                    ..Default::default()
                };
                match c.control_node_client(i).join(req).await {
                    Ok(_) => {
                        out.push(killed.elapsed());
                        break 'found;
                    }
                    Err(e) => last_err = e.message().to_string(),
                }
            }
            if killed.elapsed() > Duration::from_secs(20) {
                bail!("no write succeeded within 20 s of the leader kill; last error: {last_err}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.spawn(leader)?;
        // Let the restarted member catch up before the next round.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if c.client(leader)?
                .status(pb::StatusRequest {})
                .await
                .is_ok_and(|s| s.get_ref().leader_id != 0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    out.sort();
    Ok(out)
}

/// Round `k`: a victim node hosts one child; it goes silent (or crashes), and we time the move.
async fn bench_reassign(
    c: &Arc<Cluster>,
    rounds: usize,
    crash: bool,
) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::new();
    let tag = if crash { "crash" } else { "hang" };
    for k in 0..rounds {
        settle(c).await?;
        let label = format!("{tag}{k}");
        let victim = format!("a-{label}");
        let other = format!("b-{label}");
        let vi = join(c, &victim, &[("round", &label)]).await?;
        let stop_v = Arc::new(AtomicBool::new(false));
        let last = heartbeat(c.clone(), victim.clone(), vi, stop_v.clone());
        let manifest = format!(
            "[app]\nname = \"app-{label}\"\nversion = \"1\"\n[[children]]\nstart = \"m:C\"\nname = \"c\"\nplacement = \"round={label}\"\n"
        );
        submit(c, manifest).await?;
        let oi = join(c, &other, &[("round", &label)]).await?;
        let leader = c.leader(Duration::from_secs(5)).await?;
        let stop_o = Arc::new(AtomicBool::new(false));
        heartbeat(c.clone(), other.clone(), oi, stop_o.clone());
        let mut watch = c
            .control_node_client(leader)
            .watch(pb::WatchRequest {
                node: Some(pb::NodeRef {
                    node: victim.clone(),
                    incarnation: vi,
                }),
                ..Default::default()
            })
            .await?
            .into_inner();
        watch.message().await?;
        while last.lock().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop_v.store(true, Ordering::Relaxed);
        let crashed_at = Instant::now();
        if crash {
            drop(watch);
        }
        let app = format!("app-{label}");
        let moved = loop {
            let l = c.leader(Duration::from_secs(5)).await?;
            let s = c
                .client(l)?
                .cluster_state(pb::ClusterStateRequest {})
                .await?
                .into_inner();
            if s.assignments
                .iter()
                .any(|a| a.app == app && a.node == other)
            {
                break Instant::now();
            }
            if crashed_at.elapsed() > Duration::from_secs(20) {
                bail!("child of {app} not reassigned within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let from = if crash {
            crashed_at
        } else {
            last.lock().unwrap_or(crashed_at)
        };
        out.push(moved - from);
        stop_o.store(true, Ordering::Relaxed);
    }
    out.sort();
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let conc: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let c = Arc::new(start_cluster()?);
    c.leader(Duration::from_secs(15)).await?;
    let inc = Arc::new(AtomicU64::new(join(&c, "bench-node", &[]).await?));
    let stop = Arc::new(AtomicBool::new(false));
    let deaths = Arc::new(AtomicU64::new(0));
    keep_bench_node(c.clone(), inc.clone(), deaths.clone(), stop.clone());

    println!(
        "controller benchmarks: 3 members on loopback, default timings {}",
        std::env::var("BENCH_CONTROLLER_ARGS").unwrap_or_default()
    );
    let term0 = term(&c).await;
    let rate = bench_registrations(&c, inc.clone(), secs, conc, 1).await?;
    println!("registrations/s sustained, unary RegisterName ({conc} concurrent clients, {secs} s): {rate:.0}");
    let rate = bench_registrations(&c, inc.clone(), secs, 32, 100).await?;
    println!("registrations/s sustained, RegisterNames of 100 (32 concurrent clients, {secs} s): {rate:.0}");
    println!(
        "leader elections during the registration runs: {}",
        term(&c).await - term0
    );
    for lin in [false, true] {
        let lat = bench_lookups(&c, lin, 2000).await?;
        println!(
            "whereis latency (linearizable={lin}, sequential, leader): p50 {} p99 {}",
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.99))
        );
    }
    let kill = bench_leader_kill(&c, rounds).await?;
    println!(
        "leader kill -9 -> first acknowledged write ({rounds} rounds): median {} min {} max {}",
        ms(pct(&kill, 0.5)),
        ms(kill[0]),
        ms(kill[kill.len() - 1])
    );
    let hang = bench_reassign(&c, rounds, false).await?;
    println!(
        "node's last heartbeat -> child reassigned, node silent ({rounds} rounds): median {} min {} max {}",
        ms(pct(&hang, 0.5)),
        ms(hang[0]),
        ms(hang[hang.len() - 1])
    );
    let crash = bench_reassign(&c, rounds, true).await?;
    println!(
        "node crash (stream closed) -> child reassigned ({rounds} rounds): median {} min {} max {}",
        ms(pct(&crash, 0.5)),
        ms(crash[0]),
        ms(crash[crash.len() - 1])
    );
    println!(
        "bench node declared dead (missed its 1 s lease under load) and rejoined: {} times",
        deaths.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    Ok(())
}
