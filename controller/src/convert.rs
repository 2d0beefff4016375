//! Conversions between domain values and generated proto types, in one place.

use rebeam_proto::v1 as pb;

use crate::auth::TokenRecord;
use crate::error::{Error, Result};
use crate::state::{AssignmentView, Event};
use crate::types::{
    App, AppStatus, ChildSpec, NodeEntry, NodeUpgrade, Pid, Restart, RestartRecord, StayedProcess,
    UpgradeStatus,
};
use crate::validate;

impl From<Pid> for pb::Pid {
    fn from(p: Pid) -> Self {
        pb::Pid {
            node: p.node,
            incarnation: p.incarnation,
            serial: p.serial,
        }
    }
}

impl From<pb::Pid> for Pid {
    fn from(p: pb::Pid) -> Self {
        Pid {
            node: p.node,
            incarnation: p.incarnation,
            serial: p.serial,
        }
    }
}

impl From<NodeEntry> for pb::NodeInfo {
    fn from(n: NodeEntry) -> Self {
        pb::NodeInfo {
            id: n.id,
            incarnation: n.incarnation,
            address: n.address,
            labels: n.labels.into_iter().collect(),
            capacity: n.capacity,
            status: if n.alive {
                pb::NodeStatus::Alive
            } else {
                pb::NodeStatus::Dead
            } as i32,
            joined_at_ms: n.joined_at_ms,
            died_at_ms: n.died_at_ms,
            death_reason: n.death_reason,
        }
    }
}

impl From<ChildSpec> for pb::ChildSpec {
    fn from(c: ChildSpec) -> Self {
        pb::ChildSpec {
            id: c.id,
            start: c.start,
            args_json: c.args_json,
            name: c.name,
            global: c.global,
            restart: match c.restart {
                Restart::Permanent => pb::RestartType::Permanent,
                Restart::Transient => pb::RestartType::Transient,
                Restart::Temporary => pb::RestartType::Temporary,
            } as i32,
            placement: c.placement.to_string(),
        }
    }
}

impl From<App> for pb::AppInfo {
    fn from(a: App) -> Self {
        pb::AppInfo {
            name: a.draft.name,
            version: a.draft.version,
            code_hash: a.code_hash,
            code_size: a.code_size,
            status: match a.status {
                AppStatus::Running => pb::AppStatus::Running,
                AppStatus::Stopped => pb::AppStatus::Stopped,
                AppStatus::Failed => pb::AppStatus::Failed,
            } as i32,
            max_restarts: a.draft.max_restarts,
            max_seconds: a.draft.max_seconds,
            children: a.draft.children.into_iter().map(Into::into).collect(),
            failure_reason: a.failure_reason,
            submitted_at_ms: a.submitted_at_ms,
            manifest_toml: a.draft.manifest_toml,
            previous_version: a.previous.map(|p| p.draft.version).unwrap_or_default(),
            last_error: a.last_error,
            upgrades: a.upgrades.into_values().map(Into::into).collect(),
            upgrade_error: a.upgrade_error,
        }
    }
}

