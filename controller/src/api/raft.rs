//! Server side of the `RaftPeer` service: hands requests to openraft, and starts elections
//! when the leader fell silent (see [`elect`]), after a pre-vote (see [`PreVote`]).

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rebeam_proto::v1::raft_peer_server::RaftPeer;
use rebeam_proto::v1::RaftPayload;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::{LogId, Vote};

use crate::core::Core;
use crate::network::Network;
use crate::types::{Raft, TypeConfig};

/// Highest term accepted from a peer. Terms grow by one per election, so a real group never
/// nears this; openraft computes `term + 1` and would overflow (and panic) on `u64::MAX`.
pub const MAX_WIRE_TERM: u64 = 1 << 48;
/// Highest log index accepted from a peer (far beyond any real log, far below overflow).
pub const MAX_WIRE_INDEX: u64 = 1 << 56;
/// Highest snapshot chunk offset accepted (a snapshot larger than this is refused).
pub const MAX_SNAPSHOT_OFFSET: u64 = 1 << 36;
/// Longest snapshot id accepted.
pub const MAX_SNAPSHOT_ID: usize = 256;

/// Serves Raft RPCs from the other members.
pub struct RaftService {
    core: Arc<Core>,
    /// openraft's leader lease: a pre-vote is refused this long after hearing from a leader.
    lease: Duration,
}

impl RaftService {
    /// Serves `core`'s Raft; accepted leader traffic and granted votes go to its contact;
    /// pre-votes are refused within `lease` of hearing from a leader.
    pub fn new(core: Arc<Core>, lease: Duration) -> Self {
        RaftService { core, lease }
    }
}

/// When this member last heard from a leader it accepts, granted a vote or campaigned: what
/// Raft's election timer counts from. Also when it last heard from a leader alone (what a
/// pre-vote asks about), and whether a voter refused its last campaign for a longer log.
#[derive(Debug)]
pub struct Contact {
    at: Mutex<Instant>,
    /// None until a leader was heard from since this process started (as openraft, a member
    /// that never heard from one does not hold an election back).
    leader_at: Mutex<Option<Instant>>,
    behind: AtomicBool,
    /// The leader's process was found gone (its Raft port refuses connections) and no
    /// leader was heard from since.
    leader_gone: AtomicBool,
}

impl Default for Contact {
    fn default() -> Self {
        Contact {
            at: Mutex::new(Instant::now()),
            leader_at: Mutex::new(None),
            behind: AtomicBool::new(false),
            leader_gone: AtomicBool::new(false),
        }
    }
}

impl Contact {
    /// Voted, or campaigned, now: the election timer starts again.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        let mut at = self.at.lock();
        *at = (*at).max(now);
    }

    /// Heard from a leader this member accepts now.
    pub fn heard_leader(&self) {
        // One instant for both: a leader heard from counts as after an election timer
        // armed from this very contact otherwise, and the member would never campaign.
        let now = Instant::now();
        self.touch_at(now);
        self.leader_gone.store(false, AtomicOrdering::Relaxed);
        let mut at = self.leader_at.lock();
        *at = Some(at.map_or(now, |a| a.max(now)));
    }

    /// Whether the leader's process was found gone and no leader spoke since: an election
    /// is under way.
    pub fn leader_gone(&self) -> bool {
        self.leader_gone.load(AtomicOrdering::Relaxed)
    }

    /// The leader's process was found gone (until a leader is heard from again).
    fn found_leader_gone(&self) {
        self.leader_gone.store(true, AtomicOrdering::Relaxed);
    }

    /// Whether a leader was heard from after `t` (the election timer's arming, which
    /// counts from any contact, a leader's included).
    pub fn leader_after(&self, t: Instant) -> bool {
        self.leader_at.lock().is_some_and(|a| a > t)
    }

    /// Whether a leader was heard from within `lease`.
    pub fn leader_within(&self, lease: Duration) -> bool {
        self.leader_at.lock().is_some_and(|a| a.elapsed() < lease)
    }

    /// The last contact.
    pub fn at(&self) -> Instant {
        *self.at.lock()
    }

    /// A voter holds a longer log than this member's last campaign offered: it cannot win,
    /// so it leaves the next round to the others.
    pub fn behind(&self) {
        self.behind.store(true, AtomicOrdering::Relaxed);
    }

    fn take_behind(&self) -> bool {
        self.behind.swap(false, AtomicOrdering::Relaxed)
    }
}

