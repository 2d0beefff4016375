//! The client/admin service: registry, process groups, apps, cluster state, controller membership.

use std::collections::BTreeSet;
use std::sync::Arc;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use rebeam_proto::v1 as pb;
use rebeam_proto::v1::cluster_service_server::ClusterService;
use sha2::Digest;
use tonic::{Request, Response, Status};

use super::{node_ref, pid};
use crate::archive;
use crate::auth::{self, Role};
use crate::convert;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::manifest;
use crate::proposer::write_error;
use crate::types::{Blob, Command, MemberNode, Outcome};
use crate::validate;

/// Longest note on a client token, in bytes.
pub const MAX_TOKEN_NOTE: usize = 256;

/// Most registrations accepted in one `RegisterNames` call.
pub const MAX_BATCH_REGISTRATIONS: usize = 10_000;

/// Serves clients, the CLI, the dashboard and nodes' registry writes.
pub struct ClusterApi {
    core: Arc<Core>,
}

impl ClusterApi {
    /// Wraps the shared core.
    pub fn new(core: Arc<Core>) -> Self {
        ClusterApi { core }
    }

    fn controllers(&self) -> Vec<pb::ControllerMember> {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        m.membership_config
            .nodes()
            .map(|(id, n)| pb::ControllerMember {
                id: *id,
                raft_address: n.raft_addr.clone(),
                api_address: n.api_addr.clone(),
                voter: voters.contains(id),
                lease_address: n.lease_addr.clone(),
            })
            .collect()
    }

    async fn submit(&self, r: pb::SubmitAppRequest, upgrade: bool) -> Result<pb::SubmitAppReply> {
        let limits = &self.core.config.limits;
        if r.manifest_toml.len() > limits.max_manifest_bytes {
            return Err(Error::TooLarge(format!(
                "manifest is {} bytes; the limit is {}",
                r.manifest_toml.len(),
                limits.max_manifest_bytes
            )));
        }
        if r.code.len() > limits.max_code_bytes {
            return Err(Error::TooLarge(format!(
                "app code is {} bytes; the limit is {} (controller --max-code-bytes); leave data files out of the app",
                r.code.len(),
                limits.max_code_bytes
            )));
        }
        let draft = manifest::parse(&r.manifest_toml)?;
        // Unpacking and hashing megabytes would stall a runtime worker: do it on the side.
        let checked = tokio::task::spawn_blocking(move || {
            archive::check(&r.code, &r.manifest_toml)?;
            let hash = hex::encode(sha2::Sha256::digest(&r.code));
            Ok::<_, Error>((r.code, hash))
        })
        .await
        .map_err(|e| Error::internal(format!("archive check stopped: {e}")))?;
        let (code, code_hash) = checked?;
        let cmd = Command::SubmitApp {
            draft,
            code: Blob(code),
            code_hash,
            upgrade,
        };
        Ok(pb::SubmitAppReply {
            app: Some(self.app_write(cmd, "submit").await?),
        })
    }

    /// Proposes a command that answers with the app it changed (submit, upgrade, rollback,
    /// stop).
    async fn app_write(&self, cmd: Command, what: &str) -> Result<pb::AppInfo> {
        match self.core.propose(cmd).await? {
            Outcome::App(app) => Ok((*app).into()),
            other => Err(Error::internal(format!(
                "unexpected {what} outcome {other:?}"
            ))),
        }
    }

    async fn pg(&self, r: pb::PgRequest, join: bool) -> Result<pb::PgReply> {
        validate::name("group", &r.group)?;
        let pid = pid(r.pid)?;
        let cmd = if join {
            Command::PgJoin {
                group: r.group,
                pid,
            }
        } else {
            Command::PgLeave {
                group: r.group,
                pid,
            }
        };
        match self.core.propose_indexed(cmd).await? {
            (Outcome::Changed(changed), log_index) => Ok(pb::PgReply { changed, log_index }),
            (other, _) => Err(Error::internal(format!("unexpected pg outcome {other:?}"))),
        }
    }
}

