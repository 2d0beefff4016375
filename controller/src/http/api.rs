//! The JSON REST API under `/api/v1`: the cluster, nodes, apps, names, groups, the
//! supervision tree, processes (gathered from the nodes, paged on the server) and events.
//! The dashboard and `rebeam --json` read the same documents.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use parking_lot::Mutex;
use rebeam_proto::v1 as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::Core;
use crate::error::Error;
use crate::http::auth::{require, Authenticated, Role};
use crate::http::live::NodeLoads;
use crate::http::nodes::NodeClients;
use crate::http::stuck::StuckWatch;
use crate::types::{AppStatus, Command, Pid};
use rebeam_http::ptable::{
    decode_cursor, encode_cursor, ordered, Place, Sort, Value as PlaceValue, SORTS,
};
use rebeam_http::stuck::Stuck;

/// Most rows one page of processes may hold.
pub const MAX_PAGE: usize = 1_000;
/// How long a gathered process list is fresh: pages asked within it read the same list
/// (paging stays consistent and cheap).
const PROCESS_CACHE_TTL: Duration = Duration::from_millis(1_000);
/// How long a stale list is still served while a new one is gathered in the background, so
/// a page over a very large cluster answers at once; an older one is gathered in line.
const PROCESS_CACHE_STALE: Duration = Duration::from_secs(30);

/// What the API handlers share.
pub struct Api {
    /// The controller member.
    pub core: Arc<Core>,
    /// Clients of the nodes' gateways.
    pub nodes: NodeClients,
    cache: Mutex<HashMap<String, Cached>>,
    /// Which processes look stuck, from successive lists.
    pub stuck: StuckWatch,
    /// The nodes' resource use and rates, polled by [`crate::http::live::poll_nodes`].
    pub loads: NodeLoads,
}

struct Cached {
    at: Instant,
    list: Arc<ProcessList>,
    refreshing: bool,
}

/// Every process the nodes reported, with the nodes that did not answer.
pub struct ProcessList {
    rows: Vec<pb::ProcessInfo>,
    /// The supervisors' reports, by pid id.
    supervisors: HashMap<String, pb::SupervisorInfo>,
    missing: Vec<(String, String)>,
    /// When it was gathered.
    at: Instant,
}

impl ProcessList {
    /// The processes, as the nodes reported them.
    pub fn rows(&self) -> &[pb::ProcessInfo] {
        &self.rows
    }

    /// When the list was gathered.
    pub fn gathered_at(&self) -> Instant {
        self.at
    }
}

impl Api {
    /// The API over `core`.
    pub fn new(core: Arc<Core>) -> Arc<Self> {
        Arc::new(Api {
            nodes: NodeClients::new(core.clone()),
            core,
            cache: Mutex::new(HashMap::new()),
            stuck: StuckWatch::default(),
            loads: NodeLoads::default(),
        })
    }

    async fn gather(&self, app: &str) -> Arc<ProcessList> {
        let g = self.nodes.processes(app).await;
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut supervisors = HashMap::new();
        for (_, reply) in g.answers {
            rows.extend(reply.processes);
            for s in reply.supervisors {
                if let Some(pid) = &s.pid {
                    supervisors.insert(pid_id(pid), s);
                }
            }
        }
        let list = Arc::new(ProcessList {
            rows,
            supervisors,
            missing: g.missing,
            at: now,
        });
        self.stuck.observe(&list.rows, now);
        let mut cache = self.cache.lock();
        cache.retain(|_, c| c.at.elapsed() < PROCESS_CACHE_STALE);
        cache.insert(
            app.to_string(),
            Cached {
                at: now,
                list: list.clone(),
                refreshing: false,
            },
        );
        list
    }

    /// The processes of `app` (all for ""): a fresh list, else a stale one while a new one
    /// is gathered in the background, else one gathered now.
    pub async fn processes(self: &Arc<Self>, app: &str) -> Arc<ProcessList> {
        let stale = {
            let mut cache = self.cache.lock();
            match cache.get_mut(app) {
                Some(c) if c.at.elapsed() < PROCESS_CACHE_TTL => return c.list.clone(),
                Some(c) if c.at.elapsed() < PROCESS_CACHE_STALE => {
                    let start = !c.refreshing;
                    c.refreshing = true;
                    Some((c.list.clone(), start))
                }
                _ => None,
            }
        };
        match stale {
            Some((list, start)) => {
                if start {
                    let (api, app) = (self.clone(), app.to_string());
                    tokio::spawn(async move { api.gather(&app).await });
                }
                list
            }
            None => self.gather(app).await,
        }
    }
}

/// An error as the API answers it: the status from the crate's error, a JSON body.
pub struct ApiError(pub StatusCode, pub String, pub String);

impl ApiError {
    /// A 400 with `msg`.
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, "invalid".into(), msg.into())
    }
    /// A 404 with `msg`.
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError(StatusCode::NOT_FOUND, "not_found".into(), msg.into())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = format!("{:?}", e.code()).to_lowercase();
        ApiError(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1, "message": self.2}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The `/api/v1` routes.
