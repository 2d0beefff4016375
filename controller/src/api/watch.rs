//! The per-node watch stream: a full view first, then every relevant change in log order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rebeam_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::convert::watch_event;
use crate::core::Core;
use crate::state::{Event, State};
use crate::store::EventBatch;

/// The stream of applied changes.
type Changes = broadcast::Receiver<Arc<EventBatch>>;

/// Names or group members per view chunk, so no message nears the 4 MiB gRPC default.
const CHUNK: usize = 20_000;

/// Encoded changes gathered into one batched message at most (a single log entry larger
/// than this still goes alone). Kept small: every stream copies its message twice (here and
/// into tonic's encoding buffer, which grows by doubling), and at 1 MiB those buffers came
/// fresh from the kernel for each message, which zeroed the pages: half the members' CPU
/// while 1,000 nodes watched names being registered (`perf`, docs/capacity.md). Buffers this
/// size are reused by the allocator instead.
const MAX_BATCHED: usize = 64 << 10;

/// A batched stream sends at most one message per this interval while changes keep coming
/// (the first change after a quiet spell goes at once): with 1,000 nodes watching, one message
/// per stream per applied entry was most of the leader's work and starved lease renewals.
const BATCH_EVERY: Duration = Duration::from_millis(20);

/// One log entry's changes as batched streams send them, encoded once for every node.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The entry's changes in order: runs of changes every node gets, already encoded as
    /// `WatchChanges.events` entries, between changes meant for one node only.
    parts: Vec<Part>,
    /// Nodes changed by the entry: (id, alive, incarnation), to end the stream of a node
    /// declared dead.
    nodes: Vec<(String, bool, u64)>,
    /// The entry replaced the state: streams send a fresh view.
    reset: bool,
}

/// A piece of an entry's encoded changes.
#[derive(Debug)]
enum Part {
    /// Changes every node gets, encoded.
    Shared(Vec<u8>),
    /// The event at this position in the batch, meant for one node (an assignment).
    ForOne(usize),
}

impl Encoded {
    fn of(batch: &EventBatch) -> Encoded {
        let mut e = Encoded::default();
        let mut run = Vec::new();
        for (i, ev) in batch.events.iter().enumerate() {
            match ev {
                Event::Reset => e.reset = true,
                Event::NodeChanged(n) => e.nodes.push((n.id.clone(), n.alive, n.incarnation)),
                _ => {}
            }
            if matches!(
                ev,
                Event::AssignmentSet(_) | Event::AssignmentRemoved { .. }
            ) {
                if !run.is_empty() {
                    e.parts.push(Part::Shared(std::mem::take(&mut run)));
                }
                e.parts.push(Part::ForOne(i));
                continue;
            }
            // The node is irrelevant here: only assignments depend on it.
            if let Some(w) = watch_event(batch.index, ev, "") {
                prost::encoding::message::encode(1, &w, &mut run);
            }
        }
        if !run.is_empty() {
            e.parts.push(Part::Shared(run));
        }
        e
    }

    /// Bytes of the changes every node gets (a node's share is this plus its assignments).
    fn shared_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Shared(b) => b.len(),
                Part::ForOne(_) => 0,
            })
            .sum()
    }

    /// Appends `node`'s share of the entry to `out` (`WatchChanges.events` entries).
    fn append(&self, batch: &EventBatch, node: &str, out: &mut Vec<u8>) {
        for part in &self.parts {
            match part {
                Part::Shared(bytes) => out.extend_from_slice(bytes),
                Part::ForOne(i) => {
                    if let Some(w) = batch
                        .events
                        .get(*i)
                        .and_then(|ev| watch_event(batch.index, ev, node))
                    {
                        prost::encoding::message::encode(1, &w, out);
                    }
                }
            }
        }
    }

    /// True when the entry declared this incarnation of `node` dead (or replaced it).
    fn fences(&self, node: &str, incarnation: u64) -> bool {
        self.nodes
            .iter()
            .any(|(id, alive, inc)| id == node && (!alive || *inc != incarnation))
    }
}

