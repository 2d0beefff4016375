//! What `rebeam ps` (and `rebeam.process_info`) shows of a process: the runtime's facts, and
//! what only Python knows (the class, the function running now, the size of the server's
//! state), gathered under short holds of the GIL.

use super::host::{PyProcess, PyRuntime};
use super::term::{Footprint, Term};
use crate::observe::metrics;
use crate::runtime::{Envelope, Kind, Pid, Ref, Status};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rebeam_http::ptable::{Place, Sort, Value};
use rebeam_http::stuck::{Observed, Stuck};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Processes described per hold of the GIL: executors get it back in between, so listing a
/// large node never stalls it for long.
const CHUNK: usize = 256;
/// Mailbox payloads measured per process; the others are assumed to be of their average size.
const SAMPLE: usize = 64;

/// One process as `rebeam ps` shows it.
#[derive(Clone, Debug)]
pub struct ProcessReport {
    /// Its pid.
    pub pid: Pid,
    /// Its registered local name.
    pub name: Option<String>,
    /// The app it belongs to.
    pub app: Option<String>,
    /// "server", "supervisor" or "function".
    pub kind: &'static str,
    /// The class or function it was started from, `module.qualname`.
    pub initial: String,
    /// The app version whose code it runs (servers of a submitted app), else empty.
    pub version: String,
    /// `module.function:line` of the innermost Python frame running for it (past the
    /// `rebeam` package's API wrappers), "awaiting module.function:line" for an async
    /// handler suspended at an `await` there, or "waiting" when none runs.
    pub current_function: String,
    /// "idle", "queued", "running", or "awaiting" (an async handler holds the server while
    /// it awaits, on no thread).
    pub status: &'static str,
    /// Messages queued, including those a selective receive holds while it waits.
    pub mailbox_len: usize,
    /// Messages handled so far.
    pub handled: u64,
    /// Approximate bytes (see `memory_bytes`).
    pub memory_bytes: usize,
    /// The process that spawned it.
    pub parent: Option<Pid>,
    /// Its id in the manifest, for a top-level child.
    pub child: Option<String>,
    /// Whether it traps exits.
    pub trap_exits: bool,
    /// Linked processes.
    pub links: Vec<Pid>,
    /// Monitors others hold on it.
    pub monitored_by: usize,
    /// What only the process page shows, made for a query of its pid alone.
    pub detail: Option<Detail>,
    /// For a supervisor: its strategy, intensity and children.
    pub supervisor: Option<SupervisorReport>,
}

/// What a supervisor reports of itself (`Supervisor._report` in `rebeam._supervisor`).
#[derive(Clone, Debug)]
pub struct SupervisorReport {
    /// "one_for_one", "one_for_all", "rest_for_one" or "simple_one_for_one".
    pub strategy: String,
    /// More than this many restarts within `max_seconds` and it gives up.
    pub max_restarts: u32,
    /// The intensity window.
    pub max_seconds: f64,
    /// Restarts within the current window.
    pub restarts_in_window: u32,
    /// Its children in start order: the spec id's repr, pid (None when not running), restarts
    /// and "worker" or "supervisor".
    pub children: Vec<(String, Option<Pid>, u32, String)>,
}

/// `server`'s own report of itself; None when it cannot give one (a supervisor still in
/// `init`, or a class that overrode the fields with values of other types).
fn supervisor_report(server: &Bound<'_, PyAny>) -> Option<SupervisorReport> {
    let report = server.call_method0(intern!(server.py(), "_report")).ok()?;
    type Child<'py> = (String, Option<super::objects::Pid>, u32, String);
    let (strategy, max_restarts, max_seconds, restarts_in_window, children): (
        String,
        u32,
        f64,
        u32,
        Vec<Child<'_>>,
    ) = report.extract().ok()?;
    Some(SupervisorReport {
        strategy,
        max_restarts,
        max_seconds,
        restarts_in_window,
        children: children
            .into_iter()
            .map(|(id, pid, restarts, kind)| (id, pid.map(|p| p.0), restarts, kind))
            .collect(),
    })
}

/// What the process page shows of a process beyond its table row: too costly for every row.
#[derive(Clone, Debug, Default)]
pub struct Detail {
    /// The monitors it holds, each with the monitored process.
    pub monitors: Vec<(Ref, Pid)>,
    /// The monitors others hold on it, each with the monitoring process.
    pub monitored_by: Vec<(Ref, Pid)>,
    /// Its Python frames, `file:line function`, innermost last (at most [`MAX_STACK`]).
    pub stack: Vec<String>,
    /// A server's attributes as a bounded repr (at most [`MAX_STATE_CHARS`] characters).
    pub state: String,
}

