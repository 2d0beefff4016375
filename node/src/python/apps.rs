//! Which application a process belongs to: a tag each process inherits from its spawner, so
//! upgrades, `rebeam ps` and `rebeam logs` can find an app's processes on this node.

use parking_lot::Mutex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

/// One application as this node runs it; shared by all of its processes here.
pub struct AppTag {
    /// The app's name from its manifest.
    pub name: String,
    /// Bumped whenever the app's current code changes on this node; a process whose own
    /// epoch differs moves to the current code before its next message.
    pub epoch: AtomicU64,
    /// The outcome of the upgrade in progress (or the last one), filled as processes move.
    pub moves: Mutex<super::upgrade::Moves>,
    /// What the app's processes on this node wrote, for `rebeam logs`.
    pub log: Arc<super::logs::AppLog>,
    /// Its processes here that crashed (`/metrics`).
    pub crashes: AtomicU64,
    /// Children its supervisors here restarted (`/metrics`).
    pub restarts: AtomicU64,
}

static APPS: OnceLock<Mutex<HashMap<String, Arc<AppTag>>>> = OnceLock::new();

/// The node's one tag for the app `name` (created on first use).
pub fn tag(name: &str) -> Arc<AppTag> {
    let mut apps = APPS.get_or_init(Default::default).lock();
    apps.entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(AppTag {
                name: name.to_string(),
                epoch: AtomicU64::new(0),
                moves: Mutex::default(),
                log: super::logs::log_for(name),
                crashes: AtomicU64::new(0),
                restarts: AtomicU64::new(0),
            })
        })
        .clone()
}

/// The tag of the app `name`, if any process of it ever ran here.
pub fn find(name: &str) -> Option<Arc<AppTag>> {
    APPS.get()?.lock().get(name).cloned()
}

/// Every app that ever ran a process here, by name.
pub fn all() -> Vec<Arc<AppTag>> {
    let mut apps: Vec<_> = APPS
        .get()
        .map(|a| a.lock().values().cloned().collect())
        .unwrap_or_default();
    apps.sort_by(|a: &Arc<AppTag>, b| a.name.cmp(&b.name));
    apps
}

thread_local! {
    static SPAWNING_FOR: RefCell<Option<Arc<AppTag>>> = const { RefCell::new(None) };
    static SPAWNING_CHILD: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, which spawns the top-level child `child` of `app` outside any process: the
/// first process it spawns so is that child, marked as such from its first instant (its
/// exit may come before `f` returns).
pub fn spawning_child<R>(app: Arc<AppTag>, child: &str, f: impl FnOnce() -> R) -> R {
    SPAWNING_CHILD.with(|s| *s.borrow_mut() = Some(child.to_string()));
    let result = spawning_for(app, f);
    SPAWNING_CHILD.with(|s| *s.borrow_mut() = None);
    result
}

/// The top-level child a process spawned now outside any process is, taken once.
pub fn take_spawning_child() -> Option<String> {
    SPAWNING_CHILD.with(|s| s.borrow_mut().take())
}

/// Runs `f` with processes spawned outside any process (the top-level children the cluster
/// glue starts) tagged with `app`.
pub fn spawning_for<R>(app: Arc<AppTag>, f: impl FnOnce() -> R) -> R {
    let previous = SPAWNING_FOR.with(|s| s.borrow_mut().replace(app));
    let result = f();
    SPAWNING_FOR.with(|s| *s.borrow_mut() = previous);
    result
}

/// The app a process spawned now by the calling thread belongs to, when no process spawns it.
pub fn spawning() -> Option<Arc<AppTag>> {
    SPAWNING_FOR.with(|s| s.borrow().clone())
}
