//! Request rates per client: a token bucket per client token, and one per remote address for
//! failed authentication attempts (checked before the credential is even hashed), so neither
//! a busy client nor a guesser can take a server's CPU from the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Requests per second a client may make by default (`--rate-limit`).
pub const DEFAULT_RATE: f64 = 10_000.0;
/// Requests a client may make at once after a quiet spell, by default (`--rate-burst`).
pub const DEFAULT_BURST: f64 = 20_000.0;
/// Buckets kept at most; past it, full (idle) buckets are dropped first.
const MAX_BUCKETS: usize = 100_000;
/// Metadata key carrying how long to wait before retrying, in milliseconds.
pub const RETRY_AFTER_KEY: &str = "retry-after-ms";

/// How fast one client may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 turns rate limiting off.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: DEFAULT_RATE,
            burst: DEFAULT_BURST,
        }
    }
}

impl RateLimit {
    /// Whether the limit applies at all.
    pub fn enabled(&self) -> bool {
        self.per_second > 0.0
    }
}

/// Whose requests a bucket counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A client token, by its id (`static#<n>` for the n-th static token).
    Token(String),
    /// Failed authentication attempts from one address.
    Address(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Token(id) => write!(f, "token {id}"),
            Key::Address(ip) => write!(f, "failed authentications from {ip}"),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A refused request: who went too fast and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// What was counted.
    pub key: Key,
    /// The limit in force.
    pub limit: RateLimit,
    /// How long until one more request is allowed.
    pub retry_after: Duration,
}

impl Limited {
    /// The gRPC refusal: `resource_exhausted`, naming the limit and when to retry, with the
    /// wait also in `retry-after-ms` metadata.
    pub fn status(&self) -> tonic::Status {
        let ms = self.retry_after.as_millis().max(1);
        let mut status = tonic::Status::resource_exhausted(self.message());
        if let Ok(v) = ms.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_KEY, v);
        }
        status
    }

    /// What the client is told: the limit, the flags that set it, and when to retry.
    pub fn message(&self) -> String {
        format!(
            "rate limit exceeded for {}: {} requests/s, burst {} (--rate-limit, --rate-burst); \
             retry in {} ms",
            self.key,
            self.limit.per_second,
            self.limit.burst,
            self.retry_after.as_millis().max(1)
        )
    }
}

/// Token buckets, one per key.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl RateLimiter {
    /// Buckets of `limit` each.
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one request from `key`'s bucket, or says when one will be available.
    pub fn take(&self, key: Key) -> Result<(), Limited> {
        self.take_at(key, Instant::now(), true)
    }

    /// Whether `key` could make a request now, without counting one (used before hashing
    /// a presented credential: only failures are counted per address).
    pub fn check(&self, key: Key) -> Result<(), Limited> {
        self.take_at(key, Instant::now(), false)
    }

    fn take_at(&self, key: Key, now: Instant, count: bool) -> Result<(), Limited> {
        if !self.limit.enabled() {
            return Ok(());
        }
        let burst = self.limit.burst.max(1.0);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            self.forget_idle(&mut buckets, now);
        }
        let bucket = match buckets.get_mut(&key) {
            Some(b) => b,
            None if !count => return Ok(()),
            None => buckets.entry(key.clone()).or_insert(Bucket {
                tokens: burst,
                at: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.limit.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            if count {
                bucket.tokens -= 1.0;
            }
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.limit.per_second;
        Err(Limited {
            key,
            limit: self.limit,
            retry_after: Duration::from_secs_f64(wait),
        })
    }

    /// Drops buckets that have refilled (their clients went quiet); if every bucket is in
    /// use, all of them: memory stays bounded whatever the number of keys seen.
    fn forget_idle(&self, buckets: &mut HashMap<Key, Bucket>, now: Instant) {
        let burst = self.limit.burst.max(1.0);
        let rate = self.limit.per_second;
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        let key = || Key::Token("a".into());
        for _ in 0..3 {
            assert!(limiter.take_at(key(), t0, true).is_ok());
        }
        let refused = limiter.take_at(key(), t0, true).unwrap_err();
        assert!(refused.retry_after <= Duration::from_millis(100));
        assert!(refused.message().contains("10 requests/s"));
        assert!(
            limiter.take_at(Key::Token("b".into()), t0, true).is_ok(),
            "another token has its own bucket"
        );
        let later = t0 + Duration::from_millis(100);
        assert!(limiter.take_at(key(), later, true).is_ok(), "refilled");
        assert!(limiter.take_at(key(), later, true).is_err());
    }

    #[test]
    fn a_check_counts_nothing() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 1.0,
        });
        let ip = Key::Address(IpAddr::from([10, 0, 0, 1]));
        let t0 = Instant::now();
        assert!(limiter.take_at(ip.clone(), t0, false).is_ok());
        assert!(limiter.take_at(ip.clone(), t0, false).is_ok());
        assert!(limiter.take_at(ip.clone(), t0, true).is_ok());
        assert!(
            limiter.take_at(ip, t0, false).is_err(),
            "spent by the failure"
        );
    }

    #[test]
    fn zero_turns_it_off() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.0,
            burst: 0.0,
        });
        for _ in 0..100 {
            assert!(limiter.take(Key::Token("a".into())).is_ok());
        }
    }
}