/// Frames of a process's stack the process page shows: the innermost ones.
pub const MAX_STACK: usize = 30;
/// Characters of a server's state repr the process page shows, at most.
pub const MAX_STATE_CHARS: usize = 2048;

/// What the runtime says of a process, copied under its lock.
struct Facts {
    status: Status,
    mailbox_len: usize,
    /// Envelopes the mailbox has room for (its memory, used or not).
    mailbox_room: usize,
    links: Vec<Pid>,
    monitored_by: usize,
    watching: usize,
    trap_exits: bool,
    name: Option<String>,
    payloads: Vec<Footprint>,
}

/// The Python objects one hold of the GIL looks things up in.
struct Lookups<'py> {
    frames: Option<Bound<'py, PyDict>>,
    supervisor: Option<Bound<'py, PyAny>>,
    getsizeof: Option<Bound<'py, PyAny>>,
    describe_code: Option<Bound<'py, PyAny>>,
}

impl<'py> Lookups<'py> {
    fn new(py: Python<'py>) -> Self {
        let sys = py.import("sys").ok();
        Lookups {
            frames: sys
                .as_ref()
                .and_then(|s| s.call_method0("_current_frames").ok())
                .and_then(|f| f.cast_into::<PyDict>().ok()),
            supervisor: py
                .import("rebeam._supervisor")
                .and_then(|m| m.getattr("Supervisor"))
                .ok(),
            getsizeof: sys.and_then(|s| s.getattr("getsizeof").ok()),
            describe_code: py
                .import("rebeam._code")
                .and_then(|m| m.getattr("describe"))
                .ok(),
        }
    }

    /// The name of an app's class or function without its version's module namespace, and
    /// that version; None for code that is not an app's.
    fn app_code(&self, target: &Bound<'py, PyAny>) -> Option<(String, String)> {
        self.describe_code
            .as_ref()?
            .call1((target,))
            .ok()?
            .extract()
            .ok()?
    }

    fn sizeof(&self, value: &Bound<'py, PyAny>) -> usize {
        // `getsizeof` may run a class's own `__sizeof__`; a failing one counts as nothing.
        self.getsizeof
            .as_ref()
            .and_then(|f| f.call1((value,)).ok())
            .and_then(|n| n.extract().ok())
            .unwrap_or(0)
    }
}

/// Every live process of this node, or those of the app `app`, by pid.
pub fn list(rt: &PyRuntime, app: Option<&str>) -> Vec<ProcessReport> {
    let processes: Vec<_> = rt
        .processes()
        .into_iter()
        .filter(|p| match app {
            None => true,
            Some(a) => p.data.app.as_ref().is_some_and(|t| t.name == a),
        })
        .collect();
    Python::attach(|py| {
        let mut out = Vec::with_capacity(processes.len());
        for (i, chunk) in processes.chunks(CHUNK).enumerate() {
            if i > 0 {
                // Releases the GIL for a moment: waiting executors run before the next chunk.
                py.detach(std::thread::yield_now);
            }
            let lookups = Lookups::new(py);
            out.extend(chunk.iter().filter_map(|p| describe_with(py, &lookups, p)));
        }
        out
    })
}

/// One process; `None` once it has exited.
pub fn describe(py: Python<'_>, process: &Arc<PyProcess>) -> Option<ProcessReport> {
    describe_with(py, &Lookups::new(py), process)
}

fn facts(py: Python<'_>, process: &PyProcess) -> Option<Facts> {
    let st = process.lock();
    if st.status == Status::Exited {
        return None;
    }
    Some(Facts {
        status: st.status,
        mailbox_len: st.mailbox.len(),
        mailbox_room: st.mailbox.capacity(),
        links: st.links.clone(),
        monitored_by: st.watchers.len(),
        watching: st.watching.len(),
        trap_exits: st.trap_exit,
        name: st.name.as_ref().map(|n| n.to_string()),
        payloads: st
            .mailbox
            .iter()
            .take(SAMPLE)
            .filter_map(payload)
            .map(|t| t.footprint(py))
            .collect(),
    })
}

fn payload(envelope: &Envelope<Term>) -> Option<&Term> {
    match envelope {
        Envelope::Info(m) | Envelope::Cast(m) => Some(m),
        Envelope::Call { request, .. } => Some(request),
        _ => None,
    }
}

