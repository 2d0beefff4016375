//! Worker node processes of a `--dev` node: one CPython interpreter runs Python on one core,
//! so a dev node uses a machine's cores by starting more nodes of the same binary, joined to
//! its embedded controller as ordinary members. They are its children: they die with it
//! (SIGTERM on an orderly stop, the kernel's parent-death signal if it is killed), and one
//! that exits on its own is reported and started again with a fresh incarnation.

use parking_lot::Mutex;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long stopped workers get to depart before they are killed.
const STOP_PATIENCE: Duration = Duration::from_secs(15);
/// A worker restarted more often than this within `RESTART_WINDOW` is left down.
const MAX_RESTARTS: usize = 5;
/// The window `MAX_RESTARTS` counts in.
const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// How to start one worker node process.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The worker's node name (`<dev name>-w<i>`).
    pub name: String,
    /// Arguments after the binary (no credentials: the command line is visible to all).
    pub args: Vec<String>,
    /// Credentials (`REBEAM_SECRET`, `REBEAM_CLIENT_TOKENS`), passed in the environment;
    /// the worker removes them before Python starts.
    pub env: Vec<(&'static str, String)>,
}

/// The running worker processes of this dev node.
pub struct Workers {
    slots: Vec<Arc<Mutex<Option<Child>>>>,
    stopping: Arc<AtomicBool>,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// Environment variables of the dev node's flags that a worker must not inherit.
const WORKER_UNSET: [&str; 12] = [
    "REBEAM_LISTEN",
    "REBEAM_ADVERTISE",
    "REBEAM_HTTP_LISTEN",
    "REBEAM_API_LISTEN",
    "REBEAM_WORKERS",
    "REBEAM_DATA_DIR",
    "REBEAM_SECRET_FILE",
    "REBEAM_CLIENT_TOKEN_FILE",
    "REBEAM_TLS_CERT",
    "REBEAM_TLS_KEY",
    "REBEAM_TLS_CA",
    "REBEAM_NODE_NAME",
];

/// The number of worker nodes `--workers` means when not given: one per core.
pub fn default_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Starts the workers and a thread per worker that restarts it if it exits on its own.
/// Does nothing when called twice.
pub fn start(specs: Vec<WorkerSpec>) -> std::io::Result<()> {
    let mut slots = Vec::new();
    let mut started = Vec::new();
    for spec in &specs {
        let child = spawn(spec)?;
        started.push(child.id());
        slots.push(Arc::new(Mutex::new(Some(child))));
    }
    let stopping = Arc::new(AtomicBool::new(false));
    for (spec, slot) in specs.into_iter().zip(&slots) {
        let slot = slot.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("rebeam-worker".into())
            .spawn(move || watch(spec, slot, stopping))?;
    }
    tracing::info!(?started, "dev worker nodes started");
    let _ = WORKERS.set(Workers { slots, stopping });
    Ok(())
}

/// The process ids of the running workers (for tests and the log).
pub fn pids() -> Vec<u32> {
    WORKERS
        .get()
        .map(|w| {
            w.slots
                .iter()
                .filter_map(|s| s.lock().as_ref().map(Child::id))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops every worker: SIGTERM (each departs in order), then SIGKILL after a grace period.
/// Returns once all exited; safe to call more than once.
pub fn stop() {
    let Some(workers) = WORKERS.get() else { return };
    workers.stopping.store(true, Ordering::Release);
    for slot in &workers.slots {
        if let Some(child) = slot.lock().as_ref() {
            signal(child, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_PATIENCE;
    for slot in &workers.slots {
        let mut slot = slot.lock();
        let Some(child) = slot.as_mut() else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!(
                        "rebeam-node: worker {} did not stop in time; killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        *slot = None;
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on a process id we own (our child, not yet reaped).
        unsafe { libc::kill(pid, sig) };
    }
}

fn spawn(spec: &WorkerSpec) -> std::io::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.args(&spec.args);
    // The dev node's own settings must not reach a worker through the environment (two
    // processes cannot listen on one port; a secret file would clash with the secret).
    for var in WORKER_UNSET {
        command.env_remove(var);
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the worker when
    // this process dies (a kill -9 of the dev node leaves no orphan worker behind).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Waits for the worker to exit; unless the dev node is stopping, reports it and starts it
/// again (a crashed worker's top-level children are already moved by the controller).
fn watch(spec: WorkerSpec, slot: Arc<Mutex<Option<Child>>>, stopping: Arc<AtomicBool>) {
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        let status = loop {
            if stopping.load(Ordering::Acquire) {
                return;
            }
            let mut guard = slot.lock();
            let Some(child) = guard.as_mut() else { return };
            match child.try_wait() {
                Ok(Some(status)) => {
                    *guard = None;
                    break status;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(100));
        };
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            eprintln!(
                "rebeam-node: worker {} exited ({status}) and was restarted {MAX_RESTARTS} times \
                 in {}s; leaving it down",
                spec.name,
                RESTART_WINDOW.as_secs()
            );
            return;
        }
        restarts.push(now);
        eprintln!(
            "rebeam-node: worker {} exited ({status}); starting it again",
            spec.name
        );
        match spawn(&spec) {
            Ok(child) => *slot.lock() = Some(child),
            Err(err) => {
                eprintln!("rebeam-node: cannot restart worker {}: {err}", spec.name);
                return;
            }
        }
    }
}
