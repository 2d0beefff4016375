//! Hot code upgrade of one app on this node: moving its running servers to the version the
//! Python side made current, each through its `code_change`, and collecting the outcome.

use super::apps::AppTag;
use super::convert;
use super::executor::is_killed;
use super::host::{Enter, PyProcess, PyRuntime};
use crate::runtime::{Kind, Pid};
use pyo3::prelude::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A process that did not move to the new code, and why.
#[derive(Clone, Debug)]
pub struct Stayed {
    /// The process.
    pub pid: Pid,
    /// Its server class (or function), for people reading the report.
    pub name: String,
    /// The exception `code_change` raised, with its traceback, or why it could not move.
    pub error: String,
}

/// What moving an app's processes to a new code epoch did on this node.
#[derive(Default, Debug)]
pub struct Moves {
    /// The epoch these results belong to.
    pub epoch: u64,
    /// Processes that moved.
    pub moved: u32,
    /// Processes that stayed on their old code.
    pub stayed: Vec<Stayed>,
}

/// Moves `process` (a server of `app`, on the calling thread, entered) to the app's code
/// epoch `epoch` before it handles its next message; called from the executor's dispatch.
pub fn move_process(
    py: Python<'_>,
    process: &Arc<PyProcess>,
    server: &Bound<'_, PyAny>,
    app: &AppTag,
    epoch: u64,
) {
    // Set first: a process whose code_change raised stays on its code until the next upgrade
    // instead of retrying at every message.
    process.data.code_epoch.store(epoch, Ordering::Relaxed);
    let result = py
        .import(pyo3::intern!(py, "rebeam._code"))
        .and_then(|m| m.call_method1(pyo3::intern!(py, "move_server"), (server, &app.name)))
        .and_then(|moved| moved.is_truthy());
    let mut moves = app.moves.lock();
    if moves.epoch != epoch {
        return;
    }
    match result {
        Ok(true) => moves.moved += 1,
        Ok(false) => {}
        Err(err) => {
            if is_killed(py, &err) {
                return;
            }
            let error = convert::traceback_text(py, &err);
            tracing::warn!(pid = %process.pid, app = %app.name, "process stays on its old code: code_change raised\n{error}");
            moves.stayed.push(Stayed {
                pid: process.pid,
                name: class_name(server),
                error,
            });
        }
    }
}

/// Starts a new code epoch for `app` (its current version was just changed) and moves every
/// server of it here: idle ones now on this thread, busy ones at their next message; waits
/// up to `patience` for the busy ones. Function processes keep the code they run.
pub fn move_all(rt: &Arc<PyRuntime>, app: &Arc<AppTag>, patience: Duration) -> Moves {
    let epoch = {
        let mut moves = app.moves.lock();
        let epoch = app.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        *moves = Moves {
            epoch,
            ..Moves::default()
        };
        epoch
    };
    let mine: Vec<Arc<PyProcess>> = rt
        .processes()
        .into_iter()
        .filter(|p| p.data.app.as_ref().is_some_and(|a| Arc::ptr_eq(a, app)))
        .collect();
    let mut functions = Vec::new();
    let mut pending = Vec::new();
    for p in mine {
        if p.kind == Kind::Server {
            pending.push(p);
        } else {
            functions.push(p);
        }
    }
    let deadline = Instant::now() + patience;
    loop {
        pending.retain(|p| !p.is_exited() && p.data.code_epoch.load(Ordering::Relaxed) != epoch);
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        for p in &pending {
            if rt.try_claim_idle(p) {
                Python::attach(|py| {
                    if let Some(server) = p.data.server.get().map(|s| s.clone_ref(py)) {
                        let _enter = Enter::new(p.clone());
                        if super::executor::lease_gate(py, rt, p) {
                            move_process(py, p, server.bind(py), app, epoch);
                        }
                    }
                });
                rt.finish_batch(p);
            }
        }
        // Busy servers move when their handler returns; look again shortly.
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut moves = std::mem::take(&mut *app.moves.lock());
    for p in pending {
        moves.stayed.push(Stayed {
            pid: p.pid,
            name: Python::attach(|py| {
                p.data
                    .server
                    .get()
                    .map(|s| class_name(s.bind(py)))
                    .unwrap_or_default()
            }),
            error: format!(
                "busy in one handler for over {:.1} s; it moves before its next message",
                patience.as_secs_f64()
            ),
        });
    }
    for p in functions.into_iter().filter(|p| !p.is_exited()) {
        moves.stayed.push(Stayed {
            pid: p.pid,
            name: "function process".into(),
            error: "a function process runs the code it started with until it returns; \
                    its supervisor restarts it on the new code"
                .into(),
        });
    }
    moves
}

fn class_name(server: &Bound<'_, PyAny>) -> String {
    server
        .get_type()
        .qualname()
        .map(|q| q.to_string())
        .unwrap_or_default()
}
