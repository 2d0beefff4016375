//! Node membership: join, leave, death, and incarnation checks.

use std::collections::BTreeMap;

use super::{Ctx, Event, State};
use crate::error::{Error, Result};
use crate::types::{NodeEntry, Outcome};

impl State {
    /// Refuses unknown nodes, dead nodes and stale incarnations.
    pub fn check_live(&self, node: &str, incarnation: u64) -> Result<()> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| Error::NotFound(format!("node `{node}` is not a member; join first")))?;
        if n.incarnation != incarnation || !n.alive {
            return Err(Error::FailedPrecondition(format!(
                "node `{node}` incarnation {incarnation} is stale (current {} {}); the node must rejoin and restart its processes",
                n.incarnation,
                if n.alive { "alive" } else { "dead" }
            )));
        }
        Ok(())
    }

    pub(super) fn join(
        &mut self,
        cx: &mut Ctx<'_>,
        node: String,
        address: String,
        labels: BTreeMap<String, String>,
        capacity: u32,
    ) -> Result<Outcome> {
        // The log index is unique and grows, so it makes an incarnation nobody saw before.
        let incarnation = cx.index;
        if let Some(old) = self.nodes.get(&node) {
            if old.alive {
                let old_inc = old.incarnation;
                self.node_died(cx, &node, old_inc, "rejoined with a new incarnation");
            }
        }
        let entry = NodeEntry {
            id: node.clone(),
            incarnation,
            address,
            labels,
            capacity,
            alive: true,
            joined_at_ms: cx.now_ms,
            died_at_ms: 0,
            death_reason: String::new(),
        };
        cx.events.push(Event::NodeChanged(entry.clone()));
        self.nodes.insert(node, entry);
        self.place_pending(cx);
        Ok(Outcome::Joined { incarnation })
    }

    /// Marks a node incarnation dead, releases its names and groups, and moves its children.
    pub(super) fn node_died(
        &mut self,
        cx: &mut Ctx<'_>,
        node: &str,
        incarnation: u64,
        reason: &str,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.incarnation != incarnation || !n.alive {
            return;
        }
        n.alive = false;
        n.died_at_ms = cx.now_ms;
        n.death_reason = reason.to_string();
        cx.events.push(Event::NodeChanged(n.clone()));
        let mut pids: Vec<_> = self
            .names_by_pid
            .keys()
            .chain(self.groups_by_pid.keys())
            .filter(|p| p.node == node && p.incarnation == incarnation)
            .cloned()
            .collect();
        pids.sort();
        pids.dedup();
        for pid in pids {
            self.release_pid(cx, &pid);
        }
        self.reassign_from_dead_node(cx, node, incarnation, reason);
    }
}
