//! Stops the top-level children the controller removes from this node one at a time, in the
//! order it removed them (the reverse of the app's start order on a stop), each with the
//! `shutdown` exit signal and then, if it has not exited within the patience, `kill`, as a
//! supervisor stops its children.

use crate::python::host::{exit_signal, PyRuntime};
use crate::runtime::{Pid, Reason};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a top-level child may take to shut its tree down before it is killed.
const PATIENCE: Duration = Duration::from_secs(30);

/// The queue of children to stop, served by one thread.
pub struct Stopper {
    queue: mpsc::Sender<Pid>,
}

impl Stopper {
    /// Starts the stopping thread for `rt`.
    pub fn start(rt: Arc<PyRuntime>) -> Stopper {
        let (queue, pids) = mpsc::channel::<Pid>();
        let spawned = std::thread::Builder::new()
            .name("rebeam-stopper".into())
            .spawn(move || {
                for pid in pids {
                    stop_child(&rt, pid);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the stopper thread: {e}");
        }
        Stopper { queue }
    }

    /// Queues `pid` to be stopped after the ones queued before it.
    pub fn stop(&self, pid: Pid) {
        if self.queue.send(pid).is_err() {
            tracing::error!(%pid, "the stopper thread is gone; cannot stop this process");
        }
    }
}

/// Stops one top-level child now: `shutdown`, then `kill` after the patience.
pub fn stop_child(rt: &Arc<PyRuntime>, pid: Pid) {
    // From the application master, the child's parent: a child trapping exits (any
    // supervisor) shuts its own tree down in order instead of taking it as a message.
    let master = Pid::app_master(&pid);
    exit_signal(rt, master, pid, Reason::Shutdown);
    let deadline = Instant::now() + PATIENCE;
    while rt.lookup(pid).is_some() {
        if Instant::now() >= deadline {
            tracing::warn!(%pid, "top-level child still running {PATIENCE:?} after shutdown; killing it");
            exit_signal(rt, master, pid, Reason::Kill);
            return;
        }
        // Waits for the child's own tree shutdown (supervisors stop their children first).
        std::thread::sleep(Duration::from_millis(2));
    }
}
