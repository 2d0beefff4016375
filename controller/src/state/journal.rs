//! The replicated event journal: a bounded ring of what happened to the cluster (crashes,
//! restarts, membership changes, fencing, upgrades, operator actions), written while the
//! log is applied so every member keeps the same one and it survives restarts in snapshots.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Event;
use crate::types::{AppStatus, UpgradeStatus};

/// Entries kept; older ones are dropped first.
pub const MAX_ENTRIES: usize = 2_000;
/// Longest text kept per entry (a traceback's tail).
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Increasing across the cluster's life, never reused.
    pub seq: u64,
    /// Log index of the entry that caused it.
    pub index: u64,
    /// Leader clock (ms since the Unix epoch).
    pub at_ms: u64,
    /// `node`, `restart`, `placement`, `app`, `upgrade` or `operator`.
    pub kind: String,
    /// The app concerned, if any.
    pub app: String,
    /// The node concerned, if any.
    pub node: String,
    /// Who caused it: `cluster` for the system itself, else the operator's name.
    pub who: String,
    /// What happened, with the crash traceback for a restart.
    pub text: String,
}

/// The bounded journal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// Entries, oldest first.
    pub entries: VecDeque<JournalEntry>,
    /// The next sequence number.
    pub next_seq: u64,
}

/// What a journal entry says, before it is numbered.
pub struct Note {
    /// See [`JournalEntry::kind`].
    pub kind: &'static str,
    /// See [`JournalEntry::app`].
    pub app: String,
    /// See [`JournalEntry::node`].
    pub node: String,
    /// See [`JournalEntry::who`].
    pub who: String,
    /// See [`JournalEntry::text`].
    pub text: String,
}

impl Journal {
    /// Appends one entry, dropping the oldest beyond [`MAX_ENTRIES`].
    pub fn push(&mut self, index: u64, at_ms: u64, note: Note) {
        let seq = self.next_seq.max(1);
        self.next_seq = seq + 1;
        self.entries.push_back(JournalEntry {
            seq,
            index,
            at_ms,
            kind: note.kind.into(),
            app: note.app,
            node: note.node,
            who: note.who,
            text: crate::validate::tail(&note.text, MAX_TEXT_BYTES),
        });
        while self.entries.len() > MAX_ENTRIES {
            self.entries.pop_front();
        }
    }

    /// Entries after `after_seq`, oldest first, at most `limit`.
    pub fn since(&self, after_seq: u64, limit: usize) -> Vec<JournalEntry> {
        self.entries
            .iter()
            .filter(|e| e.seq > after_seq)
            .take(limit)
            .cloned()
            .collect()
    }
}

fn system(kind: &'static str, app: &str, node: &str, text: String) -> Note {
    Note {
        kind,
        app: app.into(),
        node: node.into(),
        who: "cluster".into(),
        text,
    }
}

/// The journal's reading of a state-machine event; `None` for routine ones (names, groups).
pub fn note_for(event: &Event, now_ms: u64) -> Option<Note> {
    match event {
        Event::NodeChanged(n) if n.alive => Some(system(
            "node",
            "",
            &n.id,
            format!("node {} joined (incarnation {})", n.id, n.incarnation),
        )),
        Event::NodeChanged(n) => Some(system(
            "node",
            "",
            &n.id,
            format!(
                "node {} incarnation {} declared dead: {}",
                n.id, n.incarnation, n.death_reason
            ),
        )),
        Event::AssignmentSet(v) => {
            let a = &v.assignment;
            let node = a.node.as_ref().map(|(n, _)| n.as_str()).unwrap_or("");
            let placed = if node.is_empty() {
                "waiting for a node".to_string()
            } else {
                format!("on {node}")
            };
            match a.history.last() {
                Some(r) if r.at_ms == now_ms && a.pid.is_none() => Some(system(
                    "restart",
                    &a.app,
                    node,
                    format!(
                        "{}/{} restarted (generation {}) {placed}, after: {}",
                        a.app, a.child, a.generation, r.reason
                    ),
                )),
                _ if a.pid.is_none() => Some(system(
                    "placement",
                    &a.app,
                    node,
                    format!("{}/{} placed {placed}", a.app, a.child),
                )),
                _ => None,
            }
        }
        Event::AppChanged(app) => {
            let name = &app.draft.name;
            let version = &app.draft.version;
            let text = match app.status {
                AppStatus::Running if !app.upgrade_error.is_empty() => {
                    format!("{name} {version}: upgrade problem: {}", app.upgrade_error)
                }
                AppStatus::Running => {
                    let moving = app
                        .upgrades
                        .values()
                        .filter(|u| u.status != UpgradeStatus::Done)
                        .count();
                    if moving > 0 {
                        format!("{name} {version} running; upgrading on {moving} node(s)")
                    } else {
                        format!("{name} {version} running")
                    }
                }
                AppStatus::Stopped => format!("{name} {version} stopped"),
                AppStatus::Failed => format!("{name} {version} failed: {}", app.failure_reason),
            };
            Some(system("app", name, "", text))
        }
        _ => None,
    }
}
