//! Application code on this node: fetching a version by hash, loading it into Python beside
//! the versions already loaded, and moving the app's running servers when the version the
//! controller names for an app changes (an upgrade or a rollback).

use super::control::fetch_code;
use super::Cluster;
pub use crate::python::cluster_glue::Target;
use crate::python::upgrade::Moves;
use parking_lot::Mutex;
use rebeam_proto as pb;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The version each app runs on this node, the version the controller last named for it,
/// and one lock per app so loads never interleave.
#[derive(Default)]
pub struct AppCode {
    current: Mutex<HashMap<String, String>>,
    /// The app's version as the watch stream last named it, recorded in stream order: a
    /// start whose assignment predates an upgrade loads this one instead of its own (which
    /// would move the servers back), and a load that finishes after the upgrade was named
    /// goes on to it.
    declared: Mutex<HashMap<String, Target>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The Python modules that load code were imported (or that is under way).
    warmed: AtomicBool,
}

impl Target {
    /// The target an app's description names.
    pub fn of_app(info: &pb::AppInfo) -> Target {
        Target {
            app: info.name.clone(),
            version: info.version.clone(),
            code_hash: info.code_hash.clone(),
            modules: info
                .children
                .iter()
                .map(|c| start_module(&c.start))
                .collect(),
        }
    }
}

/// How the module namespaces of app versions begin (`rebeam._code.APP_MODULE_PREFIX`).
const APP_MODULE_PREFIX: &str = "_rebeam_app_";

/// The module namespace a version of `app` is imported under (`rebeam._code._prefix`).
fn namespace(app: &str, code_hash: &str) -> String {
    let app: String = app
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let hash: String = code_hash.chars().take(16).collect();
    format!("{APP_MODULE_PREFIX}{app}_{hash}")
}

/// The module part of a manifest's `module:attribute`.
pub fn start_module(start: &str) -> String {
    start.split(':').next().unwrap_or_default().to_string()
}

impl AppCode {
    /// True when `app` runs here on another version than `code_hash`.
    pub fn differs(&self, app: &str, code_hash: &str) -> bool {
        self.current.lock().get(app).is_some_and(|h| h != code_hash)
    }

    /// The code hash `app` runs on here, if it was loaded.
    pub fn current(&self, app: &str) -> Option<String> {
        self.current.lock().get(app).cloned()
    }

    /// Forgets which version `app` ran (it stopped), so a later submit starts fresh.
    pub fn forget(&self, app: &str) {
        self.current.lock().remove(app);
        self.declared.lock().remove(app);
    }

    /// Records the version the controller now names for an app (an upgrade, a rollback, or
    /// the app as a watch first shows it). Called in watch-stream order.
    pub fn declare(&self, target: Target) {
        self.declared.lock().insert(target.app.clone(), target);
    }

    /// Imports, once and in the background, the Python modules that unpack and load an app's
    /// code. A node that sees a running app may be handed one of its children at any moment
    /// (a failover): the first load then needs no imports, which took 15–95 ms on the loaded
    /// 2-core machine, more than the rest of a failover.
    pub fn warm(&self, cluster: &Arc<Cluster>) {
        if self.warmed.swap(true, Ordering::Relaxed) {
            return;
        }
        cluster.tokio.spawn_blocking(|| {
            if let Err(error) = crate::python::cluster_glue::warm_loader() {
                // Not fatal: the first load imports them itself (and reports what fails).
                tracing::warn!("could not import the code loader ahead: {error}");
            }
        });
    }