impl From<NodeUpgrade> for pb::NodeUpgrade {
    fn from(u: NodeUpgrade) -> Self {
        pb::NodeUpgrade {
            node: u.node,
            code_hash: u.code_hash,
            version: u.version,
            status: match u.status {
                UpgradeStatus::Done => pb::UpgradeStatus::Done,
                UpgradeStatus::Partial => pb::UpgradeStatus::Partial,
                UpgradeStatus::Failed => pb::UpgradeStatus::Failed,
            } as i32,
            error: u.error,
            upgraded: u.upgraded,
            stayed: u
                .stayed
                .into_iter()
                .map(|p| pb::StayedProcess {
                    pid: p.pid.map(Into::into),
                    name: p.name,
                    error: p.error,
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::NodeUpgrade> for NodeUpgrade {
    type Error = Error;

    /// Checks a node's report and bounds what is kept of it (tracebacks, stayed processes).
    fn try_from(u: pb::NodeUpgrade) -> Result<Self> {
        validate::required(
            "code_hash",
            &u.code_hash,
            "pass the hash of the code the processes were moved to",
        )?;
        let status = match pb::UpgradeStatus::try_from(u.status) {
            Ok(pb::UpgradeStatus::Done) => UpgradeStatus::Done,
            Ok(pb::UpgradeStatus::Partial) => UpgradeStatus::Partial,
            Ok(pb::UpgradeStatus::Failed) => UpgradeStatus::Failed,
            _ => {
                return Err(Error::invalid(format!(
                    "upgrade status {} is not one of DONE, PARTIAL or FAILED; pass what happened",
                    u.status
                )))
            }
        };
        let total = u.stayed.len();
        let mut stayed = Vec::with_capacity(total.min(validate::MAX_STAYED_LISTED));
        for p in u.stayed.into_iter().take(validate::MAX_STAYED_LISTED) {
            stayed.push(StayedProcess {
                pid: p.pid.map(|p| validate::pid(Some(p.into()))).transpose()?,
                name: validate::tail(&p.name, validate::MAX_NAME_BYTES),
                error: validate::tail(&p.error, validate::MAX_STAYED_ERROR_BYTES),
            });
        }
        let mut error = validate::tail(&u.error, validate::MAX_REPORT_ERROR_BYTES);
        if total > stayed.len() {
            // Keep the count visible although only the first processes are listed.
            if !error.is_empty() {
                error.push('\n');
            }
            error.push_str(&format!(
                "{total} processes stayed on the old code; the first {} are listed",
                stayed.len()
            ));
        }
        Ok(NodeUpgrade {
            node: u.node,
            code_hash: u.code_hash,
            version: validate::tail(&u.version, validate::MAX_NAME_BYTES),
            status,
            error,
            upgraded: u.upgraded,
            stayed,
        })
    }
}

impl From<RestartRecord> for pb::RestartRecord {
    fn from(r: RestartRecord) -> Self {
        pb::RestartRecord {
            at_ms: r.at_ms,
            reason: r.reason,
            from_node: r.from_node,
            from_incarnation: r.from_incarnation,
        }
    }
}

impl From<AssignmentView> for pb::Assignment {
    fn from(v: AssignmentView) -> Self {
        let a = v.assignment;
        let (node, incarnation) = a.node.unwrap_or_default();
        let state = if node.is_empty() {
            pb::AssignmentState::Pending
        } else if a.pid.is_some() {
            pb::AssignmentState::Running
        } else {
            pb::AssignmentState::Assigned
        };
        pb::Assignment {
            app: a.app,
            child: a.child,
            generation: a.generation,
            node,
            incarnation,
            state: state as i32,
            pid: a.pid.map(Into::into),
            app_version: v.app_version,
            code_hash: v.code_hash,
            spec: v.spec.map(Into::into),
            history: a.history.into_iter().map(Into::into).collect(),
        }
    }
}

/// The watch event for `ev` as seen by node `node`, or None if it does not concern it.
pub fn watch_event(index: u64, ev: &Event, node: &str) -> Option<pb::WatchEvent> {
    use pb::watch_event::Event as E;
    let event = match ev {
        Event::NodeChanged(n) => E::NodeChanged(n.clone().into()),
        Event::NameRegistered(name, pid) => E::NameRegistered(pb::GlobalName {
            name: name.clone(),
            pid: Some(pid.clone().into()),
        }),
        Event::NameReleased(name, pid) => E::NameReleased(pb::GlobalName {
            name: name.clone(),
            pid: Some(pid.clone().into()),
        }),
        Event::PgJoined(g, pid) => E::PgJoined(pb::PgChange {
            group: g.clone(),
            pid: Some(pid.clone().into()),
        }),
        Event::PgLeft(g, pid) => E::PgLeft(pb::PgChange {
            group: g.clone(),
            pid: Some(pid.clone().into()),
        }),
        Event::AssignmentSet(v) => {
            if v.assignment.node.as_ref().map(|(n, _)| n.as_str()) != Some(node) {
                return None;
            }
            E::Assignment((**v).clone().into())
        }
        Event::AssignmentRemoved {
            app,
            child,
            generation,
            node: n,
            ..
        } => {
            if n != node {
                return None;
            }
            E::AssignmentRemoved(pb::AssignmentRef {
                app: app.clone(),
                child: child.clone(),
                generation: *generation,
            })
        }
        Event::AppChanged(a) => E::AppChanged((**a).clone().into()),
        Event::TokenIssued(t) => E::TokenIssued(t.into()),
        Event::TokenRevoked(id) => E::TokenRevoked(id.clone()),
        Event::AppDeleted(_) | Event::Reset => return None,
    };
    Some(pb::WatchEvent {
        log_index: index,
        event: Some(event),
    })
}

/// A token's public part as clients see it (no hash) at `now_ms`.
pub fn client_token(t: &TokenRecord, now_ms: u64) -> pb::ClientToken {
    pb::ClientToken {
        id: t.id.clone(),
        role: t.role.as_str().into(),
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        note: t.note.clone(),
        expired: t.expired(now_ms),
    }
}
