//! Lease renewals on a listener and a runtime of their own: nodes learn the leader's lease
//! address at join and from redirects, and renewals there are not queued behind the watch
//! streams that saturate the API runtime.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebeam_controller::{LEADER_METADATA_KEY, LEASE_METADATA_KEY};
use rebeam_proto::v1 as pb;
use support::*;
use tonic::Code;

/// A node-service client of member `i`'s lease listener, on a connection of its own.
fn lease_client(c: &Cluster, i: usize) -> NodeClient {
    rebeam_testkit::node_client(
        rebeam_testkit::channel(c.members[i].lease).expect("channel"),
        SECRET,
    )
}

fn renewal(node: &pb::NodeRef) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        node: Some(node.clone()),
        watching: false,
        streams_ended: 0,
        sent_ms: 0,
        attempt_ms: 0,
    }
}

fn metadata(s: &tonic::Status, key: &str) -> Option<String> {
    s.metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Waits until a renewal sent to `follower` (at `lease` or API address) is refused with a
/// redirect naming member `leader`'s lease and API addresses.
async fn wait_redirect(
    c: &Cluster,
    follower: usize,
    leader: usize,
    node: &pb::NodeRef,
    lease: bool,
) {
    let want_lease = c.members[leader].lease.to_string();
    let want_api = c.members[leader].api.to_string();
    let what = format!("member {follower} to redirect renewals to member {leader}'s lease address");
    c.wait_until(Duration::from_secs(10), &what, || {
        let mut client = if lease {
            lease_client(c, follower)
        } else {
            c.node_client(follower)
        };
        let req = renewal(node);
        let (want_lease, want_api) = (want_lease.clone(), want_api.clone());
        async move {
            let Err(s) = client.heartbeat(req).await else {
                return false;
            };
            let got = (
                metadata(&s, LEASE_METADATA_KEY),
                metadata(&s, LEADER_METADATA_KEY),
            );
            s.code() == Code::Unavailable
                && got.0.as_deref() == Some(want_lease.as_str())
                && got.1.as_deref() == Some(want_api.as_str())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_go_to_the_leaders_lease_address_which_redirects_name() {
    let c = Cluster::start(3, &[]);
    c.wait_leader(Duration::from_secs(10)).await;
    let req = pb::JoinRequest {
        node: "n".into(),
        address: "127.0.0.1:9000".into(),
        labels: Default::default(),
        capacity: 0,
    };
    // Through whichever member leads when the join lands: on two loaded cores a fresh group
    // may re-elect between `wait_leader` and the join.
    let reply = on_leader_node(&c, |mut n| {
        let req = req.clone();
        async move { n.join(req).await }
    })
    .await
    .expect("join at the leader");
    let leader = (0..3)
        .find(|&i| reply.lease_address == c.members[i].lease.to_string())
        .unwrap_or_else(|| panic!("{} is no member's lease address", reply.lease_address));
    let node = pb::NodeRef {
        node: "n".into(),
        incarnation: reply.incarnation,
    };
    // (Refused until the new leader's first quorum confirmation.)
    c.wait_until(
        Duration::from_secs(5),
        "a renewal at the leader's lease address",
        || {
            let mut client = lease_client(&c, leader);
            let req = renewal(&node);
            async move { client.heartbeat(req).await.is_ok() }
        },
    )
    .await;
    // Nothing but renewals there.
    let refused = lease_client(&c, leader)
        .watch(pb::WatchRequest {
            node: Some(node.clone()),
            resume_from: 0,
            stream: 1,
            batched: true,
            ..Default::default()
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(refused, Some(Code::Unimplemented));
    // Followers, at either address, send the node to the leader's lease address (the leader
    // puts it into the membership when it begins leading).
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &f in &followers {
        wait_redirect(&c, f, leader, &node, true).await;
        wait_redirect(&c, f, leader, &node, false).await;
    }
    // A new leader advertises its own.
    c.kill9(leader);
    let next = c.wait_leader(Duration::from_secs(10)).await;
    let other = followers
        .into_iter()
        .find(|&i| i != next)
        .expect("a follower");
    wait_redirect(&c, other, next, &node, true).await;
}

/// Every member's lease address is in the membership from the start, not only the leader's,
/// so after a leader change followers name the new leader's lease address at once. Before,
/// a member's entry lacked it until that member led and rewrote it, and meanwhile nodes
/// renewed at the new leader's API address, beside the watch streams they all reopen then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_members_lease_address_is_in_the_membership_before_it_leads() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let want: Vec<(u64, String)> = c
        .members
        .iter()
        .map(|m| (m.id, m.lease.to_string()))
        .collect();
    c.wait_until(
        Duration::from_secs(10),
        "every member's lease address in the membership",
        || {
            let mut client = c.control_client(leader);
            let want = want.clone();
            async move {
                let Ok(r) = client.cluster_state(pb::ClusterStateRequest {}).await else {
                    return false;
                };
                let mut got: Vec<(u64, String)> = r
                    .into_inner()
                    .controllers
                    .into_iter()
                    .map(|m| (m.id, m.lease_address))
                    .collect();
                got.sort();
                got == want
            }
        },
    )
    .await;
}

/// Latencies in ms, sorted: the p90.
fn p90(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len().saturating_sub(1) * 9 / 10)
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_at_the_lease_address_are_not_queued_behind_watch_streams() {
    let c = Arc::new(Cluster::start(1, &[]));
    let inc = join_node(&c, "n", &[]).await;
    let node = pb::NodeRef {
        node: "n".into(),
        incarnation: inc,
    };
    // 30,000 names, so that every watch stream opened from scratch costs the member a
    // full view of them, built and encoded on its API runtime.
    for batch in 0..30u64 {
        let registrations = (0..1000u64)
            .map(|i| pb::RegisterNameRequest {
                name: format!("name-{batch}-{i}"),
                pid: Some(pid("n", inc, batch * 1000 + i + 1)),
            })
            .collect();
        c.client(0)
            .register_names(pb::RegisterNamesRequest { registrations })
            .await
            .expect("register names");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let views = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..64 {
        let (c, stop, views, node) = (c.clone(), stop.clone(), views.clone(), node.clone());
        load.push(tokio::spawn(async move {
            let mut client = c.node_client(0);
            while !stop.load(Ordering::Relaxed) {
                let req = pb::WatchRequest {
                    node: Some(node.clone()),
                    resume_from: 0,
                    stream: 0,
                    batched: true,
                    // Every name: the full view is the load this test needs.
                    ..Default::default()
                };
                let Ok(stream) = client.watch(req).await else {
                    continue;
                };
                // The member builds the whole view before it sends the first chunk; this
                // reads that one only (decoding them all would starve this process instead).
                if let Ok(Some(_)) = stream.into_inner().message().await {
                    views.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Renewals at both addresses, side by side, on connections opened before the load, from
    // a thread of their own (this process's runtime is busy opening streams).
    let lease = c.members[0].lease;
    let api = c.members[0].api;
    let measure_node = node.clone();
    let measured = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let client = |a| {
                rebeam_testkit::node_client(rebeam_testkit::channel(a).expect("channel"), SECRET)
            };
            let (mut at_api, mut at_lease) = (client(api), client(lease));
            let (mut api_ms, mut lease_ms) = (Vec::new(), Vec::new());
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let t = Instant::now();
                let r = at_lease.heartbeat(renewal(&measure_node)).await;
                lease_ms.push(t.elapsed().as_millis() as u64);
                r.expect("renewal at the lease address");
                let t = Instant::now();
                let r = at_api.heartbeat(renewal(&measure_node)).await;
                api_ms.push(t.elapsed().as_millis() as u64);
                r.expect("renewal at the API address");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (api_ms, lease_ms)
        })
    });
    let (mut api_ms, mut lease_ms) = tokio::task::spawn_blocking(move || measured.join())
        .await
        .expect("join")
        .expect("the measuring thread");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.abort();
    }
    let views = views.load(Ordering::Relaxed);
    let (api, lease) = (p90(&mut api_ms), p90(&mut lease_ms));
    eprintln!(
        "{views} full views sent; renewals p90: API address {api} ms ({} samples), lease address {lease} ms",
        api_ms.len()
    );
    // The load must have reached the API runtime, or this test shows nothing.
    assert!(
        api >= 50,
        "renewals at the API address were not delayed (p90 {api} ms); the load did not saturate the API runtime"
    );
    assert!(
        lease * 3 <= api && lease < 50,
        "renewals at the lease address were queued too: p90 {lease} ms (API address: {api} ms)"
    );
}