/// What the wait before a campaign counts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Silence {
    /// A leader was known: its voters refuse votes until its lease ended.
    Leader,
    /// This member campaigned, or voted for a candidate, and no leader followed.
    Candidate,
    /// This member's last campaign met a longer log.
    Behind,
}

/// When to campaign: `lease` (how long voters refuse votes after hearing from a leader,
/// openraft's leader lease) plus a random wait in `spread`, counted from the last contact.
#[derive(Clone, Copy, Debug)]
pub struct ElectionTimes {
    /// openraft's leader lease (its `election_timeout_max`).
    pub lease: Duration,
    /// The random part, drawn anew for every wait.
    pub spread: (Duration, Duration),
    /// After this much silence the leader's Raft port is tried: when it refuses connections
    /// the leader's process is gone and nothing is gained by waiting out the random part.
    pub probe_after: Duration,
}

impl ElectionTimes {
    /// When to campaign after a leader whose process is gone last spoke at `armed`: as soon
    /// as the voters' lease lapses, the followers one after the other by id (`rank`), so the
    /// first usually wins alone instead of splitting the vote with the second.
    pub fn after_gone(&self, armed: Instant, rank: u32) -> Instant {
        let step = self.spread.0 / 3;
        armed + self.lease + step / 2 + step * rank
    }

    /// How long after the last contact to campaign: a candidate retries after the random
    /// part alone; one whose log was behind waits two leases more, as openraft does.
    pub fn wait(&self, silence: Silence, rng: &mut impl Rng) -> Duration {
        let (lo, hi) = self.spread;
        let r = if hi > lo {
            rng.random_range(lo..hi)
        } else {
            lo
        };
        r + match silence {
            Silence::Leader => self.lease,
            Silence::Candidate => Duration::ZERO,
            Silence::Behind => self.lease * 2,
        }
    }
}

