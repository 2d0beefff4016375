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
    for k in 0..100u64 {
        assert!(
            register(&c, &format!("n{k}"), pid("node-a", inc, k + 1))
                .await
                .registered
        );
    }
    pg_join(&c, "g", pid("node-a", inc, 1)).await;
    let m = manifest("shop", "1.0.0", &["any", "zone=eu"]);
    let code = app_code(&m, 100_000);
    let app = submit(&c, m, code.clone()).await;
    let before = cluster_state(&c).await;
    assert_eq!(before.assignments.len(), 2);

    c.kill_all();
    for i in 0..3 {
        c.spawn(i);
    }
    let applied = before.last_applied_index;
    c.wait_until(
        Duration::from_secs(20),
        "state to be re-applied",
        || async {
            let Some(l) = leader_index(&c).await else {
                return false;
            };
            let s = c.client(l).cluster_state(pb::ClusterStateRequest {}).await;
            s.is_ok_and(|s| s.get_ref().last_applied_index >= applied)
        },
    )
    .await;
    let after = cluster_state(&c).await;
    assert_eq!(after.nodes, before.nodes);
    assert_eq!(after.apps, before.apps);
    assert_eq!(after.assignments, before.assignments);
    assert_eq!(after.global_names, 100);
    assert_eq!(after.groups, 1);
    assert_eq!(whereis(&c, "n42").await, Some(pid("node-a", inc, 43)));
    for i in 0..3 {
        // Followers replay the log at their own pace: wait until this one has the code.
        c.wait_until(
            Duration::from_secs(20),
            "the member to re-apply the code",
            || async {
                c.node_client(i)
                    .fetch_code(pb::FetchCodeRequest {
                        code_hash: app.code_hash.clone(),
                    })
                    .await
                    .is_ok()
            },
        )
        .await;
        let fetched = c
            .node_client(i)
            .fetch_code(pb::FetchCodeRequest {
                code_hash: app.code_hash.clone(),
            })
            .await
            .expect("fetch code")
            .into_inner();
        assert_eq!(fetched.code, code, "member {i} has the code");
    }
    // And the restarted group takes writes.
    assert!(
        register(&c, "after", pid("node-a", inc, 500))
            .await
            .registered
    );
}
