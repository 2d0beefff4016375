//! The gateway: messages from outside the cluster (the Python client) enter at any node,
//! which routes them to the target process wherever it lives; and the node's processes and
//! kept app output, for `rebeam ps`, `tree` and `logs`.

use super::wire::{log_entry_to_pb, pid_from_pb, pid_to_pb, reason_to_pb};
use super::Cluster;
use crate::observe::stats::{GATEWAY_LATENCY, STATS};
use crate::observe::trace::{self, Delivery};
use crate::python::logs;
use crate::python::term::Term;
use crate::runtime::{CallResult, CallSlot, Envelope, Pid, Reason};
use pb::deliver_reply::Result as Outcome;
use pb::deliver_request::Target;
use rebeam_grpc::Error;
use rebeam_proto as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A call's default timeout, as `rebeam.call`'s.
const DEFAULT_TIMEOUT: f64 = 5.0;
/// The longest wait a client may ask for.
const MAX_TIMEOUT: f64 = 3600.0;
/// The longest app name (as the manifest allows).
const MAX_APP_NAME: usize = 64;
/// Entries per `LogsReply`, and about how many bytes of text: well under the 4 MiB message
/// limit of default gRPC clients, since one entry holds at most 64 KiB.
const LOG_BATCH: usize = 512;
const LOG_BATCH_BYTES: usize = 1024 * 1024;

/// The gateway service of one node.
pub struct Gateway {
    /// The cluster this node belongs to.
    pub cluster: Arc<Cluster>,
}

/// Streams the app's entries after `after_seq`, then (following) each new one, until the
/// client goes away.
async fn send_logs(
    log: Arc<logs::AppLog>,
    node: String,
    request: pb::LogsRequest,
    tx: tokio::sync::mpsc::Sender<Result<pb::LogsReply, Status>>,
) {
    // Subscribed before the first read: an entry appended in between wakes us.
    let mut appended = log.subscribe();
    let mut last = request.after_seq;
    loop {
        loop {
            let batch = log.after(last, LOG_BATCH, LOG_BATCH_BYTES);
            let Some(newest) = batch.last() else { break };
            last = newest.seq;
            let entries = batch
                .iter()
                .map(|e| log_entry_to_pb(e, &node, &request.app))
                .collect();
            if tx.send(Ok(pb::LogsReply { entries })).await.is_err() {
                return;
            }
        }
        if !request.follow {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            changed = appended.changed() => if changed.is_err() { return },
        }
    }
}

fn exit(pid: Option<Pid>, reason: &Reason) -> pb::DeliverReply {
    pb::DeliverReply {
        result: Some(Outcome::Exit(reason_to_pb(reason))),
        pid: pid.map(pid_to_pb),
    }
}

/// The pid a request is for: its own, or the holder of its global name (from the node's
/// cache of the registry, else asked of the controller).
async fn resolve(cluster: &Arc<Cluster>, target: Option<Target>) -> Result<Option<Pid>, Status> {
    match target {
            Some(Target::Pid(p)) => pid_from_pb(Some(&p))
                .map(Some)
                .ok_or_else(|| {
                    bad_request(
                        "the target pid names no valid node: a node id is 1 to 128 ASCII letters, digits, '.', '_' or '-'",
                    )
                }),
            Some(Target::Global(name)) => {
                if name.is_empty() || name.len() > 255 {
                    return Err(bad_request("a global name must be 1 to 255 bytes long"));
                }
                if let Some(pid) = cluster.whereis_cached(&name) {
                    return Ok(Some(pid));
                }
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || cluster.whereis_global(&name))
                    .await
                    .map_err(|e| internal(e.to_string()))?
            }
            None => Err(bad_request("a target is required: a global name or a pid")),
        }
}

#[tonic::async_trait]
impl pb::gateway_service_server::GatewayService for Gateway {
    type LogsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::LogsReply, Status>> + Send + 'static>,
    >;