pub fn routes(api: Arc<Api>) -> Router {
    let logs = Arc::new(crate::http::logs::LogState {
        api: api.clone(),
        viewers: crate::http::logs::Viewers::default(),
    });
    Router::new()
        .route(
            "/api/v1/apps/{name}/logs",
            get(crate::http::logs::stream).with_state(logs),
        )
        .route("/api/v1/session", get(session))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/apps/{name}", get(app))
        .route("/api/v1/apps/{name}/stop", post(stop_app))
        .route("/api/v1/names", get(names))
        .route("/api/v1/groups", get(groups))
        .route("/api/v1/tree", get(tree))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/processes/{pid}/kill", post(kill))
        .route("/api/v1/processes/{pid}/restart", post(restart))
        .route("/api/v1/events", get(events))
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/openapi.json", get(crate::http::openapi::document))
        .with_state(api)
}

/// `node.incarnation.serial`: the unambiguous pid form the API uses in paths.
pub fn pid_id(p: &pb::Pid) -> String {
    format!("{}.{}.{}", p.node, p.incarnation, p.serial)
}

fn pid_json(p: &Pid) -> Value {
    json!({"id": format!("{}.{}.{}", p.node, p.incarnation, p.serial),
           "node": p.node, "incarnation": p.incarnation, "serial": p.serial})
}

fn parse_pid(s: &str) -> Result<pb::Pid, ApiError> {
    let mut parts = s.rsplitn(3, '.');
    let (serial, inc, node) = (parts.next(), parts.next(), parts.next());
    match (
        node,
        inc.and_then(|i| i.parse().ok()),
        serial.and_then(|x| x.parse().ok()),
    ) {
        (Some(node), Some(incarnation), Some(serial)) if !node.is_empty() => Ok(pb::Pid {
            node: node.to_string(),
            incarnation,
            serial,
        }),
        _ => Err(ApiError::bad(format!(
            "pid {s:?} is malformed; write it as NODE.INCARNATION.SERIAL, e.g. web.3.42"
        ))),
    }
}

async fn session(Extension(a): Extension<Authenticated>) -> ApiResult {
    Ok(Json(json!({
        "who": a.principal.who,
        "role": a.principal.role,
        "can_act": a.principal.role >= Role::OPERATOR,
        "can_kill": a.principal.role >= Role::Admin,
        "csrf": a.csrf,
    })))
}

fn role_name(s: openraft::ServerState) -> &'static str {
    match s {
        openraft::ServerState::Leader => "leader",
        openraft::ServerState::Follower => "follower",
        openraft::ServerState::Candidate => "candidate",
        openraft::ServerState::Learner => "learner",
        openraft::ServerState::Shutdown => "shutdown",
    }
}

async fn cluster(State(api): State<Arc<Api>>) -> ApiResult {
    let m = api.core.raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let last = m.last_log_index.unwrap_or(0);
    // Followers' progress is known to the leader only.
    let replication = m.replication.clone().unwrap_or_default();
    let controllers: Vec<Value> = m
        .membership_config
        .nodes()
        .map(|(id, n)| {
            let matched = if *id == api.core.id {
                m.last_applied.map(|l| l.index)
            } else {
                replication.get(id).and_then(|x| x.map(|l| l.index))
            };
            json!({
                "id": id,
                "raft_address": n.raft_addr,
                "api_address": n.api_addr,
                "voter": voters.contains(id),
                "leader": m.current_leader == Some(*id),
                "matched_index": matched,
                "lag": matched.map(|x| last.saturating_sub(x)),
            })
        })
        .collect();
    let (alive, dead, apps, names, groups) = {
        let a = api.core.shared.applied.read();
        let s = &a.state;
        (
            s.nodes.values().filter(|n| n.alive).count(),
            s.nodes.values().filter(|n| !n.alive).count(),
            s.apps.len(),
            s.names.len(),
            s.groups.len(),
        )
    };
    Ok(Json(json!({
        "this": {
            "id": api.core.id,
            "role": role_name(m.state),
            "term": m.current_term,
            "leader": m.current_leader,
            "last_log_index": m.last_log_index,
            "commit_index": crate::http::metrics::commit_index(&m),
            "applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
        },
        "leader": m.current_leader,
        "leader_api_address": api.core.leader_api(),
        "controllers": controllers,
        "nodes_alive": alive,
        "nodes_dead": dead,
        "apps": apps,
        "global_names": names,
        "groups": groups,
    })))
}

async fn nodes(State(api): State<Arc<Api>>) -> ApiResult {
    let lease_left = api.core.leases.remaining();
    let a = api.core.shared.applied.read();
    let s = &a.state;
    let mut children: BTreeMap<&str, usize> = BTreeMap::new();
    for x in s.all_assignments() {
        if let Some((n, _)) = &x.node {
            *children.entry(n.as_str()).or_default() += 1;
        }
    }
    let nodes: Vec<Value> = s
        .nodes
        .values()
        .map(|n| {
            json!({
                "id": n.id,
                "incarnation": n.incarnation,
                "address": n.address,
                "status": if n.alive { "alive" } else { "dead" },
                "labels": n.labels,
                "capacity": n.capacity,
                "joined_at_ms": n.joined_at_ms,
                "died_at_ms": (!n.alive).then_some(n.died_at_ms),
                "death_reason": n.death_reason,
                "top_level_children": children.get(n.id.as_str()).copied().unwrap_or(0),
                // Known while this member leads (leases live in the leader's memory).
                "lease_remaining_ms": lease_left.get(&n.id).filter(|(i, _)| *i == n.incarnation).map(|(_, ms)| *ms),
                // From the node's last stats answer (every few seconds; none while dead).
                "load": n.alive.then(|| api.loads.get(&n.id)).flatten(),
            })
        })
        .collect();
    Ok(Json(json!({ "nodes": nodes })))
}

