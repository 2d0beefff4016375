//! The per-node watch stream: a full view first, then every relevant change in log order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rebeam_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::api::follows::Follows;
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

/// A stream that follows names and had nothing to send tells its node how far the log is at
/// most this often (see `Stream::flush`).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One log entry's changes as batched streams send them, encoded once for every node.
#[derive(Debug, Default)]
pub struct Encoded {
    /// The entry's changes in order: runs of changes every node gets, already encoded as
    /// `WatchChanges.events` entries, runs of name changes, and changes meant for one node.
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
    /// A run of global name changes.
    Names(NameRun),
    /// The event at this position in the batch, meant for one node (an assignment).
    ForOne(usize),
}

/// Consecutive name changes of an entry: every one of them for a node that gets all names,
/// and each node's share for nodes that follow names (`WatchRequest.followed_names`).
#[derive(Debug, Default)]
struct NameRun {
    /// Every change of the run, encoded.
    all: Vec<u8>,
    /// Each change: its position in the batch and its bytes in `all`.
    events: Vec<(usize, std::ops::Range<usize>)>,
    /// Per node, the changes it gets (of names held by its processes, or that it followed
    /// when the entry was encoded), encoded.
    to: HashMap<String, Vec<u8>>,
}

/// Which name changes a stream sends.
#[derive(Clone, Copy)]
enum Names<'a> {
    /// Every one (the node caches every name).
    All,
    /// The node's share as encoded with the entry: for entries applied while the stream was
    /// open, whose encoding saw everything the node follows.
    Encoded,
    /// The node's share by what it follows now: for entries applied before the stream opened
    /// (a resumed stream), encoded before this member knew what the node follows.
    Following(&'a Follows),
}

/// The global name an event changes and the node of the process holding it (before or after).
fn name_change(ev: &Event) -> Option<(&str, &str)> {
    match ev {
        Event::NameRegistered(name, pid) | Event::NameReleased(name, pid) => {
            Some((name, &pid.node))
        }
        _ => None,
    }
}