/// Changes the voter set, waiting (up to 10 s) for a change already in flight to finish.
pub(crate) async fn change_membership(
    core: &Core,
    change: ChangeMembers<u64, MemberNode>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match core.raft.change_membership(change.clone(), false).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(write_error(e)),
        }
    }
}

/// How long a new member has to replicate the log as a learner before it may vote.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Adds `id` as a learner, waits until it has acknowledged the log up to the entry that added
/// it, and only then makes it a voter. openraft would count an unreachable learner as caught
/// up while the log is short, and a voter that never answers can cost the group its quorum
/// (one member plus one dead voter is two voters without a majority): such a member is
/// removed again and the call fails.
async fn add_caught_up_voter(core: &Core, id: u64, node: MemberNode) -> Result<()> {
    let address = node.raft_addr.clone();
    let added = core
        .raft
        .add_learner(id, node, false)
        .await
        .map_err(write_error)?;
    let needed = added.log_id.index;
    let mut rx = core.raft.metrics();
    let caught_up = tokio::time::timeout(CATCH_UP_TIMEOUT, async {
        loop {
            let acked = rx
                .borrow()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index);
            if acked.is_some_and(|i| i >= needed) {
                return true;
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await
    .unwrap_or(false);
    if !caught_up {
        let ids: BTreeSet<u64> = [id].into();
        if let Err(e) = change_membership(core, ChangeMembers::RemoveNodes(ids)).await {
            tracing::warn!(id, error = %e, "could not drop a learner that did not catch up");
        }
        return Err(Error::FailedPrecondition(format!(
            "controller {id} at {address} did not replicate the log within {} s, so it was not made a voter; check that it runs, that --join/--raft-advertise give an address this leader can reach, and that it has the cluster secret",
            CATCH_UP_TIMEOUT.as_secs()
        )));
    }
    let ids: BTreeSet<u64> = [id].into();
    change_membership(core, ChangeMembers::AddVoterIds(ids)).await
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn register_name(
        &self,
        req: Request<pb::RegisterNameRequest>,
    ) -> Result<Response<pb::RegisterNameReply>, Status> {
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        let pid = pid(r.pid)?;
        match self
            .core
            .propose_indexed(Command::Register { name: r.name, pid })
            .await?
        {
            (Outcome::Registered { registered, holder }, log_index) => {
                Ok(Response::new(pb::RegisterNameReply {
                    registered,
                    holder: Some(holder.into()),
                    log_index,
                }))
            }
            (other, _) => {
                Err(Error::internal(format!("unexpected register outcome {other:?}")).into())
            }
        }
    }

    async fn register_names(
        &self,
        req: Request<pb::RegisterNamesRequest>,
    ) -> Result<Response<pb::RegisterNamesReply>, Status> {
        let regs = req.into_inner().registrations;
        if regs.len() > MAX_BATCH_REGISTRATIONS {
            return Err(Error::invalid(format!(
                "{} registrations in one call; send at most {MAX_BATCH_REGISTRATIONS}",
                regs.len()
            ))
            .into());
        }
        let mut cmds = Vec::with_capacity(regs.len());
        for (i, r) in regs.into_iter().enumerate() {
            let at = |e: Error| Error::invalid(format!("registration {i}: {e}"));
            validate::name("name", &r.name).map_err(at)?;
            let pid = pid(r.pid).map_err(at)?;
            cmds.push(Command::Register { name: r.name, pid });
        }
        let n = cmds.len();
        let results = self.core.proposer.propose_many(cmds).await;
        if results.len() != n {
            return Err(Error::Unavailable(
                "the controller is shutting down; retry on another member".into(),
            )
            .into());
        }
        let mut outcomes = Vec::with_capacity(n);
        for r in results {
            outcomes.push(match r {
                Ok(Outcome::Registered { registered, holder }) => pb::RegisterNameOutcome {
                    registered,
                    holder: Some(holder.into()),
                    error: String::new(),
                },
                // Leadership problems concern the whole call: let the client retry it elsewhere.
                Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_))) => return Err(e.into()),
                Err(e) => pb::RegisterNameOutcome {
                    registered: false,
                    holder: None,
                    error: e.to_string(),
                },
                Ok(other) => {
                    return Err(
                        Error::internal(format!("unexpected register outcome {other:?}")).into(),
                    )
                }
            });
        }
        Ok(Response::new(pb::RegisterNamesReply { outcomes }))
    }

    async fn unregister_name(
        &self,
        req: Request<pb::UnregisterNameRequest>,
    ) -> Result<Response<pb::UnregisterNameReply>, Status> {
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        let pid = match r.pid {
            Some(p) => Some(pid(Some(p))?),
            None => None,
        };
        match self
            .core
            .propose_indexed(Command::Unregister { name: r.name, pid })
            .await?
        {
            (Outcome::Changed(released), log_index) => Ok(Response::new(pb::UnregisterNameReply {
                released,
                log_index,
            })),
            (other, _) => {
                Err(Error::internal(format!("unexpected unregister outcome {other:?}")).into())
            }
        }
    }

    async fn whereis(
        &self,
        req: Request<pb::WhereisRequest>,
    ) -> Result<Response<pb::WhereisReply>, Status> {
        if let Some(follower) = req.get_ref().follower.as_ref() {
            super::node::speaks_for(&req, Some(follower))?;
        }
        let r = req.into_inner();
        validate::name("name", &r.name)?;
        let follower = r.follower.map(|f| node_ref(Some(f))).transpose()?;
        if r.linearizable {
            self.core.linearizable().await?;
        }
        // Followed before the state is read: every entry applied after the read is encoded
        // for the node's stream with the name in it (`watch::Encoded`).
        let followed = follower
            .is_some_and(|(node, _)| self.core.follows.follow(&node, r.follower_stream, &r.name));
        let a = self.core.shared.applied.read();
        Ok(Response::new(pb::WhereisReply {
            pid: a.state.names.get(&r.name).cloned().map(Into::into),
            log_index: a.last_applied.map(|l| l.index).unwrap_or(0),
            followed,
        }))
    }

    async fn list_names(
        &self,
        _req: Request<pb::ListNamesRequest>,
    ) -> Result<Response<pb::ListNamesReply>, Status> {
        let a = self.core.shared.applied.read();
        let names = a
            .state
            .names
            .iter()
            .map(|(n, p)| pb::GlobalName {
                name: n.clone(),
                pid: Some(p.clone().into()),
            })
            .collect();
        Ok(Response::new(pb::ListNamesReply { names }))
    }

    async fn pg_join(&self, req: Request<pb::PgRequest>) -> Result<Response<pb::PgReply>, Status> {
        Ok(Response::new(self.pg(req.into_inner(), true).await?))
    }

    async fn pg_leave(&self, req: Request<pb::PgRequest>) -> Result<Response<pb::PgReply>, Status> {
        Ok(Response::new(self.pg(req.into_inner(), false).await?))
    }

    async fn pg_members(
        &self,
        req: Request<pb::PgMembersRequest>,
    ) -> Result<Response<pb::PgMembersReply>, Status> {
        let r = req.into_inner();
        validate::name("group", &r.group)?;
        if r.linearizable {
            self.core.linearizable().await?;
        }
        let a = self.core.shared.applied.read();
        let members = a
            .state
            .groups
            .get(&r.group)
            .map(|m| m.iter().cloned().map(Into::into).collect())
            .unwrap_or_default();
        Ok(Response::new(pb::PgMembersReply { members }))
    }

    async fn submit_app(
        &self,
        req: Request<pb::SubmitAppRequest>,
    ) -> Result<Response<pb::SubmitAppReply>, Status> {
        Ok(Response::new(self.submit(req.into_inner(), false).await?))
    }

    async fn upgrade_app(
        &self,
        req: Request<pb::SubmitAppRequest>,
    ) -> Result<Response<pb::SubmitAppReply>, Status> {
        Ok(Response::new(self.submit(req.into_inner(), true).await?))
    }

    async fn rollback_app(
        &self,
        req: Request<pb::RollbackAppRequest>,
    ) -> Result<Response<pb::SubmitAppReply>, Status> {
        let name = req.into_inner().name;
        validate::required("app name", &name, "pass the name from rebeam.toml")?;
        validate::name("app name", &name)?;
        let app = self
            .app_write(Command::RollbackApp { name }, "rollback")
            .await?;
        Ok(Response::new(pb::SubmitAppReply { app: Some(app) }))
    }

    async fn stop_app(
        &self,
        req: Request<pb::StopAppRequest>,
    ) -> Result<Response<pb::StopAppReply>, Status> {
        let name = req.into_inner().name;
        validate::required("app name", &name, "pass the name from rebeam.toml")?;
        validate::name("app name", &name)?;
        let app = self.app_write(Command::StopApp { name }, "stop").await?;
        Ok(Response::new(pb::StopAppReply { app: Some(app) }))
    }

    async fn list_apps(
        &self,
        _req: Request<pb::ListAppsRequest>,
    ) -> Result<Response<pb::ListAppsReply>, Status> {
        let a = self.core.shared.applied.read();
        let apps = a.state.apps.values().cloned().map(Into::into).collect();
        Ok(Response::new(pb::ListAppsReply { apps }))
    }

    async fn cluster_state(
        &self,
        _req: Request<pb::ClusterStateRequest>,
    ) -> Result<Response<pb::ClusterStateReply>, Status> {
        let leader_id = self
            .core
            .raft
            .metrics()
            .borrow()
            .current_leader
            .unwrap_or(0);
        let controllers = self.controllers();
        let a = self.core.shared.applied.read();
        let s = &a.state;
        Ok(Response::new(pb::ClusterStateReply {
            leader_id,
            leader_api_address: self.core.leader_api().unwrap_or_default(),
            controllers,
            nodes: s.nodes.values().cloned().map(Into::into).collect(),
            apps: s.apps.values().cloned().map(Into::into).collect(),
            assignments: s
                .all_assignments()
                .map(|x| s.assignment_view(x).into())
                .collect(),
            global_names: s.names.len() as u64,
            groups: s.groups.len() as u64,
            last_applied_index: a.last_applied.map(|l| l.index).unwrap_or(0),
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let m = self.core.raft.metrics().borrow().clone();
        let role = match m.state {
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        Ok(Response::new(pb::StatusReply {
            id: self.core.id,
            current_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_api_address: self.core.leader_api().unwrap_or_default(),
            is_leader: m.current_leader == Some(self.core.id) && m.state.is_leader(),
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            role: role.into(),
        }))
    }

    async fn add_controller(
        &self,
        req: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerReply>, Status> {
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Error::invalid("controller id must be non-zero").into());
        }
        validate::address(&r.raft_address)?;
        validate::address(&r.api_address)?;
        self.core
            .voters
            .admits(r.id)
            .map_err(Error::FailedPrecondition)?;
        self.core.ensure_leader()?;
        let node = MemberNode {
            raft_addr: r.raft_address,
            api_addr: r.api_address,
            // Filled in by that member once it leads (`lease::advertise`).
            lease_addr: String::new(),
        };
        let already_voter = self
            .core
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == r.id);
        if already_voter {
            return Ok(Response::new(pb::AddControllerReply {
                controllers: self.controllers(),
            }));
        }
        add_caught_up_voter(&self.core, r.id, node).await?;
        tracing::info!(id = r.id, "controller member added");
        Ok(Response::new(pb::AddControllerReply {
            controllers: self.controllers(),
        }))
    }

    async fn remove_controller(
        &self,
        req: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerReply>, Status> {
        let id = req.into_inner().id;
        self.core.ensure_leader()?;
        let (voters, members): (BTreeSet<u64>, BTreeSet<u64>) = {
            let m = self.core.raft.metrics();
            let m = m.borrow();
            let c = m.membership_config.membership();
            (
                c.voter_ids().collect(),
                c.nodes().map(|(id, _)| *id).collect(),
            )
        };
        if !members.contains(&id) {
            return Err(Error::NotFound(format!("controller {id} is not a member")).into());
        }
        let ids: BTreeSet<u64> = [id].into();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Error::FailedPrecondition(
                    "cannot remove the last controller member".into(),
                )
                .into());
            }
            change_membership(&self.core, ChangeMembers::RemoveVoters(ids)).await?;
        } else {
            change_membership(&self.core, ChangeMembers::RemoveNodes(ids)).await?;
        }
        tracing::info!(id, "controller member removed");
        Ok(Response::new(pb::RemoveControllerReply {
            controllers: self.controllers(),
        }))
    }

    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotReply>, Status> {
        let before = self
            .core
            .raft
            .metrics()
            .borrow()
            .snapshot
            .map(|l| l.index)
            .unwrap_or(0);
        self.core
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut rx = self.core.raft.metrics();
        let wait = async {
            loop {
                let idx = rx.borrow().snapshot.map(|l| l.index).unwrap_or(0);
                let applied = rx.borrow().last_applied.map(|l| l.index).unwrap_or(0);
                if idx > before || idx >= applied {
                    return idx;
                }
                if rx.changed().await.is_err() {
                    return idx;
                }
            }
        };
        let idx = tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .map_err(|_| {
                Error::Unavailable("snapshot did not finish within 30 s; check the logs".into())
            })?;
        Ok(Response::new(pb::SnapshotReply {
            snapshot_index: idx,
        }))
    }

    async fn delete_app(
        &self,
        req: Request<pb::DeleteAppRequest>,
    ) -> Result<Response<pb::DeleteAppReply>, Status> {
        let name = req.into_inner().name;
        validate::required("app name", &name, "pass the name from rebeam.toml")?;
        validate::name("app name", &name)?;
        match self.core.propose(Command::DeleteApp { name }).await? {
            Outcome::Done => Ok(Response::new(pb::DeleteAppReply {})),
            other => Err(Error::internal(format!("unexpected delete outcome {other:?}")).into()),
        }
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenReply>, Status> {
        let r = req.into_inner();
        let role: Role = r.role.parse().map_err(Error::InvalidArgument)?;
        if r.note.len() > MAX_TOKEN_NOTE || r.note.chars().any(char::is_control) {
            return Err(Error::invalid(format!(
                "a token note is at most {MAX_TOKEN_NOTE} bytes without control characters"
            ))
            .into());
        }
        let ttl_ms = r
            .ttl_s
            .checked_mul(1000)
            .ok_or_else(|| Error::invalid("ttl is too large; give seconds, or 0 for no expiry"))?;
        self.core.ensure_leader()?;
        let now = crate::types::now_ms();
        let made = auth::new_token(role, now, ttl_ms, r.note);
        let info = convert::client_token(&made.record, now);
        match self
            .core
            .propose(Command::IssueToken {
                record: made.record,
            })
            .await?
        {
            Outcome::Done => {
                tracing::info!(id = %info.id, role = %role, "client token issued");
                Ok(Response::new(pb::CreateTokenReply {
                    token: made.text,
                    info: Some(info),
                }))
            }
            other => Err(Error::internal(format!("unexpected token outcome {other:?}")).into()),
        }
    }

    async fn list_tokens(
        &self,
        _req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensReply>, Status> {
        let now = crate::types::now_ms();
        let a = self.core.shared.applied.read();
        let tokens = a
            .state
            .tokens
            .values()
            .map(|t| convert::client_token(t, now))
            .collect();
        Ok(Response::new(pb::ListTokensReply { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenReply>, Status> {
        let id = req.into_inner().id;
        validate::required("token id", &id, "`rebeam token list` shows the ids")?;
        validate::name("token id", &id)?;
        match self
            .core
            .propose(Command::RevokeToken { id: id.clone() })
            .await?
        {
            Outcome::Done => {
                tracing::info!(id = %id, "client token revoked");
                Ok(Response::new(pb::RevokeTokenReply {}))
            }
            other => Err(Error::internal(format!("unexpected revoke outcome {other:?}")).into()),
        }
    }
}