fn app_json(app: &crate::types::App, now_ms: u64) -> Value {
    let window = u64::from(app.draft.max_seconds) * 1000;
    let used = app
        .restart_times
        .iter()
        .filter(|t| now_ms.saturating_sub(**t) < window)
        .count();
    json!({
        "name": app.draft.name,
        "version": app.draft.version,
        "status": match app.status {
            AppStatus::Running => "running",
            AppStatus::Stopped => "stopped",
            AppStatus::Failed => "failed",
        },
        "failure_reason": app.failure_reason,
        "intensity_exceeded": app.status == AppStatus::Failed && app.failure_reason.contains("intensity exceeded"),
        "max_restarts": app.draft.max_restarts,
        "max_seconds": app.draft.max_seconds,
        "restarts_in_window": used,
        "code_hash": app.code_hash,
        "code_size": app.code_size,
        "submitted_at_ms": app.submitted_at_ms,
        "previous_version": app.previous.as_ref().map(|p| p.draft.version.clone()),
        "last_error": app.last_error,
        "upgrade_error": app.upgrade_error,
        "upgrades": app.upgrades,
        "children": app.draft.children.iter().map(|c| json!({
            "id": c.id, "start": c.start, "name": c.name, "global": c.global,
            "restart": c.restart, "placement": c.placement,
        })).collect::<Vec<_>>(),
    })
}

/// Wall clock in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn apps(State(api): State<Arc<Api>>) -> ApiResult {
    let a = api.core.shared.applied.read();
    let now = now_ms();
    let apps: Vec<Value> = a.state.apps.values().map(|x| app_json(x, now)).collect();
    Ok(Json(json!({ "apps": apps })))
}

fn upgrade_history(api: &Api, name: &str) -> Vec<Value> {
    let a = api.core.shared.applied.read();
    a.state
        .journal
        .entries
        .iter()
        .filter(|e| e.app == name && (e.kind == "app" || e.kind == "operator"))
        .map(|e| json!(e))
        .collect()
}

