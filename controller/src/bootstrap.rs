//! Forms or joins the controller group with no manual step, from stable DNS names (compose
//! service names, a StatefulSet's `$(POD_NAME).<headless service>`).
//!
//! The rules, run once at start by a member whose log is empty (a member restarted with its
//! data is already in the group and does nothing here):
//! - if a seed member sees a leader, the group exists: ask it to admit this member (the
//!   leader adds it as a learner and promotes it once it has caught up). If the group still
//!   lists this member's id, its data was lost: it is removed first and re-added as a new
//!   learner, so a member that forgot its votes never votes before it has caught up;
//! - otherwise only member 1 may initialise, as a group of itself, and only once it has
//!   heard from `expect - 1` other seed members that all have empty logs too: a member 1
//!   that lost its data while the others are merely unreachable waits instead of starting a
//!   second group. The others then join as above.
//!
//! Nothing here ever removes a member because its container stops: a restart is not a
//! departure.

use std::collections::BTreeMap;
use std::time::Duration;

use rebeam_proto::v1::cluster_service_client::ClusterServiceClient;
use rebeam_proto::v1::{
    AddControllerRequest, ClusterStateRequest, RemoveControllerRequest, StatusReply, StatusRequest,
};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::BearerInjector;
use crate::error::{Error, Result};
use crate::types::{MemberNode, Raft};

/// How a member finds the group: seed API addresses and the initial group size.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    /// This member's id.
    pub id: u64,
    /// This member's advertised addresses, as the others will dial them.
    pub me: MemberNode,
    /// `host:port` API addresses of members to ask; a host may resolve to several members
    /// (a headless Service).
    pub seeds: Vec<String>,
    /// How many members the group starts with; member 1 initialises once it heard from all.
    pub expect: usize,
    /// The cluster secret, which members present to each other (not sent with TLS).
    pub secret: String,
    /// Dials the seeds: with TLS, members prove themselves by certificate.
    pub dialer: rebeam_tls::Dialer,
}

/// The pause between two rounds of asking the seeds.
const ROUND: Duration = Duration::from_millis(500);
/// How long one seed may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Derives the member id from a hostname ending in `-ORDINAL` (a StatefulSet pod name or a
/// compose hostname): ordinal 0 is member 1.
pub fn id_from_hostname(hostname: &str) -> Result<u64> {
    let ordinal = hostname
        .trim()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .ok_or_else(|| {
            Error::invalid(format!(
                "hostname `{}` does not end in -ORDINAL (e.g. rebeam-controller-0); pass --id instead",
                hostname.trim()
            ))
        })?;
    ordinal
        .checked_add(1)
        .ok_or_else(|| Error::invalid(format!("hostname ordinal {ordinal} is too large")))
}

/// This machine's hostname (the pod name on Kubernetes).
pub fn hostname() -> Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.trim().is_empty() {
            return Ok(h.trim().to_string());
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|e| Error::invalid(format!("cannot read the hostname: {e}; pass --id instead")))
}

/// Checks a bootstrap configuration before anything starts.
pub fn validate(cfg: &BootstrapConfig) -> Result<()> {
    if cfg.expect == 0 {
        return Err(Error::invalid("--bootstrap-expect must be at least 1"));
    }
    if cfg.expect > 1 && cfg.seeds.is_empty() {
        return Err(Error::invalid(
            "--bootstrap-expect above 1 needs --seeds listing the other members' API addresses",
        ));
    }
    for s in &cfg.seeds {
        if s.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Error::invalid(format!(
                "seed `{s}` must be HOST:PORT, e.g. rebeam-controller-0.rebeam-controller:7100"
            )));
        }
    }
    Ok(())
}

