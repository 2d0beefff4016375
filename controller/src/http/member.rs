//! A controller member's readiness: a voter that sees a leader.

use crate::core::Core;
use crate::http::health::Readiness;

impl Readiness for Core {
    fn readiness(&self) -> Result<(), String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if let Err(e) = &m.running_state {
            return Err(format!("raft stopped: {e}"));
        }
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return Err(format!(
                "member {} is not a voter of the controller group (yet)",
                self.id
            ));
        }
        match m.current_leader {
            Some(_) => Ok(()),
            None => Err("no leader known; waiting for an election".into()),
        }
    }
}

/// Everything a controller member serves over HTTP.
pub fn router(core: std::sync::Arc<Core>) -> axum::Router {
    crate::http::health::routes(core.clone()).merge(api_routes(core))
}

/// The routes besides the probes (a dev node serves these next to its own probes).
pub fn api_routes(_core: std::sync::Arc<Core>) -> axum::Router {
    axum::Router::new()
}