async fn app(State(api): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult {
    let found = {
        let a = api.core.shared.applied.read();
        a.state.apps.get(&name).map(|x| app_json(x, now_ms()))
    };
    let mut app = found.ok_or_else(|| ApiError::not_found(format!("no app named {name:?}")))?;
    app["history"] = Value::Array(upgrade_history(&api, &name));
    Ok(Json(app))
}

async fn stop_app(
    State(api): State<Arc<Api>>,
    Extension(who): Extension<Authenticated>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Response> {
    require(&who, Role::OPERATOR).map_err(|r| *r)?;
    let done = async {
        at_leader(&api, Command::StopApp { name: name.clone() }).await?;
        at_leader(
            &api,
            Command::Note {
                who: who.principal.who.clone(),
                app: name.clone(),
                node: String::new(),
                text: format!("stopped app {name} from the dashboard"),
            },
        )
        .await
    };
    done.await.map_err(|e| ApiError::from(e).into_response())?;
    Ok(Json(json!({"stopped": name})))
}

/// Writes `cmd` through the leader: proposed here when this member leads, else sent to
/// the leader's API as a member (the dashboard works on any member): over the cluster's
/// TLS with this member's certificate when TLS is on, else with the cluster secret.
async fn at_leader(api: &Api, cmd: Command) -> Result<(), Error> {
    if api.core.ensure_leader().is_ok() {
        return match api.core.propose(cmd).await? {
            crate::types::Outcome::Rejected(e) => Err(e),
            _ => Ok(()),
        };
    }
    let leader = api
        .core
        .leader_api()
        .ok_or(Error::NotLeader { leader: None })?;
    let dialer = rebeam_tls::Dialer::new(api.core.config.tls.clone());
    let channel = dialer
        .channel(&leader, |e| {
            e.connect_timeout(crate::http::nodes::NODE_TIMEOUT)
                .timeout(crate::http::nodes::NODE_TIMEOUT)
        })
        .map_err(|e| Error::Unavailable(format!("cannot reach the leader at {leader}: {e}")))?;
    // With TLS this member's certificate proves it; the secret then never travels.
    let bearer = crate::auth::BearerInjector::for_member(&api.core.config.secret, &dialer);
    let status_err = |s: tonic::Status| match s.code() {
        tonic::Code::NotFound => Error::NotFound(s.message().to_string()),
        tonic::Code::InvalidArgument => Error::InvalidArgument(s.message().to_string()),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(s.message().to_string()),
        _ => Error::Unavailable(s.message().to_string()),
    };
    match cmd {
        Command::StopApp { name } => {
            let mut c =
                rebeam_proto::v1::cluster_service_client::ClusterServiceClient::with_interceptor(
                    channel, bearer,
                );
            c.stop_app(pb::StopAppRequest { name })
                .await
                .map_err(status_err)?;
        }
        Command::Note {
            who,
            app,
            node,
            text,
        } => {
            let mut c = rebeam_proto::v1::node_service_client::NodeServiceClient::with_interceptor(
                channel, bearer,
            );
            c.record_note(pb::RecordNoteRequest {
                who,
                app,
                node,
                text,
            })
            .await
            .map_err(status_err)?;
        }
        other => {
            return Err(Error::internal(format!(
                "the dashboard does not forward {other:?}"
            )))
        }
    }
    Ok(())
}

/// Most local names asked of each node for `/api/v1/names`.
const MAX_LOCAL_NAMES: u32 = 1_000;

async fn names(State(api): State<Arc<Api>>) -> ApiResult {
    let names: Vec<Value> = {
        let a = api.core.shared.applied.read();
        a.state
            .names
            .iter()
            .map(|(n, p)| json!({"name": n, "pid": pid_json(p), "node": p.node}))
            .collect()
    };
    // Local names live only on their nodes: each live node answers its named processes.
    let request = pb::ListProcessesRequest {
        app: String::new(),
        query: Some(pb::ProcessQuery {
            sort: "name".into(),
            limit: MAX_LOCAL_NAMES,
            named_only: true,
            ..Default::default()
        }),
    };
    let g = api.nodes.list(api.nodes.live(), request).await;
    let mut local: Vec<Value> = Vec::new();
    let mut truncated = false;
    for (node, reply) in &g.answers {
        // A node that predates `named_only` lists every process: keep the named ones.
        truncated |= reply.paged && reply.total > reply.processes.len() as u64;
        local.extend(
            reply
                .processes
                .iter()
                .filter(|p| !p.name.is_empty())
                .map(|p| {
                    json!({
                        "name": p.name,
                        "pid": p.pid.as_ref().map(pid_id),
                        "node": node,
                        "app": p.app,
                    })
                }),
        );
    }
    local.sort_by(|a, b| {
        (a["node"].as_str(), a["name"].as_str()).cmp(&(b["node"].as_str(), b["name"].as_str()))
    });
    Ok(Json(json!({
        "names": names,
        "local_names": local,
        "local_names_truncated": truncated,
        "missing_nodes": g.missing.iter().map(|(n, e)| json!({"node": n, "error": e})).collect::<Vec<_>>(),
    })))
}

async fn groups(State(api): State<Arc<Api>>) -> ApiResult {
    let a = api.core.shared.applied.read();
    let groups: Vec<Value> = a
        .state
        .groups
        .iter()
        .map(|(g, m)| json!({"group": g, "members": m.iter().map(pid_json).collect::<Vec<_>>()}))
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

fn process_json(p: &pb::ProcessInfo, stuck: &StuckWatch) -> Value {
    let pid = p.pid.clone().unwrap_or_default();
    // A node answering a query judged its rows itself; a whole list is judged here.
    let s = if p.stuck_judged {
        (!p.stuck_reason.is_empty()).then(|| Stuck {
            reason: stuck_reason(&p.stuck_reason),
            for_ms: p.stuck_for_ms,
        })
    } else {
        stuck.judge(p, Instant::now())
    };
    json!({
        "stuck": s.is_some(),
        "stuck_reason": s.as_ref().map(|s| s.reason),
        "stuck_for_ms": s.as_ref().map(|s| s.for_ms),
        "id": pid_id(&pid),
        "node": pid.node,
        "name": p.name,
        "app": p.app,
        "version": p.version,
        "kind": p.kind,
        "initial": p.initial,
        "current_function": p.current_function,
        "mailbox": p.mailbox_len,
        "handled": p.messages_handled,
        "memory": p.memory_bytes,
        "parent": p.parent.as_ref().map(pid_id),
        "child": p.child,
        "trap_exits": p.trap_exits,
        "links": p.links.iter().map(pid_id).collect::<Vec<_>>(),
    })
}

/// Query of `/api/v1/processes`.
#[derive(Deserialize)]
pub struct ProcessQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    sort: Option<String>,
    order: Option<String>,
    q: Option<String>,
    node: Option<String>,
    app: Option<String>,
    stuck: Option<bool>,
    after: Option<String>,
}

/// Rows skipped plus rows shown that offset paging may ask for (each node sends that many):
/// deeper pages follow `next_cursor`, which costs the same at any depth.
pub const MAX_OFFSET_ROWS: usize = 1_000_000;

/// A query string that does not parse, answered as JSON like every other API error.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad(format!("bad query string: {}", e.body_text())))
}

/// The reason text of a node's judgement, as the shared rules name it.
fn stuck_reason(text: &str) -> &'static str {
    match text {
        "handler running" => "handler running",
        "mailbox growing" => "mailbox growing",
        _ => "stuck",
    }
}

/// A row's place in the order of `sort`, from the fields the node filled.
fn place_of(p: &pb::ProcessInfo, sort: Sort) -> Place {
    let pid = p.pid.clone().unwrap_or_default();
    let value = match sort {
        Sort::Pid | Sort::Node => PlaceValue::Nothing,
        Sort::Name => PlaceValue::Text(p.name.clone()),
        Sort::App => PlaceValue::Text(p.app.clone()),
        Sort::Kind => PlaceValue::Text(p.kind.clone()),
        Sort::Function => PlaceValue::Text(p.current_function.clone()),
        Sort::Mailbox => PlaceValue::Number(p.mailbox_len),
        Sort::Handled => PlaceValue::Number(p.messages_handled),
        Sort::Memory => PlaceValue::Number(p.memory_bytes),
        Sort::Stuck => PlaceValue::Number(p.stuck_for_ms),
    };
    Place {
        value,
        node: pid.node,
        incarnation: pid.incarnation,
        serial: pid.serial,
    }
}

