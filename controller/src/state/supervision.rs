//! The top-level supervision tree: placement, restarts on node death or child exit, intensity.

use std::collections::{BTreeMap, BTreeSet};

use super::{Ctx, Event, State};
use crate::error::{Error, Result};
use crate::types::{
    AppStatus, Assignment, ChildSpec, Outcome, Pid, Placement, Restart, RestartRecord,
};
use crate::validate;

/// How long a node death while starting one of an app's children counts against it when
/// choosing whom to charge for the next one.
const OFFENCE_MEMORY_MS: u64 = 10 * 60 * 1000;
/// Such deaths remembered per app.
const MAX_OFFENCES: usize = 8;
/// Restart records kept per child.
const MAX_HISTORY: usize = 32;
/// Longest reason kept in one restart record; the full text of a failed start stays in the
/// app's `last_error` (32 tracebacks per child would bloat every snapshot).
const MAX_HISTORY_REASON_BYTES: usize = 2048;

impl State {
    /// Top-level children placed on each alive node, total and per app.
    fn load(&self) -> BTreeMap<&str, (u32, BTreeMap<&str, u32>)> {
        let mut load: BTreeMap<&str, (u32, BTreeMap<&str, u32>)> = BTreeMap::new();
        for a in self.all_assignments() {
            if let Some((node, _)) = &a.node {
                let e = load.entry(node.as_str()).or_default();
                e.0 += 1;
                *e.1.entry(a.app.as_str()).or_default() += 1;
            }
        }
        load
    }

    /// Picks a node for a child: eligible by label, capacity and [`State::may_start_on`], least
    /// loaded, ties by id.
    fn choose_node(&self, app: &str, spec: &ChildSpec, now: u64) -> Option<(String, u64)> {
        let load = self.load();
        let starting = self.starting_by_node((app, &spec.id));
        self.nodes
            .values()
            .filter(|n| n.alive)
            .filter(|n| self.may_start_on(app, starting.get(n.id.as_str()), now))
            .filter(|n| match &spec.placement {
                Placement::Label(k, v) => n.labels.get(k) == Some(v),
                Placement::Any | Placement::Spread => true,
            })
            .filter_map(|n| {
                let (total, per_app) = load.get(n.id.as_str()).cloned().unwrap_or_default();
                if n.capacity != 0 && total >= n.capacity {
                    return None;
                }
                let same_app = per_app.get(app).copied().unwrap_or(0);
                let key = match spec.placement {
                    Placement::Spread => (same_app, total),
                    _ => (total, same_app),
                };
                Some((key, n.id.clone(), n.incarnation))
            })
            .min()
            .map(|(_, id, inc)| (id, inc))
    }

    /// Whether an app killed a node while starting one of its children recently.
    fn suspect(&self, app: &str, now: u64) -> bool {
        self.apps.get(app).is_some_and(|a| {
            a.killed_nodes_ms
                .iter()
                .any(|t| now.saturating_sub(*t) < OFFENCE_MEMORY_MS)
        })
    }

