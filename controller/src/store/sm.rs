//! The state machine store: applies entries to [`State`], builds and installs snapshots.
//!
//! The state lives in memory; durability comes from the log plus snapshot files written with
//! fsync and an atomic rename. A snapshot holds the whole state, code blobs included.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::io_err;
use crate::state::{Event, State};
use crate::types::{MemberNode, Response, TypeConfig};

type SErr = StorageError<u64>;
type Meta = SnapshotMeta<u64, MemberNode>;

/// Events produced by one log entry.
#[derive(Debug)]
pub struct EventBatch {
    /// Log index of the entry.
    pub index: u64,
    /// The events, in order.
    pub events: Vec<Event>,
    /// The events as batched watch streams send them, encoded by the first stream to need
    /// them and shared by all the others.
    pub encoded: std::sync::OnceLock<crate::api::watch::Encoded>,
}

impl EventBatch {
    /// The events of the log entry at `index`.
    pub fn new(index: u64, events: Vec<Event>) -> EventBatch {
        EventBatch {
            index,
            events,
            encoded: std::sync::OnceLock::new(),
        }
    }
}

/// What readers share: the state and what was last applied.
#[derive(Debug, Default)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<u64>>,
    /// Last applied Raft membership.
    pub membership: StoredMembership<u64, MemberNode>,
    /// The cluster state.
    pub state: State,
}

/// State shared between the state machine, the API handlers and watchers.
pub struct SharedState {
    /// The applied state; apply holds the write lock while it sends events.
    pub applied: RwLock<Applied>,
    /// Broadcast of applied events (subscribe while holding the read lock to miss nothing).
    pub events: broadcast::Sender<Arc<EventBatch>>,
    /// The latest applied events, for watches that resume (written under the write lock).
    pub recent: parking_lot::Mutex<super::Recent>,
}

impl crate::auth::TokenSource for SharedState {
    fn token(&self, id: &str) -> Option<crate::auth::TokenRecord> {
        self.applied.read().state.tokens.get(id).cloned()
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, MemberNode>,
    data_file: String,
}

/// openraft's state machine over [`SharedState`].
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    dir: PathBuf,
    seq: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the snapshot directory and restores the state from the last snapshot, if any.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (events, _) = broadcast::channel(8192);
        let shared = Arc::new(SharedState {
            applied: RwLock::new(Applied::default()),
            events,
            recent: Default::default(),
        });
        let me = StateMachineStore {
            shared,
            dir: dir.to_path_buf(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        if let Some((meta, data)) = me.read_snapshot()? {
            me.load(&meta, &data)?;
        }
        Ok(me)
    }

    /// The shared state, for handlers.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn load(&self, meta: &SnapshotMeta<u64, MemberNode>, data: &[u8]) -> std::io::Result<()> {
        let mut state: State = serde_json::from_slice(data).map_err(io_err)?;
        state.rebuild_indexes();
        let mut a = self.shared.applied.write();
        a.state = state;
        a.last_applied = meta.last_log_id;
        a.membership = meta.last_membership.clone();
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.shared.recent.lock().reset(index);
        let _ = self
            .shared
            .events
            .send(Arc::new(EventBatch::new(index, vec![Event::Reset])));
        Ok(())
    }

    fn read_snapshot(&self) -> std::io::Result<Option<(Meta, Vec<u8>)>> {
        let current = self.dir.join("current.json");
        if !current.exists() {
            return Ok(None);
        }
        let f: SnapshotFile = serde_json::from_slice(&std::fs::read(&current)?).map_err(io_err)?;
        let data = std::fs::read(self.dir.join(&f.data_file))?;
        Ok(Some((f.meta, data)))
    }

    /// Writes the snapshot data, then atomically points `current.json` at it, then removes old data.
    fn write_snapshot(
        dir: &Path,
        meta: &SnapshotMeta<u64, MemberNode>,
        data: &[u8],
    ) -> std::io::Result<()> {
        use std::io::Write;
        let data_file = format!("snapshot-{}.data", meta.snapshot_id);
        let sync_write = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
            let mut f = std::fs::File::create(path)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        sync_write(&dir.join(&data_file), data)?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data_file: data_file.clone(),
        };
        let tmp = dir.join("current.json.tmp");
        sync_write(&tmp, &serde_json::to_vec(&file).map_err(io_err)?)?;
        std::fs::rename(&tmp, dir.join("current.json"))?;
        std::fs::File::open(dir)?.sync_all()?;
        for e in std::fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("snapshot-") && name != data_file {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        let (data, last, membership) = {
            let a = self.shared.applied.read();
            let data = serde_json::to_vec(&a.state)
                .map_err(|e| StorageIOError::read_state_machine(&io_err(e)))?;
            (data, a.last_applied, a.membership.clone())
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{seq}", l.leader_id.term, l.index),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        let dir = self.dir.clone();
        let (m2, d2) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || Self::write_snapshot(&dir, &m2, &d2))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_err(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, MemberNode>), SErr> {
        let a = self.shared.applied.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, SErr>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut a = self.shared.applied.write();
        for entry in entries {
            a.last_applied = Some(entry.log_id);
            let mut events = Vec::new();
            let resp = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(req) => a.state.apply(req, entry.log_id.index, &mut events),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(entry.log_id), m);
                    Response::default()
                }
            };
            if !events.is_empty() {
                let batch = Arc::new(EventBatch::new(entry.log_id.index, events));
                self.shared.recent.lock().push(batch.clone());
                // No receivers is fine: nobody watches yet.
                let _ = self.shared.events.send(batch);
            }
            out.push(resp);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let dir = self.dir.clone();
        let (m2, d2) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || Self::write_snapshot(&dir, &m2, &d2))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &io_err(e)))?
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.load(meta, &data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let snap = self
            .read_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(snap.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
