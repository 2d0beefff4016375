//! The global names each watching node follows, for the streams this member serves to nodes
//! that cache only the names they use (`WatchRequest.followed_names`).
//!
//! Sending every name change to every node made the watch fan-out O(nodes × changes): at
//! 1,000 nodes a few thousand writes per second were all one leader could push
//! (docs/capacity.md). A node in this mode gets a name's changes only when one of its own
//! processes holds the name (before or after the change) or when it follows the name: it
//! asked where it is (`WhereisRequest.follower`) or named it when its stream opened.

use std::collections::{HashMap, HashSet};

use parking_lot::RwLock;

/// Names one stream may follow: a bound on what a node can make this member keep.
pub const MAX_FOLLOWED: usize = 65_536;

/// The names followed through the streams this member serves, by node and by name.
#[derive(Debug, Default)]
pub struct Follows {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per node: the number of the stream that follows, and the names it follows.
    by_node: HashMap<String, (u64, HashSet<String>)>,
    /// Per name: the nodes that follow it.
    by_name: HashMap<String, Vec<String>>,
}

impl Inner {
    fn forget(&mut self, node: &str) {
        let Some((_, names)) = self.by_node.remove(node) else {
            return;
        };
        for name in names {
            if let Some(nodes) = self.by_name.get_mut(&name) {
                nodes.retain(|n| n != node);
                if nodes.is_empty() {
                    self.by_name.remove(&name);
                }
            }
        }
    }

    fn add(&mut self, node: &str, name: &str) -> bool {
        let Some((_, names)) = self.by_node.get_mut(node) else {
            return false;
        };
        if names.contains(name) {
            return true;
        }
        if names.len() >= MAX_FOLLOWED {
            return false;
        }
        names.insert(name.to_string());
        self.by_name
            .entry(name.to_string())
            .or_default()
            .push(node.to_string());
        true
    }
}

impl Follows {
    /// Stream `stream` of `node` opened here following `names` (beyond the bound, the rest
    /// are not followed); it replaces whatever an earlier stream of the node followed.
    pub fn open(&self, node: &str, stream: u64, names: &[String]) {
        let mut inner = self.inner.write();
        inner.forget(node);
        inner
            .by_node
            .insert(node.to_string(), (stream, HashSet::new()));
        for name in names {
            if !inner.add(node, name) {
                break;
            }
        }
    }

    /// Stream `stream` of `node` ended: what it followed is dropped, unless a later stream
    /// of the node took over already.
    pub fn close(&self, node: &str, stream: u64) {
        let mut inner = self.inner.write();
        if inner.by_node.get(node).is_some_and(|(s, _)| *s == stream) {
            inner.forget(node);
        }
    }

    /// `node` follows `name` on its stream `stream`: true when that stream is served here
    /// (so the name's later changes reach the node) and within the bound.
    pub fn follow(&self, node: &str, stream: u64, name: &str) -> bool {
        let mut inner = self.inner.write();
        if inner.by_node.get(node).is_none_or(|(s, _)| *s != stream) {
            return false;
        }
        inner.add(node, name)
    }

    /// Whether `node` follows `name` here.
    pub fn follows(&self, node: &str, name: &str) -> bool {
        self.inner
            .read()
            .by_node
            .get(node)
            .is_some_and(|(_, names)| names.contains(name))
    }

    /// The names `node` follows.
    pub fn names_of(&self, node: &str) -> HashSet<String> {
        self.inner
            .read()
            .by_node
            .get(node)
            .map(|(_, names)| names.clone())
            .unwrap_or_default()
    }

    /// The nodes following each name of `names`, in that order (an empty list for a name
    /// nobody follows), under one lock.
    pub fn followers<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<Vec<String>> {
        let inner = self.inner.read();
        names
            .map(|n| inner.by_name.get(n).cloned().unwrap_or_default())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_name_is_followed_only_through_the_stream_served_here() {
        let f = Follows::default();
        assert!(!f.follow("a", 1, "x"), "no stream of a is served here");
        f.open("a", 2, &names(&["x"]));
        assert!(!f.follow("a", 1, "y"), "stream 1 is over");
        assert!(f.follow("a", 2, "y"));
        assert!(f.follows("a", "x") && f.follows("a", "y"));
        assert_eq!(
            f.followers(["y", "z"].into_iter()),
            vec![vec!["a".to_string()], vec![]]
        );
    }

    #[test]
    fn a_later_stream_replaces_what_an_earlier_one_followed() {
        let f = Follows::default();
        f.open("a", 1, &names(&["x", "y"]));
        f.open("b", 1, &names(&["x"]));
        f.open("a", 2, &names(&["y"]));
        assert!(!f.follows("a", "x"));
        assert_eq!(f.followers(["x"].into_iter()), vec![vec!["b".to_string()]]);
        // The close of the replaced stream does not drop its successor's names.
        f.close("a", 1);
        assert!(f.follows("a", "y"));
        f.close("a", 2);
        assert!(!f.follows("a", "y"));
        assert_eq!(f.followers(["y"].into_iter()), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_stream_follows_at_most_the_bound() {
        let f = Follows::default();
        let many: Vec<String> = (0..MAX_FOLLOWED + 5).map(|i| format!("n{i}")).collect();
        f.open("a", 1, &many);
        assert!(f.follows("a", "n0"));
        assert!(!f.follows("a", &format!("n{MAX_FOLLOWED}")));
        assert!(!f.follow("a", 1, "one-more"));
        assert!(
            f.follow("a", 1, "n0"),
            "a name followed already stays followed"
        );
    }
}
