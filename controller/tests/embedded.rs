//! The library entry point `rebeam-node --dev` uses: a one-member controller in-process.

use std::time::Duration;

use rebeam_controller::{start, ControllerConfig};
use rebeam_proto::v1 as pb;
use rebeam_proto::v1::cluster_service_client::ClusterServiceClient;
use rebeam_proto::v1::node_service_client::NodeServiceClient;

fn authed<T>(secret: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = format!("Bearer {secret}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

#[tokio::test]
async fn single_member_controller_runs_in_process_and_restarts_from_its_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = ControllerConfig::single(dir.path().to_path_buf(), "s3cret".into());
    let h = start(cfg.clone()).await.expect("start");
    h.wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let url = format!("http://{}", h.api_addr());
    let mut nodes = NodeServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let join = pb::JoinRequest {
        node: "dev".into(),
        address: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let inc = nodes
        .join(authed("s3cret", join))
        .await
        .expect("join")
        .into_inner()
        .incarnation;
    let mut cl = ClusterServiceClient::connect(url).await.expect("connect");
    let reg = pb::RegisterNameRequest {
        name: "svc".into(),
        pid: Some(pb::Pid {
            node: "dev".into(),
            incarnation: inc,
            serial: 1,
        }),
    };
    assert!(
        cl.register_name(authed("s3cret", reg))
            .await
            .expect("register")
            .into_inner()
            .registered
    );
    h.shutdown().await.expect("shutdown");

    let h = start(cfg).await.expect("restart");
    h.wait_for_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let mut cl = ClusterServiceClient::connect(format!("http://{}", h.api_addr()))
        .await
        .expect("connect");
    let w = cl
        .whereis(authed(
            "s3cret",
            pb::WhereisRequest {
                name: "svc".into(),
                linearizable: true,
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(
        w.expect("whereis").into_inner().pid.map(|p| p.serial),
        Some(1)
    );
    h.shutdown().await.expect("shutdown");
}
