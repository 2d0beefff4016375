//! The node service: join, lease renewal, watch, exit, start and upgrade reports, code fetch.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use rebeam_proto::v1 as pb;
use rebeam_proto::v1::node_service_server::NodeService;
use rebeam_tls::Member;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http;
use tonic::{Request, Response, Status};

use super::follows::MAX_FOLLOWED;
use super::{node_ref, pid};
use crate::core::Core;
use crate::error::Error;
use crate::types::{Command, NodeUpgrade, Outcome};
use crate::validate;

/// Serves the nodes of the cluster.
pub struct NodeApi {
    core: Arc<Core>,
}

impl NodeApi {
    /// Wraps the shared core.
    pub fn new(core: Arc<Core>) -> Self {
        NodeApi { core }
    }

    fn join_reply(&self, incarnation: u64) -> pb::JoinReply {
        let t = &self.core.config.timings;
        pb::JoinReply {
            incarnation,
            lease_ms: t.lease.as_millis() as u64,
            heartbeat_ms: t.heartbeat.as_millis() as u64,
            fence_ms: t.node_fence.as_millis() as u64,
            stream_fence_ms: t.stream_fence.as_millis() as u64,
            lease_address: self.core.me.lease_addr.clone(),
        }
    }
}

/// The one method the lease listener serves.
pub const HEARTBEAT_PATH: &str = "/rebeam.v1.NodeService/Heartbeat";

/// Lets through `NodeService.Heartbeat` alone (the lease listener's service): nothing that
/// holds a stream or writes to the log is served on the lease runtime.
#[derive(Clone)]
pub struct RenewalsOnly<S> {
    inner: S,
}

