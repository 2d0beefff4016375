//! The replicated state machine: pure, deterministic functions of the log.
//!
//! Every command is checked before it mutates anything, so a refused command leaves the state
//! as it was; commands batched into one entry succeed or fail independently.

mod apps;
pub mod journal;
mod membership;
mod registry;
mod supervision;
#[cfg(test)]
mod tests;
mod tokens;
mod upgrades;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::auth::TokenRecord;
use crate::error::Result;
use crate::types::{
    App, Assignment, Blob, ChildSpec, Command, NodeEntry, Outcome, Pid, Request, Response,
};

/// An assignment with what a node needs to start it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentView {
    /// The assignment.
    pub assignment: Assignment,
    /// The child's spec from the current app version.
    pub spec: Option<ChildSpec>,
    /// Current app version.
    pub app_version: String,
    /// Current code hash.
    pub code_hash: String,
}

/// A change watchers are told about, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node joined, died or left.
    NodeChanged(NodeEntry),
    /// A global name was taken.
    NameRegistered(String, Pid),
    /// A global name was released.
    NameReleased(String, Pid),
    /// A pid joined a group.
    PgJoined(String, Pid),
    /// A pid left a group.
    PgLeft(String, Pid),
    /// An assignment was created or changed.
    AssignmentSet(Box<AssignmentView>),
    /// An assignment left a node: the node must stop that child.
    AssignmentRemoved {
        app: String,
        child: String,
        generation: u64,
        node: String,
        incarnation: u64,
    },
    /// An app was submitted, upgraded, stopped or failed.
    AppChanged(Box<App>),
    /// A stopped app was deleted with its code.
    AppDeleted(String),
    /// A client token was issued.
    TokenIssued(TokenRecord),
    /// A client token was revoked.
    TokenRevoked(String),
    /// The whole state was replaced (snapshot installed): watchers must resynchronize.
    Reset,
}

/// Context of the entry being applied.
pub(crate) struct Ctx<'e> {
    /// Leader clock at proposal.
    pub now_ms: u64,
    /// Log index of the entry.
    pub index: u64,
    /// Events produced so far.
    pub events: &'e mut Vec<Event>,
}

/// The cluster's truth.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// Member nodes by id (dead ones are kept so their return gets a new incarnation).
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Global registry.
    pub names: BTreeMap<String, Pid>,
    /// Process groups.
    pub groups: BTreeMap<String, BTreeSet<Pid>>,
    /// Applications by name.
    pub apps: BTreeMap<String, App>,
    /// Code blobs by hex SHA-256.
    pub code: BTreeMap<String, Blob>,
    /// Top-level assignments: app -> child id -> assignment.
    pub assignments: BTreeMap<String, BTreeMap<String, Assignment>>,
    /// Issued client tokens by id (hashes only, never the tokens).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// What happened, bounded (absent from snapshots written before it existed).
    #[serde(default)]
    pub journal: journal::Journal,
    /// Names held by each pid (derived; rebuilt after loading).
    #[serde(skip)]
    names_by_pid: HashMap<Pid, BTreeSet<String>>,
    /// Groups joined by each pid (derived; rebuilt after loading).
    #[serde(skip)]
    groups_by_pid: HashMap<Pid, BTreeSet<String>>,
}

impl State {
    /// Rebuilds the derived indexes after deserializing.
    pub fn rebuild_indexes(&mut self) {
        self.names_by_pid.clear();
        self.groups_by_pid.clear();
        for (name, pid) in &self.names {
            self.names_by_pid
                .entry(pid.clone())
                .or_default()
                .insert(name.clone());
        }
        for (group, pids) in &self.groups {
            for pid in pids {
                self.groups_by_pid
                    .entry(pid.clone())
                    .or_default()
                    .insert(group.clone());
            }
        }
    }