/// Starts an election whenever this voter heard from no leader for [`ElectionTimes::wait`].
///
/// It replaces openraft 0.9's own election timer, which draws its random timeout once per
/// process and checks it only at ticks 1.5 Raft heartbeats apart, so a campaign came up to
/// 150 ms after its timeout and every retry of a candidate exactly two ticks after the last.
/// Here each wait is drawn anew and timed to the millisecond.
///
/// Before it raises the term the member asks the other voters ([`pre_vote`]) and campaigns
/// only if a majority would vote for it now: a member that was starved of CPU or paused past
/// its timeout finds the leader alive and leaves the term alone (openraft 0.9 has no pre-vote,
/// and its leader steps down on seeing a higher term in any reply).
///
/// After `probe_after` of silence it tries the leader's Raft port: when that refuses
/// connections the leader's process is gone, and the member campaigns as soon as the lease
/// lapses ([`ElectionTimes::after_gone`]) instead of after the random part too.
pub async fn elect(
    raft: Raft,
    id: u64,
    contact: Arc<Contact>,
    net: Network,
    times: ElectionTimes,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    raft.runtime_config().elect(false);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut metrics = raft.metrics();
    // This member's own campaign is the last contact (the metrics may not show its new vote
    // yet).
    let mut campaigned = false;
    loop {
        let (leads, voter, alone, committed) = {
            let m = metrics.borrow();
            let voters = m.membership_config.membership();
            (
                m.state.is_leader(),
                voters.voter_ids().any(|v| v == id),
                voters.voter_ids().count() == 1,
                m.vote.committed,
            )
        };
        if leads || !voter {
            // Nothing to time: wait for the role to change.
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            contact.touch();
            campaigned = false;
            continue;
        }
        let silence = if campaigned && contact.take_behind() {
            Silence::Behind
        } else if committed && !campaigned {
            Silence::Leader
        } else {
            Silence::Candidate
        };
        // The only voter has no one to wait for (a one-member group restarting), as in
        // openraft.
        let wait = if alone && !campaigned {
            Duration::ZERO
        } else {
            times.wait(silence, &mut rng)
        };
        let armed = contact.at();
        let mut until = armed + wait;
        if silence == Silence::Leader && wait > times.probe_after {
            let leader = silent_leader(&metrics, id);
            tokio::select! {
                _ = tokio::time::sleep_until((armed + times.probe_after).into()) => {}
                _ = stop.changed() => return,
            }
            if contact.at() > armed {
                campaigned = false;
                continue;
            }
            if let Some((addr, rank)) = leader {
                if refuses(&addr, times.probe_after).await && !contact.leader_after(armed) {
                    contact.found_leader_gone();
                    until = until.min(times.after_gone(armed, rank));
                    tracing::info!(
                        leader = %addr,
                        silent_ms = armed.elapsed().as_millis() as u64,
                        "the leader's Raft port refuses connections (its process is gone): campaigning once its lease lapses"
                    );
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = stop.changed() => return,
        }
        if contact.at() > armed {
            // Heard from a leader meanwhile (or voted): wait again from there.
            campaigned = false;
            continue;
        }
        let still = {
            let m = metrics.borrow();
            !m.state.is_leader()
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == id)
        };
        if still {
            contact.take_behind();
            if !pre_vote(&raft, id, &net, &contact, times.lease).await {
                // Retried after a candidate's wait unless a leader is heard from meanwhile.
                contact.touch();
                campaigned = true;
                continue;
            }
            if contact.leader_after(armed) {
                // A leader spoke while the voters were asked. (Not any contact: a pre-vote
                // this member granted meanwhile to a rival asking at the same moment would
                // make both stand down.)
                campaigned = false;
                continue;
            }
            tracing::info!(
                silent_ms = armed.elapsed().as_millis() as u64,
                "no leader heard from: campaigning"
            );
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
        contact.touch();
        campaigned = still;
    }
}

/// The Raft address of the leader this member last followed, and this member's rank among
/// the other voters by id (who campaigns first once that leader is gone).
fn silent_leader(
    metrics: &tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, crate::types::MemberNode>>,
    id: u64,
) -> Option<(String, u32)> {
    let m = metrics.borrow();
    let leader = m.current_leader.filter(|l| *l != id)?;
    let membership = m.membership_config.membership();
    let addr = membership.get_node(&leader)?.raft_addr.clone();
    let rank = membership
        .voter_ids()
        .filter(|v| *v != leader && *v < id)
        .count();
    Some((addr, u32::try_from(rank).unwrap_or(u32::MAX)))
}

/// Whether `addr` refuses a TCP connection (within `within`): nothing listens there, so the
/// process that served it is gone. A host that does not answer (frozen, cut off, its address
/// gone) is not taken for gone: only the usual election timing applies to it.
async fn refuses(addr: &str, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// A member's question before it campaigns: would you vote for me now? (Raft thesis §9.6.)
/// The controller's own message, JSON in a `RaftPayload` like openraft's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVote {
    /// The member asking.
    pub candidate: u64,
    /// The term it would campaign with (its current term + 1); for the logs: a voter in a
    /// higher term still says yes, as the real vote teaches the candidate that term.
    pub term: u64,
    /// Its last log id.
    pub last_log_id: Option<LogId<u64>>,
}

/// The answer to a [`PreVote`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteReply {
    /// Whether this member would vote for the candidate now.
    pub granted: bool,
    /// This member's last log id (a candidate behind it waits longer, as after a real vote).
    pub last_log_id: Option<LogId<u64>>,
}

/// A member's own lease address, sent to the leader (`RaftPeer.Advertise`) so that the
/// membership carries it before that member leads: followers redirect renewals there after a
/// leader change, and without it nodes renewed at the new leader's API address, beside the
/// watch streams every node reopens at that moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advertised {
    /// The member advertising.
    pub id: u64,
    /// Its lease address as it advertises it now.
    pub lease_addr: String,
}

/// The leader's answer to [`Advertised`]: the membership carries the address now (a
/// refusal is an error status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedReply {}

/// With mTLS a member's certificate speaks only for the member it names: one member cannot
/// move another's lease address. Without a certificate (TLS off) the cluster secret, which
/// the guard checked, speaks for every member.
fn speaks_for_member(certified: &[rebeam_tls::Member], id: u64) -> Result<(), Status> {
    if certified.is_empty() || certified.contains(&rebeam_tls::Member::Controller(id)) {
        return Ok(());
    }
    let own: Vec<String> = certified.iter().map(rebeam_tls::Member::uri).collect();
    Err(Status::permission_denied(format!(
        "a certificate naming {} cannot advertise for member {id}; a member advertises only its own lease address",
        own.join(", ")
    )))
}