/// The cluster view one node caches, split into chunks (the last one has `last` set).
pub fn view_chunks(state: &State, node: &str) -> Vec<pb::ClusterView> {
    let mut first = pb::ClusterView {
        nodes: state.nodes.values().cloned().map(Into::into).collect(),
        assignments: state
            .all_assignments()
            .filter(|a| a.node.as_ref().is_some_and(|(n, _)| n == node))
            .map(|a| state.assignment_view(a).into())
            .collect(),
        apps: state.apps.values().cloned().map(Into::into).collect(),
        ..Default::default()
    };
    let mut chunks = Vec::new();
    let mut current = std::mem::take(&mut first);
    let mut size = 0usize;
    for (n, p) in &state.names {
        if size >= CHUNK {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        current.names.push(pb::GlobalName {
            name: n.clone(),
            pid: Some(p.clone().into()),
        });
        size += 1;
    }
    for (g, members) in &state.groups {
        let mut members = members.iter().peekable();
        while members.peek().is_some() {
            if size >= CHUNK {
                chunks.push(std::mem::take(&mut current));
                size = 0;
            }
            let room = CHUNK - size;
            let part: Vec<pb::Pid> = members
                .by_ref()
                .take(room)
                .cloned()
                .map(Into::into)
                .collect();
            size += part.len();
            current.groups.push(pb::Group {
                name: g.clone(),
                members: part,
            });
        }
    }
    current.last = true;
    current.tokens = state.tokens.values().map(Into::into).collect();
    chunks.push(current);
    chunks
}

fn snapshot_events(
    core: &Core,
    node: &str,
) -> (Vec<pb::WatchEvent>, broadcast::Receiver<Arc<EventBatch>>) {
    // Subscribing under the read lock means no applied event falls between view and stream.
    let a = core.shared.applied.read();
    let rx = core.shared.events.subscribe();
    let index = a.last_applied.map(|l| l.index).unwrap_or(0);
    let events = view_chunks(&a.state, node)
        .into_iter()
        .map(|v| pb::WatchEvent {
            log_index: index,
            event: Some(pb::watch_event::Event::Snapshot(v)),
        })
        .collect();
    (events, rx)
}

/// The changes from log index `from` on, if this member still holds them all, and the
/// stream of later ones.
fn resumed_events(core: &Core, from: u64) -> Option<(Vec<Arc<EventBatch>>, Changes)> {
    // Under the read lock, like `snapshot_events`: nothing falls between window and stream.
    let _a = core.shared.applied.read();
    let batches = core.shared.recent.lock().since(from)?;
    Some((batches, core.shared.events.subscribe()))
}

/// How long one probe of a node's address may take.
const PROBE: Duration = Duration::from_millis(50);
/// A process that died closes its sockets one after the other: its listener may still take
/// a connection just after its stream closed. Probes after the close, this far apart.
const GONE_PROBES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(5),
    Duration::from_millis(20),
];

/// What a connection attempt to a node's address found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Something listens there.
    Listening,
    /// The host answered that nothing listens there (connection refused).
    Refused,
    /// No answer in time, or another error (a partition, a frozen host): nothing known.
    Unknown,
}

/// Tries to connect to `address`.
pub async fn probe(address: &str) -> Probe {
    match tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Probe::Listening,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        _ => Probe::Unknown,
    }
}

/// The address a node joined with.
fn address_of(core: &Core, node: &str) -> Option<String> {
    let a = core.shared.applied.read();
    a.state.nodes.get(node).map(|n| n.address.clone())
}

/// True when the node's process is gone: its address, where something listened while its
/// stream was open (`listened`), now refuses connections. A process that died runs no code,
/// so it may be declared dead at once; a frozen or cut-off node refuses nothing (its
/// listener stays open, or nothing answers) and keeps its lease.
async fn process_gone(listened: bool, address: Option<&str>) -> bool {
    let Some(address) = address.filter(|_| listened) else {
        return false;
    };
    for pause in GONE_PROBES {
        tokio::time::sleep(pause).await;
        match probe(address).await {
            Probe::Refused => return true,
            Probe::Listening => {}
            // Nothing known: not gone as far as this member can tell.
            Probe::Unknown => return false,
        }
    }
    false
}

