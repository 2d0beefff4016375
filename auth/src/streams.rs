//! Requests in flight per client token: a cap on how many requests and streams (a log
//! follow, a live view, a call waiting for its reply) one token may hold open at once on a
//! server, so a single client cannot take every connection's worth of server capacity from
//! the others. A slot is taken when a request is admitted and given back when its reply
//! ends, however it ends (answered, failed, cancelled, or the client gone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Requests and streams one client token may have in flight at once by default
/// (`--max-streams-per-token`).
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// How long a refused client is told to wait before trying again, in milliseconds: a slot
/// frees when one of its own requests ends, which the server cannot predict.
const RETRY_AFTER_MS: u64 = 100;

/// Requests refused at the cap in this process, on every server (`/metrics`:
/// `rebeam_streams_refused_total`).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Requests refused at a per-token stream cap in this process so far.
pub fn refused_total() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Counts each client token's requests in flight on one server.
#[derive(Debug)]
pub struct StreamLimiter {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// A refused request: the token already holds `max` requests in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooManyStreams {
    /// The token's id (`static#<n>` for the n-th static token).
    pub token: String,
    /// The cap in force.
    pub max: usize,
}

impl TooManyStreams {
    /// What the client is told: the limit, the flag that sets it, and when to retry.
    pub fn message(&self) -> String {
        format!(
            "stream limit exceeded for token {}: {} requests and streams in flight at once \
             (--max-streams-per-token); end one (a log follow, a live view, a pending call) or \
             retry in {RETRY_AFTER_MS} ms",
            self.token, self.max
        )
    }

    /// How long the client is told to wait.
    pub fn retry_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(RETRY_AFTER_MS)
    }

    /// The gRPC refusal: `resource_exhausted` naming the limit, with the wait in
    /// `retry-after-ms` metadata as for the rate limit.
    pub fn status(&self) -> tonic::Status {
        let mut status = tonic::Status::resource_exhausted(self.message());
        if let Ok(v) = RETRY_AFTER_MS.to_string().parse() {
            status
                .metadata_mut()
                .insert(crate::rate::RETRY_AFTER_KEY, v);
        }
        status
    }
}

/// One admitted request's place under its token's cap; dropping it gives the place back.
#[derive(Debug)]
pub struct Slot {
    limiter: Arc<StreamLimiter>,
    token: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock();
        if let Some(n) = open.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // A token with nothing in flight holds no memory.
                open.remove(&self.token);
            }
        }
    }
}

impl StreamLimiter {
    /// At most `max` requests in flight per token; 0 turns the cap off.
    pub fn new(max: usize) -> Self {
        StreamLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The cap in force (0: none).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests `token` has in flight now.
    pub fn in_flight(&self, token: &str) -> usize {
        self.open.lock().get(token).copied().unwrap_or(0)
    }

    /// Takes a slot for one request of `token`: None when the cap is off, the refusal when
    /// the token already holds `max`.
    pub fn acquire(self: &Arc<Self>, token: &str) -> Result<Option<Slot>, TooManyStreams> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock();
        let n = open.entry(token.to_string()).or_insert(0);
        if *n >= self.max {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return Err(TooManyStreams {
                token: token.to_string(),
                max: self.max,
            });
        }
        *n += 1;
        Ok(Some(Slot {
            limiter: self.clone(),
            token: token.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_holds_at_most_its_cap_and_a_dropped_slot_frees_one() {
        let limiter = Arc::new(StreamLimiter::new(2));
        let a1 = limiter.acquire("a").expect("first").expect("on");
        let _a2 = limiter.acquire("a").expect("second");
        let refused = limiter.acquire("a").expect_err("third");
        assert!(refused.message().contains("--max-streams-per-token"));
        assert_eq!(refused.status().code(), tonic::Code::ResourceExhausted);
        assert!(
            limiter.acquire("b").is_ok(),
            "another token has its own count"
        );
        drop(a1);
        assert_eq!(limiter.in_flight("a"), 1);
        assert!(
            limiter.acquire("a").is_ok(),
            "the freed slot is taken again"
        );
    }

    #[test]
    fn an_idle_token_is_forgotten_and_zero_turns_the_cap_off() {
        let limiter = Arc::new(StreamLimiter::new(1));
        drop(limiter.acquire("a").expect("slot"));
        assert!(limiter.open.lock().is_empty());
        let off = Arc::new(StreamLimiter::new(0));
        let held: Vec<_> = (0..1000).map(|_| off.acquire("a").expect("off")).collect();
        assert!(held.iter().all(Option::is_none));
    }
}