    /// The version the controller names for an app whose code `module` belongs to (a
    /// module of that version's namespace, as another node names a `spawn_on` target), when
    /// this node runs no version of that app: what to fetch and load before importing
    /// `module`. (An app running here on another version changes version by the controller's
    /// word only, which reports the upgrade.)
    pub fn missing_for(&self, module: &str) -> Option<Target> {
        if !module.starts_with(APP_MODULE_PREFIX) {
            return None;
        }
        let target = self
            .declared
            .lock()
            .values()
            .find(|t| {
                let prefix = namespace(&t.app, &t.code_hash);
                module == prefix
                    || module
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('.'))
            })?
            .clone();
        self.current(&target.app).is_none().then_some(target)
    }

    /// The version to load for `target`: the declared one when the controller has named
    /// another since the caller's information was current.
    fn latest(&self, target: Target) -> Target {
        match self.declared.lock().get(&target.app) {
            Some(d) if d.code_hash != target.code_hash => d.clone(),
            _ => target,
        }
    }

    fn lock_for(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    /// Makes `target` the app's current version here: fetches and loads it if needed and,
    /// when another version ran before, moves the app's servers to it. Returns the report
    /// for the controller when it loaded something, the error (with traceback) when the
    /// code does not load.
    pub async fn ensure(
        &self,
        cluster: &Arc<Cluster>,
        target: Target,
    ) -> Result<Option<pb::NodeUpgrade>, String> {
        let lock = self.lock_for(&target.app);
        let _held = lock.lock().await;
        let mut target = self.latest(target);
        let mut report_of = None;
        loop {
            let before = self.current.lock().get(&target.app).cloned();
            if before.as_deref() == Some(target.code_hash.as_str()) {
                return Ok(report_of);
            }
            let code = fetch_code(cluster, &target.code_hash)
                .await
                .map_err(|s| format!("cannot fetch code {}: {}", target.code_hash, s.message()))?;
            tracing::debug!(app = %target.app, bytes = code.len(), "code fetched");
            let rt = cluster.rt.clone();
            let base = cluster.config.data_dir.display().to_string();
            let upgrading = before.is_some();
            let t = target.clone();
            let moves = tokio::task::spawn_blocking(move || {
                crate::python::cluster_glue::load_version(&rt, &base, &t, code, upgrading)
            })
            .await
            .map_err(|e| format!("loading the code panicked: {e}"))??;
            tracing::debug!(app = %target.app, "code loaded");
            self.current
                .lock()
                .insert(target.app.clone(), target.code_hash.clone());
            // Reported even for a first load (nothing to move): a client waiting for an
            // upgrade hears from every node running the app, also one that just got its
            // first child.
            report_of = Some(report(cluster, &target, moves.unwrap_or_default()));
            // Named while this one loaded: its own change saw nothing running yet and left
            // the move to this load.
            let next = self.latest(target.clone());
            if next.code_hash == target.code_hash {
                return Ok(report_of);
            }
            target = next;
        }
    }
}

fn report(cluster: &Cluster, target: &Target, moves: Moves) -> pb::NodeUpgrade {
    let status = if moves.stayed.is_empty() {
        pb::UpgradeStatus::Done
    } else {
        pb::UpgradeStatus::Partial
    };
    pb::NodeUpgrade {
        node: cluster.rt.node().name().to_string(),
        code_hash: target.code_hash.clone(),
        version: target.version.clone(),
        status: status as i32,
        error: String::new(),
        upgraded: moves.moved,
        stayed: moves
            .stayed
            .into_iter()
            .map(|s| pb::StayedProcess {
                pid: Some(super::wire::pid_to_pb(s.pid)),
                name: s.name,
                error: s.error,
            })
            .collect(),
    }
}

/// The report of a version that did not load here.
pub fn failed(cluster: &Cluster, target: &Target, error: String) -> pb::NodeUpgrade {
    pb::NodeUpgrade {
        node: cluster.rt.node().name().to_string(),
        code_hash: target.code_hash.clone(),
        version: target.version.clone(),
        status: pb::UpgradeStatus::Failed as i32,
        error,
        upgraded: 0,
        stayed: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(app: &str, hash: &str) -> Target {
        Target {
            app: app.into(),
            version: "1".into(),
            code_hash: hash.into(),
            modules: vec![],
        }
    }

    #[test]
    fn a_module_of_a_declared_version_of_an_app_not_running_here_names_that_version() {
        let code = AppCode::default();
        let hash = "0123456789abcdef0123";
        code.declare(target("job-queue", hash));
        let module = "_rebeam_app_job_queue_0123456789abcdef.worker";
        assert_eq!(
            code.missing_for(module).map(|t| t.app),
            Some("job-queue".into())
        );
        assert!(code
            .missing_for("_rebeam_app_job_queue_0123456789abcdefx.w")
            .is_none());
        assert!(code.missing_for("worker").is_none());
        code.current
            .lock()
            .insert("job-queue".into(), "another".into());
        assert!(
            code.missing_for(module).is_none(),
            "another version runs here"
        );
    }
}
