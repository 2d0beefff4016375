//! The node's side of its connections to peers: one outbound link per peer, frames held for a
//! peer that called in before the watch named its address, and the inbound streams from each
//! peer. Two one-way streams stand for one Erlang distribution connection, so losing the
//! outbound one cuts the inbound ones too: the peer then sees the loss as well and fails its
//! calls waiting on replies that went down with the link, instead of waiting forever.

use super::peers::{PeerLink, Queued, QUEUE_FRAMES};
use crate::runtime::NodeId;
use rebeam_proto as pb;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// What became of a frame given to [`Links::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// On the peer's outbound link.
    Queued,
    /// Held until the watch names the peer's address.
    Held,
    /// Not queued: the link's queue (or the held frames) are full. With the link's queue,
    /// the frame and a way to wait for room come back (see [`Busy`]).
    Full(Option<Box<Busy>>),
    /// Dropped: the peer is neither a known member nor connected to this node.
    Unknown,
}

/// A frame that found its link's queue full, with the queue, so that the sender can wait for
/// room after letting go of the links' lock.
#[derive(Debug)]
pub struct Busy {
    frame: pb::PeerFrame,
    link: PeerLink,
}

impl PartialEq for Busy {
    fn eq(&self, other: &Self) -> bool {
        self.link.id() == other.link.id() && self.frame == other.frame
    }
}

impl Eq for Busy {}

impl Busy {
    /// A frame that found `link` full.
    pub fn new(frame: pb::PeerFrame, link: PeerLink) -> Busy {
        Busy { frame, link }
    }

    /// Waits up to `wait` for room on the link (blocking the calling thread); false when the
    /// frame had to be dropped (still full, or the link went away meanwhile).
    pub fn wait(self, wait: std::time::Duration) -> bool {
        self.link.wait_for_room(&self.frame, wait)
    }
}

/// Writes or queues `frame` on `link` (see [`PeerLink::push`]).
pub fn push_on(link: &PeerLink, frame: pb::PeerFrame) -> Pushed {
    settled(link, link.push(frame))
}

/// What became of a frame `link` was given (see [`PeerLink::push`]).
pub fn settled(link: &PeerLink, queued: Queued) -> Pushed {
    match queued {
        Queued::Yes => Pushed::Queued,
        Queued::Full(frame) => Pushed::Full(Some(Box::new(Busy::new(frame, link.clone())))),
        Queued::Gone => Pushed::Full(None),
    }
}

/// The links of one node to its peers (kept under one lock).
#[derive(Default)]
pub struct Links {
    open: HashMap<NodeId, PeerLink>,
    held: HashMap<NodeId, Vec<pb::PeerFrame>>,
    inbound: HashMap<NodeId, Vec<(u64, Arc<Notify>)>>,
    next_stream: u64,
}

impl Links {
    /// True when `node` has a link or an open inbound stream: it is alive and can be sent to.
    pub fn reachable(&self, node: NodeId) -> bool {
        self.open.contains_key(&node) || self.inbound.contains_key(&node)
    }