/// The node's watch stream closed (a crash or a lost connection). It fences itself within
/// the stream fence unless it renews saying so, so the leader need not wait for the whole
/// lease; if its process is gone, not even that long.
async fn gone(
    core: &Core,
    node: &str,
    incarnation: u64,
    opened: Instant,
    stream: u64,
    listened: bool,
) {
    if core.ensure_leader().is_err() {
        return;
    }
    let address = address_of(core, node);
    tracing::debug!(node, stream, listened, "watch stream closed");
    let process_gone = process_gone(listened, address.as_deref()).await;
    tracing::debug!(node, stream, process_gone, "watch stream close probed");
    core.leases
        .stream_closed(node, incarnation, opened, stream, process_gone);
}

/// What became of one batch of changes sent to a node.
enum Sent {
    /// Keep streaming.
    More,
    /// The node went away.
    Gone,
    /// The node was declared dead: the stream ends.
    Fenced,
    /// The stream ends for another reason (it fell behind, or this member stops).
    Closed,
}

/// One watch stream: where it sends and whom it serves.
struct Stream {
    core: Arc<Core>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    node: String,
    incarnation: u64,
    /// Batches below this log index were sent before (a resumed stream).
    from: u64,
    /// The node reads batched changes (`WatchEvent.changes`).
    batched: bool,
}

impl Stream {
    async fn send_all(&self, events: Vec<pb::WatchEvent>) -> bool {
        for ev in events {
            if self.tx.send(Ok(ev)).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Sends the node's share of `batches` (in log order) in as few messages as the size
    /// bound allows, each batch encoded once for all streams; one with a reset goes the
    /// unbatched way (it replaces the stream with a fresh view).
    async fn send_batched(
        &self,
        batches: &[Arc<EventBatch>],
        rx: &mut broadcast::Receiver<Arc<EventBatch>>,
    ) -> Sent {
        // Sized up front, so the buffer is not grown (copied) entry by entry.
        let mut left: usize = batches
            .iter()
            .filter(|b| b.index >= self.from)
            .map(|b| b.encoded.get_or_init(|| Encoded::of(b)).shared_len())
            .sum();
        let mut out = Vec::with_capacity(left.min(MAX_BATCHED));
        let mut last = 0;
        for batch in batches.iter().filter(|b| b.index >= self.from) {
            let encoded = batch.encoded.get_or_init(|| Encoded::of(batch));
            if encoded.reset {
                if !self.flush(&mut out, last).await {
                    return Sent::Gone;
                }
                // The fresh view holds every later batch of this list too.
                return self.send_batch(batch, rx).await;
            }
            if !out.is_empty() && out.len() + encoded.shared_len() > MAX_BATCHED {
                if !self.flush(&mut out, last).await {
                    return Sent::Gone;
                }
                out.reserve(left.min(MAX_BATCHED));
            }
            left = left.saturating_sub(encoded.shared_len());
            encoded.append(batch, &self.node, &mut out);
            last = batch.index;
            if encoded.fences(&self.node, self.incarnation) {
                if !self.flush(&mut out, last).await {
                    return Sent::Gone;
                }
                return self.fence().await;
            }
        }
        if !self.flush(&mut out, last).await {
            return Sent::Gone;
        }
        Sent::More
    }

    /// Sends the changes gathered in `out` (up to log index `last`) as one message.
    async fn flush(&self, out: &mut Vec<u8>, last: u64) -> bool {
        if out.is_empty() {
            return true;
        }
        let ev = pb::WatchEvent {
            log_index: last,
            event: Some(pb::watch_event::Event::Changes(std::mem::take(out))),
        };
        self.tx.send(Ok(ev)).await.is_ok()
    }

    /// Ends the stream of a node declared dead.
    async fn fence(&self) -> Sent {
        let _ = self
            .tx
            .send(Err(Status::failed_precondition(format!(
                "node `{}` incarnation {} was declared dead; fence, then rejoin",
                self.node, self.incarnation
            ))))
            .await;
        Sent::Fenced
    }

    /// Sends the node's share of `batch`; a reset replaces the stream with a fresh view.
    async fn send_batch(
        &self,
        batch: &EventBatch,
        rx: &mut broadcast::Receiver<Arc<EventBatch>>,
    ) -> Sent {
        if batch.index < self.from {
            return Sent::More;
        }
        let mut fenced = false;
        for ev in &batch.events {
            if let Event::Reset = ev {
                let (snap, new_rx) = snapshot_events(&self.core, &self.node);
                *rx = new_rx;
                if !self.send_all(snap).await {
                    return Sent::Gone;
                }
                break;
            }
            if let Event::NodeChanged(n) = ev {
                fenced |= n.id == self.node && (!n.alive || n.incarnation != self.incarnation);
            }
            if let Some(e) = watch_event(batch.index, ev, &self.node) {
                if self.tx.send(Ok(e)).await.is_err() {
                    return Sent::Gone;
                }
            }
        }
        if fenced {
            return self.fence().await;
        }
        Sent::More
    }

    /// Streams from log index `resume_from` when this member still holds the changes since,
    /// else from a full view, then every change, until the stream ends.
    async fn run(&mut self, resume_from: u64) -> Sent {
        let resumed = (resume_from > 0)
            .then(|| resumed_events(&self.core, resume_from))
            .flatten();
        let mut rx = match resumed {
            Some((batches, mut rx)) => {
                self.from = resume_from;
                if self.batched {
                    match self.send_batched(&batches, &mut rx).await {
                        Sent::More => {}
                        ended => return ended,
                    }
                } else {
                    for b in batches {
                        match self.send_batch(&b, &mut rx).await {
                            Sent::More => {}
                            ended => return ended,
                        }
                    }
                }
                rx
            }
            None => {
                let (first, rx) = snapshot_events(&self.core, &self.node);
                if !self.send_all(first).await {
                    return Sent::Gone;
                }
                rx
            }
        };
        let mut last_sent: Option<Instant> = None;
        loop {
            let batch = tokio::select! {
                _ = self.tx.closed() => return Sent::Gone,
                r = rx.recv() => r,
            };
            if let Some(at) = last_sent.filter(|_| self.batched) {
                // Gather what else is applied until the interval is up.
                tokio::select! {
                    _ = self.tx.closed() => return Sent::Gone,
                    _ = tokio::time::sleep_until((at + BATCH_EVERY).into()) => {}
                }
            }
            let batch = match batch {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(n)) => return self.lagged(n).await,
                Err(broadcast::error::RecvError::Closed) => return Sent::Closed,
            };
            let sent = if self.batched {
                // Everything applied meanwhile goes in the same message: under load a stream
                // sends fewer, larger messages instead of falling behind.
                let mut batches = vec![batch];
                loop {
                    match rx.try_recv() {
                        Ok(b) => batches.push(b),
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            return self.lagged(n).await
                        }
                        Err(_) => break,
                    }
                }
                last_sent = Some(Instant::now());
                self.send_batched(&batches, &mut rx).await
            } else {
                self.send_batch(&batch, &mut rx).await
            };
            match sent {
                Sent::More => {}
                ended => return ended,
            }
        }
    }
}