/// A place as the gateway API's cursor.
fn cursor_pb(p: &Place) -> pb::ProcessCursor {
    let (text, number) = match &p.value {
        PlaceValue::Nothing => (String::new(), 0),
        PlaceValue::Number(n) => (String::new(), *n),
        PlaceValue::Text(t) => (t.clone(), 0),
    };
    pb::ProcessCursor {
        text,
        number,
        pid: Some(pb::Pid {
            node: p.node.clone(),
            incarnation: p.incarnation,
            serial: p.serial,
        }),
    }
}

/// One node's sorted rows after the cursor, as a node that predates queries would have
/// answered the query: its whole list selected here. Returns (matching, after the cursor,
/// the first `want` rows after it in order).
fn select_here(
    api: &Api,
    mut rows: Vec<pb::ProcessInfo>,
    q: &pb::ProcessQuery,
    sort: Sort,
    after: Option<&Place>,
) -> (u64, u64, Vec<(Place, pb::ProcessInfo)>) {
    let now = Instant::now();
    api.stuck.observe(&rows, now);
    for p in &mut rows {
        let s = api.stuck.judge(p, now);
        p.stuck_judged = true;
        p.stuck_reason = s.as_ref().map_or("", |s| s.reason).to_string();
        p.stuck_for_ms = s.map_or(0, |s| s.for_ms);
    }
    let needle = &q.text;
    let matching: Vec<(Place, pb::ProcessInfo)> = rows
        .into_iter()
        .filter(|p| q.stuck.is_none_or(|want| want != p.stuck_reason.is_empty()))
        .filter(|p| {
            needle.is_empty()
                || p.name.to_lowercase().contains(needle)
                || p.initial.to_lowercase().contains(needle)
                || p.current_function.to_lowercase().contains(needle)
                || p.app.to_lowercase().contains(needle)
                || p.pid.as_ref().is_some_and(|x| pid_id(x).contains(needle))
        })
        .map(|p| (place_of(&p, sort), p))
        .collect();
    let total = matching.len() as u64;
    let mut rest: Vec<_> = matching
        .into_iter()
        .filter(|(place, _)| after.is_none_or(|a| ordered(a, place, q.descending).is_lt()))
        .collect();
    let after_cursor = rest.len() as u64;
    rest.sort_by(|a, b| ordered(&a.0, &b.0, q.descending));
    rest.truncate(q.limit as usize);
    (total, after_cursor, rest)
}

/// The first `skip + take` rows of the nodes' sorted pages in order (a k-way merge: each
/// step takes the first head among the nodes), without the first `skip`.
fn merge_pages(
    pages: Vec<Vec<(Place, pb::ProcessInfo)>>,
    descending: bool,
    skip: usize,
    take: usize,
) -> Vec<(Place, pb::ProcessInfo)> {
    let mut pages: Vec<std::collections::VecDeque<(Place, pb::ProcessInfo)>> =
        pages.into_iter().map(Into::into).collect();
    let mut out = Vec::with_capacity(take);
    let mut seen = 0;
    while out.len() < take {
        let mut first: Option<usize> = None;
        for (i, page) in pages.iter().enumerate() {
            let Some((place, _)) = page.front() else {
                continue;
            };
            let better = match first.and_then(|f| pages[f].front()) {
                None => true,
                Some((best, _)) => ordered(place, best, descending).is_lt(),
            };
            if better {
                first = Some(i);
            }
        }
        let Some(row) = first.and_then(|f| pages[f].pop_front()) else {
            break;
        };
        seen += 1;
        if seen > skip {
            out.push(row);
        }
    }
    out
}

async fn processes(
    State(api): State<Arc<Api>>,
    q: Result<Query<ProcessQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let sort_name = q.sort.as_deref().unwrap_or("pid");
    let sort = SORTS
        .iter()
        .find(|(n, _)| *n == sort_name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "cannot sort by {sort_name:?}; use one of {}",
                SORTS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let desc = match q.order.as_deref().unwrap_or("asc") {
        "asc" => false,
        "desc" => true,
        other => {
            return Err(ApiError::bad(format!(
                "order {other:?} is neither asc nor desc"
            )))
        }
    };
    let after = q
        .after
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| decode_cursor(c, sort, desc))
        .transpose()
        .map_err(ApiError::bad)?;
    let offset = q.offset.unwrap_or(0);
    let want = offset.saturating_add(limit);
    if want > MAX_OFFSET_ROWS {
        return Err(ApiError::bad(format!(
            "offset + limit may be {MAX_OFFSET_ROWS} at most; follow next_cursor (after=) for deeper pages"
        )));
    }
    let started = Instant::now();
    // Every node selects, orders and describes its own page of offset + limit rows (from
    // the cursor on); the pages are merged here.
    let query = pb::ProcessQuery {
        sort: sort.name().to_string(),
        descending: desc,
        limit: want as u32,
        offset: 0,
        text: q.q.as_deref().unwrap_or("").to_lowercase(),
        stuck: q.stuck,
        after: after.as_ref().map(cursor_pb),
        pid: None,
        named_only: false,
    };
    let nodes: Vec<(String, String)> = api
        .nodes
        .live()
        .into_iter()
        .filter(|(id, _)| q.node.as_deref().is_none_or(|n| n == id))
        .collect();
    let request = pb::ListProcessesRequest {
        app: q.app.clone().unwrap_or_default(),
        query: Some(query.clone()),
    };
    let g = api.nodes.list(nodes, request).await;
    let (mut total, mut after_cursor) = (0u64, 0u64);
    let mut pages = Vec::new();
    for (_, reply) in g.answers {
        if reply.paged {
            total += reply.total;
            after_cursor += reply.after_cursor;
            pages.push(
                reply
                    .processes
                    .into_iter()
                    .map(|p| (place_of(&p, sort), p))
                    .collect(),
            );
        } else {
            let (t, a, rows) = select_here(&api, reply.processes, &query, sort, after.as_ref());
            total += t;
            after_cursor += a;
            pages.push(rows);
        }
    }
    let rows = merge_pages(pages, desc, offset, limit);
    let more = after_cursor > (offset + rows.len()) as u64;
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|(place, _)| encode_cursor(sort, desc, place));
    let items: Vec<Value> = rows
        .iter()
        .map(|(_, p)| process_json(p, &api.stuck))
        .collect();
    Ok(Json(json!({
        "total": total,
        "as_of_ms": now_ms(),
        "age_ms": 0,
        "offset": offset,
        "limit": limit,
        "items": items,
        "next_cursor": next_cursor,
        "missing_nodes": g.missing.iter().map(|(n, e)| json!({"node": n, "error": e})).collect::<Vec<_>>(),
        "took_ms": started.elapsed().as_secs_f64() * 1000.0,
    })))
}

