//! limit: per-route token-bucket rate limits, per client key, on tokio's clock. Over the limit
//! the answer is 429 with `Retry-After` (in `respond`).
//!
//! Buckets live in a few mutex-guarded shards; a shard never holds more than `MAX_KEYS`
//! buckets (full buckets — keys idle long enough to have refilled — are dropped first), so a
//! flood of distinct keys costs bounded memory.

use std::collections::HashMap;
use std::sync::Mutex;

use routes::RateLimit;

use crate::clock;

const SHARDS: usize = 16;
const MAX_KEYS: usize = if cfg!(test) { 1_024 } else { 16_384 };

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// One route's limiter.
#[derive(Debug)]
pub struct RateLimiter {
    pub config: RateLimit,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub fn new(config: RateLimit) -> RateLimiter {
        RateLimiter {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token for `key`; `Err(seconds)` says when the next one will be there.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = clock::now_ms();
        let (rps, burst) = (self.config.rps, self.config.burst);
        let shard = &self.shards[fnv(key) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, b| {
                b.tokens + (now.saturating_sub(b.at_ms) as f64 / 1000.0) * rps < burst
            });
            if map.len() >= MAX_KEYS {
                // Still full of active keys: refuse the newcomer rather than grow.
                return Err(1);
            }
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            at_ms: now,
        });
        b.tokens = (b.tokens + (now.saturating_sub(b.at_ms) as f64 / 1000.0) * rps).min(burst);
        b.at_ms = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - b.tokens) / rps).ceil() as u64).max(1))
        }
    }
}

fn fnv(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as usize
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use routes::RateKey;

    use super::*;

    fn limiter(rps: f64, burst: f64) -> RateLimiter {
        RateLimiter::new(RateLimit {
            rps,
            burst,
            key: RateKey::Ip,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill_per_key() {
        let l = limiter(2.0, 3.0);
        for _ in 0..3 {
            assert_eq!(l.check("a"), Ok(()));
        }
        assert_eq!(
            l.check("a"),
            Err(1),
            "burst spent; next token in 0.5 s → Retry-After 1"
        );
        assert_eq!(l.check("b"), Ok(()), "other keys have their own bucket");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(l.check("a"), Ok(()), "one token back after 1/rps");
        assert!(l.check("a").is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..3 {
            assert_eq!(l.check("a"), Ok(()), "refilled to the burst, not beyond");
        }
        assert!(l.check("a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_matches_the_refill_time() {
        let l = limiter(0.1, 1.0);
        assert_eq!(l.check("k"), Ok(()));
        assert_eq!(l.check("k"), Err(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(l.check("k"), Err(6));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_under_a_flood_of_keys() {
        let l = limiter(1.0, 1.0);
        for i in 0..40_000 {
            let _ = l.check(&format!("k{i}"));
        }
        let total: usize = l
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(total <= SHARDS * MAX_KEYS, "{total} buckets kept");
    }
}