/// Checks a peer's pre-vote before it is answered.
pub fn check_pre_vote(r: &PreVote) -> Result<(), Status> {
    if r.term > MAX_WIRE_TERM {
        return Err(refuse("term"));
    }
    if r.candidate == 0 {
        return Err(refuse("node id"));
    }
    check_log_id(&r.last_log_id, r.term)
}

/// A voter's answer: yes only when it is not the leader, has heard from no leader within
/// `lease`, and the candidate's log is at least as long as its own.
fn answer_pre_vote(raft: &Raft, contact: &Contact, lease: Duration, req: &PreVote) -> PreVoteReply {
    let leads = raft.metrics().borrow().state.is_leader();
    let mine = raft.data_metrics().borrow().last_log;
    let heard = contact.leader_within(lease);
    let log_ok = req.last_log_id >= mine;
    let granted = !leads && !heard && log_ok;
    if !granted {
        tracing::info!(
            candidate = req.candidate,
            term = req.term,
            leads,
            heard_from_leader = heard,
            log_ok,
            "pre-vote refused"
        );
    }
    PreVoteReply {
        granted,
        last_log_id: mine,
    }
}

/// Asks the other voters whether they would vote for this member now: true when a majority
/// of every voter set (joint while membership changes), this member included, says yes.
/// A one-member group asks no one. Each ask is bounded by `timeout`; an unreachable voter is
/// a no, a member of an older version without pre-vote a yes (it votes by Raft's rules alone,
/// as before).
pub async fn pre_vote(
    raft: &Raft,
    id: u64,
    net: &Network,
    contact: &Contact,
    timeout: Duration,
) -> bool {
    let (configs, peers, term) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let configs: Vec<BTreeSet<u64>> = membership.get_joint_config().clone();
        let peers: Vec<(u64, String)> = membership
            .voter_ids()
            .filter(|v| *v != id)
            .filter_map(|v| membership.get_node(&v).map(|n| (v, n.raft_addr.clone())))
            .collect();
        (configs, peers, m.current_term + 1)
    };
    let last_log_id = raft.data_metrics().borrow().last_log;
    let majority = |yes: &BTreeSet<u64>| {
        configs
            .iter()
            .all(|c| c.iter().filter(|v| yes.contains(v)).count() * 2 > c.len())
    };
    let mut yes = BTreeSet::from([id]);
    if majority(&yes) {
        return true;
    }
    let req = PreVote {
        candidate: id,
        term,
        last_log_id,
    };
    let mut asks: FuturesUnordered<_> = peers
        .iter()
        .map(|(peer, addr)| {
            let req = &req;
            async move { (*peer, net.pre_vote(addr, req, timeout).await) }
        })
        .collect();
    let mut refused = Vec::new();
    while let Some((peer, answer)) = asks.next().await {
        match answer {
            Ok(r) if r.granted => {
                yes.insert(peer);
            }
            Ok(r) => {
                if r.last_log_id > last_log_id {
                    contact.behind();
                }
                refused.push((peer, "refused".to_string()));
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                yes.insert(peer);
            }
            Err(s) => refused.push((peer, s.code().to_string())),
        }
        if majority(&yes) {
            return true;
        }
    }
    tracing::info!(
        term,
        ?refused,
        "pre-vote: no majority would vote now; not campaigning"
    );
    false
}

/// True when the candidate asks for a newer term with a log at least as long as this
/// member's (its index; the term of the last entry is Raft's to compare).
fn may_win(raft: &Raft, req: &VoteRequest<u64>) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    req.vote.leader_id.term > m.current_term && req.last_log_id.map(|l| l.index) >= m.last_log_index
}

/// True when `vote` is at least this member's own: a request carrying it comes from the
/// leader this member follows, or a newer one.
fn current(raft: &Raft, vote: &Vote<u64>) -> bool {
    let mine = raft.metrics().borrow().vote;
    vote.committed
        && matches!(
            vote.partial_cmp(&mine),
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        )
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data).map_err(|e| {
        Status::invalid_argument(format!(
            "malformed raft payload: {e}; peers must run the same version"
        ))
    })
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

fn refuse(what: &str) -> Status {
    Status::invalid_argument(format!("raft {what} is out of range; refused"))
}

