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
    Full(Option<Busy>),
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
    /// Waits up to `wait` for room on the link (blocking the calling thread, which must not
    /// be one of `tokio`'s); false when the frame had to be dropped (still full, or the link
    /// went away meanwhile).
    pub fn wait(self, tokio: &tokio::runtime::Handle, wait: std::time::Duration) -> bool {
        let Busy { frame, link } = self;
        tokio.block_on(async move {
            matches!(tokio::time::timeout(wait, link.send(frame)).await, Ok(true))
        })
    }
}

/// Writes or queues `frame` on `link` (see [`PeerLink::push`]).
pub fn push_on(link: &PeerLink, frame: pb::PeerFrame) -> Pushed {
    match link.push(frame) {
        Queued::Yes => Pushed::Queued,
        Queued::Full(frame) => Pushed::Full(Some(Busy {
            frame,
            link: link.clone(),
        })),
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
    use tokio::sync::mpsc;

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

    fn link(id: u64) -> (PeerLink, mpsc::Receiver<pb::PeerFrame>) {
        let (tx, rx) = mpsc::channel(8);
        (PeerLink::new(id, tx, Default::default()), rx)
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

        let (peer, mut rx) = link(7);
        assert_eq!(links.release(node, || Some(peer)), 0);
        assert_eq!(rx.try_recv().map(|f| call_id(&f)).ok(), Some(2));
        assert_eq!(rx.try_recv().map(|f| call_id(&f)).ok(), Some(3));
        assert_eq!(links.push(node, frame(4), || None), Pushed::Queued);
        assert_eq!(rx.try_recv().map(|f| call_id(&f)).ok(), Some(4));
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
        let (peer, mut rx) = link(1);
        assert_eq!(
            links.release(node, || Some(peer)),
            0,
            "nothing was left to release"
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_broken_link_cuts_the_inbound_streams_but_a_stale_end_changes_nothing() {
        let node = NodeId::intern("links-cut");
        let mut links = Links::default();
        let (_, cut) = links.stream_opened(node);
        let (old, _rx_old) = link(1);
        assert_eq!(links.push(node, frame(1), || Some(old)), Pushed::Queued);
        let cuts = links.link_ended(node, 1).expect("the current link ended");
        assert_eq!(cuts.len(), 1);
        assert!(Arc::ptr_eq(&cuts[0], &cut));

        let (fresh, mut rx) = link(2);
        assert_eq!(links.push(node, frame(2), || Some(fresh)), Pushed::Queued);
        assert!(links.link_ended(node, 1).is_none(), "a late end of link 1");
        assert_eq!(links.push(node, frame(3), || None), Pushed::Queued);
        assert_eq!(rx.try_recv().map(|f| call_id(&f)).ok(), Some(2));
        assert_eq!(rx.try_recv().map(|f| call_id(&f)).ok(), Some(3));
    }

    #[test]
    fn a_full_link_gives_the_frame_back_to_wait_for_room() {
        let node = NodeId::intern("links-full");
        let mut links = Links::default();
        let (tx, mut rx) = mpsc::channel(1);
        assert_eq!(
            links.push(node, frame(1), || Some(PeerLink::new(
                1,
                tx,
                Default::default()
            ))),
            Pushed::Queued
        );
        let Pushed::Full(Some(busy)) = links.push(node, frame(2), || None) else {
            panic!("a full link's queue gives the frame back");
        };
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .expect("runtime");
        let short = std::time::Duration::from_millis(20);
        let Pushed::Full(Some(again)) = links.push(node, frame(3), || None) else {
            panic!("still full");
        };
        assert!(
            !again.wait(tokio.handle(), short),
            "nobody made room: dropped after the bounded wait"
        );
        // Room made while the sender waits: the frame goes, after the one before it.
        let reader = tokio.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
            let first = rx.recv().await.map(|f| call_id(&f));
            let second = rx.recv().await.map(|f| call_id(&f));
            (first, second)
        });
        assert!(busy.wait(tokio.handle(), std::time::Duration::from_secs(5)));
        let got = tokio.block_on(reader).expect("reader");
        assert_eq!(got, (Some(1), Some(2)));
    }
}
