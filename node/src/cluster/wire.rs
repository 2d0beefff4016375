//! Conversions between core values and their gRPC form (`rebeam.v1`), in one place.

use crate::runtime::{Crash, NodeId, Pid, Reason};
use rebeam_proto as pb;
use std::sync::Arc;

/// A pid for the wire.
pub fn pid_to_pb(pid: Pid) -> pb::Pid {
    pb::Pid {
        node: pid.node.name().to_string(),
        incarnation: pid.incarnation,
        serial: pid.serial,
    }
}

/// A pid from the wire; `None` when it is missing or its node name is not a node id.
pub fn pid_from_pb(pid: Option<&pb::Pid>) -> Option<Pid> {
    let pid = pid?;
    Some(Pid {
        node: node_from_wire(&pid.node)?,
        incarnation: pid.incarnation,
        serial: pid.serial,
    })
}

/// `NodeId::from_wire`, remembering the last known name this thread read: a peer's frames
/// name the same node (this one) over and over, and the node table's lock and hash were a
/// visible part of reading each. A name's id never changes once known.
fn node_from_wire(name: &str) -> Option<NodeId> {
    thread_local! {
        static LAST: std::cell::RefCell<(String, Option<NodeId>)> =
            const { std::cell::RefCell::new((String::new(), None)) };
    }
    LAST.with(|last| {
        if let Ok(last) = last.try_borrow() {
            if let (true, Some(id)) = (last.0 == name, last.1) {
                return Some(id);
            }
        }
        let id = NodeId::from_wire(name).ok()?;
        if id != NodeId::UNKNOWN {
            if let Ok(mut last) = last.try_borrow_mut() {
                last.0.clear();
                last.0.push_str(name);
                last.1 = Some(id);
            }
        }
        Some(id)
    })
}

/// A reason for the wire.
pub fn reason_to_pb(reason: &Reason) -> pb::WireReason {
    use pb::wire_reason::Kind;
    let kind = match reason {
        Reason::ShutdownWith(term) => Kind::ShutdownTerm(term.to_vec()),
        Reason::Other(term) => Kind::Term(term.to_vec()),
        Reason::Crash(c) => Kind::Crash(pb::WireCrash {
            r#type: c.kind.clone(),
            message: c.message.clone(),
            traceback: c.traceback.clone(),
        }),
        other => Kind::Atom(other.atom().unwrap_or("noconnection").to_string()),
    };
    pb::WireReason { kind: Some(kind) }
}

/// A reason from the wire; an unknown or missing one reads as `noconnection`.
pub fn reason_from_pb(reason: Option<pb::WireReason>) -> Reason {
    use pb::wire_reason::Kind;
    match reason.and_then(|r| r.kind) {
        Some(Kind::Atom(a)) => Reason::from_atom(&a).unwrap_or(Reason::Noconnection),
        Some(Kind::ShutdownTerm(t)) => Reason::ShutdownWith(Arc::from(t)),
        Some(Kind::Term(t)) => Reason::Other(Arc::from(t)),
        Some(Kind::Crash(c)) => Reason::Crash(Arc::new(Crash {
            kind: c.r#type,
            message: c.message,
            traceback: c.traceback,
        })),
        None => Reason::Noconnection,
    }
}

/// How the controller's exit reports describe a reason (it decides transient restarts).
pub fn reason_report(reason: &Reason) -> String {
    match reason {
        Reason::Crash(c) => format!("crash: {}: {}", c.kind, c.message),
        Reason::ShutdownWith(_) => "shutdown".into(),
        Reason::Other(_) => "exit: <term>".into(),
        other => other.to_string(),
    }
}

impl From<crate::python::inspect::ProcessReport> for pb::ProcessInfo {
    fn from(r: crate::python::inspect::ProcessReport) -> Self {
        pb::ProcessInfo {
            pid: Some(pid_to_pb(r.pid)),
            name: r.name.unwrap_or_default(),
            app: r.app.unwrap_or_default(),
            // Per-process code versions come with hot upgrades.
            kind: r.kind.to_string(),
            initial: r.initial,
            version: r.version,
            current_function: r.current_function,
            mailbox_len: r.mailbox_len as u64,
            messages_handled: r.handled,
            memory_bytes: r.memory_bytes as u64,
            parent: r.parent.map(pid_to_pb),
            child: r.child.unwrap_or_default(),
            trap_exits: r.trap_exits,
            links: r.links.into_iter().map(pid_to_pb).collect(),
            ..r.detail.map(detail_to_pb).unwrap_or_default()
        }
    }
}

/// The supervisor report of `r`, for the wire; None for a process that is no supervisor.
pub fn supervisor_to_pb(r: &crate::python::inspect::ProcessReport) -> Option<pb::SupervisorInfo> {
    let s = r.supervisor.as_ref()?;
    Some(pb::SupervisorInfo {
        pid: Some(pid_to_pb(r.pid)),
        strategy: s.strategy.clone(),
        max_restarts: s.max_restarts,
        max_seconds: s.max_seconds,
        restarts_in_window: s.restarts_in_window,
        children: s
            .children
            .iter()
            .map(|(id, pid, restarts, kind)| pb::SupervisedChild {
                id: id.clone(),
                pid: pid.map(pid_to_pb),
                restarts: *restarts,
                kind: kind.clone(),
            })
            .collect(),
    })
}

/// The process page's fields of a [`pb::ProcessInfo`] (the rest left default).
fn detail_to_pb(d: crate::python::inspect::Detail) -> pb::ProcessInfo {
    let monitor = |(mref, pid): (crate::runtime::Ref, Pid)| pb::ProcessMonitor {
        r#ref: mref.0,
        pid: Some(pid_to_pb(pid)),
    };
    pb::ProcessInfo {
        detailed: true,
        monitors: d.monitors.into_iter().map(monitor).collect(),
        monitored_by: d.monitored_by.into_iter().map(monitor).collect(),
        stack: d.stack,
        state: d.state,
        ..Default::default()
    }
}

/// A kept log entry of the app `app` on the node `node`, for the wire.
pub fn log_entry_to_pb(entry: &crate::python::logs::Entry, node: &str, app: &str) -> pb::LogEntry {
    pb::LogEntry {
        seq: entry.seq,
        time_ms: entry.time_ms,
        node: node.to_string(),
        pid: Some(pid_to_pb(entry.pid)),
        stream: entry.stream.as_str().to_string(),
        text: entry.text.clone(),
        app: app.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_pids_round_trip() {
        let crash = Reason::Crash(Arc::new(Crash {
            kind: "ValueError".into(),
            message: "boom".into(),
            traceback: "tb".into(),
        }));
        for r in [
            Reason::Normal,
            Reason::Shutdown,
            Reason::Killed,
            Reason::Noproc,
            Reason::Noconnection,
            Reason::Other(Arc::from(vec![1u8, 2])),
            Reason::ShutdownWith(Arc::from(vec![3u8])),
            crash,
        ] {
            assert_eq!(reason_from_pb(Some(reason_to_pb(&r))), r);
        }
        let pid = Pid {
            node: NodeId::intern("n1"),
            incarnation: 9,
            serial: 4,
        };
        assert_eq!(pid_from_pb(Some(&pid_to_pb(pid))), Some(pid));
        assert_eq!(pid_from_pb(None), None);
    }
}
