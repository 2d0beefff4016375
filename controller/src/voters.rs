//! Scaling the controller group down without a human step: the number of voters the group
//! should have is declared in a file (on Kubernetes a ConfigMap key the chart fills from
//! `controller.replicas`, so scaling changes the file, never a pod template). While it
//! leads, a member removes the voters with the highest ids above that number, one at a time,
//! and refuses to admit members above it.
//!
//! A member stopping changes nothing: a restart, a crash or a drain never removes anyone;
//! only a lower declared number does, and only the ids above it (the StatefulSet's highest
//! ordinals, which are the pods a scale-down deletes).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;

use crate::core::Core;

/// How often the file is read again (a ConfigMap update reaches the pod within a minute).
const EVERY: Duration = Duration::from_secs(1);

/// The declared number of voters; 0 while none is declared.
#[derive(Default)]
pub struct Target(AtomicU64);

impl Target {
    /// The declared number of voters, if any.
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|n| *n > 0)
    }

    /// Refuses member `id` when a declared number of voters leaves no place for it.
    pub fn admits(&self, id: u64) -> Result<(), String> {
        match self.get() {
            Some(n) if id > n => Err(format!(
                "controller {id} is above the declared {n} voters (the group is being scaled down to {n})"
            )),
            _ => Ok(()),
        }
    }
}

/// Parses the file's content: a positive number of voters.
pub fn parse(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "`{}` is not a positive number of controller voters",
            text.trim()
        )),
    }
}

/// Follows `path` and, while this member leads, removes voters above the declared number.
pub async fn run(core: Arc<Core>, path: PathBuf, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut complained = false;
    loop {
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| parse(&t))
        {
            Ok(n) => {
                complained = false;
                if core.voters.get() != Some(n) {
                    tracing::info!(voters = n, "declared number of controller voters");
                }
                core.voters.0.store(n, Ordering::Release);
                if let Err(e) = shrink(&core, n).await {
                    tracing::warn!(error = %e, "removing voters above the declared number; retrying");
                }
            }
            Err(e) if !complained => {
                complained = true;
                tracing::warn!(path = %path.display(), "cannot read the declared number of voters: {e}");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Removes the highest-id member above `n` (voter, then node), if this member leads.
async fn shrink(core: &Core, n: u64) -> crate::error::Result<()> {
    let (leading, voters, members) = {
        let m = core.raft.metrics();
        let m = m.borrow();
        let c = m.membership_config.membership();
        (
            m.current_leader == Some(core.id) && m.state.is_leader(),
            c.voter_ids().collect::<BTreeSet<u64>>(),
            c.nodes().map(|(id, _)| *id).collect::<BTreeSet<u64>>(),
        )
    };
    // A leader above the number leaves removing itself to the next leader: it steps down
    // when its pod goes.
    if !leading || core.id > n {
        return Ok(());
    }
    let Some(&id) = members.iter().rev().find(|id| **id > n) else {
        return Ok(());
    };
    let ids: BTreeSet<u64> = [id].into();
    if voters.contains(&id) {
        tracing::info!(
            id,
            voters = n,
            "scaling down: removing the controller voter"
        );
        crate::api::change_membership(core, ChangeMembers::RemoveVoters(ids.clone())).await?;
    }
    crate::api::change_membership(core, ChangeMembers::RemoveNodes(ids)).await?;
    tracing::info!(id, "controller member removed (scaled down)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_holds_a_positive_count() {
        assert_eq!(parse("3\n"), Ok(3));
        assert!(parse("0").is_err());
        assert!(parse("three").is_err());
        let t = Target::default();
        assert!(t.admits(9).is_ok());
        t.0.store(3, Ordering::Release);
        assert!(t.admits(3).is_ok());
        assert!(t.admits(4).is_err());
    }
}