fn describe_with(
    py: Python<'_>,
    lookups: &Lookups<'_>,
    process: &Arc<PyProcess>,
) -> Option<ProcessReport> {
    let facts = facts(py, process)?;
    let data = &process.data;
    let mut report = None;
    let (kind, code, state_bytes) = match (process.kind, data.server.get()) {
        (Kind::Server, Some(server)) => {
            let server = server.bind(py);
            let supervisor = lookups
                .supervisor
                .as_ref()
                .is_some_and(|s| server.is_instance(s).unwrap_or(false));
            let kind = if supervisor {
                report = supervisor_report(server);
                "supervisor"
            } else {
                "server"
            };
            let class = server.get_type().into_any();
            (kind, Some(class), state_size(lookups, server))
        }
        (Kind::Server, None) => ("server", None, 0),
        (Kind::Thread, _) => (
            "function",
            data.function.get().map(|f| f.bind(py).clone()),
            0,
        ),
    };
    let (initial, version) = match &code {
        Some(code) if data.app.is_some() => lookups
            .app_code(code)
            .unwrap_or_else(|| (qualified_name(code), String::new())),
        Some(code) => (qualified_name(code), String::new()),
        None => (String::new(), String::new()),
    };
    let (current_function, awaiting) = current_function(py, lookups, process);
    let mailbox_len = facts.mailbox_len + data.held.load(Ordering::Relaxed);
    let memory_bytes = memory_bytes(py, lookups, process, &facts, state_bytes);
    Some(ProcessReport {
        pid: process.pid,
        name: facts.name,
        app: data.app.as_ref().map(|a| a.name.clone()),
        kind,
        initial,
        version,
        current_function,
        status: match (facts.status, awaiting) {
            (_, true) => "awaiting",
            (Status::Idle, _) => "idle",
            (Status::Queued, _) => "queued",
            (Status::Running, _) => "running",
            (Status::Exited, _) => "exited",
        },
        mailbox_len,
        handled: data.handled.load(Ordering::Relaxed),
        memory_bytes,
        parent: data.parent,
        child: data.child.get().cloned(),
        trap_exits: facts.trap_exits,
        links: facts.links,
        monitored_by: facts.monitored_by,
        supervisor: report,
        detail: None,
    })
}

/// Approximate bytes of `process` (see `ProcessReport::memory_bytes`): its record, links and
/// monitors, its mailbox (payload sizes sampled), and `state_bytes` of server state.
fn memory_bytes(
    py: Python<'_>,
    lookups: &Lookups<'_>,
    process: &PyProcess,
    facts: &Facts,
    state_bytes: usize,
) -> usize {
    // The mailbox's room, used or not: what it holds in memory.
    let envelopes = facts.mailbox_room + process.data.held.load(Ordering::Relaxed);
    let sampled = facts.payloads.len();
    let sample_bytes: usize = facts
        .payloads
        .iter()
        .map(|f| match f {
            Footprint::Bytes(n) => *n,
            Footprint::Object(obj) => lookups.sizeof(obj.bind(py)),
        })
        .sum();
    let payload_bytes = match sampled {
        0 => 0,
        n => sample_bytes * facts.mailbox_len / n,
    };
    std::mem::size_of::<PyProcess>()
        + facts.links.len() * std::mem::size_of::<Pid>()
        + (facts.monitored_by + facts.watching) * std::mem::size_of::<(Ref, Pid)>()
        + envelopes * std::mem::size_of::<Envelope<Term>>()
        + payload_bytes
        + state_bytes
}

/// [`memory_bytes`] alone, as sorting by memory needs it of every process (without the
/// names, frames and mailbox facts a row shows); `None` once it has exited.
fn memory_only(py: Python<'_>, lookups: &Lookups<'_>, process: &PyProcess) -> Option<usize> {
    let facts = facts(py, process)?;
    let state_bytes = match (process.kind, process.data.server.get()) {
        (Kind::Server, Some(server)) => state_size(lookups, server.bind(py)),
        _ => 0,
    };
    Some(memory_bytes(py, lookups, process, &facts, state_bytes))
}

