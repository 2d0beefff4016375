//! Following the controller group's leader: the one retry policy of nodes (and of the
//! scale harness's simulated nodes) for controller requests, the Python client's in spirit
//! (a deadline, the leader hint followed, dead members skipped, backoff with jitter between
//! rounds). Independent of gRPC channels, so it is tested against fake members.

use crate::{LEADER_METADATA_KEY, LEASE_METADATA_KEY};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

/// The first pause after every member was tried without finding a leader.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between rounds: an election ends within a few hundred milliseconds,
/// and a heartbeat must not sleep through much of its fence.
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// A member that did not answer within an attempt is tried after the others for this long.
const HUNG_FOR: Duration = Duration::from_secs(2);

/// The members of a controller group and which one leads, as far as this node knows.
pub struct Leaders {
    addresses: Mutex<Vec<String>>,
    leader: Mutex<usize>,
    /// Members whose last attempt timed out, and when.
    hung: Mutex<HashMap<String, Instant>>,
    /// The redirect's metadata key naming where to go, tried before `LEADER_METADATA_KEY`.
    hint_key: Option<&'static str>,
}

impl Leaders {
    /// A group reached at `addresses`, the first one tried first.
    pub fn new(addresses: Vec<String>) -> Leaders {
        Leaders {
            addresses: Mutex::new(addresses),
            leader: Mutex::new(0),
            hung: Mutex::new(HashMap::new()),
            hint_key: None,
        }
    }

    /// Where lease renewals go: the leader's lease address (`LEASE_METADATA_KEY` on a
    /// redirect, or the one `JoinReply` gave), else its API address (a member that
    /// advertises no lease address, of an older version); starts from `addresses`.
    pub fn for_renewals(addresses: Vec<String>) -> Leaders {
        Leaders {
            hint_key: Some(LEASE_METADATA_KEY),
            ..Leaders::new(addresses)
        }
    }

    /// The member requests go to now.
    pub fn current(&self) -> String {
        let addresses = self.addresses.lock();
        let i = *self.leader.lock() % addresses.len().max(1);
        addresses.get(i).cloned().unwrap_or_default()
    }

    /// Moves off `address` (a stream served from it just broke), so the next request tries
    /// another member first: a frozen member would otherwise take a whole attempt again.
    pub fn avoid(&self, address: &str) {
        let addresses = self.addresses.lock();
        let mut leader = self.leader.lock();
        let i = *leader % addresses.len().max(1);
        if addresses.get(i).is_some_and(|a| a == address) {
            *leader = i + 1;
        }
    }

    /// Runs `call(address)` against the leader until `deadline`, each attempt bounded by
    /// `attempt` so a hung member (frozen, or cut off with its connections open) costs one
    /// attempt, not the whole budget; returns the answer and the member that gave it.
    ///
    /// A refusal naming the leader is followed at once; an unreachable member is skipped
    /// for the rest of the round (a redirect to it is not followed either: the leader's
    /// advertised address may be unreachable from here while another member's is not);
    /// once every member failed, the next round starts after a pause that doubles (with
    /// jitter) each round. Any other error is the answer.
    pub async fn follow<T, F, Fut>(
        &self,
        deadline: Instant,
        attempt: Duration,
        mut call: F,
    ) -> Result<(T, String), Status>
    where
        F: FnMut(&str) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut last = Status::unavailable("no controller answered in time");
        let mut failed: HashSet<String> = HashSet::new();
        let mut pause = Backoff::new();
        // The current member was just named by a redirect: try it even if it hung lately.
        let mut named = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(last);
            }
            let Some((i, address)) = self.pick(&failed, std::mem::take(&mut named)) else {
                // Every member tried and none leads (an election is on): pause rather than
                // spin, then go round again.
                failed.clear();
                tokio::time::sleep(pause.next().min(deadline - now)).await;
                continue;
            };
            let bound = attempt.min(deadline - now);
            let status = match tokio::time::timeout(bound, call(&address)).await {
                Ok(Ok(answer)) => {
                    self.hung.lock().remove(&address);
                    return Ok((answer, address));
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    self.hung.lock().insert(address.clone(), Instant::now());
                    Status::deadline_exceeded(format!(
                        "controller {address} did not answer within {bound:?}"
                    ))
                }
            };
            let hint = leader_hint(&status, self.hint_key)
                .filter(|s| *s != address && !failed.contains(s));
            if let Some(leader) = hint {
                // The member that redirected is not the leader: it is done for this round,
                // so members naming each other cannot keep the round from ending.
                failed.insert(address);
                self.lead_to(leader);
                named = true;
            } else if retryable(status.code()) {
                *self.leader.lock() = i + 1;
                failed.insert(address);
            } else {
                return Err(status);
            }
            last = status;
        }
    }

    /// Makes `leader` the member tried next, adding it when it was not known.
    pub fn lead_to(&self, leader: String) {
        let mut addresses = self.addresses.lock();
        let j = match addresses.iter().position(|a| *a == leader) {
            Some(j) => j,
            None => {
                addresses.push(leader);
                addresses.len() - 1
            }
        };
        *self.leader.lock() = j;
    }

    /// The member to try next: the current one unless it failed in this round, else the
    /// next that did not, preferring members that have not hung within `HUNG_FOR` (unless
    /// the current one was just `named` as the leader: a leader slow once after an election
    /// would otherwise be passed over while the others keep naming it, until the deadline);
    /// None when every member failed in this round.
    fn pick(&self, failed: &HashSet<String>, named: bool) -> Option<(usize, String)> {
        let addresses = self.addresses.lock().clone();
        if addresses.is_empty() {
            return None;
        }
        let n = addresses.len();
        let start = *self.leader.lock() % n;
        if named && !failed.contains(&addresses[start]) {
            return Some((start, addresses[start].clone()));
        }
        let hung = self.hung.lock();
        let recently_hung = |a: &String| hung.get(a).is_some_and(|t| t.elapsed() < HUNG_FOR);
        let order = (0..n).map(|k| (start + k) % n);
        let chosen = order
            .clone()
            .find(|&j| !failed.contains(&addresses[j]) && !recently_hung(&addresses[j]))
            .or_else(|| order.clone().find(|&j| !failed.contains(&addresses[j])))?;
        *self.leader.lock() = chosen;
        Some((chosen, addresses[chosen].clone()))
    }
}