/// The live process `pid`, asked of its node alone.
async fn one_process(api: &Api, pid: &pb::Pid) -> Result<pb::ProcessInfo, ApiError> {
    let id = pid_id(pid);
    let gone = || ApiError::not_found(format!("no live process {id}"));
    let address = api.nodes.address_of(&pid.node).ok_or_else(gone)?;
    let request = pb::ListProcessesRequest {
        app: String::new(),
        query: Some(pb::ProcessQuery {
            limit: 1,
            pid: Some(pid.clone()),
            ..Default::default()
        }),
    };
    let mut g = api
        .nodes
        .list(vec![(pid.node.clone(), address)], request)
        .await;
    if let Some((node, e)) = g.missing.pop() {
        return Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "node".into(),
            format!("node {node} did not answer: {e}"),
        ));
    }
    let reply = g.answers.pop().map(|(_, r)| r).ok_or_else(gone)?;
    // A node that predates queries lists every process.
    reply
        .processes
        .into_iter()
        .find(|p| p.pid.as_ref() == Some(pid))
        .ok_or_else(gone)
}

async fn process(State(api): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult {
    let pid = parse_pid(&id)?;
    let found = one_process(&api, &pid).await?;
    let mut v = process_json(&found, &api.stuck);
    // A node that predates the process page's fields leaves them unknown (null).
    let monitors = |ms: &[pb::ProcessMonitor]| -> Value {
        ms.iter()
            .map(|m| json!({"ref": m.r#ref, "pid": m.pid.as_ref().map(pid_id)}))
            .collect()
    };
    if found.detailed {
        v["monitors"] = monitors(&found.monitors);
        v["monitored_by"] = monitors(&found.monitored_by);
        v["stack"] = json!(found.stack);
        v["state"] = json!(found.state);
    } else {
        for key in ["monitors", "monitored_by", "stack", "state"] {
            v[key] = Value::Null;
        }
    }
    let a = api.core.shared.applied.read();
    let domain: Pid = pid.clone().into();
    v["global_names"] = json!(a
        .state
        .names
        .iter()
        .filter(|(_, p)| **p == domain)
        .map(|(n, _)| n)
        .collect::<Vec<_>>());
    v["groups"] = json!(a
        .state
        .groups
        .iter()
        .filter(|(_, m)| m.contains(&domain))
        .map(|(g, _)| g)
        .collect::<Vec<_>>());
    Ok(Json(v))
}

async fn kill(
    State(api): State<Arc<Api>>,
    Extension(who): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Response> {
    // Killing a process is an admin's action, as `GatewayService/Kill` in auth::RPC_TABLE.
    require(&who, Role::Admin).map_err(|r| *r)?;
    let pid = parse_pid(&id).map_err(IntoResponse::into_response)?;
    let node = pid.node.clone();
    api.nodes
        .kill(pid)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "node".into(), e).into_response())?;
    // Recorded after the fact: the journal is the audit trail, the kill does not wait on Raft.
    let note = Command::Note {
        who: who.principal.who.clone(),
        app: String::new(),
        node,
        text: format!("killed process {id} from the dashboard"),
    };
    if let Err(e) = at_leader(&api, note).await {
        tracing::warn!(error = %e, "could not record a kill in the journal");
    }
    Ok(Json(json!({"killed": id})))
}

/// Restarts a supervised child: kills it (`killed`, an abnormal exit) so its supervisor
/// (or, for a top-level child, the controller) starts it again under its restart rules.
/// The operator's action; refused for a process no one restarts.
async fn restart(
    State(api): State<Arc<Api>>,
    Extension(who): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Response> {
    require(&who, Role::OPERATOR).map_err(|r| *r)?;
    let pid = parse_pid(&id).map_err(IntoResponse::into_response)?;
    let found = one_process(&api, &pid)
        .await
        .map_err(IntoResponse::into_response)?;
    let conflict = |msg: String| ApiError(StatusCode::CONFLICT, "not_restartable".into(), msg);
    let what = if !found.child.is_empty() {
        let temporary = {
            let a = api.core.shared.applied.read();
            a.state.apps.get(&found.app).is_some_and(|app| {
                app.draft
                    .children
                    .iter()
                    .any(|c| c.id == found.child && c.restart == crate::types::Restart::Temporary)
            })
        };
        if temporary {
            return Err(conflict(format!(
                "{id} is the temporary top-level child {}; it would not be started again",
                found.child
            ))
            .into_response());
        }
        format!("top-level child {}", found.child)
    } else {
        let supervised = match found.parent.as_ref() {
            Some(parent) => one_process(&api, parent)
                .await
                .is_ok_and(|p| p.kind == "supervisor"),
            None => false,
        };
        if !supervised {
            return Err(
                conflict(format!("{id} is not a supervisor's child; kill it instead"))
                    .into_response(),
            );
        }
        let name = [&found.name, &found.initial]
            .into_iter()
            .find(|x| !x.is_empty())
            .cloned()
            .unwrap_or_default();
        format!("child {name}")
    };
    let app = found.app.clone();
    api.nodes
        .kill(pid.clone())
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "node".into(), e).into_response())?;
    let note = Command::Note {
        who: who.principal.who.clone(),
        app: app.clone(),
        node: pid.node.clone(),
        text: format!("restarted {what} ({id}) of app {app} from the dashboard"),
    };
    if let Err(e) = at_leader(&api, note).await {
        tracing::warn!(error = %e, "could not record a restart in the journal");
    }
    Ok(Json(json!({"restarting": id})))
}

/// Query of `/api/v1/tables`.
#[derive(Deserialize)]
pub struct TableQuery {
    node: Option<String>,
    preview: Option<u32>,
}

/// Most preview entries per table (the node caps it the same way).
const MAX_TABLE_PREVIEW: u32 = 50;

async fn tables(
    State(api): State<Arc<Api>>,
    q: Result<Query<TableQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let rows = q.preview.unwrap_or(10);
    if rows > MAX_TABLE_PREVIEW {
        return Err(ApiError::bad(format!(
            "preview must be 0 to {MAX_TABLE_PREVIEW}"
        )));
    }
    let g = api.nodes.tables(rows).await;
    let mut out: Vec<Value> = Vec::new();
    for (node, tables) in g.answers {
        if q.node.as_deref().is_some_and(|n| n != node) {
            continue;
        }
        for t in tables {
            out.push(json!({
                "node": node,
                "name": neutralise(&t.name),
                "kind": t.kind,
                "access": t.access,
                "size": t.size,
                "owner": t.owner.as_ref().map(pid_id),
                "preview": t.preview.iter().map(|e| json!({
                    "key": neutralise(&e.key), "value": neutralise(&e.value),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    out.sort_by(|a, b| {
        (a["node"].as_str(), a["name"].as_str()).cmp(&(b["node"].as_str(), b["name"].as_str()))
    });
    Ok(Json(json!({
        "tables": out,
        "missing_nodes": g.missing.iter().map(|(n, e)| json!({"node": n, "error": e})).collect::<Vec<_>>(),
    })))
}

/// Query of `/api/v1/events`.
#[derive(Deserialize)]
pub struct EventQuery {
    after: Option<u64>,
    limit: Option<usize>,
    app: Option<String>,
    kind: Option<String>,
}

async fn events(
    State(api): State<Arc<Api>>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(200);
    if limit == 0 || limit > crate::state::journal::MAX_ENTRIES {
        return Err(ApiError::bad(format!(
            "limit must be 1 to {}",
            crate::state::journal::MAX_ENTRIES
        )));
    }
    let a = api.core.shared.applied.read();
    let entries: Vec<Value> = a
        .state
        .journal
        .entries
        .iter()
        .filter(|e| e.seq > q.after.unwrap_or(0))
        .filter(|e| q.app.as_deref().is_none_or(|x| e.app == x))
        .filter(|e| q.kind.as_deref().is_none_or(|x| e.kind == x))
        .take(limit)
        .map(|e| json!(e))
        .collect();
    Ok(Json(
        json!({ "events": entries, "next_seq": a.state.journal.next_seq }),
    ))
}

/// Query of `/api/v1/tree`.
#[derive(Deserialize)]
pub struct TreeQuery {
    app: Option<String>,
}

/// Most processes below top-level children shown per app in the tree.
const MAX_TREE_PROCESSES: usize = 2_000;

async fn tree(
    State(api): State<Arc<Api>>,
    q: Result<Query<TreeQuery>, QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let (apps, assignments) = {
        let a = api.core.shared.applied.read();
        let s = &a.state;
        let now = now_ms();
        let apps: Vec<(String, Value)> = s
            .apps
            .values()
            .filter(|x| q.app.as_deref().is_none_or(|n| x.draft.name == n))
            .map(|x| (x.draft.name.clone(), app_json(x, now)))
            .collect();
        let assignments: Vec<crate::types::Assignment> = s.all_assignments().cloned().collect();
        (apps, assignments)
    };
    let mut out = Vec::new();
    for (name, mut app) in apps {
        let running = app["status"] == "running";
        let list = if running {
            Some(api.processes(&name).await)
        } else {
            None
        };
        let crashes = if running {
            crash_reports(&api, &name).await
        } else {
            Vec::new()
        };
        let mut by_parent: HashMap<String, Vec<&pb::ProcessInfo>> = HashMap::new();
        if let Some(l) = &list {
            for p in &l.rows {
                if let Some(parent) = &p.parent {
                    by_parent.entry(pid_id(parent)).or_default().push(p);
                }
            }
        }
        let mut budget = MAX_TREE_PROCESSES;
        let children: Vec<Value> = assignments
            .iter()
            .filter(|x| x.app == name)
            .map(|x| {
                let pid = x
                    .pid
                    .as_ref()
                    .map(|p| format!("{}.{}.{}", p.node, p.incarnation, p.serial));
                let below = match (pid.as_deref(), &list) {
                    (Some(p), Some(l)) => subtree(p, &by_parent, &mut budget, &api.stuck, l),
                    _ => Vec::new(),
                };
                let top = list.as_ref().and_then(|l| {
                    l.rows
                        .iter()
                        .find(|r| r.pid.as_ref().map(pid_id) == pid)
                        .map(|p| {
                            let mut v = process_json(p, &api.stuck);
                            supervisor_json(&mut v, pid.as_deref().unwrap_or(""), l);
                            v
                        })
                });
                json!({
                    "child": x.child,
                    "generation": x.generation,
                    "node": x.node.as_ref().map(|(n, _)| n),
                    "pid": pid,
                    "process": top,
                    "restarts": x.history.len(),
                    "history": x.history,
                    "children": below,
                })
            })
            .collect();
        app["children"] = Value::Array(children);
        app["crashes"] = Value::Array(crashes);
        app["missing_nodes"] = json!(list
            .map(|l| l
                .missing
                .iter()
                .map(|(n, e)| json!({"node": n, "error": e}))
                .collect::<Vec<_>>())
            .unwrap_or_default());
        out.push(app);
    }
    Ok(Json(json!({ "apps": out })))
}

fn subtree(
    pid: &str,
    by_parent: &HashMap<String, Vec<&pb::ProcessInfo>>,
    budget: &mut usize,
    stuck: &StuckWatch,
    list: &ProcessList,
) -> Vec<Value> {
    let Some(kids) = by_parent.get(pid) else {
        return Vec::new();
    };
    // A supervisor's view of its children: spec id and restarts, by the child's pid.
    let supervised: HashMap<String, &pb::SupervisedChild> = list
        .supervisors
        .get(pid)
        .map(|s| {
            s.children
                .iter()
                .filter_map(|c| c.pid.as_ref().map(|p| (pid_id(p), c)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    for k in kids {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let id = k.pid.as_ref().map(pid_id).unwrap_or_default();
        let mut v = process_json(k, stuck);
        if let Some(c) = supervised.get(&id) {
            v["child_id"] = json!(c.id);
            v["restarts"] = json!(c.restarts);
        }
        supervisor_json(&mut v, &id, list);
        v["children"] = Value::Array(subtree(&id, by_parent, budget, stuck, list));
        out.push(v);
    }
    out
}

/// Adds to the process `v` (pid id `pid`), when it is a supervisor that reported itself,
/// its strategy, intensity, restarts in the current window and its children as it sees them
/// (those not running included, with state "stopped").
fn supervisor_json(v: &mut Value, pid: &str, list: &ProcessList) {
    let Some(s) = list.supervisors.get(pid) else {
        return;
    };
    let listed: std::collections::HashSet<String> = list
        .rows
        .iter()
        .filter_map(|r| r.pid.as_ref().map(pid_id))
        .collect();
    v["supervisor"] = json!({
        "strategy": s.strategy,
        "max_restarts": s.max_restarts,
        "max_seconds": s.max_seconds,
        "restarts_in_window": s.restarts_in_window,
        "children": s.children.iter().map(|c| {
            let pid = c.pid.as_ref().map(pid_id);
            let state = match &pid {
                None => "stopped",
                Some(p) if listed.contains(p) => "running",
                // Reported by the supervisor but not (or no longer) listed: on a node
                // that did not answer, or exited since.
                Some(_) => "unknown",
            };
            json!({
                "id": c.id,
                "pid": pid,
                "restarts": c.restarts,
                "kind": c.kind,
                "state": state,
            })
        }).collect::<Vec<_>>(),
    });
}

/// Most crash reports returned per app (the newest).
const MAX_CRASHES: usize = 20;

/// The newest crash reports (with tracebacks) of `app` from its nodes' kept logs.
async fn crash_reports(api: &Api, app: &str) -> Vec<Value> {
    let g = api.nodes.logs(app).await;
    let mut crashes: Vec<pb::LogEntry> = g
        .answers
        .into_iter()
        .flat_map(|(_, e)| e)
        .filter(|e| e.stream == "crash")
        .collect();
    crashes.sort_by_key(|e| e.time_ms);
    let skip = crashes.len().saturating_sub(MAX_CRASHES);
    crashes
        .into_iter()
        .skip(skip)
        .map(|e| {
            json!({
                "time_ms": e.time_ms,
                "node": e.node,
                "pid": e.pid.as_ref().map(pid_id),
                "text": neutralise(&e.text),
            })
        })
        .collect()
}

/// Replaces terminal control characters (escape sequences, bells) and the bidirectional
/// overrides that make text read otherwise than it is with visible `\u{..}` escapes, so logs
/// cannot drive an operator's terminal or confuse the page.
pub fn neutralise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
