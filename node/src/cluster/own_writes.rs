//! This node's own registry writes, kept in its caches over older watch changes that arrive
//! after them.
//!
//! A process that joins a group, leaves it and joins again gets each answer from the
//! controller before its watch stream brings the same changes (batched, up to 20 ms later).
//! Applied then, the stream's older "left" would take the process out of the group after its
//! second join returned, until the stream's "joined" came. So each write of this node,
//! answered at a log index, is remembered until the stream passes that index, and the
//! stream's changes to the same key at that index or older are not applied.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// The writes of this node that the watch stream has not passed yet, for one cache.
#[derive(Debug)]
pub struct OwnWrites<K, V> {
    /// The log index of the last watch change applied to the cache.
    watched: u64,
    /// Each key's last write of ours not yet passed by the stream: its log index and value.
    pending: HashMap<K, (u64, V)>,
}

impl<K, V> Default for OwnWrites<K, V> {
    fn default() -> Self {
        OwnWrites {
            watched: 0,
            pending: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> OwnWrites<K, V> {
    /// A write of ours answered at `index`: whether the cache takes its value. Not when the
    /// stream already applied a later entry (the cache holds this write's effect or a newer
    /// one). An older controller answers 0 (no index): taken, as before.
    pub fn answered(&mut self, key: K, value: V, index: u64) -> bool {
        if index == 0 {
            return true;
        }
        if self.watched > index {
            return false;
        }
        self.pending.insert(key, (index, value));
        true
    }

    /// A watch change to `key` at `index`: whether the cache applies it (not when a write of
    /// ours to the same key was answered at that index or later).
    pub fn watched<Q>(&mut self, key: &Q, index: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if index > self.watched {
            self.watched = index;
            // Writes of ours the stream has passed are in the cache by its own changes now.
            // Kept while equal: our change may come later in the same entry.
            if !self.pending.is_empty() {
                self.pending.retain(|_, (at, _)| *at >= index);
            }
        }
        self.pending.get(key).is_none_or(|(at, _)| *at < index)
    }

    /// Whether a write of ours to `key`, answered at `index` or later, is still pending: a
    /// value read at `index` elsewhere is not newer than it.
    pub fn newer<Q>(&self, key: &Q, index: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.pending.get(key).is_some_and(|(at, _)| *at >= index)
    }

    /// A full view at `index` replaced the cache: the writes of ours it does not hold yet,
    /// to apply again over it.
    pub fn view(&mut self, index: u64) -> Vec<(K, V)> {
        self.watched = index;
        self.pending.retain(|_, (at, _)| *at > index);
        self.pending
            .iter()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_older_change_does_not_undo_a_write_of_ours() {
        let mut own = OwnWrites::<&str, bool>::default();
        // join at 5, leave at 6, join at 7: all answered before the stream brings any.
        assert!(own.answered("g", true, 5));
        assert!(own.answered("g", false, 6));
        assert!(own.answered("g", true, 7));
        assert!(!own.watched(&"g", 5));
        assert!(!own.watched(&"g", 6), "the late leave is not applied");
        assert!(!own.watched(&"g", 7), "our own change: the cache has it");
        // Later changes by anyone apply, and the pending write is forgotten.
        assert!(own.watched(&"g", 8));
        assert!(own.pending.is_empty());
    }

    #[test]
    fn other_keys_and_newer_changes_apply() {
        let mut own = OwnWrites::<&str, bool>::default();
        assert!(own.answered("a", true, 10));
        assert!(own.watched(&"b", 9), "another key");
        assert!(!own.watched(&"a", 9));
        assert!(own.watched(&"a", 11));
    }

    #[test]
    fn an_answer_after_the_stream_passed_it_is_not_taken() {
        let mut own = OwnWrites::<&str, bool>::default();
        assert!(own.watched(&"a", 12));
        assert!(
            !own.answered("a", true, 11),
            "the cache holds index 12 already"
        );
        assert!(
            own.answered("a", true, 12),
            "same entry: the same or our value"
        );
        assert!(
            own.answered("a", true, 0),
            "an older controller: no index, taken"
        );
    }

    #[test]
    fn a_full_view_gives_back_the_writes_it_does_not_hold() {
        let mut own = OwnWrites::<&str, bool>::default();
        assert!(own.answered("old", true, 3));
        assert!(own.answered("new", false, 9));
        assert_eq!(own.view(5), vec![("new", false)]);
        assert!(!own.watched(&"new", 6));
        assert!(own.watched(&"old", 6));
    }
}