    async fn list_processes(
        &self,
        request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesReply>, Status> {
        let r = request.into_inner();
        let app = r.app;
        let rt = self.cluster.rt.clone();
        let node = rt.node().name().to_string();
        let Some(query) = r.query else {
            // Reading Python objects needs the GIL: off the async workers.
            let processes = tokio::task::spawn_blocking(move || {
                crate::python::inspect::list(&rt, (!app.is_empty()).then_some(app.as_str()))
            })
            .await
            .map_err(|e| internal(format!("listing processes failed: {e}")))?;
            let supervisors = processes
                .iter()
                .filter_map(crate::cluster::wire::supervisor_to_pb)
                .collect();
            return Ok(Response::new(pb::ListProcessesReply {
                node,
                processes: processes.into_iter().map(Into::into).collect(),
                supervisors,
                ..Default::default()
            }));
        };
        let query = table_query(query)?;
        let page = tokio::task::spawn_blocking(move || {
            let page = crate::python::inspect::query(
                &rt,
                (!app.is_empty()).then_some(app.as_str()),
                &query,
            );
            // After the page: the next query judges by this observation.
            tokio::task::spawn_blocking(move || crate::python::inspect::observe_all(&rt));
            page
        })
        .await
        .map_err(|e| internal(format!("listing processes failed: {e}")))?;
        Ok(Response::new(pb::ListProcessesReply {
            node,
            processes: page
                .rows
                .into_iter()
                .map(|(report, stuck)| {
                    let mut row = pb::ProcessInfo::from(report);
                    row.stuck_judged = true;
                    if let Some(s) = stuck {
                        row.stuck_reason = s.reason.to_string();
                        row.stuck_for_ms = s.for_ms;
                    }
                    row
                })
                .collect(),
            paged: true,
            total: page.total as u64,
            after_cursor: page.after_cursor as u64,
            // Supervisors report only with a whole list (the tree reads them).
            supervisors: Vec::new(),
        }))
    }

    async fn kill(
        &self,
        request: Request<pb::KillRequest>,
    ) -> Result<Response<pb::KillReply>, Status> {
        let pid = request.into_inner().pid;
        let pid = pid_from_pb(pid.as_ref())
            .ok_or_else(|| bad_request("a pid with a node is required"))?;
        self.cluster.rt.exit_signal(pid, pid, Reason::Kill);
        Ok(Response::new(pb::KillReply {}))
    }

    async fn node_stats(
        &self,
        _request: Request<pb::NodeStatsRequest>,
    ) -> Result<Response<pb::NodeStatsReply>, Status> {
        Ok(Response::new(crate::observe::metrics::node_stats(
            &self.cluster.rt,
        )))
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesReply>, Status> {
        let rows = request.into_inner().preview_rows as usize;
        // Reading the tables needs the GIL: off the async workers.
        let tables = tokio::task::spawn_blocking(move || crate::python::inspect::tables(rows))
            .await
            .map_err(|e| internal(format!("listing tables failed: {e}")))?
            .map_err(internal)?;
        Ok(Response::new(pb::ListTablesReply {
            node: self.cluster.rt.node().name().to_string(),
            tables: tables
                .into_iter()
                .map(|t| pb::TableInfo {
                    name: t.name,
                    kind: t.kind,
                    access: t.access,
                    size: t.size,
                    owner: Some(pid_to_pb(t.owner)),
                    preview: t
                        .preview
                        .into_iter()
                        .map(|(key, value)| pb::TableEntry { key, value })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        if r.app.is_empty() || r.app.len() > MAX_APP_NAME {
            return Err(bad_request(format!(
                "an app name of 1 to {MAX_APP_NAME} bytes is required"
            )));
        }
        // A follower may come before the app's first process starts here: it waits on the
        // app's (empty) log. A one-off read of an unknown app is just empty.
        let log = if r.follow {
            Some(logs::log_for(&r.app))
        } else {
            logs::find(&r.app)
        };
        let node = self.cluster.rt.node().name().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        if let Some(log) = log {
            tokio::spawn(send_logs(log, node, r, tx));
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverReply>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        deliver(&self.cluster, request.into_inner(), traceparent.as_deref())
            .await
            .map(Response::new)
    }
}

/// Takes a call's reply on the thread that made it (the callee's executor, or the peer link
/// that brought it from another node), for a client wire connection to write at once: the
/// task that sent the call is then not woken first only to pass the reply on (a thread
/// wake-up is ~10–30 µs of a call from outside on the 2-core VM). The [`Done`] it is given
/// ends the delivering task; the taker runs it when that suits it.
pub type ReplyNow = Box<dyn FnOnce(&pb::DeliverReply, Done) + Send>;

/// Ends the delivery task of a reply that a [`ReplyNow`] took (the task waits for this, or
/// for its timeout) when dropped: a wake-up of the thread the task runs on.
pub struct Done(Option<tokio::sync::oneshot::Sender<Handed>>);

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Handed::Taken);
        }
    }
}

/// What a call's reply slot hands to the delivering task.
enum Handed {
    /// The reply (or the failure to encode it), for the task to return.
    Outcome(Result<Outcome, Status>),
    /// A `ReplyNow` took the reply.
    Taken,
}

/// Delivers one message from outside the cluster to its target and, for a call, waits for
/// the reply: the gRPC `Deliver` and the client wire (`transport::client`) both end here.
pub async fn deliver(
    cluster: &Arc<Cluster>,
    r: pb::DeliverRequest,
    traceparent: Option<&str>,
) -> Result<pb::DeliverReply, Status> {
    // Without a `ReplyNow` every reply is returned.
    deliver_to(cluster, r, traceparent, None)
        .await?
        .ok_or_else(|| internal("a reply was taken without a taker"))
}

/// [`deliver`], with a call's reply or exit given to `now` where it is made instead of
/// returned (None then). A timeout, a target that cannot be reached or a refused request is
/// still returned.
pub async fn deliver_to(
    cluster: &Arc<Cluster>,
    r: pb::DeliverRequest,
    traceparent: Option<&str>,
    now: Option<ReplyNow>,
) -> Result<Option<pb::DeliverReply>, Status> {
    let started = std::time::Instant::now();
    let kind = pb::DeliveryKind::try_from(r.kind)
        .ok()
        .filter(|k| *k != pb::DeliveryKind::Unspecified)
        .ok_or_else(|| bad_request("kind must be call, cast or send"))?;
    let Some(pid) = resolve(cluster, r.target).await? else {
        return Ok(Some(exit(None, &Reason::Noproc)));
    };
    let rt = &cluster.rt;
    let delivery = match kind {
        pb::DeliveryKind::Call => Delivery::Call,
        pb::DeliveryKind::Cast => Delivery::Cast,
        _ => Delivery::Send,
    };
    STATS.gateway_requests[delivery as usize].inc();
    let (span, carried) = trace::entering(delivery, pid, traceparent).unzip();
    let term = Term::from_wire(r.payload).traced(carried.flatten());
    if kind != pb::DeliveryKind::Call {
        let envelope = if kind == pb::DeliveryKind::Cast {
            Envelope::Cast(term)
        } else {
            Envelope::Info(term)
        };
        // Like `send`, delivery to a dead process is not an error.
        let _ = rt.send(pid, envelope);
        return Ok(Some(pb::DeliverReply {
            result: Some(Outcome::Accepted(true)),
            pid: Some(pid_to_pb(pid)),
        }));
    }
    let timeout = if r.timeout_s > 0.0 && r.timeout_s.is_finite() {
        r.timeout_s.min(MAX_TIMEOUT)
    } else {
        DEFAULT_TIMEOUT
    };
    // The reply is handed to this task instead of a thread blocked waiting for it: a
    // client that goes away drops the wait (and a long timeout holds no pool thread).
    let (reply_tx, mut reply_rx) = tokio::sync::oneshot::channel();
    let span = Arc::new(parking_lot::Mutex::new(span));
    let taken_span = span.clone();
    let slot = Arc::new(CallSlot::forwarding(
        None,
        Box::new(move |result: CallResult<Term>| {
            // Pickled where the reply is made: the callee's thread holds the interpreter then
            // (a reply from another node is bytes already), which spares the async side a hop
            // to the blocking pool to take it.
            let outcome = match result {
                CallResult::Reply(term) => term
                    .encode()
                    .map(Outcome::Value)
                    .map_err(|e| internal(format!("cannot serialize the reply: {e}"))),
                CallResult::Exit(reason) => Ok(Outcome::Exit(reason_to_pb(&reason))),
                // This task gave up waiting (or the call was dropped): the task answers.
                CallResult::CallerKilled => {
                    let _ = reply_tx.send(Handed::Outcome(Ok(Outcome::Exit(reason_to_pb(
                        &Reason::Noproc,
                    )))));
                    return;
                }
            };
            match (outcome, now) {
                (Ok(outcome), Some(now)) => {
                    // The task may end well after the reply went out: it is measured here.
                    finished(&taken_span, started, &outcome);
                    let reply = pb::DeliverReply {
                        result: Some(outcome),
                        pid: Some(pid_to_pb(pid)),
                    };
                    now(&reply, Done(Some(reply_tx)));
                }
                (outcome, _) => {
                    let _ = reply_tx.send(Handed::Outcome(outcome));
                }
            }
        }),
    ));
    let envelope = Envelope::Call {
        request: term,
        slot: slot.clone(),
    };
    if rt.send(pid, envelope).is_err() {
        let reason = if rt.is_remote(pid) {
            Reason::Noconnection
        } else {
            Reason::Noproc
        };
        return Ok(Some(exit(Some(pid), &reason)));
    }
    let waited = tokio::time::timeout(Duration::from_secs_f64(timeout), &mut reply_rx).await;
    let handed = match waited {
        Ok(handed) => handed,
        // Refuse a late reply rather than keep it; one already being handed over (it won
        // the slot just now) is taken as it comes.
        Err(_) => match slot.complete(CallResult::CallerKilled) {
            Ok(()) => Ok(Handed::Outcome(Ok(Outcome::TimedOut(true)))),
            Err(_) => reply_rx.await,
        },
    };
    let reply = match handed {
        Ok(Handed::Outcome(outcome)) => outcome?,
        Ok(Handed::Taken) => return Ok(None),
        // The slot was dropped unanswered (its process went without completing it).
        Err(_) => Outcome::Exit(reason_to_pb(&Reason::Noproc)),
    };
    finished(&span, started, &reply);
    Ok(Some(pb::DeliverReply {
        result: Some(reply),
        pid: Some(pid_to_pb(pid)),
    }))
}

/// A call from outside ended with `outcome`: its latency is recorded and its span (if
/// still open: the reply's taker or the task, whichever is first) ends.
fn finished(
    span: &parking_lot::Mutex<Option<trace::Sending>>,
    started: std::time::Instant,
    outcome: &Outcome,
) {
    GATEWAY_LATENCY.observe(started.elapsed());
    if let Some(span) = span.lock().take() {
        span.end(match outcome {
            Outcome::Value(_) | Outcome::Accepted(_) => None,
            Outcome::Exit(_) => Some("the callee exited"),
            Outcome::TimedOut(_) => Some("timed out"),
        });
    }
}

/// Rows one query may answer: the API's largest page, and offset paging's skipped rows.
const MAX_QUERY_ROWS: u64 = 1_000_000;

/// The gateway API's process query as the node runs it.
pub fn table_query(q: pb::ProcessQuery) -> Result<crate::python::inspect::TableQuery, Status> {
    use rebeam_http::ptable::{Place, Sort, Value};
    let sort = Sort::parse(&q.sort).ok_or_else(|| {
        bad_request(format!(
            "cannot sort by {:?}; use one of {}",
            q.sort,
            rebeam_http::ptable::SORTS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    if q.offset.saturating_add(u64::from(q.limit)) > MAX_QUERY_ROWS {
        return Err(bad_request(format!(
            "offset + limit may be {MAX_QUERY_ROWS} at most; page with a cursor"
        )));
    }
    let after = match q.after {
        None => None,
        Some(c) => {
            let pid = c
                .pid
                .ok_or_else(|| bad_request("a cursor needs the pid of its row"))?;
            let value = if sort.by_pid() {
                Value::Nothing
            } else if sort.numeric() {
                Value::Number(c.number)
            } else {
                Value::Text(c.text)
            };
            Some(Place {
                value,
                node: pid.node,
                incarnation: pid.incarnation,
                serial: pid.serial,
            })
        }
    };
    let pid = match q.pid {
        None => None,
        Some(p) => {
            Some(pid_from_pb(Some(&p)).ok_or_else(|| bad_request("the pid names no valid node"))?)
        }
    };
    Ok(crate::python::inspect::TableQuery {
        sort,
        descending: q.descending,
        limit: q.limit as usize,
        offset: q.offset as usize,
        text: q.text.to_lowercase(),
        stuck: q.stuck,
        after,
        pid,
        named_only: q.named_only,
    })
}

/// A refused request, as every Re:BEAM service reports one (`rebeam_grpc::Error`).
fn bad_request(message: impl Into<String>) -> Status {
    Error::invalid(message).into()
}

/// A failure inside the node, as every Re:BEAM service reports one.
fn internal(cause: impl std::fmt::Display) -> Status {
    Error::internal(cause).into()
}