/// Runs the bootstrap rules until this member is in a group (or `stop` fires).
pub async fn run(raft: Raft, cfg: BootstrapConfig, mut stop: watch::Receiver<bool>) {
    loop {
        let initialized = match raft.is_initialized().await {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "cannot read raft state; bootstrap stops");
                return;
            }
        };
        let step = if !initialized {
            round(&raft, &cfg).await
        } else {
            match standing(&raft, cfg.id) {
                Standing::Voter => return,
                // Admitted as a learner but not promoted yet (the leader changed or the
                // admission call broke midway): ask again, which promotes it once caught up.
                Standing::Learner(Some(leader)) => {
                    async {
                        let mut c = client(&cfg, &leader, &leader)?;
                        add(&mut c, &cfg).await.map(|()| false)
                    }
                    .await
                }
                // No leader known from its own log: a member a scale-down removed, started
                // again with its data by a later scale-up. The seeds know the leader.
                Standing::Learner(None) => rejoin(&cfg).await,
            }
        };
        if let Err(e) = step {
            tracing::info!(error = %e, "bootstrap: not a voter yet; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Where this member stands in the membership its own log holds.
enum Standing {
    /// A voter: nothing left to do.
    Voter,
    /// Not (yet) a voter; the leader's API address when one is known.
    Learner(Option<String>),
}

fn standing(raft: &Raft, id: u64) -> Standing {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    if membership.voter_ids().any(|v| v == id) {
        return Standing::Voter;
    }
    let leader = m
        .current_leader
        .and_then(|l| membership.get_node(&l))
        .map(|n| n.api_addr.clone());
    Standing::Learner(leader)
}

/// One round: ask every seed, then join, initialise, or wait. True once in a group.
async fn round(raft: &Raft, cfg: &BootstrapConfig) -> Result<bool> {
    let answers = ask_seeds(cfg).await;
    let others: Vec<&(String, StatusReply)> =
        answers.iter().filter(|(_, s)| s.id != cfg.id).collect();
    if let Some((addr, s)) = others.iter().find(|(_, s)| s.leader_id != 0) {
        let leader = if s.leader_api_address.is_empty() {
            addr.clone()
        } else {
            s.leader_api_address.clone()
        };
        join(cfg, &leader).await?;
        return Ok(true);
    }
    if cfg.id != 1 {
        tracing::info!(
            answered = others.len(),
            "bootstrap: waiting for member 1 to form the group"
        );
        return Ok(false);
    }
    let empty = others
        .iter()
        .filter(|(_, s)| s.current_term == 0 && s.last_log_index == 0)
        .count();
    if empty + 1 < cfg.expect {
        tracing::info!(
            empty,
            expect = cfg.expect,
            "bootstrap: waiting to hear from every initial member before forming the group"
        );
        return Ok(false);
    }
    if others.len() > empty {
        // Someone has a log but sees no leader: an existing group between elections, or
        // one that lost its quorum. Forming a second group would split it; wait.
        tracing::info!("bootstrap: a member has state but no leader; waiting");
        return Ok(false);
    }
    let members: BTreeMap<u64, MemberNode> = [(cfg.id, cfg.me.clone())].into();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!("bootstrap: formed the controller group"),
        Err(e) => tracing::info!(error = %e, "bootstrap: initialize skipped"),
    }
    Ok(true)
}

/// Asks the leader some seed sees to admit this member again (as a learner, promoted once
/// caught up); false while none sees a leader.
async fn rejoin(cfg: &BootstrapConfig) -> Result<bool> {
    let answers = ask_seeds(cfg).await;
    let Some((addr, s)) = answers
        .iter()
        .find(|(_, s)| s.id != cfg.id && s.leader_id != 0)
    else {
        return Ok(false);
    };
    let leader = if s.leader_api_address.is_empty() {
        addr.clone()
    } else {
        s.leader_api_address.clone()
    };
    let mut c = client(cfg, &leader, &leader)?;
    add(&mut c, cfg).await.map(|()| false)
}

/// Resolves every seed and asks each member behind it for its status.
async fn ask_seeds(cfg: &BootstrapConfig) -> Vec<(String, StatusReply)> {
    // Each member at its own address; with TLS its certificate must cover the seed's name.
    let mut targets: Vec<(String, &str)> = Vec::new();
    for seed in &cfg.seeds {
        match tokio::net::lookup_host(seed.as_str()).await {
            Ok(addrs) => targets.extend(addrs.map(|a| (a.to_string(), seed.as_str()))),
            Err(e) => tracing::debug!(seed, error = %e, "seed does not resolve yet"),
        }
    }
    targets.sort();
    targets.dedup_by(|a, b| a.0 == b.0);
    let mut out = Vec::new();
    for (t, seed) in targets {
        let asked = async {
            let mut c = client(cfg, &t, seed)?;
            c.status(StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| Error::Unavailable(s.message().to_string()))
        };
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(s)) => out.push((t, s)),
            Ok(Err(e)) => tracing::debug!(seed = %t, error = %e, "seed did not answer"),
            Err(_) => tracing::debug!(seed = %t, "seed timed out"),
        }
    }
    out
}

