//! Bad input: every refusal is clear, has the right code, and applies nothing.

mod support;

use std::time::Duration;

use rebeam_grpc::BearerInjector as Bearer;
use rebeam_proto::v1 as pb;
use rebeam_proto::v1::raft_peer_client::RaftPeerClient;
use support::*;
use tonic::Code;

fn status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    r.expect_err("request must be refused")
}

fn check(case: &str, s: tonic::Status, code: Code, needle: &str) {
    assert_eq!(s.code(), code, "{case}: {s:?}");
    let msg = s.message();
    assert!(
        msg.contains(needle),
        "{case}: message {msg:?} should mention {needle:?}"
    );
    assert!(!msg.ends_with('.'), "{case}: no trailing period: {msg:?}");
    assert!(
        msg.chars().next().is_some_and(|ch| !ch.is_uppercase()),
        "{case}: lowercase: {msg:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_clearly_and_change_nothing() {
    let c = Cluster::start(
        1,
        &["--max-code-bytes", "1024", "--client-token", "client-tok"],
    );
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let inc = join_node(&c, "node-a", &[]).await;
    let addr = c.members[leader].api.to_string();
    let before = c
        .client(leader)
        .cluster_state(pb::ClusterStateRequest {})
        .await
        .expect("state")
        .into_inner();

    // Credentials.
    let s = status(
        client_at(&addr, "wrong")
            .list_apps(pb::ListAppsRequest {})
            .await,
    );
    check("wrong token", s, Code::Unauthenticated, "wrong credentials");
    let mut anon = rebeam_proto::v1::cluster_service_client::ClusterServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("ep")
            .connect_lazy(),
    );
    let s = status(anon.list_apps(pb::ListAppsRequest {}).await);
    check(
        "missing token",
        s,
        Code::Unauthenticated,
        "missing credentials",
    );
    client_at(&addr, "client-tok")
        .list_apps(pb::ListAppsRequest {})
        .await
        .expect("client tokens work on the client service");
    let mut node_with_client_token =
        rebeam_proto::v1::node_service_client::NodeServiceClient::with_interceptor(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("ep")
                .connect_lazy(),
            Bearer::new("client-tok"),
        );
    let s = status(
        node_with_client_token
            .heartbeat(pb::HeartbeatRequest {
                node: Some(pb::NodeRef {
                    node: "node-a".into(),
                    incarnation: inc,
                }),
                watching: false,
                streams_ended: 0,
                sent_ms: 0,
                attempt_ms: 0,
            })
            .await,
    );
    check(
        "client token on the node service",
        s,
        Code::PermissionDenied,
        "cluster members only",
    );
    let raft_addr = c.members[leader].raft;
    let mut raft = RaftPeerClient::with_interceptor(
        tonic::transport::Endpoint::from_shared(format!("http://{raft_addr}"))
            .expect("ep")
            .connect_lazy(),
        Bearer::new("wrong"),
    );
    let s = status(
        raft.vote(pb::RaftPayload {
            data: b"{}".to_vec(),
        })
        .await,
    );
    check(
        "raft without the secret",
        s,
        Code::Unauthenticated,
        "wrong credentials",
    );
    let mut raft = RaftPeerClient::with_interceptor(
        tonic::transport::Endpoint::from_shared(format!("http://{raft_addr}"))
            .expect("ep")
            .connect_lazy(),
        Bearer::new(SECRET),
    );
    let s = status(
        raft.append_entries(pb::RaftPayload {
            data: b"not json".to_vec(),
        })
        .await,
    );
    check(
        "malformed raft payload",
        s,
        Code::InvalidArgument,
        "malformed raft payload",
    );

    let mut cl = c.client(leader);
    let mut nc = c.node_client(leader);
    let good = Some(pid("node-a", inc, 1));
    let reg = |name: &str, p: Option<pb::Pid>| pb::RegisterNameRequest {
        name: name.into(),
        pid: p,
    };

    // Registry.
    check(
        "empty name",
        status(cl.register_name(reg("", good.clone())).await),
        Code::InvalidArgument,
        "name is empty",
    );
    let long = "x".repeat(256);
    check(
        "long name",
        status(cl.register_name(reg(&long, good.clone())).await),
        Code::InvalidArgument,
        "at most 255",
    );
    check(
        "no pid",
        status(cl.register_name(reg("n", None)).await),
        Code::InvalidArgument,
        "pid is missing",
    );
    let s = status(cl.register_name(reg("n", Some(pid("ghost", 5, 1)))).await);
    check(
        "unknown node in pid",
        s,
        Code::NotFound,
        "node `ghost` is not a member",
    );
    let s = status(
        cl.register_name(reg("n", Some(pid("node-a", inc + 100, 1))))
            .await,
    );
    check("wrong incarnation", s, Code::FailedPrecondition, "stale");
    let s = status(
        cl.pg_join(pb::PgRequest {
            group: "".into(),
            pid: good.clone(),
        })
        .await,
    );
    check("empty group", s, Code::InvalidArgument, "group is empty");

    // Nodes.
    let s = status(
        nc.join(pb::JoinRequest {
            node: "bad id!".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await,
    );
    check("bad node id", s, Code::InvalidArgument, "may contain only");
    let s = status(
        nc.join(pb::JoinRequest {
            node: "node-z".into(),
            address: "nowhere".into(),
            ..Default::default()
        })
        .await,
    );
    check(
        "bad node address",
        s,
        Code::InvalidArgument,
        "not host:port",
    );
    // A leader renews nothing until it has confirmed its leadership with a quorum (one Raft
    // heartbeat after its election); until then it answers a retryable Unavailable.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = status(
            nc.heartbeat(pb::HeartbeatRequest {
                node: Some(pb::NodeRef {
                    node: "ghost".into(),
                    incarnation: 3,
                }),
                watching: false,
                streams_ended: 0,
                sent_ms: 0,
                attempt_ms: 0,
            })
            .await,
        );
        if s.code() != Code::Unavailable || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    check("heartbeat of unknown node", s, Code::NotFound, "join first");
    let s = status(
        nc.heartbeat(pb::HeartbeatRequest {
            node: None,
            watching: false,
            streams_ended: 0,
            sent_ms: 0,
            attempt_ms: 0,
        })
        .await,
    );
    check(
        "heartbeat without node",
        s,
        Code::InvalidArgument,
        "node is missing",
    );
    let s = status(
        nc.report_exit(pb::ReportExitRequest {
            node: Some(pb::NodeRef {
                node: "node-a".into(),
                incarnation: inc,
            }),
            exits: vec![pb::ProcessExit {
                pid: Some(pid("other", 9, 1)),
                reason: "normal".into(),
            }],
        })
        .await,
    );
    check(
        "exit of a foreign pid",
        s,
        Code::InvalidArgument,
        "only their own processes",
    );
    let s = status(
        nc.fetch_code(pb::FetchCodeRequest {
            code_hash: "abc".into(),
        })
        .await,
    );
    check("unknown code", s, Code::NotFound, "no code with hash");

    // Apps.
    let m = manifest("a", "1", &["any"]);
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: m.clone(),
            code: vec![0; 2048],
        })
        .await,
    );
    check(
        "blob over the limit",
        s,
        Code::ResourceExhausted,
        "the limit is 1024",
    );
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: "[app".into(),
            code: vec![],
        })
        .await,
    );
    check(
        "malformed manifest",
        s,
        Code::InvalidArgument,
        "rebeam.toml line 1",
    );
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: manifest("a", "1", &["moon"]),
            code: vec![],
        })
        .await,
    );
    check(
        "bad placement",
        s,
        Code::InvalidArgument,
        "placement `moon` is unknown",
    );
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: m.clone(),
            code: b"not a zip".to_vec(),
        })
        .await,
    );
    check(
        "code that is not an archive",
        s,
        Code::InvalidArgument,
        "not a ZIP archive",
    );
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: m.clone(),
            code: app_code(&manifest("a", "2", &["any"]), 0),
        })
        .await,
    );
    check(
        "archive with another manifest",
        s,
        Code::InvalidArgument,
        "differs from the manifest sent with it",
    );
    let s = status(
        cl.upgrade_app(pb::SubmitAppRequest {
            manifest_toml: m.clone(),
            code: app_code(&m, 0),
        })
        .await,
    );
    check(
        "upgrade of unknown app",
        s,
        Code::NotFound,
        "submit it instead",
    );
    let s = status(
        cl.stop_app(pb::StopAppRequest {
            name: "nope".into(),
        })
        .await,
    );
    check("stop of unknown app", s, Code::NotFound, "does not exist");
    let huge = vec![0u8; 2 << 20];
    let s = status(
        cl.submit_app(pb::SubmitAppRequest {
            manifest_toml: m.clone(),
            code: huge,
        })
        .await,
    );
    assert!(
        matches!(s.code(), Code::ResourceExhausted | Code::OutOfRange),
        "oversized request is refused by the transport limit: {s:?}"
    );

    // Controller membership.
    let s = status(
        cl.remove_controller(pb::RemoveControllerRequest { id: 1 })
            .await,
    );
    check(
        "remove the last member",
        s,
        Code::FailedPrecondition,
        "last controller",
    );
    let s = status(
        cl.add_controller(pb::AddControllerRequest {
            id: 0,
            raft_address: "a:1".into(),
            api_address: "a:2".into(),
        })
        .await,
    );
    check("controller id 0", s, Code::InvalidArgument, "non-zero");

    // Nothing was applied.
    let after = cl
        .cluster_state(pb::ClusterStateRequest {})
        .await
        .expect("state")
        .into_inner();
    assert_eq!(after.nodes, before.nodes);
    assert!(after.apps.is_empty());
    assert_eq!(after.global_names, 0);
    assert_eq!(after.groups, 0);
}
