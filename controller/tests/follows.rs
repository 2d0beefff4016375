//! A node that follows names (`WatchRequest.followed_names`): its watch stream carries the
//! names it follows and those its processes hold, and no other; a lookup naming its stream
//! follows the name from then on.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rebeam_proto::v1 as pb;
use support::*;

fn node_a(incarnation: u64) -> Option<pb::NodeRef> {
    Some(pb::NodeRef {
        node: "node-a".into(),
        incarnation,
    })
}

/// node-a's watch stream 1, following `follow`.
fn following(incarnation: u64, follow: Vec<String>) -> pb::WatchRequest {
    pb::WatchRequest {
        node: node_a(incarnation),
        stream: 1,
        batched: true,
        followed_names: true,
        follow,
        ..Default::default()
    }
}

/// The names a watch event registers (+name) or releases (-name), a batch unpacked.
fn name_changes(ev: pb::WatchEvent) -> Vec<String> {
    use pb::watch_event::Event as E;
    let events = match ev.event {
        Some(E::Changes(bytes)) => {
            <pb::WatchChanges as prost::Message>::decode(&bytes[..])
                .expect("a batch of changes decodes")
                .events
        }
        _ => vec![ev],
    };
    events
        .into_iter()
        .filter_map(|e| match e.event {
            Some(E::NameRegistered(n)) => Some(format!("+{}", n.name)),
            Some(E::NameReleased(n)) => Some(format!("-{}", n.name)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_node_gets_the_names_it_follows_and_holds_and_no_other() {
    let c = Arc::new(Cluster::start(1, &[]));
    let inc_a = join_node(&c, "node-a", &[]).await;
    let inc_b = join_node(&c, "node-b", &[]).await;
    let _hb_a = heartbeat(c.clone(), "node-a", inc_a, Duration::from_millis(200));
    let _hb_b = heartbeat(c.clone(), "node-b", inc_b, Duration::from_millis(200));
    register(&c, "followed", pid("node-b", inc_b, 1)).await;
    register(&c, "other", pid("node-b", inc_b, 2)).await;
    register(&c, "mine", pid("node-a", inc_a, 3)).await;
    register(&c, "moving", pid("node-b", inc_b, 4)).await;

    let mut watch = c
        .node_client(0)
        .watch(following(inc_a, vec!["followed".into(), "later".into()]))
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("the view");
    let Some(pb::watch_event::Event::Snapshot(view)) = first.event else {
        panic!("the stream starts with the view: {first:?}");
    };
    let mut in_view: Vec<String> = view.names.into_iter().map(|n| n.name).collect();
    in_view.sort();
    assert_eq!(
        in_view,
        ["followed", "mine"],
        "the view holds only node-a's names"
    );

    // A lookup naming the open stream follows the name; one naming another stream does not.
    let whereis = |name: &str, stream: u64| pb::WhereisRequest {
        name: name.into(),
        linearizable: true,
        follower: node_a(inc_a),
        follower_stream: stream,
    };
    let other_stream = c
        .client(0)
        .whereis(whereis("other", 2))
        .await
        .expect("whereis")
        .into_inner();
    assert!(!other_stream.followed, "stream 2 is not served here");
    let looked_up = c
        .client(0)
        .whereis(whereis("moving", 1))
        .await
        .expect("whereis")
        .into_inner();
    assert!(looked_up.followed && looked_up.log_index > 0);
    assert_eq!(looked_up.pid, Some(pid("node-b", inc_b, 4)));

    register(&c, "unrelated", pid("node-b", inc_b, 5)).await;
    register(&c, "later", pid("node-b", inc_b, 6)).await;
    on_leader(&c, |mut cl| async move {
        cl.unregister_name(pb::UnregisterNameRequest {
            name: "moving".into(),
            pid: Some(pid("node-b", inc_b, 4)),
        })
        .await
    })
    .await
    .expect("unregister");
    register(&c, "moving", pid("node-b", inc_b, 7)).await;
    register(&c, "mine-too", pid("node-a", inc_a, 8)).await;

    let mut seen = Vec::new();
    while !seen.iter().any(|n| n == "+mine-too") {
        let ev = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("changes within 10 s")
            .expect("stream")
            .expect("open");
        seen.extend(name_changes(ev));
    }
    assert_eq!(seen, ["+later", "-moving", "+moving", "+mine-too"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_following_too_many_names_is_refused_clearly() {
    let c = Cluster::start(1, &[]);
    let inc_a = join_node(&c, "node-a", &[]).await;
    let too_many = (0..65_537).map(|i| format!("n{i}")).collect();
    let refused = c
        .node_client(0)
        .watch(following(inc_a, too_many))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("at most 65536"),
        "{}",
        refused.message()
    );
}