/// What runs now for `process` (see [`ProcessReport::current_function`]), and whether an
/// async handler of it is suspended at an `await`.
fn current_function(py: Python<'_>, lookups: &Lookups<'_>, process: &PyProcess) -> (String, bool) {
    let data = &process.data;
    let thread = data.thread.load(Ordering::Acquire);
    let awaiting = match thread {
        0 => data.aio.coroutine(py),
        _ => None,
    };
    let label = if let Some(coroutine) = &awaiting {
        match awaited_label(coroutine) {
            Some(label) => format!("awaiting {label}"),
            None => "awaiting".to_string(),
        }
    } else if thread == 0 {
        "waiting".to_string()
    } else {
        lookups
            .frames
            .as_ref()
            .and_then(|frames| frames.get_item(thread).ok().flatten())
            .and_then(|frame| current_label(&frame))
            .unwrap_or_else(|| "running".to_string())
    };
    (label, awaiting.is_some())
}

/// What the process page shows of `process` beyond its row (see [`Detail`]).
fn detail(py: Python<'_>, lookups: &Lookups<'_>, process: &PyProcess) -> Detail {
    let (monitors, monitored_by) = {
        let st = process.lock();
        (st.watching.clone(), st.watchers.clone())
    };
    let state = match (process.kind, process.data.server.get()) {
        (Kind::Server, Some(server)) => state_repr(py, server.bind(py)),
        _ => String::new(),
    };
    Detail {
        monitors,
        monitored_by,
        stack: stack(py, lookups, process),
        state,
    }
}

/// The Python frames running for `process`, innermost last: its thread's (a process blocked
/// in `receive` waits there), or those of an async handler suspended at an `await`; empty
/// when neither.
fn stack(py: Python<'_>, lookups: &Lookups<'_>, process: &PyProcess) -> Vec<String> {
    let data = &process.data;
    let thread = data.thread.load(Ordering::Acquire);
    if thread == 0 {
        let Some(coroutine) = data.aio.coroutine(py) else {
            return Vec::new();
        };
        let frames = await_chain(&coroutine);
        let skip = frames.len().saturating_sub(MAX_STACK);
        return frames[skip..].iter().filter_map(stack_line).collect();
    }
    let Some(mut frame) = lookups
        .frames
        .as_ref()
        .and_then(|frames| frames.get_item(thread).ok().flatten())
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    while lines.len() < MAX_STACK {
        lines.extend(stack_line(&frame));
        match frame.getattr(intern!(py, "f_back")) {
            Ok(back) if !back.is_none() => frame = back,
            _ => break,
        }
    }
    lines.reverse();
    lines
}

/// `file:line function` of a frame, as a traceback names it.
fn stack_line(frame: &Bound<'_, PyAny>) -> Option<String> {
    let (code, name, line) = frame_site(frame)?;
    let file: String = code
        .getattr(intern!(frame.py(), "co_filename"))
        .ok()?
        .extract()
        .ok()?;
    Some(format!("{file}:{line} {name}"))
}

/// A frame's code object, qualified function name and current line.
fn frame_site<'py>(frame: &Bound<'py, PyAny>) -> Option<(Bound<'py, PyAny>, String, i64)> {
    let py = frame.py();
    let code = frame.getattr(intern!(py, "f_code")).ok()?;
    let name: String = code
        .getattr(intern!(py, "co_qualname"))
        .or_else(|_| code.getattr(intern!(py, "co_name")))
        .ok()?
        .extract()
        .ok()?;
    let line: i64 = frame
        .getattr(intern!(py, "f_lineno"))
        .ok()
        .and_then(|l| l.extract().ok())
        .unwrap_or(0);
    Some((code, name, line))
}

/// A server's attributes as `rebeam._genserver._state_repr` shows them, cut to
/// [`MAX_STATE_CHARS`] characters whatever it returns.
fn state_repr(py: Python<'_>, server: &Bound<'_, PyAny>) -> String {
    let text: String = py
        .import("rebeam._genserver")
        .and_then(|m| m.getattr("_state_repr"))
        .and_then(|f| f.call1((server, MAX_STATE_CHARS)))
        .and_then(|v| v.extract())
        .unwrap_or_else(|e| format!("<repr failed: {}>", error_type(py, &e)));
    match text.char_indices().nth(MAX_STATE_CHARS) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text,
    }
}

/// The name of a Python exception's type.
fn error_type(py: Python<'_>, e: &PyErr) -> String {
    e.get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_string())
}

