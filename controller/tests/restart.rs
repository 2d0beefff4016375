//! Fault: stop every member (kill -9) and start them again from their directories.

mod support;

use std::time::Duration;

use rebeam_proto::v1 as pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_state_survives_a_full_restart() {
    let c = Cluster::start(
        3,
        &[
            "--lease-ms",
            "600000",
            "--node-fence-ms",
            "500000",
            "--snapshot-logs",
            "40",
        ],
    );
    let inc = join_node(&c, "node-a", &[("zone", "eu")]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut cl = c.client(leader);
    for k in 0..100u64 {
        let r = cl
            .register_name(pb::RegisterNameRequest {
                name: format!("n{k}"),
                pid: Some(pid("node-a", inc, k + 1)),
            })
            .await
            .expect("register");
        assert!(r.get_ref().registered);
    }
    cl.pg_join(pb::PgRequest {
        group: "g".into(),
        pid: Some(pid("node-a", inc, 1)),
    })
    .await
    .expect("pg join");
    let code = vec![7u8; 100_000];
    let app = cl
        .submit_app(pb::SubmitAppRequest {
            manifest_toml: manifest("shop", "1.0.0", &["any", "zone=eu"]),
            code: code.clone(),
        })
        .await
        .expect("submit")
        .into_inner()
        .app
        .expect("app");
    let before = cl
        .cluster_state(pb::ClusterStateRequest {})
        .await
        .expect("state")
        .into_inner();
    assert_eq!(before.assignments.len(), 2);

    c.kill_all();
    for i in 0..3 {
        c.spawn(i);
    }
    let leader = c.wait_leader(Duration::from_secs(15)).await;
    let mut cl = c.client(leader);
    let applied = before.last_applied_index;
    c.wait_until(Duration::from_secs(15), "state to be re-applied", || {
        let mut cl = c.client(leader);
        async move {
            cl.cluster_state(pb::ClusterStateRequest {})
                .await
                .is_ok_and(|s| s.get_ref().last_applied_index >= applied)
        }
    })
    .await;
    let after = cl
        .cluster_state(pb::ClusterStateRequest {})
        .await
        .expect("state")
        .into_inner();
    assert_eq!(after.nodes, before.nodes);
    assert_eq!(after.apps, before.apps);
    assert_eq!(after.assignments, before.assignments);
    assert_eq!(after.global_names, 100);
    assert_eq!(after.groups, 1);
    let w = cl
        .whereis(pb::WhereisRequest {
            name: "n42".into(),
            linearizable: true,
        })
        .await
        .expect("whereis");
    assert_eq!(w.into_inner().pid, Some(pid("node-a", inc, 43)));
    let fetched = c
        .node_client(leader)
        .fetch_code(pb::FetchCodeRequest {
            code_hash: app.code_hash.clone(),
        })
        .await
        .expect("fetch code")
        .into_inner();
    assert_eq!(fetched.code, code);
    // And the restarted group takes writes.
    let r = cl
        .register_name(pb::RegisterNameRequest {
            name: "after".into(),
            pid: Some(pid("node-a", inc, 500)),
        })
        .await
        .expect("write after restart");
    assert!(r.get_ref().registered);
}
