//! The process table: serial → process, sharded so spawns and lookups rarely contend.

use super::host::Host;
use super::process::Process;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 64;

/// All live processes of this node, by serial.
pub struct ProcessTable<H: Host> {
    shards: Vec<Mutex<HashMap<u64, Arc<Process<H>>>>>,
}

impl<H: Host> Default for ProcessTable<H> {
    fn default() -> Self {
        ProcessTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<H: Host> ProcessTable<H> {
    fn shard(&self, serial: u64) -> &Mutex<HashMap<u64, Arc<Process<H>>>> {
        &self.shards[(serial as usize) % SHARDS]
    }

    /// Adds a process.
    pub fn insert(&self, process: Arc<Process<H>>) {
        self.shard(process.pid.serial)
            .lock()
            .insert(process.pid.serial, process);
    }

    /// Finds a live process by serial.
    pub fn get(&self, serial: u64) -> Option<Arc<Process<H>>> {
        self.shard(serial).lock().get(&serial).cloned()
    }

    /// Removes a process.
    pub fn remove(&self, serial: u64) -> Option<Arc<Process<H>>> {
        self.shard(serial).lock().remove(&serial)
    }

    /// Number of live processes.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no process lives.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every live process.
    pub fn all(&self) -> Vec<Arc<Process<H>>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.lock().values().cloned());
        }
        out.sort_by_key(|p| p.pid.serial);
        out
    }
}