/// The kind of a process and the code it was started from, as [`describe_with`] names them:
/// shared by every process of one class or function, so a query over a million processes
/// names each class once.
type CodeNames = HashMap<(usize, bool), (&'static str, Arc<str>)>;

fn kind_and_initial(
    py: Python<'_>,
    lookups: &Lookups<'_>,
    names: &mut CodeNames,
    process: &PyProcess,
) -> (&'static str, Arc<str>) {
    let data = &process.data;
    let code = match (process.kind, data.server.get()) {
        (Kind::Server, Some(server)) => Some(server.bind(py).get_type().into_any()),
        (Kind::Server, None) => return ("server", Arc::from("")),
        (Kind::Thread, _) => data.function.get().map(|f| f.bind(py).clone()),
    };
    let Some(code) = code else {
        return ("function", Arc::from(""));
    };
    let key = (code.as_ptr() as usize, data.app.is_some());
    names
        .entry(key)
        .or_insert_with(|| {
            let kind = match process.kind {
                Kind::Thread => "function",
                Kind::Server => {
                    let supervisor = lookups.supervisor.as_ref().is_some_and(|s| {
                        code.cast::<pyo3::types::PyType>()
                            .is_ok_and(|t| t.is_subclass(s).unwrap_or(false))
                    });
                    if supervisor {
                        "supervisor"
                    } else {
                        "server"
                    }
                }
            };
            let initial = if data.app.is_some() {
                lookups
                    .app_code(&code)
                    .map_or_else(|| qualified_name(&code), |(i, _)| i)
            } else {
                qualified_name(&code)
            };
            (kind, Arc::from(initial))
        })
        .clone()
}

/// What a query needs of a process beyond the runtime's facts: its kind and initial, its
/// current function and its memory.
type Light = (&'static str, Arc<str>, String, u64);

/// A process table query as a node runs it (`ProcessQuery` of the gateway API).
pub struct TableQuery {
    /// The order.
    pub sort: Sort,
    /// Descending rather than ascending.
    pub descending: bool,
    /// Rows answered at most.
    pub limit: usize,
    /// Rows skipped after the cursor.
    pub offset: usize,
    /// Text the pid, name, app, initial or current function contains, in lower case.
    pub text: String,
    /// Only stuck, or only not stuck, processes.
    pub stuck: Option<bool>,
    /// Only rows after this place.
    pub after: Option<Place>,
    /// Only this process.
    pub pid: Option<Pid>,
    /// Only processes with a registered local name.
    pub named_only: bool,
}

/// The page a node selected for a [`TableQuery`].
pub struct TablePage {
    /// Processes matching the filters.
    pub total: usize,
    /// How many of them come after the cursor.
    pub after_cursor: usize,
    /// The rows, in order, each with whether it is stuck; the sorted field holds the value
    /// the rows were ordered by.
    pub rows: Vec<(ProcessReport, Option<Stuck>)>,
}

/// One page of this node's processes (of the app `app`, if given): filtered and ordered by
/// the cheap facts (the runtime's counters, names, and each class's name once), with the
/// full description (frames, state sizes, mailbox samples) made only for the rows answered.
/// Sorting by memory measures every matching process, as a full listing does.
pub fn query(rt: &PyRuntime, app: Option<&str>, q: &TableQuery) -> TablePage {
    let node = rt.node().name();
    let processes: Vec<Arc<PyProcess>> = match q.pid {
        Some(pid) => rt.lookup(pid).into_iter().collect(),
        None => rt.processes(),
    }
    .into_iter()
    .filter(|p| match app {
        None => true,
        Some(a) => p.data.app.as_ref().is_some_and(|t| t.name == a),
    })
    .filter(|p| !q.named_only || p.lock().name.is_some())
    .collect();
    // Each query is an observation for the stuck rules, as each scrape of `/metrics` is.
    let now = Instant::now();
    // Judged against the observations so far (see `observe_all`); every row only when the
    // query selects or orders by it, else just the rows answered.
    let judge_every = q.stuck.is_some() || q.sort == Sort::Stuck;
    let observed: Vec<Observed> = if judge_every || matches!(q.sort, Sort::Mailbox | Sort::Handled)
    {
        processes.iter().map(|p| metrics::observed(p)).collect()
    } else {
        Vec::new()
    };
    let stuck: Vec<Option<Stuck>> = if judge_every {
        let pairs = processes.iter().zip(&observed).map(|(p, o)| (&p.pid, *o));
        metrics::STUCK.judge_all(pairs, now)
    } else {
        Vec::new()
    };
    let needs_python =
        !q.text.is_empty() || matches!(q.sort, Sort::Kind | Sort::Function | Sort::Memory);
    // Kind and initial, current function and memory, where the query needs them.
    let mut light: Vec<Light> = Vec::new();
    if needs_python {
        light.reserve(processes.len());
        // Sorting by memory alone needs no names.
        let named = !q.text.is_empty() || matches!(q.sort, Sort::Kind | Sort::Function);
        let empty: Arc<str> = Arc::from("");
        Python::attach(|py| {
            let mut names = CodeNames::new();
            for (i, chunk) in processes.chunks(CHUNK).enumerate() {
                if i > 0 {
                    py.detach(std::thread::yield_now);
                }
                let lookups = Lookups::new(py);
                for p in chunk {
                    let (kind, initial, function) = if named {
                        let (kind, initial) = kind_and_initial(py, &lookups, &mut names, p);
                        (kind, initial, current_function(py, &lookups, p).0)
                    } else {
                        ("", empty.clone(), String::new())
                    };
                    let memory = match q.sort {
                        Sort::Memory => memory_only(py, &lookups, p).unwrap_or(0) as u64,
                        _ => 0,
                    };
                    light.push((kind, initial, function, memory));
                }
            }
        });
    }
    let name_of = |p: &PyProcess| p.lock().name.as_ref().map(|n| n.to_string());
    fn app_of(p: &PyProcess) -> &str {
        p.data.app.as_ref().map_or("", |a| a.name.as_str())
    }
    let mut rows: Vec<(Value, u64, u64, usize)> = Vec::new();
    let mut pid_text = String::new();
    for (i, p) in processes.iter().enumerate() {
        let l = light.get(i);
        if q.stuck.is_some_and(|want| want != stuck[i].is_some()) {
            continue;
        }
        let name = match (q.sort, q.text.is_empty()) {
            (Sort::Name, _) | (_, false) => name_of(p),
            _ => None,
        };
        if !q.text.is_empty() {
            let contains = |s: &str| contains_folded(s, &q.text);
            let found = name.as_deref().is_some_and(contains)
                || contains(app_of(p))
                || l.is_some_and(|(_, initial, function, _)| {
                    contains(initial) || contains(function)
                })
                || {
                    pid_text.clear();
                    let _ = write!(pid_text, "{node}.{}.{}", p.pid.incarnation, p.pid.serial);
                    contains(&pid_text)
                };
            if !found {
                continue;
            }
        }
        let value = match q.sort {
            Sort::Pid | Sort::Node => Value::Nothing,
            Sort::Name => Value::Text(name.unwrap_or_default()),
            Sort::App => Value::Text(app_of(p).to_string()),
            Sort::Kind => Value::Text(l.map_or("", |x| x.0).to_string()),
            Sort::Function => Value::Text(l.map_or_else(String::new, |x| x.2.clone())),
            Sort::Memory => Value::Number(l.map_or(0, |x| x.3)),
            Sort::Mailbox => Value::Number(observed[i].mailbox),
            Sort::Handled => Value::Number(observed[i].handled),
            Sort::Stuck => Value::Number(
                stuck
                    .get(i)
                    .and_then(Option::as_ref)
                    .map_or(0, |s| s.for_ms),
            ),
        };
        rows.push((value, p.pid.incarnation, p.pid.serial, i));
    }
    let total = rows.len();
    if let Some(after) = &q.after {
        rows.retain(|(value, incarnation, serial, _)| {
            after.before_row(q.descending, value, &node, *incarnation, *serial)
        });
    }
    let after_cursor = rows.len();
    let ascending = |a: &(Value, u64, u64, usize), b: &(Value, u64, u64, usize)| {
        (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2))
    };
    let order = |a: &(Value, u64, u64, usize), b: &(Value, u64, u64, usize)| {
        if q.descending {
            ascending(b, a)
        } else {
            ascending(a, b)
        }
    };
    // Only the first offset + limit rows are ordered: a linear selection finds them.
    let want = q.offset.saturating_add(q.limit);
    if rows.len() > want {
        rows.select_nth_unstable_by(want, order);
        rows.truncate(want);
    }
    rows.sort_unstable_by(order);
    let chosen: Vec<(Value, usize)> = rows
        .into_iter()
        .skip(q.offset)
        .map(|(value, _, _, i)| (value, i))
        .collect();
    let described = Python::attach(|py| {
        let lookups = Lookups::new(py);
        chosen
            .into_iter()
            .filter_map(|(value, i)| {
                let mut r = describe_with(py, &lookups, &processes[i])?;
                if q.pid.is_some() {
                    r.detail = Some(detail(py, &lookups, &processes[i]));
                }
                // The row shows the value it was ordered by, so the page and a cursor made
                // from its last row agree with the order.
                match (q.sort, value) {
                    (Sort::Mailbox, Value::Number(n)) => r.mailbox_len = n as usize,
                    (Sort::Handled, Value::Number(n)) => r.handled = n,
                    (Sort::Memory, Value::Number(n)) => r.memory_bytes = n as usize,
                    (Sort::Function, Value::Text(t)) => r.current_function = t,
                    (Sort::Name, Value::Text(t)) => r.name = (!t.is_empty()).then_some(t),
                    _ => {}
                }
                let judged = match stuck.get(i) {
                    Some(s) => s.clone(),
                    None => metrics::STUCK.judge(&r.pid, metrics::observed(&processes[i]), now),
                };
                Some((r, judged))
            })
            .collect()
    });
    TablePage {
        total,
        after_cursor,
        rows: described,
    }
}

/// Whether `hay` contains `needle` (given in lower case) ignoring case, without allocating
/// for ASCII text (a filter compares a million rows).
fn contains_folded(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.is_ascii() && needle.is_ascii() {
        return hay
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
    }
    hay.to_lowercase().contains(needle)
}

/// When the process table's queries may next observe every process for the stuck rules.
static OBSERVE_AFTER: parking_lot::Mutex<Option<Instant>> = parking_lot::Mutex::new(None);

/// Records every process of this node for the stuck rules: called after a query is
/// answered, so observing a million processes never delays a page. At most once a second,
/// and at most a tenth of the time (a node of a million processes observes every few
/// seconds: a stuck flag then shows up that much later than the 5 s of the rules).
pub fn observe_all(rt: &PyRuntime) {
    let started = Instant::now();
    {
        let mut after = OBSERVE_AFTER.lock();
        if after.is_some_and(|t| started < t) {
            return;
        }
        // Held off while this one runs.
        *after = Some(started + std::time::Duration::from_secs(3600));
    }
    let processes = rt.processes();
    // In parts, each under its own hold of the lock: a page judging its rows meanwhile
    // waits for one part at most.
    for part in processes.chunks(4096) {
        metrics::STUCK.record(part.iter().map(|p| (&p.pid, metrics::observed(p))), started);
    }
    metrics::STUCK.forget_unseen(started);
    let took = started.elapsed();
    *OBSERVE_AFTER.lock() =
        Some(Instant::now() + (took * 9).max(std::time::Duration::from_secs(1)));
}

/// `module.qualname` of a class or function (its repr when it has none).
fn qualified_name(target: &Bound<'_, PyAny>) -> String {
    let py = target.py();
    let part = |name: &Bound<'_, pyo3::types::PyString>| -> Option<String> {
        target.getattr(name).ok()?.extract::<String>().ok()
    };
    let qualname = part(intern!(py, "__qualname__")).or_else(|| part(intern!(py, "__name__")));
    match (part(intern!(py, "__module__")), qualname) {
        (Some(module), Some(name)) => format!("{module}.{name}"),
        (None, Some(name)) => name,
        _ => target
            .get_type()
            .fully_qualified_name()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    }
}

