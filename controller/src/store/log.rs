//! The Raft log, vote and committed marker in redb, fsynced on every append.
//!
//! redb is a pure-Rust, maintained, crash-safe embedded store with ACID transactions; a commit
//! with `Durability::Immediate` returns only after fsync, which is what Raft needs from an append.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::io_err;
use crate::types::TypeConfig;

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type SErr = StorageError<u64>;

/// Bytes of recent entries kept decoded in memory for replication.
const CACHE_BYTES: usize = 64 << 20;

/// Recently appended entries: replication reads them here instead of decoding them from disk.
#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, index: u64, e: Entry<TypeConfig>, size: usize) {
        if let Some((_, old)) = self.entries.insert(index, (e, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > CACHE_BYTES {
            match self.entries.pop_first() {
                Some((_, (_, sz))) => self.bytes -= sz,
                None => break,
            }
        }
    }

    fn remove(&mut self, range: (Bound<u64>, Bound<u64>)) {
        let keys: Vec<u64> = self.entries.range(range).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some((_, sz)) = self.entries.remove(&k) {
                self.bytes -= sz;
            }
        }
    }

    /// The entries of `range` if all of them are cached.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let first = *self.entries.keys().next()?;
        let last = *self.entries.keys().next_back()?;
        if start < first {
            return None;
        }
        let end = end.unwrap_or(last + 1).min(last + 1);
        Some(
            self.entries
                .range(start..end)
                .map(|(_, (e, _))| e.clone())
                .collect(),
        )
    }
}

/// The log store; cheap to clone (readers for replication share the database and cache).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    cache: Arc<Mutex<Cache>>,
}

impl LogStore {
    /// Opens (or creates) the log database at `path`.
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        tx.open_table(LOGS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore {
            db: Arc::new(db),
            cache: Arc::default(),
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, redb::Error> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        let Some(v) = t.get(key)? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(v.value()).ok())
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durable: bool,
    ) -> Result<(), redb::Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| redb::Error::Io(io_err(e)))?;
        let mut tx = self.db.begin_write()?;
        if !durable {
            tx.set_durability(Durability::None)
                .map_err(|e| redb::Error::Io(io_err(e)))?;
        }
        tx.open_table(META)?.insert(key, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn remove_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<(), redb::Error> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(LOGS)?;
            let keys: Vec<u64> = t
                .range(range)?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            for k in keys {
                t.remove(k)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LogStore) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T, std::io::Error> {
        let me = self.clone();
        // redb commits fsync; keep them off the async workers.
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(io_err)?
            .map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let r = (range.start_bound().cloned(), range.end_bound().cloned());
        let start = match r.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match r.1 {
            Bound::Included(e) => Some(e + 1),
            Bound::Excluded(e) => Some(e),
            Bound::Unbounded => None,
        };
        if let Some(hit) = self.cache.lock().get(start, end) {
            return Ok(hit);
        }
        let read = || -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in t.range(r)? {
                let (_, v) = item?;
                let e =
                    serde_json::from_slice(v.value()).map_err(|e| redb::Error::Io(io_err(e)))?;
                out.push(e);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(&io_err(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<u64>> = self
            .read_meta("purged")
            .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
        let last = (|| -> Result<Option<LogId<u64>>, redb::Error> {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(LOGS)?;
            let Some((_, v)) = t.last()? else {
                return Ok(None);
            };
            let e: Entry<TypeConfig> =
                serde_json::from_slice(v.value()).map_err(|e| redb::Error::Io(io_err(e)))?;
            Ok(Some(e.log_id))
        })()
        .map_err(|e| StorageIOError::read_logs(&io_err(e)))?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let v = *vote;
        self.blocking(move |s| s.write_meta("vote", &v, true))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.read_meta("vote")
            .map_err(|e| StorageIOError::read_vote(&io_err(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // Not fsynced: losing it only means re-applying from the snapshot on restart.
        self.blocking(move |s| s.write_meta("committed", &committed, false))
            .await
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        let c: Option<Option<LogId<u64>>> = self
            .read_meta("committed")
            .map_err(|e| StorageIOError::read(&io_err(e)))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        {
            let mut cache = self.cache.lock();
            for e in entries {
                let bytes = serde_json::to_vec(&e)
                    .map_err(|err| StorageIOError::write_logs(&io_err(err)))?;
                let index = e.log_id.index;
                cache.insert(index, e, bytes.len());
                rows.push((index, bytes));
            }
        }
        let res = self
            .blocking(move |s| {
                let tx = s.db.begin_write()?;
                {
                    let mut t = tx.open_table(LOGS)?;
                    for (k, v) in &rows {
                        t.insert(*k, v.as_slice())?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(StorageIOError::write_logs(&io_err(msg)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let from = log_id.index;
        self.cache
            .lock()
            .remove((Bound::Included(from), Bound::Unbounded));
        self.blocking(move |s| s.remove_range((Bound::Included(from), Bound::Unbounded)))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let upto = log_id.index;
        self.cache
            .lock()
            .remove((Bound::Unbounded, Bound::Included(upto)));
        self.blocking(move |s| {
            s.write_meta("purged", &log_id, true)?;
            s.remove_range((Bound::Unbounded, Bound::Included(upto)))
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
