//! What `rebeam ps` (and `rebeam.process_info`) shows of a process: the runtime's facts, and
//! what only Python knows (the class, the function running now, the size of the server's
//! state), gathered under short holds of the GIL.

use super::host::{PyProcess, PyRuntime};
use super::term::{Footprint, Term};
use crate::runtime::{Envelope, Kind, Pid, Ref, Status};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
}

/// What the runtime says of a process, copied under its lock.
struct Facts {
    status: Status,
    mailbox_len: usize,
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
    let (kind, code, state_bytes) = match (process.kind, data.server.get()) {
        (Kind::Server, Some(server)) => {
            let server = server.bind(py);
            let supervisor = lookups
                .supervisor
                .as_ref()
                .is_some_and(|s| server.is_instance(s).unwrap_or(false));
            let kind = if supervisor { "supervisor" } else { "server" };
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
    let thread = data.thread.load(Ordering::Acquire);
    let awaiting = match thread {
        0 => data.aio.coroutine(py),
        _ => None,
    };
    let current_function = if let Some(coroutine) = &awaiting {
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
    let held = data.held.load(Ordering::Relaxed);
    let mailbox_len = facts.mailbox_len + held;
    let sampled = facts.payloads.len();
    let sample_bytes: usize = facts
        .payloads
        .into_iter()
        .map(|f| match f {
            Footprint::Bytes(n) => n,
            Footprint::Object(obj) => lookups.sizeof(obj.bind(py)),
        })
        .sum();
    let payload_bytes = match sampled {
        0 => 0,
        n => sample_bytes * facts.mailbox_len / n,
    };
    let memory_bytes = std::mem::size_of::<PyProcess>()
        + facts.links.len() * std::mem::size_of::<Pid>()
        + (facts.monitored_by + facts.watching) * std::mem::size_of::<(Ref, Pid)>()
        + mailbox_len * std::mem::size_of::<Envelope<Term>>()
        + payload_bytes
        + state_bytes;
    Some(ProcessReport {
        pid: process.pid,
        name: facts.name,
        app: data.app.as_ref().map(|a| a.name.clone()),
        kind,
        initial,
        version,
        current_function,
        status: match (facts.status, awaiting.is_some()) {
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
    })
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

/// `module.function:line` where a suspended coroutine awaits: the innermost frame of its
/// `await` chain that is not the `rebeam` package's own (`call_async` shows as its caller).
fn awaited_label(coroutine: &Bound<'_, PyAny>) -> Option<String> {
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