/// The leader's address a refusing member named, if any: under `key` when given and
/// there, else its API address.
fn leader_hint(status: &Status, key: Option<&str>) -> Option<String> {
    let named = |key: &str| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    key.and_then(named).or_else(|| named(LEADER_METADATA_KEY))
}

/// Codes meaning "this member cannot serve it now; another may".
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Pauses between rounds: doubling from `FIRST_PAUSE` up to `MAX_PAUSE`, each within ±20%
/// so nodes that lost the leader together do not retry in step.
struct Backoff {
    base: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { base: FIRST_PAUSE }
    }

    fn next(&mut self) -> Duration {
        let jittered = self.base.mul_f64(0.8 + 0.4 * rand::random::<f64>());
        self.base = (self.base * 2).min(MAX_PAUSE);
        jittered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tonic::metadata::MetadataValue;

    fn redirect(to: &str) -> Status {
        let mut status = Status::unavailable("not the leader");
        if let Ok(v) = MetadataValue::try_from(to) {
            status.metadata_mut().insert(LEADER_METADATA_KEY, v);
        }
        status
    }

    fn leaders(addresses: &[&str]) -> Leaders {
        Leaders::new(addresses.iter().map(|a| a.to_string()).collect())
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn follows_the_leader_hint_and_remembers_it() {
        let group = leaders(&["a", "b", "c"]);
        let tried = Mutex::new(Vec::new());
        let answer = group
            .follow(soon(1000), Duration::from_millis(100), |address| {
                tried.lock().push(address.to_string());
                let reply = if address == "c" {
                    Ok(7)
                } else {
                    Err(redirect("c"))
                };
                async move { reply }
            })
            .await;
        assert_eq!(answer.ok(), Some((7, "c".to_string())));
        assert_eq!(*tried.lock(), ["a", "c"]);
        assert_eq!(group.current(), "c");
    }

    #[tokio::test]
    async fn renewals_follow_the_lease_address_else_the_api_address() {
        let group = Leaders::for_renewals(vec!["a".into(), "b".into()]);
        let tried = Mutex::new(Vec::new());
        let answer = group
            .follow(soon(1000), Duration::from_millis(100), |address| {
                tried.lock().push(address.to_string());
                let reply = match address {
                    // A member naming both: the lease address wins.
                    "a" => {
                        let mut s = redirect("b");
                        s.metadata_mut()
                            .insert(LEASE_METADATA_KEY, MetadataValue::from_static("b-lease"));
                        Err(s)
                    }
                    // One naming no lease address (an older leader): its API address.
                    "b-lease" => Err(redirect("b")),
                    _ => Ok(()),
                };
                async move { reply }
            })
            .await;
        assert_eq!(answer.ok(), Some(((), "b".to_string())));
        assert_eq!(*tried.lock(), ["a", "b-lease", "b"]);
    }

    #[tokio::test]
    async fn a_hint_to_an_unknown_member_adds_it() {
        let group = leaders(&["a"]);
        let answer = group
            .follow(soon(1000), Duration::from_millis(100), |address| {
                let reply = if address == "z" {
                    Ok(())
                } else {
                    Err(redirect("z"))
                };
                async move { reply }
            })
            .await;
        assert_eq!(answer.ok(), Some(((), "z".to_string())));
    }

    #[tokio::test]
    async fn skips_unreachable_members() {
        let group = leaders(&["a", "b", "c"]);
        let tried = Mutex::new(Vec::new());
        let answer = group
            .follow(soon(1000), Duration::from_millis(100), |address| {
                tried.lock().push(address.to_string());
                let reply = match address {
                    "c" => Ok(1),
                    _ => Err(Status::unavailable("connection refused")),
                };
                async move { reply }
            })
            .await;
        assert_eq!(answer.ok(), Some((1, "c".to_string())));
        assert_eq!(*tried.lock(), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_refusal_is_the_answer_at_once() {
        let group = leaders(&["a", "b"]);
        let calls = AtomicUsize::new(0);
        let answer: Result<((), String), Status> = group
            .follow(soon(1000), Duration::from_millis(100), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Status::not_found("no such name")) }
            })
            .await;
        assert_eq!(answer.err().map(|s| s.code()), Some(Code::NotFound));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_redirect_to_a_failed_member_is_not_followed() {
        // b is unreachable but a keeps naming it: the round goes on to c.
        let group = leaders(&["b", "a", "c"]);
        let tried = Mutex::new(Vec::new());
        let answer = group
            .follow(soon(1000), Duration::from_millis(100), |address| {
                tried.lock().push(address.to_string());
                let reply = match address {
                    "b" => Err(Status::unavailable("connection refused")),
                    "a" => Err(redirect("b")),
                    _ => Ok(()),
                };
                async move { reply }
            })
            .await;
        assert_eq!(answer.ok(), Some(((), "c".to_string())));
        assert_eq!(*tried.lock(), ["b", "a", "c"]);
    }

    #[tokio::test]
    async fn a_hung_member_costs_one_attempt_and_goes_last_after() {
        let group = leaders(&["a", "b"]);
        let hang_on_a = |address: &str| {
            let hang = address == "a";
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        };
        let started = Instant::now();
        let first = group
            .follow(soon(5000), Duration::from_millis(50), hang_on_a)
            .await;
        assert_eq!(first.ok(), Some(((), "b".to_string())));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Even with `a` current again, the next request tries `b` first.
        group.lead_to("a".to_string());
        let tried = Mutex::new(Vec::new());
        let second = group
            .follow(soon(5000), Duration::from_millis(50), |address| {
                tried.lock().push(address.to_string());
                async { Ok(()) }
            })
            .await;
        assert_eq!(second.ok(), Some(((), "b".to_string())));
        assert_eq!(*tried.lock(), ["b"]);
    }

    #[tokio::test]
    async fn a_leader_slow_once_is_tried_again_when_the_others_name_it() {
        // A new leader, swamped right after its election, misses one attempt; the others
        // name it. Passing it over as hung, the node went round the two followers until its
        // renewal deadline and fenced.
        let group = leaders(&["a", "b", "c"]);
        let tried = Mutex::new(Vec::new());
        let answer = group
            .follow(soon(1000), Duration::from_millis(50), |address| {
                let first = !tried.lock().iter().any(|t| t == address);
                tried.lock().push(address.to_string());
                let (hang, reply) = match address {
                    "a" => (first, Ok(())),
                    _ => (false, Err(redirect("a"))),
                };
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    reply
                }
            })
            .await;
        assert_eq!(answer.ok(), Some(((), "a".to_string())));
        // The round that saw it miss ends; in the next one it is tried once named.
        assert_eq!(*tried.lock(), ["a", "b", "c", "b", "a"]);
    }

    #[tokio::test]
    async fn members_naming_each_other_end_the_round() {
        // Two members each name the other (stale views during an election): the round ends
        // and the node pauses instead of bouncing between them without a break.
        let group = leaders(&["a", "b"]);
        let calls = AtomicUsize::new(0);
        let answer: Result<((), String), Status> = group
            .follow(soon(300), Duration::from_millis(50), |address| {
                calls.fetch_add(1, Ordering::SeqCst);
                let other = if address == "a" { "b" } else { "a" };
                let status = redirect(other);
                async move { Err(status) }
            })
            .await;
        assert_eq!(answer.err().map(|s| s.code()), Some(Code::Unavailable));
        let calls = calls.load(Ordering::SeqCst);
        assert!((2..=12).contains(&calls), "{calls} calls");
    }

    #[tokio::test]
    async fn without_a_leader_it_backs_off_until_the_deadline() {
        let group = leaders(&["a", "b"]);
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let answer: Result<((), String), Status> = group
            .follow(soon(400), Duration::from_millis(100), |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Status::unavailable("no leader yet")) }
            })
            .await;
        assert_eq!(answer.err().map(|s| s.code()), Some(Code::Unavailable));
        assert!(started.elapsed() >= Duration::from_millis(400));
        // Pauses of about 20, 40, 80, 160, 200 ms fit at most 6 rounds of 2 in 400 ms; a
        // fixed 20 ms pause would allow about 40 calls.
        let calls = calls.load(Ordering::SeqCst);
        assert!((2..=12).contains(&calls), "{calls} calls");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap() {
        let mut b = Backoff::new();
        let pauses: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        let bases = [20, 40, 80, 160, 200, 200, 200, 200];
        for (pause, base) in pauses.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *pause >= base.mul_f64(0.8) && *pause <= base.mul_f64(1.2),
                "{pause:?} for {base:?}"
            );
        }
    }
}