/// The server object, its `__dict__` and the values in it, each measured shallowly.
fn state_size(lookups: &Lookups<'_>, server: &Bound<'_, PyAny>) -> usize {
    let mut total = lookups.sizeof(server);
    if let Ok(dict) = server.getattr(intern!(server.py(), "__dict__")) {
        total += lookups.sizeof(&dict);
        if let Ok(dict) = dict.cast_into::<PyDict>() {
            total += dict
                .values()
                .iter()
                .map(|v| lookups.sizeof(&v))
                .sum::<usize>();
        }
    }
    total
}

/// Frames looked through for one outside the `rebeam` package.
const MAX_FRAMES: usize = 64;

/// `module.function:line` of the innermost frame of a thread that is not the `rebeam`
/// package's own API code (`receive`, `call` wrappers): a handler blocked in `receive`
/// shows as the handler. Supervisors are the package's own code, so they show as they are.
fn current_label(innermost: &Bound<'_, PyAny>) -> Option<String> {
    let py = innermost.py();
    let mut frame = innermost.clone();
    for _ in 0..MAX_FRAMES {
        let module = frame_module(&frame);
        let ours = module.starts_with("rebeam.") && module != "rebeam._supervisor";
        if !ours {
            return frame_label(&frame, &module);
        }
        match frame.getattr(intern!(py, "f_back")) {
            Ok(back) if !back.is_none() => frame = back,
            _ => break,
        }
    }
    frame_label(innermost, &frame_module(innermost))
}

