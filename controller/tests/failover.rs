//! Fault: kill -9 the leader of three members during a stream of registrations.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rebeam_proto::v1 as pb;
use support::*;

/// Acknowledged registrations: name -> (writer's pid serial, reply).
type Acks = BTreeMap<String, Vec<(u64, pb::RegisterNameReply)>>;

/// Registers `name` for `p`, trying members in turn, until acknowledged or `deadline`.
async fn register_until_acked(
    c: &Cluster,
    name: &str,
    p: &pb::Pid,
    deadline: Instant,
) -> Option<pb::RegisterNameReply> {
    let mut i = 0usize;
    while Instant::now() < deadline {
        let target = i % c.members.len();
        i += 1;
        if !c.is_running(target) {
            continue;
        }
        let req = pb::RegisterNameRequest {
            name: name.to_string(),
            pid: Some(p.clone()),
        };
        match c.client(target).register_name(req).await {
            Ok(r) => return Some(r.into_inner()),
            Err(s) if s.code() == tonic::Code::InvalidArgument => panic!("bad request: {s}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leader_during_registrations_keeps_every_acknowledged_name() {
    // Long lease: this test is about the log, not about node failure detection.
    let c = Arc::new(Cluster::start(
        3,
        &["--lease-ms", "600000", "--node-fence-ms", "500000"],
    ));
    let inc = join_node(&c, "node-a", &[]).await;
    let acked: Arc<Mutex<Acks>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    // Two writers race for every name, so each name must have exactly one winner.
    for w in 0..16u64 {
        let (c, acked) = (c.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..150u64 {
                let name = format!("name-{}-{k}", w / 2);
                let p = pid("node-a", inc, w + 1);
                let r = register_until_acked(&c, &name, &p, deadline)
                    .await
                    .expect("registration acknowledged in time");
                acked.lock().entry(name).or_default().push((w + 1, r));
            }
        }));
    }
    c.wait_until(Duration::from_secs(30), "registrations to flow", || {
        let a = acked.clone();
        async move { a.lock().len() > 200 }
    })
    .await;
    let old = c.wait_leader(Duration::from_secs(5)).await;
    c.kill9(old);
    let killed_at = Instant::now();
    for t in tasks {
        t.await.expect("writer");
    }
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(leader, old, "a surviving member leads");
    eprintln!("writers done {:?} after the kill", killed_at.elapsed());

    let names: BTreeMap<String, pb::Pid> = c
        .client(leader)
        .list_names(pb::ListNamesRequest {})
        .await
        .expect("list names")
        .into_inner()
        .names
        .into_iter()
        .map(|n| (n.name, n.pid.expect("holder")))
        .collect();
    let acked = std::mem::take(&mut *acked.lock());
    assert_eq!(acked.len(), 8 * 150);
    for (name, replies) in acked.iter() {
        let holder = names
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged name {name} is missing"));
        let winners: Vec<_> = replies.iter().filter(|(_, r)| r.registered).collect();
        assert_eq!(
            winners.len(),
            1,
            "{name}: exactly one registration wins, got {replies:?}"
        );
        for (serial, r) in replies {
            let h = r.holder.as_ref().expect("holder in reply");
            assert_eq!(h, holder, "{name}: every caller learns the final holder");
            assert_eq!(r.registered, h.serial == *serial);
        }
    }
    // The new leader serves writes.
    let r = c
        .client(leader)
        .register_name(pb::RegisterNameRequest {
            name: "after-failover".into(),
            pid: Some(pid("node-a", inc, 99)),
        })
        .await
        .expect("write after failover")
        .into_inner();
    assert!(r.registered);
    // The killed member comes back from its directory and catches up.
    c.spawn(old);
    let total = names.len() + 1;
    c.wait_until(
        Duration::from_secs(20),
        "restarted member to catch up",
        || {
            let mut cl = c.client(old);
            async move {
                match cl.list_names(pb::ListNamesRequest {}).await {
                    Ok(r) => r.into_inner().names.len() == total,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
}
