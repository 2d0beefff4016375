//! What every service handler shares: the Raft handle, the applied state, the proposer, leases.

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, RaftError};

use crate::config::ControllerConfig;
use crate::error::{Error, Result};
use crate::lease::Leases;
use crate::proposer::Proposer;
use crate::store::SharedState;
use crate::types::{Command, MemberNode, Outcome, Raft};

/// Shared handles of one controller member.
pub struct Core {
    /// This member's Raft id.
    pub id: u64,
    /// The Raft handle.
    pub raft: Raft,
    /// The applied state.
    pub shared: Arc<SharedState>,
    /// Batching writer.
    pub proposer: Proposer,
    /// Node leases (used while leading).
    pub leases: Leases,
    /// Configuration.
    pub config: ControllerConfig,
    /// The declared number of voters (`--voters-file`), which scales the group down.
    pub voters: crate::voters::Target,
    /// When this member last heard from a leader (a follower's readiness asks).
    pub contact: Arc<crate::api::raft::Contact>,
    /// How this member is reached, as it advertises itself (its lease address included).
    pub me: MemberNode,
    /// The global names followed through the watch streams this member serves.
    pub follows: crate::api::follows::Follows,
}

impl Core {
    /// The credentials every service of this member accepts: the cluster secret (or, with
    /// TLS, member certificates), static client tokens and the tokens issued through Raft.
    pub fn credentials(&self) -> crate::auth::Credentials {
        crate::auth::Credentials::new(
            self.config.secret.clone(),
            self.config.client_tokens.clone(),
            Some(self.shared.clone() as Arc<dyn crate::auth::TokenSource>),
        )
        .with_node_secret(self.config.node_secret.clone())
        .with_mtls(self.config.tls.is_some())
        .with_rate_limit(self.config.rate_limit)
        .with_stream_limit(self.config.max_streams_per_token)
    }

    /// API address of the current leader, when known.
    pub fn leader_api(&self) -> Option<String> {
        self.leader_member().map(|n| n.api_addr)
    }

    /// Lease address of the current leader, when known and advertised (an older member
    /// advertises none: nodes renew at its API address).
    pub fn leader_lease(&self) -> Option<String> {
        self.leader_member()
            .map(|n| n.lease_addr)
            .filter(|a| !a.is_empty())
    }

    /// The current leader's entry in the membership, when known.
    fn leader_member(&self) -> Option<MemberNode> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let node = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.clone());
        node
    }

    /// Errs with a redirect unless this member believes it leads (no round trip).
    pub fn ensure_leader(&self) -> Result<()> {
        let m = self.raft.metrics();
        let leads = {
            let m = m.borrow();
            m.current_leader == Some(self.id) && m.state.is_leader()
        };
        if leads {
            Ok(())
        } else {
            Err(Error::NotLeader {
                leader: self.leader_api(),
            })
        }
    }

    /// Like [`Core::ensure_leader`], but during an election (no leader known, or the one
    /// this member follows found gone) waits until `until` for a leader to be known, so that
    /// the refusal names the new leader instead of the dead one: a node told so follows it
    /// at once, where a refusal naming the old one sent it into rounds of backoff that ended
    /// a few hundred milliseconds after the election. A live but busy leader is named at once.
    pub async fn ensure_leader_soon(&self, until: std::time::Instant) -> Result<()> {
        let led = self.ensure_leader();
        if led.is_ok() {
            return led;
        }
        let mut metrics = self.raft.metrics();
        let named = metrics.borrow().current_leader;
        if named.is_some() && !self.contact.leader_gone() {
            return led;
        }
        let _ = tokio::time::timeout_at(
            until.into(),
            metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != named),
        )
        .await;
        self.ensure_leader()
    }

    /// Waits until this member's state reflects every write acknowledged before the call.
    pub async fn linearizable(&self) -> Result<()> {
        // A quorum check can miss its deadline while followers digest a burst of writes; a
        // couple of retries turn that into latency instead of an error.
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(self.config.timings.raft_heartbeat * attempt).await;
            }
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    return Err(Error::NotLeader {
                        leader: f.leader_node.map(|n: MemberNode| n.api_addr),
                    })
                }
                Err(RaftError::APIError(e)) => {
                    last = Some(Error::Unavailable(format!("{e}; retry shortly")))
                }
                Err(RaftError::Fatal(f)) => return Err(Error::Unavailable(f.to_string())),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Unavailable("leadership could not be confirmed; retry shortly".into())
        }))
    }

    /// Proposes one command through the batching writer.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome> {
        self.proposer.propose(cmd).await
    }

    /// Proposes `cmd`, answering with the log index that applied it too.
    pub async fn propose_indexed(&self, cmd: Command) -> Result<(Outcome, u64)> {
        self.proposer.propose_indexed(cmd).await
    }
}
