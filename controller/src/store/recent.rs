//! The latest applied events, kept so that a node whose watch stream broke (its member died,
//! a leader change) resumes where it was instead of receiving the whole view again: with
//! many nodes and names, a leader's death otherwise makes every node it served pull every
//! name from the others at the moment they must elect a new leader.

use std::collections::VecDeque;
use std::sync::Arc;

use super::EventBatch;

/// Most events kept (about seconds of the heaviest write load measured).
const MAX_EVENTS: usize = 131_072;

/// A window of recent event batches, in log order.
#[derive(Debug)]
pub struct Recent {
    batches: VecDeque<Arc<EventBatch>>,
    events: usize,
    /// The lowest log index from which every batch is still here.
    floor: u64,
    max_events: usize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::with_capacity(MAX_EVENTS)
    }
}

impl Recent {
    /// An empty window keeping up to `max_events` events, covering everything from index 1.
    pub fn with_capacity(max_events: usize) -> Recent {
        Recent {
            batches: VecDeque::new(),
            events: 0,
            floor: 1,
            max_events,
        }
    }

    /// Records an applied batch, dropping the oldest ones past the bound.
    pub fn push(&mut self, batch: Arc<EventBatch>) {
        self.events += batch.events.len();
        self.batches.push_back(batch);
        while self.events > self.max_events {
            let Some(old) = self.batches.pop_front() else {
                break;
            };
            self.events -= old.events.len();
            self.floor = self.floor.max(old.index + 1);
        }
    }

    /// The state was replaced (a snapshot loaded at `index`): nothing before it can be replayed.
    pub fn reset(&mut self, index: u64) {
        self.batches.clear();
        self.events = 0;
        self.floor = index + 1;
    }

    /// Every batch from log index `from` on, or None when some of them are no longer here.
    pub fn since(&self, from: u64) -> Option<Vec<Arc<EventBatch>>> {
        if from < self.floor {
            return None;
        }
        Some(
            self.batches
                .iter()
                .filter(|b| b.index >= from)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Event;

    fn batch(index: u64, n: usize) -> Arc<EventBatch> {
        Arc::new(EventBatch::new(
            index,
            (0..n).map(|_| Event::Reset).collect(),
        ))
    }

    fn indexes(v: Option<Vec<Arc<EventBatch>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|b| b.index).collect())
    }

    #[test]
    fn replays_from_an_index_it_still_holds() {
        let mut r = Recent::with_capacity(10);
        for i in [3, 4, 7] {
            r.push(batch(i, 2));
        }
        assert_eq!(indexes(r.since(4)), Some(vec![4, 7]));
        // Entries without events (5, 6) are not missing.
        assert_eq!(indexes(r.since(5)), Some(vec![7]));
        assert_eq!(indexes(r.since(8)), Some(vec![]));
    }

    #[test]
    fn an_index_whose_events_were_dropped_needs_a_full_view() {
        let mut r = Recent::with_capacity(4);
        for i in 1..=4 {
            r.push(batch(i, 2));
        }
        // Holds 3 and 4 only.
        assert_eq!(indexes(r.since(2)), None);
        assert_eq!(indexes(r.since(3)), Some(vec![3, 4]));
    }

    #[test]
    fn a_loaded_snapshot_starts_over() {
        let mut r = Recent::with_capacity(10);
        r.push(batch(1, 1));
        r.reset(50);
        assert_eq!(indexes(r.since(1)), None);
        assert_eq!(indexes(r.since(50)), None);
        assert_eq!(indexes(r.since(51)), Some(vec![]));
    }
}