    /// Queues `frame` for `node` on its link, opening one with `open` (None: its address is
    /// not known); a peer with an inbound stream but no address yet has its frames held.
    pub fn push(
        &mut self,
        node: NodeId,
        frame: pb::PeerFrame,
        open: impl FnOnce() -> Option<PeerLink>,
    ) -> Pushed {
        let link = match self.open.entry(node) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match open() {
                Some(link) => e.insert(link),
                None if self.inbound.contains_key(&node) => {
                    let held = self.held.entry(node).or_default();
                    if held.len() >= QUEUE_FRAMES {
                        return Pushed::Full(None);
                    }
                    held.push(frame);
                    return Pushed::Held;
                }
                None => return Pushed::Unknown,
            },
        };
        push_on(link, frame)
    }

    /// The open outbound link to `node`, if any: a sender pushes on it after letting go of
    /// the links' lock (a push may write to the socket).
    pub fn link(&self, node: NodeId) -> Option<PeerLink> {
        self.open.get(&node).cloned()
    }

    /// The watch named `node`'s address: frames held for it go out, in order, on a link made
    /// by `open`. Returns how many were dropped (the link's queue was full or none opened).
    pub fn release(&mut self, node: NodeId, open: impl FnOnce() -> Option<PeerLink>) -> usize {
        let Some(frames) = self.held.remove(&node) else {
            return 0;
        };
        let total = frames.len();
        let link = match self.open.entry(node) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match open() {
                Some(link) => e.insert(link),
                None => return total,
            },
        };
        let mut dropped = 0;
        for frame in frames {
            dropped += usize::from(!matches!(link.push(frame), Queued::Yes));
        }
        dropped
    }

    /// The outbound link `link` to `node` ended. When it is still the current one, forgets it
    /// and returns the inbound streams from `node` to cut; None when a newer link (or the
    /// member's loss) already replaced it, so a late end never tears down a fresh link.
    pub fn link_ended(&mut self, node: NodeId, link: u64) -> Option<Vec<Arc<Notify>>> {
        if self.open.get(&node).map(PeerLink::id) != Some(link) {
            return None;
        }
        self.open.remove(&node);
        self.held.remove(&node);
        let streams = self
            .inbound
            .get(&node)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Some(streams.iter().map(|(_, cut)| cut.clone()).collect())
    }

    /// The member `node` died or restarted: its link and held frames go.
    pub fn forget(&mut self, node: NodeId) {
        self.open.remove(&node);
        self.held.remove(&node);
    }

    /// An inbound stream from `node` opened: its id and the signal that cuts it.
    pub fn stream_opened(&mut self, node: NodeId) -> (u64, Arc<Notify>) {
        self.next_stream += 1;
        let cut = Arc::new(Notify::new());
        let entry = (self.next_stream, cut.clone());
        self.inbound.entry(node).or_default().push(entry);
        (self.next_stream, cut)
    }

    /// The inbound stream `id` from `node` closed; with the last one, frames held for `node`
    /// go too (no stream is left that could be answered).
    pub fn stream_closed(&mut self, node: NodeId, id: u64) {
        let Some(streams) = self.inbound.get_mut(&node) else {
            return;
        };
        streams.retain(|(s, _)| *s != id);
        if streams.is_empty() {
            self.inbound.remove(&node);
            self.held.remove(&node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::transport::outbox::{Outbox, IDLE};

    fn frame(call_id: u64) -> pb::PeerFrame {
        pb::PeerFrame {
            frame: Some(pb::peer_frame::Frame::Reply(pb::PeerReply {
                call_id,
                result: None,
            })),
        }
    }

    fn call_id(f: &pb::PeerFrame) -> u64 {
        match &f.frame {
            Some(pb::peer_frame::Frame::Reply(r)) => r.call_id,
            other => panic!("not a reply frame: {other:?}"),
        }
    }

    /// A link with room for `capacity` frames and no connection, and its outbox (where the
    /// test takes what was pushed).
    fn link_of(id: u64, node: NodeId, capacity: usize) -> (PeerLink, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(capacity, IDLE));
        (PeerLink::new(id, node, outbox.clone()), outbox)
    }

    fn link(id: u64) -> (PeerLink, Arc<Outbox>) {
        link_of(id, NodeId::intern("links-test"), 8)
    }

    /// The call ids of the frames pending in `outbox`, taken out.
    fn taken(outbox: &Outbox) -> Vec<u64> {
        outbox.take_frames().iter().map(call_id).collect()
    }

    #[test]
    fn frames_to_a_peer_that_called_in_wait_for_its_address_then_go_in_order() {
        let node = NodeId::intern("links-held");
        let mut links = Links::default();
        assert_eq!(links.push(node, frame(1), || None), Pushed::Unknown);
        assert!(!links.reachable(node));

        let (stream, _cut) = links.stream_opened(node);
        assert!(links.reachable(node));
        assert_eq!(links.push(node, frame(2), || None), Pushed::Held);
        assert_eq!(links.push(node, frame(3), || None), Pushed::Held);

        let (peer, outbox) = link(7);
        assert_eq!(links.release(node, || Some(peer)), 0);
        assert_eq!(taken(&outbox), [2, 3]);
        assert_eq!(links.push(node, frame(4), || None), Pushed::Queued);
        assert_eq!(taken(&outbox), [4]);
        links.stream_closed(node, stream);
        assert!(links.reachable(node), "the outbound link still stands");
    }

    #[test]
    fn held_frames_are_bounded_and_go_with_the_last_inbound_stream() {
        let node = NodeId::intern("links-bounded");
        let mut links = Links::default();
        let (first, _) = links.stream_opened(node);
        let (second, _) = links.stream_opened(node);
        for i in 0..QUEUE_FRAMES as u64 {
            assert_eq!(links.push(node, frame(i), || None), Pushed::Held);
        }
        assert_eq!(links.push(node, frame(0), || None), Pushed::Full(None));
        links.stream_closed(node, first);
        assert!(links.reachable(node));
        links.stream_closed(node, second);
        assert!(!links.reachable(node));
        let (peer, outbox) = link(1);
        assert_eq!(
            links.release(node, || Some(peer)),
            0,
            "nothing was left to release"
        );
        assert!(taken(&outbox).is_empty());
    }

    #[test]
    fn a_broken_link_cuts_the_inbound_streams_but_a_stale_end_changes_nothing() {
        let node = NodeId::intern("links-cut");
        let mut links = Links::default();
        let (_, cut) = links.stream_opened(node);
        let (old, _old_outbox) = link(1);
        assert_eq!(links.push(node, frame(1), || Some(old)), Pushed::Queued);
        let cuts = links.link_ended(node, 1).expect("the current link ended");
        assert_eq!(cuts.len(), 1);
        assert!(Arc::ptr_eq(&cuts[0], &cut));

        let (fresh, outbox) = link(2);
        assert_eq!(links.push(node, frame(2), || Some(fresh)), Pushed::Queued);
        assert!(links.link_ended(node, 1).is_none(), "a late end of link 1");
        assert_eq!(links.push(node, frame(3), || None), Pushed::Queued);
        assert_eq!(taken(&outbox), [2, 3]);
    }

    #[test]
    fn a_full_link_gives_the_frame_back_to_wait_for_room() {
        let node = NodeId::intern("links-full");
        let mut links = Links::default();
        let (peer, outbox) = link_of(1, node, 1);
        assert_eq!(links.push(node, frame(1), || Some(peer)), Pushed::Queued);
        let Pushed::Full(Some(busy)) = links.push(node, frame(2), || None) else {
            panic!("a full link's outbox gives the frame back");
        };
        let short = std::time::Duration::from_millis(20);
        let Pushed::Full(Some(again)) = links.push(node, frame(3), || None) else {
            panic!("still full");
        };
        assert!(
            !again.wait(short),
            "nobody made room: dropped after the bounded wait"
        );
        // Room made while the sender waits: the frame goes, after the one before it.
        let writer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                while outbox.room_waiters() == 0 {
                    std::thread::yield_now();
                }
                taken(&outbox)
            })
        };
        assert!(busy.wait(std::time::Duration::from_secs(5)));
        assert_eq!(writer.join().expect("writer"), [1]);
        assert_eq!(taken(&outbox), [2]);
    }

    #[test]
    fn a_sender_waiting_for_room_gives_up_when_the_link_ends() {
        let node = NodeId::intern("links-full-closed");
        let (peer, outbox) = link_of(1, node, 1);
        assert!(matches!(peer.push(frame(1)), Queued::Yes));
        let Queued::Full(second) = peer.push(frame(2)) else {
            panic!("full");
        };
        let closer = {
            let outbox = outbox.clone();
            std::thread::spawn(move || {
                while outbox.room_waiters() == 0 {
                    std::thread::yield_now();
                }
                outbox.close();
            })
        };
        let started = std::time::Instant::now();
        let long = std::time::Duration::from_secs(30);
        assert!(!Busy::new(second, peer.clone()).wait(long), "dropped");
        assert!(started.elapsed() < long, "without waiting out its time");
        closer.join().expect("closer");
        assert!(matches!(peer.push(frame(3)), Queued::Gone));
    }
}
