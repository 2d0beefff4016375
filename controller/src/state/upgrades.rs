//! Nodes' reports of moving an app's processes to new code, and the automatic rollback when
//! a node cannot load it.

use super::{Ctx, Event, State};
use crate::error::{Error, Result};
use crate::types::{AppStatus, NodeUpgrade, Outcome, UpgradeStatus};

impl State {
    /// Records `node`'s result for the app's current code, replacing its earlier one; a
    /// `Failed` result rolls the app back to its previous version, which is then not kept
    /// (re-applying code a node could not load is pointless). Reports about other code are
    /// stale and ignored.
    pub(super) fn upgrade_report(
        &mut self,
        cx: &mut Ctx<'_>,
        node: &str,
        app: &str,
        result: NodeUpgrade,
    ) -> Result<Outcome> {
        let Some(a) = self.apps.get_mut(app) else {
            return Err(Error::NotFound(format!(
                "app `{app}` does not exist; report upgrades only for apps the controller sent"
            )));
        };
        if a.status != AppStatus::Running || result.code_hash != a.code_hash {
            tracing::debug!(app, node, code_hash = %result.code_hash, "stale upgrade report ignored");
            return Ok(Outcome::Changed(false));
        }
        let failed = result.status == UpgradeStatus::Failed;
        let error = result.error.clone();
        a.upgrades.insert(node.to_string(), result);
        let rollback_to = a.previous.as_ref().map(|p| p.draft.version.clone());
        match rollback_to.filter(|_| failed) {
            Some(to) => {
                let why = format!(
                    "upgrade to {} failed on {node}: {error}; rolled back to {to}",
                    a.draft.version
                );
                tracing::warn!(app, node, %why, "rolling back a failed upgrade");
                self.switch_to_previous(cx, app, false, why)?;
            }
            None => cx.events.push(Event::AppChanged(Box::new(a.clone()))),
        }
        Ok(Outcome::Changed(true))
    }
}
