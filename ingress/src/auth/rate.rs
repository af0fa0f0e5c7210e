//! Token buckets for the ingress's rate limits (per broker, per sender identity).
//!
//! A request takes one token before its body is read; once decoded, a batch of `n`
//! events takes `n - 1` more, which may leave the bucket in debt (later requests
//! wait it off), so the limit counts events whatever their batching. A request that
//! finds less than one token is answered 429 with `Retry-After`: the whole seconds
//! until a token is there.
//!
//! Senders' buckets live in one map of at most [`MAX_SENDERS`] entries; when it is
//! full, buckets that have refilled completely (nothing to remember) are dropped,
//! and when none has, the new sender shares one overflow bucket with every sender
//! not in the map (so a flood of made-up identities cannot grow memory, and cannot
//! escape the limit either).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::config::rate::RateLimit;
use tokio::time::Instant;

/// Most sender buckets held per broker.
pub const MAX_SENDERS: usize = 10_000;

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
}

/// One token bucket.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    state: Mutex<State>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            state: Mutex::new(State {
                tokens: f64::from(limit.burst),
                at: Instant::now(),
            }),
        }
    }

    /// The bucket's shape.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn refill(&self, s: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        s.at = now;
    }

    /// Takes one token, or says how long until one is there.
    pub fn try_take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut s, now);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            // Saturating: never a panic, whatever the limit.
            Err(
                Duration::try_from_secs_f64((1.0 - s.tokens) / self.limit.per_second)
                    .unwrap_or(Duration::MAX),
            )
        }
    }

    /// Takes `n` tokens whatever is there (the rest of a batch already admitted).
    /// The debt is bounded by one burst, so one huge batch cannot close the bucket
    /// for hours.
    pub fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut s, now);
        s.tokens = (s.tokens - n as f64).max(-f64::from(self.limit.burst));
    }

    /// Whether the bucket is full (its sender can be forgotten).
    fn full(&self, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.refill(&mut s, now);
        s.tokens >= f64::from(self.limit.burst)
    }
}

/// One bucket per sender identity.
#[derive(Debug)]
pub struct SenderBuckets {
    limit: RateLimit,
    map: Mutex<HashMap<Arc<str>, Arc<Bucket>>>,
    overflow: Arc<Bucket>,
    max: usize,
}

impl SenderBuckets {
    /// No senders yet.
    pub fn new(limit: RateLimit) -> SenderBuckets {
        SenderBuckets::with_capacity(limit, MAX_SENDERS)
    }

    fn with_capacity(limit: RateLimit, max: usize) -> SenderBuckets {
        SenderBuckets {
            limit,
            map: Mutex::new(HashMap::new()),
            overflow: Arc::new(Bucket::new(limit)),
            max,
        }
    }

    /// The buckets' shape.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The bucket of `sender` (`""` for requests without an identity).
    pub fn bucket(&self, sender: &str) -> Arc<Bucket> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get(sender) {
            return b.clone();
        }
        if map.len() >= self.max {
            let now = Instant::now();
            map.retain(|_, b| Arc::strong_count(b) > 1 || !b.full(now));
            if map.len() >= self.max {
                return self.overflow.clone();
            }
        }
        let b = Arc::new(Bucket::new(self.limit));
        map.insert(sender.into(), b.clone());
        b
    }
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_at_its_rate() {
        let b = Bucket::new(limit(2.0, 3));
        for _ in 0..3 {
            assert_eq!(b.try_take(), Ok(()));
        }
        let wait = b.try_take().unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(b.try_take().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.try_take(), Ok(()));
        // Never more than the burst, however long it rests.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            assert_eq!(b.try_take(), Ok(()));
        }
        assert!(b.try_take().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn batches_leave_debt() {
        let b = Bucket::new(limit(10.0, 10));
        assert_eq!(b.try_take(), Ok(()));
        b.charge(99);
        // 10 - 100 would be -90; the debt stops at one burst (-10).
        assert_eq!(b.try_take().unwrap_err(), Duration::from_millis(1100));
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(b.try_take(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn senders_are_bounded() {
        let s = SenderBuckets::with_capacity(limit(1.0, 1), 2);
        assert!(s.bucket("a").try_take().is_ok());
        assert!(s.bucket("a").try_take().is_err(), "a has its own bucket");
        assert!(s.bucket("b").try_take().is_ok());
        // Full map, nobody refilled: c and d share the overflow bucket.
        assert!(s.bucket("c").try_take().is_ok());
        assert!(s.bucket("d").try_take().is_err());
        // Once a and b have refilled they are forgotten and e gets its own.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.bucket("e").try_take().is_ok());
        assert!(s.bucket("e").try_take().is_err());
    }

    #[test]
    fn retry_after() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
