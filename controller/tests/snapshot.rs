//! Fault: a member that was down while the log moved on catches up by snapshot.

mod support;

use std::time::Duration;

use rebeam_proto::v1 as pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_member_catches_up_by_snapshot() {
    let c = Cluster::start(
        3,
        &[
            "--lease-ms",
            "600000",
            "--node-fence-ms",
            "500000",
            "--snapshot-logs",
            "50",
            "--keep-logs",
            "0",
        ],
    );
    let inc = join_node(&c, "node-a", &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let lagging = (leader + 1) % 3;
    c.kill9(lagging);

    let m = manifest("blobby", "1", &["any"]);
    let code = app_code(&m, 50_000);
    let app = submit(&c, m, code.clone()).await;
    // Sequential writes: one log entry each, so the log outgrows several snapshots.
    for k in 0..300u64 {
        register(&c, &format!("s{k}"), pid("node-a", inc, k + 1)).await;
    }
    let snap = on_leader(&c, |mut cl| async move {
        cl.snapshot(pb::SnapshotRequest {}).await
    })
    .await
    .expect("snapshot")
    .snapshot_index;
    assert!(snap > 300, "snapshot covers the writes: {snap}");

    c.spawn(lagging);
    c.wait_until(
        Duration::from_secs(30),
        "lagging member to install the snapshot",
        || {
            let mut cl = c.client(lagging);
            async move {
                match cl.status(pb::StatusRequest {}).await {
                    Ok(s) => {
                        s.get_ref().snapshot_index >= snap && s.get_ref().last_applied_index >= snap
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let names = c
        .client(lagging)
        .list_names(pb::ListNamesRequest {})
        .await
        .expect("names")
        .into_inner()
        .names;
    assert_eq!(names.len(), 300);
    let fetched = c
        .node_client(lagging)
        .fetch_code(pb::FetchCodeRequest {
            code_hash: app.code_hash,
        })
        .await
        .expect("code travels in the snapshot")
        .into_inner();
    assert_eq!(fetched.code, code);
    let log = std::fs::read_to_string(&c.members[lagging].log).unwrap_or_default();
    assert!(
        log.contains("snapshot installed"),
        "the member was caught up by snapshot, not by log replay"
    );
}
