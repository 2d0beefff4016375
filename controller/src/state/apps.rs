//! Applications: submit, upgrade, rollback, stop, and their code blobs.

use std::collections::{BTreeMap, BTreeSet};

use super::{Ctx, Event, State};
use crate::error::{Error, Result};
use crate::types::{App, AppDraft, AppStatus, Blob, Outcome};

impl State {
    pub(super) fn submit(
        &mut self,
        cx: &mut Ctx<'_>,
        draft: AppDraft,
        code: Blob,
        code_hash: String,
        upgrade: bool,
    ) -> Result<Outcome> {
        let name = draft.name.clone();
        let existing = self.apps.get(&name);
        if upgrade {
            let Some(old) = existing else {
                return Err(Error::NotFound(format!(
                    "app `{name}` was never submitted; submit it instead of upgrading"
                )));
            };
            if old.status != AppStatus::Running {
                return Err(Error::FailedPrecondition(format!(
                    "app `{name}` is not running; submit it instead of upgrading"
                )));
            }
            if old.draft.version == draft.version {
                return Err(Error::AlreadyExists(format!(
                    "app `{name}` already runs version {}; bump the version in rebeam.toml",
                    draft.version
                )));
            }
        } else if let Some(old) = existing.filter(|o| o.status == AppStatus::Running) {
            return Err(Error::AlreadyExists(format!(
                "app `{name}` is already running version {}; use upgrade, or stop it first",
                old.draft.version
            )));
        }
        let previous = if upgrade {
            existing.map(App::version)
        } else {
            None
        };
        let restart_times = if upgrade {
            existing
                .map(|o| o.restart_times.clone())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let app = App {
            code_size: code.0.len() as u64,
            draft,
            code_hash: code_hash.clone(),
            status: AppStatus::Running,
            failure_reason: String::new(),
            submitted_at_ms: cx.now_ms,
            previous,
            restart_times,
            last_error: String::new(),
            upgrades: BTreeMap::new(),
            upgrade_error: String::new(),
            killed_nodes_ms: Vec::new(),
        };
        self.code.entry(code_hash).or_insert(code);
        self.apps.insert(name.clone(), app.clone());
        cx.events.push(Event::AppChanged(Box::new(app.clone())));
        if upgrade {
            self.upgrade_assignments(cx, &name);
        } else {
            self.remove_assignments(cx, &name);
            self.start_children(cx, &name);
        }
        self.collect_code();
        Ok(Outcome::App(Box::new(app)))
    }

    /// Makes a running app's previous version current again (the newer one becomes the
    /// previous, so rolling back again re-applies it).
    pub(super) fn rollback(&mut self, cx: &mut Ctx<'_>, name: &str) -> Result<Outcome> {
        let Some(app) = self.apps.get(name) else {
            return Err(Error::NotFound(format!(
                "app `{name}` does not exist; list apps to see the names"
            )));
        };
        if app.status != AppStatus::Running {
            return Err(Error::FailedPrecondition(format!(
                "app `{name}` is not running ({}); submit the version you want instead of rolling back",
                match app.status {
                    AppStatus::Stopped => "stopped",
                    AppStatus::Failed => "failed",
                    AppStatus::Running => "running",
                }
            )));
        }
        if app.previous.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "app `{name}` has no previous version to roll back to (only an upgrade or a rollback leaves one); upgrade it to the version you want instead"
            )));
        }
        let app = self.switch_to_previous(cx, name, true, String::new())?;
        Ok(Outcome::App(Box::new(app)))
    }

    /// Makes the previous version of a running app current, the way an upgrade moves children,
    /// and keeps the version it replaces as the next previous one when `keep_replaced`.
    pub(super) fn switch_to_previous(
        &mut self,
        cx: &mut Ctx<'_>,
        name: &str,
        keep_replaced: bool,
        upgrade_error: String,
    ) -> Result<App> {
        let app = self
            .apps
            .get_mut(name)
            .ok_or_else(|| Error::internal(format!("app `{name}` vanished while rolling back")))?;
        let previous = app.previous.take().ok_or_else(|| {
            Error::internal(format!(
                "app `{name}` lost its previous version while rolling back"
            ))
        })?;
        let replaced = app.version();
        app.draft = previous.draft;
        app.code_hash = previous.code_hash;
        app.code_size = previous.code_size;
        app.previous = keep_replaced.then_some(replaced);
        app.submitted_at_ms = cx.now_ms;
        app.last_error.clear();
        app.upgrades.clear();
        app.upgrade_error = upgrade_error;
        let app = app.clone();
        tracing::info!(app = name, version = %app.draft.version, "app rolled back");
        cx.events.push(Event::AppChanged(Box::new(app.clone())));
        self.upgrade_assignments(cx, name);
        self.collect_code();
        Ok(app)
    }

    /// Keeps children that still exist (nodes see the new version and upgrade in place), stops
    /// removed ones and starts new ones.
    fn upgrade_assignments(&mut self, cx: &mut Ctx<'_>, name: &str) {
        let ids: BTreeSet<String> = self
            .apps
            .get(name)
            .map(|a| a.draft.children.iter().map(|c| c.id.clone()).collect())
            .unwrap_or_default();
        let current: Vec<String> = self
            .assignments
            .get(name)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for child in current {
            if ids.contains(&child) {
                if let Some(a) = self.assignments.get(name).and_then(|m| m.get(&child)) {
                    cx.events
                        .push(Event::AssignmentSet(Box::new(self.assignment_view(a))));
                }
            } else if let Some(a) = self
                .assignments
                .get_mut(name)
                .and_then(|m| m.remove(&child))
            {
                Self::emit_removed(cx, &a);
            }
        }
        self.start_children(cx, name);
        self.place_pending(cx);
    }

    pub(super) fn stop_app(&mut self, cx: &mut Ctx<'_>, name: &str) -> Result<Outcome> {
        let Some(app) = self.apps.get(name) else {
            return Err(Error::NotFound(format!(
                "app `{name}` does not exist; list apps to see the names"
            )));
        };
        if app.status == AppStatus::Stopped {
            return Ok(Outcome::App(Box::new(app.clone())));
        }
        self.remove_assignments(cx, name);
        let app = match self.apps.get_mut(name) {
            Some(a) => {
                a.status = AppStatus::Stopped;
                a.clone()
            }
            None => return Err(Error::internal("app vanished while stopping")),
        };
        cx.events.push(Event::AppChanged(Box::new(app.clone())));
        self.place_pending(cx);
        Ok(Outcome::App(Box::new(app)))
    }

    /// Removes a stopped or failed app and, once no other app version refers to it, its code.
    pub(super) fn delete_app(&mut self, cx: &mut Ctx<'_>, name: &str) -> Result<Outcome> {
        let Some(app) = self.apps.get(name) else {
            return Err(Error::NotFound(format!(
                "app `{name}` does not exist; list apps to see the names"
            )));
        };
        if app.status == AppStatus::Running {
            return Err(Error::FailedPrecondition(format!(
                "app `{name}` is running; stop it before deleting it"
            )));
        }
        self.remove_assignments(cx, name);
        self.assignments.remove(name);
        self.apps.remove(name);
        cx.events.push(Event::AppDeleted(name.to_string()));
        self.collect_code();
        tracing::info!(app = name, "app deleted");
        Ok(Outcome::Done)
    }

    /// Drops code blobs no app version (current or previous) refers to.
    fn collect_code(&mut self) {
        let used: BTreeSet<String> = self
            .apps
            .values()
            .flat_map(|a| {
                std::iter::once(a.code_hash.clone())
                    .chain(a.previous.iter().map(|p| p.code_hash.clone()))
            })
            .collect();
        self.code.retain(|h, _| used.contains(h));
    }
}