/// A client of the member at `addr`, whose certificate (with TLS) must be valid for `name`.
fn client(cfg: &BootstrapConfig, addr: &str, name: &str) -> Result<Client> {
    let channel = cfg
        .dialer
        .channel_as(addr, name, |e| e.connect_timeout(ASK_TIMEOUT))
        .map_err(|e| Error::invalid(format!("seed address `{addr}`: {e}")))?;
    Ok(ClusterServiceClient::with_interceptor(
        channel,
        BearerInjector::for_member(&cfg.secret, &cfg.dialer),
    ))
}

/// Asks the leader at `leader` to admit this member; first removes a stale entry of the same
/// id (this member's lost data) so it comes back as a learner.
async fn join(cfg: &BootstrapConfig, leader: &str) -> Result<()> {
    let mut c = client(cfg, leader, leader)?;
    let state = c
        .cluster_state(ClusterStateRequest {})
        .await
        .map_err(|s| Error::Unavailable(s.message().to_string()))?
        .into_inner();
    if state.controllers.iter().any(|m| m.id == cfg.id) {
        tracing::warn!(
            id = cfg.id,
            "bootstrap: the group lists this member but its data is empty; re-adding it as a learner"
        );
        if let Err(s) = c
            .remove_controller(RemoveControllerRequest { id: cfg.id })
            .await
        {
            // NotFound: it was only a learner; re-adding it below is enough.
            if s.code() != tonic::Code::NotFound {
                return Err(Error::Unavailable(format!(
                    "removing the stale entry: {}",
                    s.message()
                )));
            }
        }
    }
    add(&mut c, cfg).await
}

type Client = ClusterServiceClient<InterceptedService<Channel, BearerInjector>>;

/// Asks the leader behind `c` to add this member (as a learner, promoted once caught up).
async fn add(c: &mut Client, cfg: &BootstrapConfig) -> Result<()> {
    c.add_controller(AddControllerRequest {
        id: cfg.id,
        raft_address: cfg.me.raft_addr.clone(),
        api_address: cfg.me.api_addr.clone(),
    })
    .await
    .map_err(|s| Error::Unavailable(format!("admission refused: {}", s.message())))?;
    tracing::info!(id = cfg.id, "bootstrap: joined the controller group");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_ordinal() {
        assert_eq!(id_from_hostname("rebeam-controller-0").ok(), Some(1));
        assert_eq!(id_from_hostname("controller-2\n").ok(), Some(3));
        assert!(id_from_hostname("controller").is_err());
        assert!(id_from_hostname("controller-x").is_err());
        assert!(id_from_hostname("c-18446744073709551615").is_err());
    }

    #[test]
    fn seeds_need_ports() {
        let cfg = BootstrapConfig {
            id: 1,
            me: MemberNode {
                raft_addr: "a:1".into(),
                api_addr: "a:2".into(),
                lease_addr: String::new(),
            },
            seeds: vec!["c0".into()],
            expect: 3,
            secret: "s".into(),
            dialer: rebeam_tls::Dialer::new(None),
        };
        assert!(validate(&cfg).is_err());
        let ok = BootstrapConfig {
            seeds: vec!["c0:7100".into()],
            ..cfg.clone()
        };
        assert!(validate(&ok).is_ok());
        let none = BootstrapConfig {
            seeds: vec![],
            ..cfg
        };
        assert!(validate(&none).is_err());
    }
}