/// The frames of a suspended coroutine's `await` chain, from the outermost coroutine in.
fn await_chain<'py>(coroutine: &Bound<'py, PyAny>) -> Vec<Bound<'py, PyAny>> {
    let py = coroutine.py();
    let mut frames = Vec::new();
    let mut awaited = coroutine.clone();
    for _ in 0..MAX_FRAMES {
        match awaited.getattr(intern!(py, "cr_frame")) {
            Ok(frame) if !frame.is_none() => frames.push(frame),
            _ => break,
        }
        match awaited.getattr(intern!(py, "cr_await")) {
            Ok(next) if !next.is_none() => awaited = next,
            _ => break,
        }
    }
    frames
}

/// `module.function:line` where a suspended coroutine awaits: the innermost frame of its
/// `await` chain that is not the `rebeam` package's own (`call_async` shows as its caller).
fn awaited_label(coroutine: &Bound<'_, PyAny>) -> Option<String> {
    let frames = await_chain(coroutine);
    let modules: Vec<String> = frames.iter().map(frame_module).collect();
    let pick = (0..frames.len())
        .rev()
        .find(|&i| !modules[i].starts_with("rebeam."))
        .or(frames.len().checked_sub(1))?;
    frame_label(&frames[pick], &modules[pick])
}

fn frame_module(frame: &Bound<'_, PyAny>) -> String {
    let py = frame.py();
    let module: String = frame
        .getattr(intern!(py, "f_globals"))
        .ok()
        .and_then(|g| g.get_item(intern!(py, "__name__")).ok())
        .and_then(|m| m.extract().ok())
        .unwrap_or_else(|| "?".to_string());
    // An app's modules live under their version's namespace; show them as the app names them.
    match module.strip_prefix(APP_MODULE_PREFIX) {
        Some(rest) => rest
            .split_once('.')
            .map_or(module.clone(), |(_, m)| m.to_string()),
        None => module,
    }
}