fn check_vote(v: &Vote<u64>) -> Result<(), Status> {
    if v.leader_id.term > MAX_WIRE_TERM {
        return Err(refuse("term"));
    }
    if v.leader_id.node_id == 0 {
        return Err(refuse("node id"));
    }
    Ok(())
}

fn check_log_id(l: &Option<LogId<u64>>, term_at_most: u64) -> Result<(), Status> {
    if let Some(l) = l {
        if l.leader_id.term > term_at_most {
            return Err(refuse("log term"));
        }
        if l.index > MAX_WIRE_INDEX {
            return Err(refuse("log index"));
        }
    }
    Ok(())
}

/// Checks a peer's vote request before openraft sees it.
pub fn check_vote_request(r: &VoteRequest<u64>) -> Result<(), Status> {
    check_vote(&r.vote)?;
    check_log_id(&r.last_log_id, r.vote.leader_id.term)
}

/// Checks a peer's entries: bounded terms and indexes, and entries that follow `prev_log_id`
/// one by one.
pub fn check_append_request(r: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
    let term = r.vote.leader_id.term;
    check_vote(&r.vote)?;
    check_log_id(&r.prev_log_id, term)?;
    check_log_id(&r.leader_commit, term)?;
    let mut next = r.prev_log_id.map(|l| l.index + 1);
    for e in &r.entries {
        check_log_id(&Some(e.log_id), term)?;
        if next.is_some_and(|n| n != e.log_id.index) {
            return Err(refuse("entry index sequence"));
        }
        next = Some(e.log_id.index + 1);
    }
    Ok(())
}

