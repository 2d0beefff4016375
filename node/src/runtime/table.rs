//! The process table: serial → process, sharded so spawns and lookups rarely contend.

use super::host::Host;
use super::process::Process;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

const SHARDS: usize = 64;

/// Hashes a serial with one multiply: serials are counters this node hands out, so no one
/// can pick colliding keys, and the default SipHash was a visible part of every send.
#[derive(Default)]
struct SerialHasher(u64);

impl Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing, its high half folded into the low one: the serials of one
        // shard share their low bits (`serial % SHARDS` chose it), and the table takes its
        // bucket from the low bits and its tag from the high ones.
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

type Shard<H> = Mutex<HashMap<u64, Arc<Process<H>>, BuildHasherDefault<SerialHasher>>>;

/// All live processes of this node, by serial.
pub struct ProcessTable<H: Host> {
    shards: Vec<Shard<H>>,
}

impl<H: Host> Default for ProcessTable<H> {
    fn default() -> Self {
        ProcessTable {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }
}

impl<H: Host> ProcessTable<H> {
    fn shard(&self, serial: u64) -> &Shard<H> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn serials_of_one_shard_spread_over_the_buckets() {
        // The serials of one shard share their low bits; their hashes' low bits (the bucket)
        // must not, or the shard's map degrades to a few long probe chains.
        let buckets: HashSet<u64> = (0..1024u64)
            .map(|i| {
                let mut h = SerialHasher::default();
                h.write_u64(i * SHARDS as u64 + 5);
                h.finish() & 1023
            })
            .collect();
        assert!(
            buckets.len() > 512,
            "only {} of 1024 buckets",
            buckets.len()
        );
    }
}