impl<S> RenewalsOnly<S> {
    /// Wraps a node service.
    pub fn new(inner: S) -> Self {
        RenewalsOnly { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for RenewalsOnly<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for RenewalsOnly<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() == HEARTBEAT_PATH {
            return Box::pin(self.inner.call(req));
        }
        let status = Status::unimplemented(format!(
            "{} is not served at the lease address, only lease renewals; call it at the API address",
            req.uri().path()
        ));
        Box::pin(async move { Ok(status.into_http()) })
    }
}

/// A refused renewal: with a redirect, the leader's lease address beside its API address.
fn renewal_refused(core: &Core, e: Error) -> Status {
    let redirect = matches!(e, Error::NotLeader { .. });
    let mut status = Status::from(e);
    if let Some(lease) = redirect.then(|| core.leader_lease()).flatten() {
        if let Ok(v) = tonic::metadata::MetadataValue::try_from(lease.as_str()) {
            status
                .metadata_mut()
                .insert(crate::error::LEASE_METADATA_KEY, v);
        }
    }
    status
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

/// With mTLS a node's certificate speaks only for the node it names: having joined, a node
/// cannot renew, leave, watch or report as another one. A controller's certificate, and
/// requests without one (TLS off: the guard checked the bearer), pass.
pub(super) fn speaks_for<T>(req: &Request<T>, node: Option<&pb::NodeRef>) -> Result<(), Status> {
    let members = rebeam_tls::identity::peer_members(req);
    if members.is_empty() || members.iter().any(|m| matches!(m, Member::Controller(_))) {
        return Ok(());
    }
    let named = node.map(|n| n.node.as_str()).unwrap_or_default();
    if members.contains(&Member::Node(named.to_string())) {
        return Ok(());
    }
    let own = members
        .iter()
        .map(Member::uri)
        .collect::<Vec<_>>()
        .join(", ");
    Err(Status::permission_denied(format!(
        "a certificate naming {own} cannot speak for node {named:?}; a node reports only as itself"
    )))
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        // With mTLS a node joins only under the name its certificate carries.
        rebeam_tls::identity::check_node_name(&req, &req.get_ref().node)?;
        let r = req.into_inner();
        validate::node_id(&r.node)?;
        validate::address(&r.address)?;
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        validate::labels(&labels)?;
        let node = r.node.clone();
        let cmd = Command::Join {
            node: r.node,
            address: r.address,
            labels,
            capacity: r.capacity,
        };
        match self.core.propose(cmd).await? {
            Outcome::Joined { incarnation } => {
                self.core.leases.grant(&node, incarnation);
                tracing::info!(node, incarnation, "node joined");
                Ok(Response::new(self.join_reply(incarnation)))
            }
            other => Err(Error::internal(format!("unexpected join outcome {other:?}")).into()),
        }
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (watching, streams_ended, sent_ms, attempt_ms) =
            (r.watching, r.streams_ended, r.sent_ms, r.attempt_ms);
        let (node, incarnation) = node_ref(r.node)?;
        // Half the node's attempt is spent waiting for a leader (or its first confirmation)
        // during an election: the answer comes in time, naming where to go, or served.
        // (`attempt_ms` 0, an older node: no wait, as before.)
        let until = Instant::now() + Duration::from_millis(attempt_ms.min(500) / 2);
        self.core
            .ensure_leader_soon(until)
            .await
            .map_err(|e| renewal_refused(&self.core, e))?;
        let term = self.core.raft.metrics().borrow().current_term;
        let t = &self.core.config.timings;
        if !self
            .core
            .leases
            .confirmed_by(term, t.confirm_within(), until)
            .await
        {
            // Possibly deposed without knowing it: renewing here could outlast what the
            // real leader honours. The node tries another member.
            return Err(Error::Unavailable(
                "this leader has not confirmed its leadership with a quorum lately; retry at another member".into(),
            )
            .into());
        }
        self.core
            .shared
            .applied
            .read()
            .state
            .check_live(&node, incarnation)?;
        let lease = self.core.config.timings.lease;
        let counted = self.core.leases.renew(
            &node,
            incarnation,
            watching,
            streams_ended,
            sent_ms,
            attempt_ms,
        );
        if !counted {
            // The node gave up on this attempt before it arrived; it never reads the answer.
            return Err(Status::deadline_exceeded(format!(
                "this renewal reached the leader later than the {attempt_ms} ms the node waits for it; not counted"
            )));
        }
        Ok(Response::new(pb::HeartbeatReply {
            lease_ms: lease.as_millis() as u64,
        }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let (node, incarnation) = node_ref(req.into_inner().node)?;
        self.core
            .propose(Command::Leave { node, incarnation })
            .await?;
        Ok(Response::new(pb::LeaveReply {}))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (node, incarnation) = node_ref(r.node)?;
        if r.follow.len() > MAX_FOLLOWED {
            return Err(Status::invalid_argument(format!(
                "follow names {} global names; a stream follows at most {MAX_FOLLOWED}",
                r.follow.len()
            )));
        }
        for name in &r.follow {
            validate::name("follow", name)?;
        }
        self.core
            .shared
            .applied
            .read()
            .state
            .check_live(&node, incarnation)?;
        let rx = super::watch::start(
            self.core.clone(),
            node,
            incarnation,
            r.resume_from,
            r.stream,
            r.batched,
            r.followed_names.then_some(r.follow),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_exit(
        &self,
        req: Request<pb::ReportExitRequest>,
    ) -> Result<Response<pb::ReportExitReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (node, incarnation) = node_ref(r.node)?;
        if r.exits.len() > validate::MAX_EXITS_PER_REPORT {
            return Err(Error::invalid(format!(
                "{} exits in one report; send at most {}",
                r.exits.len(),
                validate::MAX_EXITS_PER_REPORT
            ))
            .into());
        }
        let mut exits = Vec::with_capacity(r.exits.len());
        for e in r.exits {
            let p = pid(e.pid)?;
            if p.node != node || p.incarnation != incarnation {
                return Err(Error::invalid(format!(
                    "pid of node `{}` incarnation {} reported by `{node}` incarnation {incarnation}; nodes report only their own processes",
                    p.node, p.incarnation
                ))
                .into());
            }
            exits.push((p, e.reason));
        }
        self.core
            .propose(Command::ReportExits {
                node,
                incarnation,
                exits,
            })
            .await?;
        Ok(Response::new(pb::ReportExitReply {}))
    }

    async fn report_child_started(
        &self,
        req: Request<pb::ChildStartedRequest>,
    ) -> Result<Response<pb::ChildStartedReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (node, incarnation) = node_ref(r.node)?;
        let p = pid(r.pid)?;
        if p.node != node || p.incarnation != incarnation {
            return Err(Error::invalid(
                "the child's pid must belong to the reporting node incarnation",
            )
            .into());
        }
        let cmd = Command::ChildStarted {
            node,
            incarnation,
            app: r.app,
            child: r.child,
            generation: r.generation,
            pid: p,
        };
        self.core.propose(cmd).await?;
        Ok(Response::new(pb::ChildStartedReply {}))
    }

    async fn fetch_code(
        &self,
        req: Request<pb::FetchCodeRequest>,
    ) -> Result<Response<pb::FetchCodeReply>, Status> {
        let hash = req.into_inner().code_hash;
        let a = self.core.shared.applied.read();
        let blob = a.state.code.get(&hash).ok_or_else(|| {
            Error::NotFound(format!(
                "no code with hash `{hash}`; the app may have been replaced"
            ))
        })?;
        Ok(Response::new(pb::FetchCodeReply {
            code_hash: hash,
            code: blob.0.clone(),
        }))
    }

    async fn report_child_failed(
        &self,
        req: Request<pb::ChildFailedRequest>,
    ) -> Result<Response<pb::ChildFailedReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (node, incarnation) = node_ref(r.node)?;
        validate::required("app", &r.app, "pass the app of the assignment")?;
        validate::required("child", &r.child, "pass the child id of the assignment")?;
        if r.generation == 0 {
            return Err(
                Error::invalid("generation is 0; pass the generation of the assignment").into(),
            );
        }
        let cmd = Command::ChildFailed {
            node,
            incarnation,
            app: r.app,
            child: r.child,
            generation: r.generation,
            error: validate::tail(&r.error, validate::MAX_REPORT_ERROR_BYTES),
        };
        self.core.propose(cmd).await?;
        Ok(Response::new(pb::ChildFailedReply {}))
    }

    async fn report_upgrade(
        &self,
        req: Request<pb::UpgradeReportRequest>,
    ) -> Result<Response<pb::UpgradeReportReply>, Status> {
        speaks_for(&req, req.get_ref().node.as_ref())?;
        let r = req.into_inner();
        let (node, incarnation) = node_ref(r.node)?;
        validate::required("app", &r.app, "pass the app whose processes were moved")?;
        let result = r.result.ok_or_else(|| {
            Error::invalid("result is missing; pass what happened on the node as a NodeUpgrade")
        })?;
        let mut result = NodeUpgrade::try_from(result)?;
        if result.node.is_empty() {
            result.node = node.clone();
        } else if result.node != node {
            return Err(Error::invalid(format!(
                "the result names node `{}` but `{node}` reports it; nodes report only their own upgrades",
                result.node
            ))
            .into());
        }
        let cmd = Command::UpgradeReport {
            node,
            incarnation,
            app: r.app,
            result,
        };
        self.core.propose(cmd).await?;
        Ok(Response::new(pb::UpgradeReportReply {}))
    }

    async fn record_note(
        &self,
        req: Request<pb::RecordNoteRequest>,
    ) -> Result<Response<pb::RecordNoteReply>, Status> {
        let r = req.into_inner();
        validate::required("who", &r.who, "name who acted")?;
        validate::required("text", &r.text, "say what was done")?;
        let cmd = Command::Note {
            who: r.who,
            app: r.app,
            node: r.node,
            text: r.text,
        };
        self.core.propose(cmd).await?;
        Ok(Response::new(pb::RecordNoteReply {}))
    }
}
