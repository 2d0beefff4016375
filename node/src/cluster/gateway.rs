//! The gateway: messages from outside the cluster (the Python client) enter at any node,
//! which routes them to the target process wherever it lives.

use super::wire::{pid_from_pb, pid_to_pb, reason_to_pb};
use super::Cluster;
use crate::python::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, Pid, Reason};
use pb::deliver_reply::Result as Outcome;
use pb::deliver_request::Target;
use rebeam_proto as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// A call's default timeout, as `rebeam.call`'s.
const DEFAULT_TIMEOUT: f64 = 5.0;
/// The longest wait a client may ask for.
const MAX_TIMEOUT: f64 = 3600.0;

/// The gateway service of one node.
pub struct Gateway {
    /// The cluster this node belongs to.
    pub cluster: Arc<Cluster>,
}

fn exit(pid: Option<Pid>, reason: &Reason) -> pb::DeliverReply {
    pb::DeliverReply {
        result: Some(Outcome::Exit(reason_to_pb(reason))),
        pid: pid.map(pid_to_pb),
    }
}

impl Gateway {
    async fn resolve(&self, target: Option<Target>) -> Result<Option<Pid>, Status> {
        match target {
            Some(Target::Pid(p)) => pid_from_pb(Some(&p))
                .map(Some)
                .ok_or_else(|| Status::invalid_argument("the target pid names no node")),
            Some(Target::Global(name)) => {
                if name.is_empty() || name.len() > 255 {
                    return Err(Status::invalid_argument(
                        "a global name must be 1 to 255 bytes long",
                    ));
                }
                if let Some(pid) = self.cluster.whereis_cached(&name) {
                    return Ok(Some(pid));
                }
                let cluster = self.cluster.clone();
                tokio::task::spawn_blocking(move || cluster.whereis_global(&name))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
            }
            None => Err(Status::invalid_argument(
                "a target is required: a global name or a pid",
            )),
        }
    }
}

#[tonic::async_trait]
impl pb::gateway_service_server::GatewayService for Gateway {
    type LogsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::LogsReply, Status>> + Send + 'static>,
    >;

    async fn list_processes(
        &self,
        _request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesReply>, Status> {
        Err(Status::unimplemented("TEMP: ListProcesses"))
    }

    async fn logs(
        &self,
        _request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        Err(Status::unimplemented("TEMP: Logs"))
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverReply>, Status> {
        let r = request.into_inner();
        let kind = pb::DeliveryKind::try_from(r.kind)
            .ok()
            .filter(|k| *k != pb::DeliveryKind::Unspecified)
            .ok_or_else(|| Status::invalid_argument("kind must be call, cast or send"))?;
        let Some(pid) = self.resolve(r.target).await? else {
            return Ok(Response::new(exit(None, &Reason::Noproc)));
        };
        let rt = &self.cluster.rt;
        let term = Term::from_wire(r.payload);
        if kind != pb::DeliveryKind::Call {
            let envelope = if kind == pb::DeliveryKind::Cast {
                Envelope::Cast(term)
            } else {
                Envelope::Info(term)
            };
            // Like `send`, delivery to a dead process is not an error.
            let _ = rt.send(pid, envelope);
            return Ok(Response::new(pb::DeliverReply {
                result: Some(Outcome::Accepted(true)),
                pid: Some(pid_to_pb(pid)),
            }));
        }
        let timeout = if r.timeout_s > 0.0 && r.timeout_s.is_finite() {
            r.timeout_s.min(MAX_TIMEOUT)
        } else {
            DEFAULT_TIMEOUT
        };
        let slot = Arc::new(CallSlot::default());
        let envelope = Envelope::Call {
            request: term,
            from: None,
            slot: slot.clone(),
        };
        if rt.send(pid, envelope).is_err() {
            let reason = if rt.is_remote(pid) {
                Reason::Noconnection
            } else {
                Reason::Noproc
            };
            return Ok(Response::new(exit(Some(pid), &reason)));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        let reply = tokio::task::spawn_blocking(move || match slot.wait(Some(deadline)) {
            Some(CallResult::Reply(term)) => match pyo3::Python::attach(|py| term.to_wire(py)) {
                Ok(bytes) => Ok(Outcome::Value(bytes)),
                Err(e) => Err(Status::internal(format!("cannot serialize the reply: {e}"))),
            },
            Some(CallResult::Exit(reason)) => Ok(Outcome::Exit(reason_to_pb(&reason))),
            Some(CallResult::CallerKilled) => Ok(Outcome::Exit(reason_to_pb(&Reason::Noproc))),
            None => Ok(Outcome::TimedOut(true)),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::DeliverReply {
            result: Some(reply),
            pid: Some(pid_to_pb(pid)),
        }))
    }
}
