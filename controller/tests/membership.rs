//! Controller group membership: a new member joins a running group with --join, then leaves.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use rebeam_proto::v1 as pb;
use support::*;

struct Killer(std::process::Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_running_group_and_is_removed() {
    let c = Cluster::start(1, &["--lease-ms", "600000", "--node-fence-ms", "500000"]);
    let inc = join_node(&c, "node-a", &[]).await;
    assert!(
        register(&c, "before-join", pid("node-a", inc, 1))
            .await
            .registered
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let raft = rebeam_testkit::free_port().expect("port");
    let api = rebeam_testkit::free_port().expect("port");
    let log = std::fs::File::create(dir.path().join("member-2.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_rebeam-controller"))
        .args([
            "--id",
            "2",
            "--raft-listen",
            &raft.to_string(),
            "--api-listen",
            &api.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("member-2"))
        .args(["--join", &c.members[0].api.to_string(), "--secret", SECRET])
        .env_remove("REBEAM_SECRET")
        .stdout(Stdio::from(log.try_clone().expect("clone")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn member 2");
    let _guard = Killer(child);

    let voters = || async {
        on_leader(&c, |mut cl| async move {
            cl.cluster_state(pb::ClusterStateRequest {}).await
        })
        .await
        .map(|s| {
            s.controllers
                .iter()
                .filter(|m| m.voter)
                .map(|m| m.id)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
    };
    c.wait_until(
        Duration::from_secs(20),
        "member 2 to become a voter",
        || async { voters().await == vec![1, 2] },
    )
    .await;
    let newcomer = client_at(&api.to_string(), SECRET);
    c.wait_until(
        Duration::from_secs(10),
        "member 2 to have the state",
        || {
            let mut n = newcomer.clone();
            async move {
                n.list_names(pb::ListNamesRequest {})
                    .await
                    .is_ok_and(|r| r.get_ref().names.len() == 1)
            }
        },
    )
    .await;

    let left = on_leader(&c, |mut cl| async move {
        cl.remove_controller(pb::RemoveControllerRequest { id: 2 })
            .await
    })
    .await
    .expect("remove member 2");
    assert!(
        left.controllers.iter().all(|m| m.id != 2 || !m.voter),
        "{left:?}"
    );
    // The remaining one-member group still takes writes.
    assert!(
        register(&c, "after-leave", pid("node-a", inc, 2))
            .await
            .registered
    );
}