    /// The apps with a child starting (placed, no pid reported yet) on each node, leaving out
    /// the child `except` (the one being placed).
    fn starting_by_node(&self, except: (&str, &str)) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut starting: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for a in self.all_assignments() {
            if a.pid.is_some() || (a.app.as_str(), a.child.as_str()) == except {
                continue;
            }
            if let Some((node, _)) = &a.node {
                starting
                    .entry(node.as_str())
                    .or_default()
                    .insert(a.app.as_str());
            }
        }
        starting
    }

    /// Whether a child of `app` may start on a node where the apps `starting` have children
    /// starting. A suspect's child starts only where no other app's child is starting, and
    /// no other app's starts beside it, so a node that dies while it starts names the
    /// culprit alone (its own children start together: they share the blame); other apps
    /// start side by side as usual.
    fn may_start_on(&self, app: &str, starting: Option<&BTreeSet<&str>>, now: u64) -> bool {
        let mut others = starting
            .into_iter()
            .flatten()
            .filter(|other| **other != app);
        if self.suspect(app, now) {
            others.next().is_none()
        } else {
            !others.any(|other| self.suspect(other, now))
        }
    }

    fn emit_set(&self, cx: &mut Ctx<'_>, app: &str, child: &str) {
        if let Some(a) = self.assignments.get(app).and_then(|m| m.get(child)) {
            cx.events
                .push(Event::AssignmentSet(Box::new(self.assignment_view(a))));
        }
    }

    pub(super) fn emit_removed(cx: &mut Ctx<'_>, a: &Assignment) {
        if let Some((node, inc)) = &a.node {
            cx.events.push(Event::AssignmentRemoved {
                app: a.app.clone(),
                child: a.child.clone(),
                generation: a.generation,
                node: node.clone(),
                incarnation: *inc,
            });
        }
    }

    /// Places (or leaves pending) one child at a new generation.
    pub(super) fn place_child(
        &mut self,
        cx: &mut Ctx<'_>,
        app: &str,
        spec: &ChildSpec,
        history: Vec<RestartRecord>,
        generation: u64,
    ) {
        let node = self.choose_node(app, spec, cx.now_ms);
        let a = Assignment {
            app: app.to_string(),
            child: spec.id.clone(),
            generation,
            node,
            pid: None,
            history,
        };
        self.assignments
            .entry(app.to_string())
            .or_default()
            .insert(spec.id.clone(), a);
        self.emit_set(cx, app, &spec.id);
    }

    /// Creates assignments for an app's children that have none.
    pub(super) fn start_children(&mut self, cx: &mut Ctx<'_>, app: &str) {
        let Some(children) = self.apps.get(app).map(|a| a.draft.children.clone()) else {
            return;
        };
        for spec in children {
            let exists = self
                .assignments
                .get(app)
                .is_some_and(|m| m.contains_key(&spec.id));
            if !exists {
                self.place_child(cx, app, &spec, Vec::new(), 1);
            }
        }
    }

    /// Tries to place every pending child (a node joined or capacity was freed).
    pub(super) fn place_pending(&mut self, cx: &mut Ctx<'_>) {
        let pending: Vec<(String, String)> = self
            .all_assignments()
            .filter(|a| a.node.is_none())
            .map(|a| (a.app.clone(), a.child.clone()))
            .collect();
        for (app, child) in pending {
            let Some(spec) = self.spec(&app, &child) else {
                continue;
            };
            if let Some(node) = self.choose_node(&app, &spec, cx.now_ms) {
                if let Some(a) = self
                    .assignments
                    .get_mut(&app)
                    .and_then(|m| m.get_mut(&child))
                {
                    a.node = Some(node);
                }
                self.emit_set(cx, &app, &child);
            }
        }
    }

    /// A start ended (reported or failed): places the children a suspect's start held back,
    /// or that held a suspect's back ([`State::may_start_on`]).
    fn place_held(&mut self, cx: &mut Ctx<'_>) {
        // Only suspects hold starts back; without one, nothing pending became placeable.
        let now = cx.now_ms;
        if self.apps.keys().any(|app| self.suspect(app, now))
            && self.all_assignments().any(|a| a.node.is_none())
        {
            self.place_pending(cx);
        }
    }

    fn spec(&self, app: &str, child: &str) -> Option<ChildSpec> {
        self.apps
            .get(app)?
            .draft
            .children
            .iter()
            .find(|c| c.id == child)
            .cloned()
    }

    /// Counts one restart of an app; false (and the app failed) if intensity is exceeded.
    fn note_restart(&mut self, cx: &mut Ctx<'_>, app: &str, why: &str) -> bool {
        let Some(a) = self.apps.get_mut(app) else {
            return false;
        };
        let window = u64::from(a.draft.max_seconds) * 1000;
        let now = cx.now_ms;
        a.restart_times.retain(|t| now.saturating_sub(*t) < window);
        a.restart_times.push(now);
        if a.restart_times.len() as u64 > u64::from(a.draft.max_restarts) {
            let reason = format!(
                "restart intensity exceeded ({} restarts in {} s; last: {why})",
                a.restart_times.len(),
                a.draft.max_seconds
            );
            self.fail_app(cx, app, reason);
            return false;
        }
        true
    }

    /// Marks an app failed and stops its children.
    pub(super) fn fail_app(&mut self, cx: &mut Ctx<'_>, app: &str, reason: String) {
        tracing::warn!(app, %reason, "app failed");
        self.remove_assignments(cx, app);
        if let Some(a) = self.apps.get_mut(app) {
            a.status = AppStatus::Failed;
            a.failure_reason = reason;
            cx.events.push(Event::AppChanged(Box::new(a.clone())));
        }
        self.place_pending(cx);
    }

    /// Removes every assignment of an app, telling the nodes to stop them in the reverse of
    /// the manifest's start order (then any the manifest no longer names).
    pub(super) fn remove_assignments(&mut self, cx: &mut Ctx<'_>, app: &str) {
        let Some(mut m) = self.assignments.remove(app) else {
            return;
        };
        let order: Vec<String> = self
            .apps
            .get(app)
            .map(|a| a.draft.children.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        for id in order.iter().rev() {
            if let Some(a) = m.remove(id) {
                Self::emit_removed(cx, &a);
            }
        }
        for a in m.values() {
            Self::emit_removed(cx, a);
        }
    }

    /// Restarts elsewhere the children a dead node incarnation ran, charging the death to the
    /// apps that likely caused it. A node that dies while one app's children are starting
    /// (placed, no pid reported yet) is charged to that app alone; while several apps' are, to
    /// those among them that killed a node while starting before (recently), or, if none
    /// did, to none of them: all become suspects, whose children start apart from any other
    /// start from then on ([`State::may_start_on`]), so the next death names the culprit.
    /// Only a death while every child ran is charged to every app on the node. Apps not
    /// charged get their children restarted elsewhere without counting against their
    /// restart intensity, so one app whose code kills its node (`os._exit`, a crashing C
    /// extension) fails alone, even when an innocent app was starting beside it.
    pub(super) fn reassign_from_dead_node(
        &mut self,
        cx: &mut Ctx<'_>,
        node: &str,
        incarnation: u64,
        reason: &str,
    ) {
        let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut starting: BTreeMap<String, String> = BTreeMap::new();
        for a in self.all_assignments() {
            if a.node
                .as_ref()
                .is_some_and(|(n, i)| n == node && *i == incarnation)
            {
                by_app
                    .entry(a.app.clone())
                    .or_default()
                    .push(a.child.clone());
                if a.pid.is_none() {
                    starting
                        .entry(a.app.clone())
                        .or_insert_with(|| a.child.clone());
                }
            }
        }
        let now = cx.now_ms;
        let repeat: BTreeSet<String> = starting
            .keys()
            .filter(|app| self.suspect(app, now))
            .cloned()
            .collect();
        let charged: BTreeSet<String> = if starting.is_empty() {
            by_app.keys().cloned().collect()
        } else if starting.len() == 1 {
            starting.keys().cloned().collect()
        } else {
            // Several apps were starting: charge those that killed a node before; if none did,
            // no one (each is now a suspect, started apart from the rest from here on, so the
            // next death names the culprit alone).
            repeat
        };
        for (app, child) in &starting {
            if let Some(a) = self.apps.get_mut(app) {
                a.killed_nodes_ms
                    .retain(|t| now.saturating_sub(*t) < OFFENCE_MEMORY_MS);
                a.killed_nodes_ms.push(now);
                if a.killed_nodes_ms.len() > MAX_OFFENCES {
                    a.killed_nodes_ms.remove(0);
                }
                tracing::warn!(app = %app, child = %child, node, "node died while starting a child of this app");
            }
        }
        let blamed = if charged.is_empty() {
            "no app: several were starting, each now starts apart".to_string()
        } else {
            charged.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        for (app, children) in by_app {
            let why = match starting.get(&app) {
                Some(child) => format!("node {node} died while starting child {child}: {reason}"),
                None => format!("node {node} died: {reason}"),
            };
            if charged.contains(&app) {
                // A node death is one failure of the app, however many of its children it hosted.
                if !self.note_restart(cx, &app, &why) {
                    continue;
                }
            } else {
                tracing::info!(app = %app, node, blamed = %blamed, "node death not charged to this app");
            }
            let why = if charged.contains(&app) {
                why
            } else {
                format!("node {node} died (charged to {blamed}): {reason}")
            };
            for child in children {
                self.restart_child(cx, &app, &child, &why, false);
            }
        }
        self.place_pending(cx);
    }

    /// Restarts one child at a new generation (same node if `stay` and it is still alive).
    fn restart_child(&mut self, cx: &mut Ctx<'_>, app: &str, child: &str, why: &str, stay: bool) {
        let Some(spec) = self.spec(app, child) else {
            return;
        };
        let Some(old) = self.assignments.get_mut(app).and_then(|m| m.remove(child)) else {
            return;
        };
        if spec.restart == Restart::Temporary {
            Self::emit_removed(cx, &old);
            return;
        }
        let mut history = old.history.clone();
        let (from_node, from_incarnation) = old.node.clone().unwrap_or_default();
        history.push(RestartRecord {
            at_ms: cx.now_ms,
            reason: validate::tail(why, MAX_HISTORY_REASON_BYTES),
            from_node,
            from_incarnation,
        });
        if history.len() > MAX_HISTORY {
            history.drain(..history.len() - MAX_HISTORY);
        }
        let generation = old.generation + 1;
        let keep = old.node.clone().filter(|(n, i)| {
            stay && self.check_live(n, *i).is_ok() && {
                let starting = self.starting_by_node((app, child));
                self.may_start_on(app, starting.get(n.as_str()), cx.now_ms)
            }
        });
        match keep {
            Some(node) => {
                let a = Assignment {
                    app: app.into(),
                    child: child.into(),
                    generation,
                    node: Some(node),
                    pid: None,
                    history,
                };
                self.assignments
                    .entry(app.to_string())
                    .or_default()
                    .insert(child.to_string(), a);
                self.emit_set(cx, app, child);
            }
            None => {
                Self::emit_removed(cx, &old);
                self.place_child(cx, app, &spec, history, generation);
            }
        }
    }

    /// The node reports the pid of a child it started for a generation.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn child_started(
        &mut self,
        cx: &mut Ctx<'_>,
        node: &str,
        incarnation: u64,
        app: &str,
        child: &str,
        generation: u64,
        pid: Pid,
    ) -> Result<Outcome> {
        let a = self
            .assignments
            .get_mut(app)
            .and_then(|m| m.get_mut(child))
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "app `{app}` has no running child `{child}`; stop that process"
                ))
            })?;
        let here = a
            .node
            .as_ref()
            .is_some_and(|(n, i)| n == node && *i == incarnation);
        if !here || a.generation != generation {
            return Err(Error::FailedPrecondition(format!(
                "child `{child}` of `{app}` generation {generation} is not assigned to this node any more; stop that process"
            )));
        }
        a.pid = Some(pid);
        self.emit_set(cx, app, child);
        self.place_held(cx);
        let all_started = self
            .assignments
            .get(app)
            .is_some_and(|m| m.values().all(|a| a.pid.is_some()));
        if let Some(a) = self
            .apps
            .get_mut(app)
            .filter(|a| all_started && !a.last_error.is_empty())
        {
            a.last_error.clear();
            cx.events.push(Event::AppChanged(Box::new(a.clone())));
        }
        Ok(Outcome::Done)
    }

    /// The node could not start a child for a generation (import error or exception in
    /// `init`): recorded as the app's `last_error`, then handled like a crash of the child.
    /// A report about a generation no longer assigned to that node changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn child_failed(
        &mut self,
        cx: &mut Ctx<'_>,
        node: &str,
        incarnation: u64,
        app: &str,
        child: &str,
        generation: u64,
        error: &str,
    ) -> Outcome {
        let current = self
            .assignments
            .get(app)
            .and_then(|m| m.get(child))
            .is_some_and(|a| {
                a.generation == generation
                    && a.node
                        .as_ref()
                        .is_some_and(|(n, i)| n == node && *i == incarnation)
            });
        if !current {
            tracing::debug!(app, child, generation, node, "stale start failure ignored");
            return Outcome::Changed(false);
        }
        if let Some(a) = self.apps.get_mut(app) {
            a.last_error = format!("child {child} failed to start on {node}: {error}");
        }
        self.child_down(
            cx,
            app,
            child,
            &format!("child {child} failed to start: {error}"),
            false,
        );
        self.place_held(cx);
        // A failed app already told watchers; a running one changed its last_error.
        if let Some(a) = self
            .apps
            .get(app)
            .filter(|a| a.status == AppStatus::Running)
        {
            cx.events.push(Event::AppChanged(Box::new(a.clone())));
        }
        Outcome::Changed(true)
    }

    /// A reported exit of a top-level child: restart per its restart type and app intensity.
    pub(super) fn top_level_exited(&mut self, cx: &mut Ctx<'_>, pid: &Pid, reason: &str) {
        let found = self
            .all_assignments()
            .find(|a| a.pid.as_ref() == Some(pid))
            .map(|a| (a.app.clone(), a.child.clone()));
        let Some((app, child)) = found else { return };
        let normal = reason == "normal"
            || reason == "shutdown"
            || reason.starts_with("(\"shutdown\"")
            || reason.starts_with("shutdown:");
        self.child_down(
            cx,
            &app,
            &child,
            &format!("child {child} exited: {reason}"),
            normal,
        );
    }

    /// A top-level child is gone (exited, or never started): restart it per its restart type
    /// and the app's intensity, or drop its assignment.
    fn child_down(&mut self, cx: &mut Ctx<'_>, app: &str, child: &str, why: &str, normal: bool) {
        let Some(spec) = self.spec(app, child) else {
            return;
        };
        let restart = match spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !normal,
            Restart::Temporary => false,
        };
        if !restart {
            if let Some(old) = self.assignments.get_mut(app).and_then(|m| m.remove(child)) {
                Self::emit_removed(cx, &old);
            }
            return;
        }
        if self.note_restart(cx, app, why) {
            self.restart_child(cx, app, child, why, true);
        }
    }
}