impl Stream {
    /// Ends a stream that fell behind the broadcast of changes.
    async fn lagged(&self, n: u64) -> Sent {
        let _ = self
            .tx
            .send(Err(Status::resource_exhausted(format!(
                "watch fell {n} changes behind; open a new watch to get a fresh view"
            ))))
            .await;
        Sent::Closed
    }
}

/// The result of the probe made when a stream opened (false if it failed or is not done).
async fn listened(probe: tokio::task::JoinHandle<bool>) -> bool {
    if !probe.is_finished() {
        probe.abort();
        return false;
    }
    probe.await.unwrap_or(false)
}

/// Starts streaming to `node` (already checked live) until it disconnects or is declared
/// dead: from log index `resume_from` when this member still holds the changes since (a
/// node resuming after a break), else from a full view. `stream` is the node's number for
/// it (0: unnumbered), handed to the lease on close. `batched`: the node reads several
/// changes per message (`WatchEvent.changes`).
pub fn start(
    core: Arc<Core>,
    node: String,
    incarnation: u64,
    resume_from: u64,
    stream: u64,
    batched: bool,
) -> mpsc::Receiver<Result<pb::WatchEvent, Status>> {
    let (tx, out) = mpsc::channel(1024);
    let opened = Instant::now();
    tokio::spawn(async move {
        // Whether the node's address takes connections while its stream is open: only then
        // does a refusal after the close mean that its process is gone.
        let address = address_of(&core, &node);
        let listening = tokio::spawn(async move {
            match address {
                Some(a) => probe(&a).await == Probe::Listening,
                None => false,
            }
        });
        let mut s = Stream {
            core: core.clone(),
            tx,
            node,
            incarnation,
            from: 0,
            batched,
        };
        if let Sent::Gone = s.run(resume_from).await {
            gone(
                &core,
                &s.node,
                incarnation,
                opened,
                stream,
                listened(listening).await,
            )
            .await;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Pid;

    fn pid(serial: u64) -> Pid {
        Pid {
            node: "a".into(),
            incarnation: 1,
            serial,
        }
    }

    fn kinds(bytes: &[u8]) -> Vec<&'static str> {
        use pb::watch_event::Event as E;
        let changes = <pb::WatchChanges as prost::Message>::decode(bytes).expect("decodes");
        changes
            .events
            .into_iter()
            .map(|e| {
                assert_eq!(e.log_index, 7);
                match e.event {
                    Some(E::NameRegistered(_)) => "registered",
                    Some(E::NameReleased(_)) => "released",
                    Some(E::AssignmentRemoved(_)) => "removed",
                    Some(E::NodeChanged(_)) => "node",
                    _ => "other",
                }
            })
            .collect()
    }

    #[test]
    fn an_entry_is_encoded_once_and_keeps_its_order_for_each_node() {
        let dead = crate::types::NodeEntry {
            id: "b".into(),
            incarnation: 3,
            address: String::new(),
            labels: Default::default(),
            capacity: 0,
            alive: false,
            joined_at_ms: 0,
            died_at_ms: 1,
            death_reason: String::new(),
        };
        let batch = EventBatch::new(
            7,
            vec![
                Event::NameRegistered("x".into(), pid(1)),
                Event::AssignmentRemoved {
                    app: "app".into(),
                    child: "c".into(),
                    generation: 1,
                    node: "a".into(),
                    incarnation: 1,
                },
                Event::NameReleased("y".into(), pid(2)),
                Event::NodeChanged(dead),
            ],
        );
        let e = Encoded::of(&batch);
        let mut for_a = Vec::new();
        e.append(&batch, "a", &mut for_a);
        assert_eq!(kinds(&for_a), ["registered", "removed", "released", "node"]);
        let mut for_c = Vec::new();
        e.append(&batch, "c", &mut for_c);
        assert_eq!(kinds(&for_c), ["registered", "released", "node"]);
        // Two entries' bytes in a row are one valid message (how a stream batches them).
        let mut both = for_c.clone();
        e.append(&batch, "c", &mut both);
        assert_eq!(kinds(&both).len(), 6);
        assert!(e.fences("b", 3) && !e.fences("a", 1) && !e.fences("c", 1));
        assert!(!e.reset && Encoded::of(&EventBatch::new(8, vec![Event::Reset])).reset);
    }

    #[test]
    fn large_views_come_in_bounded_chunks() {
        let mut s = State::default();
        for i in 0..45_000u64 {
            s.names.insert(
                format!("n{i}"),
                Pid {
                    node: "a".into(),
                    incarnation: 1,
                    serial: i,
                },
            );
        }
        let g = s.groups.entry("g".into()).or_default();
        for i in 0..30_000u64 {
            g.insert(Pid {
                node: "a".into(),
                incarnation: 1,
                serial: i,
            });
        }
        let chunks = view_chunks(&s, "a");
        assert_eq!(chunks.len(), 4);
        assert!(chunks.iter().rev().skip(1).all(|c| !c.last));
        assert!(chunks.last().is_some_and(|c| c.last));
        let names: usize = chunks.iter().map(|c| c.names.len()).sum();
        let members: usize = chunks
            .iter()
            .flat_map(|c| &c.groups)
            .map(|g| g.members.len())
            .sum();
        assert_eq!((names, members), (45_000, 30_000));
        assert!(chunks.iter().all(|c| c.names.len()
            + c.groups.iter().map(|g| g.members.len()).sum::<usize>()
            <= CHUNK));
    }
}