/// How the module namespaces of app versions begin (`rebeam._code.APP_MODULE_PREFIX`).
const APP_MODULE_PREFIX: &str = "_rebeam_app_";

/// `module.function:line` of a frame.
fn frame_label(frame: &Bound<'_, PyAny>, module: &str) -> Option<String> {
    let (_, name, line) = frame_site(frame)?;
    Some(format!("{module}.{name}:{line}"))
}

/// Entries a table preview may hold, at most.
pub const MAX_TABLE_PREVIEW: usize = 50;
/// Characters of a key's or value's repr in a table preview.
const TABLE_REPR_CHARS: usize = 200;

/// One shared table as the dashboard shows it.
#[derive(Clone, Debug)]
pub struct TableReport {
    /// Its name.
    pub name: String,
    /// "set", "ordered_set", "bag" or "duplicate_bag".
    pub kind: String,
    /// "public", "protected" or "private".
    pub access: String,
    /// Entries (values, for bags).
    pub size: u64,
    /// The owning process.
    pub owner: Pid,
    /// The first entries as bounded reprs (none for a private table).
    pub preview: Vec<(String, String)>,
}

/// Every live table of this node with at most `rows` preview entries each; a failure to
/// read them (the Python side missing) is an error the caller reports.
pub fn tables(rows: usize) -> Result<Vec<TableReport>, String> {
    let rows = rows.min(MAX_TABLE_PREVIEW);
    type Row = (
        String,
        String,
        String,
        u64,
        (String, u64, u64),
        Vec<(String, String)>,
    );
    Python::attach(|py| {
        let described: Vec<Row> = py
            .import("rebeam._table")
            .and_then(|m| m.getattr("_describe_all"))
            .and_then(|f| f.call1((rows, TABLE_REPR_CHARS)))
            .and_then(|v| v.extract())
            .map_err(|e| format!("cannot list tables: {e}"))?;
        Ok(described
            .into_iter()
            .filter_map(
                |(name, kind, access, size, (node, incarnation, serial), preview)| {
                    let owner = Pid {
                        node: crate::runtime::NodeId::from_wire(&node).ok()?,
                        incarnation,
                        serial,
                    };
                    Some(TableReport {
                        name,
                        kind,
                        access,
                        size,
                        owner,
                        preview,
                    })
                },
            )
            .collect())
    })
}
