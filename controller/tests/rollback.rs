//! Rollback, start-failure and upgrade reports over gRPC against three real members.

mod support;

use std::time::Duration;

use rebeam_controller::LEADER_METADATA_KEY;
use rebeam_proto::v1 as pb;
use support::*;
use tonic::Code;

/// The app's info as the leader lists it.
async fn app_info(c: &Cluster, name: &str) -> pb::AppInfo {
    cluster_state(c)
        .await
        .apps
        .into_iter()
        .find(|a| a.name == name)
        .expect("the app is listed")
}

/// Rolls `name` back on the leader.
async fn rollback(c: &Cluster, name: &str) -> Result<pb::AppInfo, tonic::Status> {
    let req = pb::RollbackAppRequest { name: name.into() };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.rollback_app(req).await }
    })
    .await
    .map(|r| r.app.expect("app"))
}

async fn upgrade(c: &Cluster, m: String) -> pb::AppInfo {
    let req = pb::SubmitAppRequest {
        code: app_code(&m, 0),
        manifest_toml: m,
    };
    on_leader(c, |mut cl| {
        let req = req.clone();
        async move { cl.upgrade_app(req).await }
    })
    .await
    .expect("upgrade")
    .app
    .expect("app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_node_reports_over_grpc() {
    let c = Cluster::start(3, &["--lease-ms", "600000", "--node-fence-ms", "500000"]);
    let inc = join_node(&c, "node-a", &[]).await;
    let node = pb::NodeRef {
        node: "node-a".into(),
        incarnation: inc,
    };

    let s = rollback(&c, "shop").await.expect_err("unknown app");
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let m1 = manifest("shop", "1.0.0", &["any"]);
    let v1 = submit(&c, m1.clone(), app_code(&m1, 0)).await;
    let s = rollback(&c, "shop")
        .await
        .expect_err("nothing to roll back to");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("no previous version"), "{s:?}");

    let v2 = upgrade(&c, manifest("shop", "2.0.0", &["any"])).await;
    assert_eq!(v2.previous_version, "1.0.0");

    // A follower redirects the write to the leader, like every other write.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    c.wait_until(
        Duration::from_secs(10),
        "the follower to know the leader",
        || {
            let mut cl = c.client(follower);
            async move {
                cl.status(pb::StatusRequest {})
                    .await
                    .is_ok_and(|s| s.get_ref().leader_id != 0)
            }
        },
    )
    .await;
    let s = c
        .client(follower)
        .rollback_app(pb::RollbackAppRequest {
            name: "shop".into(),
        })
        .await
        .expect_err("a follower does not write");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let redirect = s
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(redirect, Some(c.members[leader].api.to_string()));
    assert_eq!(
        app_info(&c, "shop").await.version,
        "2.0.0",
        "nothing applied"
    );

    let back = rollback(&c, "shop").await.expect("rollback");
    assert_eq!(
        (back.version.as_str(), back.code_hash.as_str()),
        ("1.0.0", v1.code_hash.as_str())
    );
    assert_eq!(back.previous_version, "2.0.0");
    assert_eq!(back.manifest_toml, m1, "the whole previous version is back");
    // Both versions' code stays fetchable: the nodes need the one they move to, and a second
    // rollback needs the other.
    for hash in [&v1.code_hash, &v2.code_hash] {
        let req = pb::FetchCodeRequest {
            code_hash: hash.clone(),
        };
        on_leader_node(&c, |mut n| {
            let req = req.clone();
            async move { n.fetch_code(req).await }
        })
        .await
        .expect("code of both versions is kept");
    }
    let again = rollback(&c, "shop").await.expect("second rollback");
    assert_eq!(
        (again.version.as_str(), again.previous_version.as_str()),
        ("2.0.0", "1.0.0")
    );

    // A node that cannot load 2.0.0 makes the controller roll back by itself.
    let report = |status: pb::UpgradeStatus, error: &str| pb::UpgradeReportRequest {
        node: Some(node.clone()),
        app: "shop".into(),
        result: Some(pb::NodeUpgrade {
            node: String::new(),
            code_hash: v2.code_hash.clone(),
            version: "2.0.0".into(),
            status: status as i32,
            error: error.into(),
            upgraded: 0,
            stayed: vec![],
        }),
    };
    let req = report(
        pb::UpgradeStatus::Failed,
        "ModuleNotFoundError: No module named 'nope'",
    );
    on_leader_node(&c, |mut n| {
        let req = req.clone();
        async move { n.report_upgrade(req).await }
    })
    .await
    .expect("upgrade report");
    let app = app_info(&c, "shop").await;
    assert_eq!(app.version, "1.0.0");
    assert_eq!(app.previous_version, "", "the broken version is not kept");
    assert_eq!(
        app.upgrade_error,
        "upgrade to 2.0.0 failed on node-a: ModuleNotFoundError: No module named 'nope'; rolled back to 1.0.0"
    );
    let s = rollback(&c, "shop")
        .await
        .expect_err("nothing to roll back to");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");

    // Reports for the current code are recorded per node.
    let mut req = report(pb::UpgradeStatus::Done, "");
    if let Some(r) = req.result.as_mut() {
        r.code_hash = v1.code_hash.clone();
        r.upgraded = 3;
    }
    on_leader_node(&c, |mut n| {
        let req = req.clone();
        async move { n.report_upgrade(req).await }
    })
    .await
    .expect("upgrade report");
    let app = app_info(&c, "shop").await;
    assert_eq!(app.upgrades.len(), 1);
    assert_eq!(app.upgrades[0].node, "node-a");
    assert_eq!(app.upgrades[0].status, pb::UpgradeStatus::Done as i32);
    assert_eq!(app.upgrades[0].upgraded, 3);

    // A child that cannot start: the traceback is on the app.
    let state = cluster_state(&c).await;
    let child = state
        .assignments
        .iter()
        .find(|a| a.app == "shop")
        .expect("assignment");
    let req = pb::ChildFailedRequest {
        node: Some(node.clone()),
        app: "shop".into(),
        child: child.child.clone(),
        generation: child.generation,
        error: "Traceback (most recent call last):\nImportError: cannot import name 'Child0'"
            .into(),
    };
    on_leader_node(&c, |mut n| {
        let req = req.clone();
        async move { n.report_child_failed(req).await }
    })
    .await
    .expect("start failure report");
    let app = app_info(&c, "shop").await;
    assert!(
        app.last_error
            .contains("ImportError: cannot import name 'Child0'"),
        "{}",
        app.last_error
    );
    let after = cluster_state(&c).await;
    let restarted = after
        .assignments
        .iter()
        .find(|a| a.app == "shop")
        .expect("assignment");
    assert_eq!(restarted.generation, child.generation + 1);
    assert!(restarted.history[0].reason.contains("failed to start"));

    // Malformed reports are refused before anything is proposed.
    let mut bad = report(pb::UpgradeStatus::Done, "");
    if let Some(r) = bad.result.as_mut() {
        r.node = "node-b".into();
    }
    let s = c
        .node_client(leader_index(&c).await.expect("leader"))
        .report_upgrade(bad)
        .await
        .expect_err("a node reports only for itself");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("nodes report only their own upgrades"),
        "{s:?}"
    );
}