    /// Applies one log entry's commands; each gets its own outcome.
    pub fn apply(&mut self, req: Request, index: u64, events: &mut Vec<Event>) -> Response {
        let first_new = events.len();
        let mut cx = Ctx {
            now_ms: req.now_ms,
            index,
            events,
        };
        let outcomes = req
            .cmds
            .into_iter()
            .map(|cmd| {
                self.apply_one(&mut cx, cmd)
                    .unwrap_or_else(Outcome::Rejected)
            })
            .collect();
        for event in &cx.events[first_new..] {
            if let Some(note) = journal::note_for(event, req.now_ms) {
                self.journal.push(index, req.now_ms, note);
            }
        }
        Response { outcomes }
    }

    fn apply_one(&mut self, cx: &mut Ctx<'_>, cmd: Command) -> Result<Outcome> {
        match cmd {
            Command::Join {
                node,
                address,
                labels,
                capacity,
            } => self.join(cx, node, address, labels, capacity),
            Command::Leave { node, incarnation } => {
                self.check_live(&node, incarnation)?;
                self.node_died(cx, &node, incarnation, "left the cluster");
                Ok(Outcome::Done)
            }
            Command::DeclareDead {
                node,
                incarnation,
                reason,
            } => {
                let live = self.check_live(&node, incarnation).is_ok();
                if live {
                    self.node_died(cx, &node, incarnation, &reason);
                }
                Ok(Outcome::Changed(live))
            }
            Command::ReportExits {
                node,
                incarnation,
                exits,
            } => {
                self.check_live(&node, incarnation)?;
                for (pid, reason) in exits {
                    if pid.node == node && pid.incarnation == incarnation {
                        self.process_exited(cx, &pid, &reason);
                    }
                }
                Ok(Outcome::Done)
            }
            Command::ChildStarted {
                node,
                incarnation,
                app,
                child,
                generation,
                pid,
            } => {
                self.check_live(&node, incarnation)?;
                self.child_started(cx, &node, incarnation, &app, &child, generation, pid)
            }
            Command::Register { name, pid } => self.register(cx, name, pid),
            Command::Unregister { name, pid } => Ok(self.unregister(cx, &name, pid.as_ref())),
            Command::PgJoin { group, pid } => self.pg_join(cx, group, pid),
            Command::PgLeave { group, pid } => Ok(self.pg_leave(cx, &group, &pid)),
            Command::SubmitApp {
                draft,
                code,
                code_hash,
                upgrade,
            } => self.submit(cx, draft, code, code_hash, upgrade),
            Command::StopApp { name } => self.stop_app(cx, &name),
            Command::RollbackApp { name } => self.rollback(cx, &name),
            Command::DeleteApp { name } => self.delete_app(cx, &name),
            Command::IssueToken { record } => self.issue_token(cx, record),
            Command::RevokeToken { id } => self.revoke_token(cx, &id),
            Command::ChildFailed {
                node,
                incarnation,
                app,
                child,
                generation,
                error,
            } => {
                self.check_live(&node, incarnation)?;
                Ok(self.child_failed(cx, &node, incarnation, &app, &child, generation, &error))
            }
            Command::Note {
                who,
                app,
                node,
                text,
            } => {
                let note = journal::Note {
                    kind: "operator",
                    app,
                    node,
                    who,
                    text,
                };
                self.journal.push(cx.index, cx.now_ms, note);
                Ok(Outcome::Done)
            }
            Command::UpgradeReport {
                node,
                incarnation,
                app,
                result,
            } => {
                self.check_live(&node, incarnation)?;
                self.upgrade_report(cx, &node, &app, result)
            }
        }
    }

    /// The view of an assignment a node needs.
    pub fn assignment_view(&self, a: &Assignment) -> AssignmentView {
        let app = self.apps.get(&a.app);
        AssignmentView {
            assignment: a.clone(),
            spec: app.and_then(|app| app.draft.children.iter().find(|c| c.id == a.child).cloned()),
            app_version: app.map(|x| x.draft.version.clone()).unwrap_or_default(),
            code_hash: app.map(|x| x.code_hash.clone()).unwrap_or_default(),
        }
    }

    /// Every assignment, in app and child order.
    pub fn all_assignments(&self) -> impl Iterator<Item = &Assignment> {
        self.assignments.values().flat_map(|m| m.values())
    }
}