/// Checks a peer's snapshot chunk's header.
pub fn check_snapshot_request(r: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Status> {
    let term = r.vote.leader_id.term;
    check_vote(&r.vote)?;
    check_log_id(&r.meta.last_log_id, term)?;
    check_log_id(r.meta.last_membership.log_id(), term)?;
    if r.offset > MAX_SNAPSHOT_OFFSET {
        return Err(refuse("snapshot offset"));
    }
    if r.meta.snapshot_id.len() > MAX_SNAPSHOT_ID {
        return Err(refuse("snapshot id"));
    }
    Ok(())
}

#[tonic::async_trait]
impl RaftPeer for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode(req)?;
        check_append_request(&req)?;
        // Counted on arrival: under load the leader may give up waiting for the answer
        // (and this handler be dropped) although Raft takes the entries.
        if current(&self.core.raft, &req.vote) {
            self.core.contact.heard_leader();
        }
        let r = self.core.raft.append_entries(req).await;
        // A leader whose term this member accepts (also when the logs conflict).
        if matches!(&r, Ok(a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
            self.core.contact.heard_leader();
        }
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: VoteRequest<u64> = decode(req)?;
        check_vote_request(&req)?;
        // A candidate this member would vote for is under way: do not start a rival
        // campaign meanwhile. Counted on arrival: a rival term begun while Raft is still
        // granting this vote would depose the winner (seen under load: a member campaigned
        // 40 ms after another, before its own grant was through, and the winner stepped down).
        if may_win(&self.core.raft, &req) {
            self.core.contact.touch();
        }
        let r = self.core.raft.vote(req).await;
        if matches!(&r, Ok(v) if v.vote_granted) {
            self.core.contact.touch();
        }
        encode(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        check_snapshot_request(&req)?;
        let vote = req.vote;
        if current(&self.core.raft, &vote) {
            self.core.contact.heard_leader();
        }
        let r = self.core.raft.install_snapshot(req).await;
        if matches!(&r, Ok(s) if s.vote == vote) {
            self.core.contact.heard_leader();
        }
        encode(&r)
    }

    async fn advertise(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let certified = rebeam_tls::identity::peer_members(&req);
        let req: Advertised = decode(req)?;
        speaks_for_member(&certified, req.id)?;
        crate::validate::address(&req.lease_addr)?;
        crate::lease::record_lease_address(&self.core, req.id, &req.lease_addr).await?;
        encode(&AdvertisedReply {})
    }

    async fn pre_vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let req: PreVote = decode(req)?;
        check_pre_vote(&req)?;
        let reply = answer_pre_vote(&self.core.raft, &self.core.contact, self.lease, &req);
        if reply.granted {
            // The candidate campaigns next: do not start a rival campaign meanwhile (the
            // survivors of a killed leader fall silent together and their timers fired
            // 6–28 ms apart under load; both passing the pre-vote would split the vote).
            self.core.contact.touch();
        }
        encode(&reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    #[test]
    fn a_member_certificate_advertises_only_for_its_own_member() {
        use rebeam_tls::Member;
        assert!(speaks_for_member(&[], 2).is_ok());
        assert!(speaks_for_member(&[Member::Controller(2)], 2).is_ok());
        let refused = speaks_for_member(&[Member::Controller(3)], 2).err();
        assert_eq!(
            refused.as_ref().map(Status::code),
            Some(tonic::Code::PermissionDenied)
        );
        assert!(refused
            .map(|s| s.message().contains("urn:rebeam:controller:3"))
            .unwrap_or(false));
        assert!(speaks_for_member(&[Member::Node("n".into())], 2).is_err());
    }

    fn vote(term: u64) -> Vote<u64> {
        Vote::new(term, 1)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn a_leader_heard_from_is_not_after_the_timer_it_armed() {
        let c = Contact::default();
        assert!(
            !c.leader_within(Duration::from_secs(1)),
            "no leader heard yet"
        );
        c.heard_leader();
        let armed = c.at();
        assert!(!c.leader_after(armed), "the contact that armed the timer");
        assert!(c.leader_within(Duration::from_secs(1)));
        // A vote granted moves the timer, not the leader's contact.
        std::thread::sleep(Duration::from_millis(2));
        c.touch();
        assert!(c.at() > armed && !c.leader_after(armed));
        c.heard_leader();
        assert!(c.leader_after(armed));
    }

    #[test]
    fn campaigns_wait_for_the_lease_and_draw_anew() {
        let t = ElectionTimes {
            lease: Duration::from_millis(300),
            spread: (Duration::from_millis(150), Duration::from_millis(300)),
            probe_after: Duration::from_millis(150),
        };
        let armed = Instant::now();
        let after = |rank| (t.after_gone(armed, rank) - armed).as_millis() as u64;
        // Once the leader is known gone the first follower campaigns right after the lease,
        // the next one a third of the shortest random wait later (it votes for the first).
        assert_eq!((after(0), after(1), after(2)), (325, 375, 425));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ms = |s| t.wait(s, &mut rng).as_millis() as u64;
        let leader: Vec<u64> = (0..200).map(|_| ms(Silence::Leader)).collect();
        assert!(leader.iter().all(|w| (450..600).contains(w)), "{leader:?}");
        // Drawn anew each time (openraft drew once per process): retries do not keep
        // colliding with another member's.
        assert!(leader.iter().max().unwrap_or(&0) - leader.iter().min().unwrap_or(&0) > 50);
        assert!((0..200).all(|_| (150..300).contains(&ms(Silence::Candidate))));
        assert!((0..200).all(|_| (750..900).contains(&ms(Silence::Behind))));
    }

    #[test]
    fn a_vote_with_an_overflowing_term_is_refused() {
        let ok = VoteRequest::new(vote(7), None);
        assert!(check_vote_request(&ok).is_ok());
        let bad = VoteRequest::new(vote(u64::MAX), None);
        assert_eq!(
            check_vote_request(&bad).expect_err("refused").code(),
            tonic::Code::InvalidArgument
        );
        let bad_log = VoteRequest::new(
            vote(3),
            Some(LogId::new(CommittedLeaderId::new(3, 1), u64::MAX)),
        );
        assert!(check_vote_request(&bad_log).is_err());
    }

    #[test]
    fn entries_must_follow_on_and_stay_within_the_term() {
        let req = |entries, prev: Option<u64>| AppendEntriesRequest::<TypeConfig> {
            vote: vote(5),
            prev_log_id: prev.map(|i| LogId::new(CommittedLeaderId::new(5, 1), i)),
            entries,
            leader_commit: None,
        };
        assert!(check_append_request(&req(vec![entry(5, 4), entry(5, 5)], Some(3))).is_ok());
        assert!(check_append_request(&req(vec![entry(5, 4), entry(5, 9)], Some(3))).is_err());
        assert!(check_append_request(&req(vec![entry(6, 4)], Some(3))).is_err());
        assert!(check_append_request(&req(vec![entry(5, u64::MAX)], None)).is_err());
    }
}