impl Encoded {
    fn of(batch: &EventBatch, follows: &Follows) -> Encoded {
        let mut e = Encoded::default();
        let mut run = Vec::new();
        let mut names = NameRun::default();
        for (i, ev) in batch.events.iter().enumerate() {
            match ev {
                Event::Reset => e.reset = true,
                Event::NodeChanged(n) => e.nodes.push((n.id.clone(), n.alive, n.incarnation)),
                _ => {}
            }
            let is_name = name_change(ev).is_some();
            if !is_name && !names.events.is_empty() {
                e.parts.push(Part::Names(std::mem::take(&mut names)));
            }
            if is_name && !run.is_empty() {
                e.parts.push(Part::Shared(std::mem::take(&mut run)));
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
            let Some(w) = watch_event(batch.index, ev, "") else {
                continue;
            };
            if is_name {
                let start = names.all.len();
                prost::encoding::message::encode(1, &w, &mut names.all);
                names.events.push((i, start..names.all.len()));
            } else {
                prost::encoding::message::encode(1, &w, &mut run);
            }
        }
        if !names.events.is_empty() {
            e.parts.push(Part::Names(names));
        }
        if !run.is_empty() {
            e.parts.push(Part::Shared(run));
        }
        for part in &mut e.parts {
            if let Part::Names(run) = part {
                run.share_out(batch, follows);
            }
        }
        e
    }

    /// Bytes of the changes the stream gets at most (its assignments aside).
    fn len_for(&self, node: &str, names: Names<'_>) -> usize {
        self.parts
            .iter()
            .map(|p| match (p, names) {
                (Part::Shared(b), _) => b.len(),
                (Part::Names(r), Names::Encoded) => r.to.get(node).map_or(0, Vec::len),
                (Part::Names(r), _) => r.all.len(),
                (Part::ForOne(_), _) => 0,
            })
            .sum()
    }

    /// Appends `node`'s share of the entry to `out` (`WatchChanges.events` entries).
    fn append(&self, batch: &EventBatch, node: &str, names: Names<'_>, out: &mut Vec<u8>) {
        for part in &self.parts {
            match part {
                Part::Shared(bytes) => out.extend_from_slice(bytes),
                Part::Names(run) => run.append(batch, node, names, out),
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

impl NameRun {
    /// Gives each node that follows a name of the run, or holds it, its share.
    fn share_out(&mut self, batch: &EventBatch, follows: &Follows) {
        let changes: Vec<(&str, &str)> = self
            .events
            .iter()
            .filter_map(|(i, _)| batch.events.get(*i).and_then(name_change))
            .collect();
        let followers = follows.followers(changes.iter().map(|(name, _)| *name));
        for (((_, range), (_, holder)), nodes) in self.events.iter().zip(&changes).zip(followers) {
            let bytes = &self.all[range.clone()];
            for node in nodes.iter().map(String::as_str).chain(
                // The holder's node, unless it follows the name too (sent once).
                (!nodes.iter().any(|n| n == holder)).then_some(*holder),
            ) {
                self.to
                    .entry(node.to_string())
                    .or_default()
                    .extend_from_slice(bytes);
            }
        }
    }

    fn append(&self, batch: &EventBatch, node: &str, names: Names<'_>, out: &mut Vec<u8>) {
        match names {
            Names::All => out.extend_from_slice(&self.all),
            Names::Encoded => {
                if let Some(bytes) = self.to.get(node) {
                    out.extend_from_slice(bytes);
                }
            }
            Names::Following(follows) => {
                for (i, range) in &self.events {
                    let Some((name, holder)) = batch.events.get(*i).and_then(name_change) else {
                        continue;
                    };
                    if holder == node || follows.follows(node, name) {
                        out.extend_from_slice(&self.all[range.clone()]);
                    }
                }
            }
        }
    }
}

/// The cluster view one node caches, split into chunks (the last one has `last` set). A node
/// that follows names (`follows`) gets only those and the ones its processes hold.
pub fn view_chunks(state: &State, node: &str, follows: Option<&Follows>) -> Vec<pb::ClusterView> {
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
    let followed = follows.map(|f| f.names_of(node));
    for (n, p) in &state.names {
        if followed
            .as_ref()
            .is_some_and(|f| p.node != node && !f.contains(n))
        {
            continue;
        }
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
    followed: bool,
) -> (Vec<pb::WatchEvent>, broadcast::Receiver<Arc<EventBatch>>) {
    // Subscribing under the read lock means no applied event falls between view and stream.
    let a = core.shared.applied.read();
    let rx = core.shared.events.subscribe();
    let index = a.last_applied.map(|l| l.index).unwrap_or(0);
    let events = view_chunks(&a.state, node, followed.then_some(&core.follows))
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
    /// The node caches only the names it follows (batched streams only).
    followed: bool,
    /// When the stream last sent changes.
    last_message: parking_lot::Mutex<Instant>,
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

    /// Which name changes this stream sends of entries applied while it was open (`live`)
    /// or before (a resumed stream's first ones).
    fn names(&self, live: bool) -> Names<'_> {
        match (self.followed, live) {
            (false, _) => Names::All,
            (true, true) => Names::Encoded,
            (true, false) => Names::Following(&self.core.follows),
        }
    }

    fn encoded<'b>(&self, batch: &'b EventBatch) -> &'b Encoded {
        batch
            .encoded
            .get_or_init(|| Encoded::of(batch, &self.core.follows))
    }

    /// Sends the node's share of `batches` (in log order; `live`: applied while the stream
    /// was open) in as few messages as the size bound allows, each batch encoded once for
    /// all streams; one with a reset goes the unbatched way (it replaces the stream with a
    /// fresh view).
    async fn send_batched(
        &self,
        batches: &[Arc<EventBatch>],
        live: bool,
        rx: &mut broadcast::Receiver<Arc<EventBatch>>,
    ) -> Sent {
        let names = self.names(live);
        let batches: Vec<(&EventBatch, &Encoded, usize)> = batches
            .iter()
            .filter(|b| b.index >= self.from)
            .map(|b| {
                let encoded = self.encoded(b);
                (&**b, encoded, encoded.len_for(&self.node, names))
            })
            .collect();
        // Sized up front, so the buffer is not grown (copied) entry by entry.
        let mut left: usize = batches.iter().map(|(_, _, len)| len).sum();
        let mut out = Vec::with_capacity(left.min(MAX_BATCHED));
        let mut last = 0;
        for (batch, encoded, len) in batches {
            if encoded.reset {
                if !self.flush(&mut out, last).await {
                    return Sent::Gone;
                }
                // The fresh view holds every later batch of this list too.
                return self.send_batch(batch, rx).await;
            }
            if !out.is_empty() && out.len() + len > MAX_BATCHED {
                if !self.flush(&mut out, last).await {
                    return Sent::Gone;
                }
                out.reserve(left.min(MAX_BATCHED));
            }
            left = left.saturating_sub(len);
            encoded.append(batch, &self.node, names, &mut out);
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
        let now = Instant::now();
        {
            let mut sent = self.last_message.lock();
            // A node that follows names may get none of the changes for a long time while the
            // log moves on. Now and then an empty message tells it where the log is, so that
            // a reconnect resumes from there instead of from before the member's window of
            // recent changes (which costs a full view).
            if out.is_empty() && (!self.followed || last == 0 || now < *sent + PROGRESS_EVERY) {
                return true;
            }
            *sent = now;
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
                let (snap, new_rx) = snapshot_events(&self.core, &self.node, self.followed);
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
                    match self.send_batched(&batches, false, &mut rx).await {
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
                let (first, rx) = snapshot_events(&self.core, &self.node, self.followed);
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
                self.send_batched(&batches, true, &mut rx).await
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
/// changes per message (`WatchEvent.changes`). `follow`: the names the node follows, when
/// it caches only those (batched streams only; `None`: it caches every name).
pub fn start(
    core: Arc<Core>,
    node: String,
    incarnation: u64,
    resume_from: u64,
    stream: u64,
    batched: bool,
    follow: Option<Vec<String>>,
) -> mpsc::Receiver<Result<pb::WatchEvent, Status>> {
    let (tx, out) = mpsc::channel(1024);
    // Before the stream subscribes to changes: every entry applied after that is encoded
    // knowing what the node follows.
    let followed = batched && follow.is_some();
    if let Some(names) = follow.filter(|_| batched) {
        core.follows.open(&node, stream, &names);
    }
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
            followed,
            last_message: parking_lot::Mutex::new(opened),
        };
        let sent = s.run(resume_from).await;
        if followed {
            core.follows.close(&s.node, stream);
        }
        if let Sent::Gone = sent {
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
        let follows = Follows::default();
        let e = Encoded::of(&batch, &follows);
        let mut for_a = Vec::new();
        e.append(&batch, "a", Names::All, &mut for_a);
        assert_eq!(kinds(&for_a), ["registered", "removed", "released", "node"]);
        let mut for_c = Vec::new();
        e.append(&batch, "c", Names::All, &mut for_c);
        assert_eq!(kinds(&for_c), ["registered", "released", "node"]);
        // Two entries' bytes in a row are one valid message (how a stream batches them).
        let mut both = for_c.clone();
        e.append(&batch, "c", Names::All, &mut both);
        assert_eq!(kinds(&both).len(), 6);
        assert!(e.fences("b", 3) && !e.fences("a", 1) && !e.fences("c", 1));
        let reset = EventBatch::new(8, vec![Event::Reset]);
        assert!(!e.reset && Encoded::of(&reset, &follows).reset);
    }

    fn pid_on(node: &str, serial: u64) -> Pid {
        Pid {
            node: node.into(),
            incarnation: 1,
            serial,
        }
    }

    fn names_in(bytes: &[u8]) -> Vec<String> {
        use pb::watch_event::Event as E;
        let changes = <pb::WatchChanges as prost::Message>::decode(bytes).expect("decodes");
        changes
            .events
            .into_iter()
            .filter_map(|e| match e.event {
                Some(E::NameRegistered(n)) => Some(format!("+{}", n.name)),
                Some(E::NameReleased(n)) => Some(format!("-{}", n.name)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_node_following_names_gets_those_and_its_own_only() {
        let follows = Follows::default();
        follows.open("a", 1, &["x".to_string()]);
        follows.open("c", 4, &[]);
        let batch = EventBatch::new(
            9,
            vec![
                Event::NameRegistered("x".into(), pid_on("b", 1)),
                Event::NameReleased("y".into(), pid_on("a", 2)),
                Event::NameRegistered("y".into(), pid_on("b", 3)),
                Event::NameRegistered("z".into(), pid_on("b", 4)),
            ],
        );
        let e = Encoded::of(&batch, &follows);
        let share = |node: &str, names: Names<'_>| {
            let mut out = Vec::new();
            e.append(&batch, node, names, &mut out);
            assert!(e.len_for(node, names) >= out.len(), "sizes the buffer");
            names_in(&out)
        };
        // a follows x and held y before it moved to b; b holds everything now.
        assert_eq!(share("a", Names::Encoded), ["+x", "-y"]);
        assert_eq!(share("b", Names::Encoded), ["+x", "+y", "+z"]);
        assert_eq!(share("c", Names::Encoded), Vec::<String>::new());
        assert_eq!(share("c", Names::All), ["+x", "-y", "+y", "+z"]);
        // An entry encoded before c followed z: its resumed stream filters by what it
        // follows now.
        assert!(follows.follow("c", 4, "z"));
        assert_eq!(share("c", Names::Encoded), Vec::<String>::new());
        assert_eq!(share("c", Names::Following(&follows)), ["+z"]);
    }

    #[test]
    fn a_following_nodes_view_holds_its_names_only() {
        let mut s = State::default();
        s.names.insert("x".into(), pid_on("b", 1));
        s.names.insert("y".into(), pid_on("a", 2));
        s.names.insert("z".into(), pid_on("b", 3));
        let follows = Follows::default();
        follows.open("a", 1, &["x".to_string(), "w".to_string()]);
        let names = |f: Option<&Follows>| -> Vec<String> {
            view_chunks(&s, "a", f)
                .into_iter()
                .flat_map(|c| c.names)
                .map(|n| n.name)
                .collect()
        };
        assert_eq!(names(Some(&follows)), ["x", "y"]);
        assert_eq!(names(None), ["x", "y", "z"]);
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
        let chunks = view_chunks(&s, "a", None);
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
