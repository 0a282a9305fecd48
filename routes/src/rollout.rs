//! Rollouts, the pure part: the validated rollout model, sticky bucketing, and the gate
//! verdict over window statistics. The proxy keeps the windows and the run-time state; every
//! decision about them is made here, where it is table-tested.

use std::time::Duration;

use crate::snapshot::ClusterId;

/// Canary (any weight) or blue-green (0 or 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutMode {
    Canary,
    BlueGreen,
}

/// Where the user key for sticky assignment comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie; frontdoor sets it when absent.
    Cookie(String),
    /// A request header (lower-case name); the client IP when absent.
    Header(String),
    Ip,
}

/// Judging rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    pub window: Duration,
    pub max_error_rate: f64,
    pub max_p95: Option<Duration>,
    pub max_p99: Option<Duration>,
    pub min_requests: u64,
    pub compare_stable: bool,
}

/// A validated rollout on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub mode: RolloutMode,
    pub stable_cluster: ClusterId,
    pub stable_version: Option<String>,
    pub candidate_cluster: ClusterId,
    pub candidate_version: Option<String>,
    /// Percent, 0..=100.
    pub initial_weight: f64,
    pub sticky: Sticky,
    /// Lower-case header name.
    pub override_header: String,
    pub override_trusted_only: bool,
    pub steps: Vec<f64>,
    pub step_hold: Duration,
    pub post_promotion_watch: Duration,
    pub gates: Gates,
    /// Percent of stable's requests copied to the candidate while the rollout is judged
    /// (0: none).
    pub mirror_percent: f64,
}

/// Number of sticky buckets; a weight of w% sends buckets below `w × 100` to the candidate.
pub const BUCKETS: u32 = 10_000;

/// The user's bucket for a rollout: FNV-1a of the salt (the route name) and the key, so one
/// user lands independently in different rollouts, and identically every time in one.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain([0xff]).chain(key.iter().copied()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finish with a mix so nearby keys spread over the buckets.
    (crate::residency::mix(h) % u64::from(BUCKETS)) as u32
}

/// True when a user in `bucket` gets the candidate at `weight` percent. Monotonic: a user on
/// the candidate at w stays on it at every weight above w.
pub fn is_candidate(bucket: u32, weight: f64) -> bool {
    f64::from(bucket) < weight * 100.0
}

/// What one version did in the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub p95: Option<Duration>,
    pub p99: Option<Duration>,
}

impl WindowStats {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The gates' verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too little candidate traffic to judge: hold (never a rollback for lack of data).
    Inconclusive {
        requests: u64,
        needed: u64,
    },
    Pass,
    /// A gate failed; the text says which and with what numbers.
    Breach(String),
}

/// Wilson score interval bounds for `k` successes in `n` trials at z (1.645: one-sided 95%).
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let margin = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    let denom = 1.0 + z2 / n_f;
    (
        ((centre - margin) / denom).max(0.0),
        ((centre + margin) / denom).min(1.0),
    )
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Judges a candidate against the gates (and against stable, when asked).
pub fn evaluate(gates: &Gates, candidate: &WindowStats, stable: &WindowStats) -> Verdict {
    if candidate.requests < gates.min_requests.max(1) {
        return Verdict::Inconclusive {
            requests: candidate.requests,
            needed: gates.min_requests.max(1),
        };
    }
    let rate = candidate.error_rate();
    if rate > gates.max_error_rate {
        return Verdict::Breach(format!(
            "error rate {:.1}% ({} of {} requests) > max {:.1}%",
            rate * 100.0,
            candidate.errors,
            candidate.requests,
            gates.max_error_rate * 100.0
        ));
    }
    for (name, limit, seen) in [
        ("p95", gates.max_p95, candidate.p95),
        ("p99", gates.max_p99, candidate.p99),
    ] {
        if let (Some(limit), Some(seen)) = (limit, seen)
            && seen > limit
        {
            return Verdict::Breach(format!(
                "{name} latency {} > max {} ({} requests)",
                ms(seen),
                ms(limit),
                candidate.requests
            ));
        }
    }
    if gates.compare_stable && stable.requests >= gates.min_requests.max(1) {
        let (cand_low, _) = wilson(candidate.errors, candidate.requests, 1.645);
        let (_, stable_high) = wilson(stable.errors, stable.requests, 1.645);
        if cand_low > stable_high {
            return Verdict::Breach(format!(
                "error rate {:.1}% ({} of {}) significantly above stable's {:.1}% ({} of {}): Wilson 95% bounds {:.3} > {:.3}",
                rate * 100.0,
                candidate.errors,
                candidate.requests,
                stable.error_rate() * 100.0,
                stable.errors,
                stable.requests,
                cand_low,
                stable_high
            ));
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates() -> Gates {
        Gates {
            window: Duration::from_secs(60),
            max_error_rate: 0.05,
            max_p95: Some(Duration::from_secs(2)),
            max_p99: None,
            min_requests: 20,
            compare_stable: true,
        }
    }

    fn stats(requests: u64, errors: u64, p95_ms: u64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p95: Some(Duration::from_millis(p95_ms)),
            p99: None,
        }
    }

    #[test]
    fn verdicts() {
        let quiet = WindowStats::default();
        let cases: [(WindowStats, WindowStats, &str); 8] = [
            (stats(3, 1, 10), quiet, "inconclusive"), // 33% errors, but only 3 requests
            (stats(0, 0, 0), quiet, "inconclusive"),
            (stats(100, 5, 10), quiet, "pass"), // exactly at the limit
            (stats(100, 6, 10), quiet, "breach"),
            (stats(100, 0, 2500), quiet, "breach"), // p95 over 2 s
            (stats(100, 0, 2000), quiet, "pass"),
            // 4% vs stable's 0.1%: under the absolute gate, but significantly worse.
            (stats(1000, 40, 10), stats(10_000, 10, 10), "breach"),
            // 2% vs 1.5%: not significant.
            (stats(200, 4, 10), stats(2000, 30, 10), "pass"),
        ];
        for (cand, stable, want) in cases {
            let got = match evaluate(&gates(), &cand, &stable) {
                Verdict::Inconclusive { .. } => "inconclusive",
                Verdict::Pass => "pass",
                Verdict::Breach(_) => "breach",
            };
            assert_eq!(got, want, "{cand:?} vs {stable:?}");
        }
        let Verdict::Breach(why) = evaluate(&gates(), &stats(100, 20, 10), &quiet) else {
            panic!("breach")
        };
        assert_eq!(why, "error rate 20.0% (20 of 100 requests) > max 5.0%");
    }

    #[test]
    fn wilson_bounds() {
        let (lo, hi) = wilson(5, 100, 1.645);
        assert!(
            lo > 0.02 && lo < 0.05 && hi > 0.05 && hi < 0.11,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0, 1.645), (0.0, 1.0));
    }

    #[test]
    fn buckets_are_sticky_uniform_and_monotonic() {
        let mut at10 = 0;
        for user in 0..10_000u32 {
            let key = format!("user-{user}");
            let b = bucket("app", key.as_bytes());
            assert_eq!(b, bucket("app", key.as_bytes()), "same user, same bucket");
            assert!(b < BUCKETS);
            if is_candidate(b, 10.0) {
                at10 += 1;
                assert!(
                    is_candidate(b, 50.0) && is_candidate(b, 10.5),
                    "raising the weight never moves a user back"
                );
            }
            assert!(!is_candidate(b, 0.0));
            assert!(is_candidate(b, 100.0));
        }
        assert!((850..=1150).contains(&at10), "10% of 10,000 users: {at10}");
        assert!(
            is_candidate(49, 0.5) && !is_candidate(50, 0.5),
            "fractions: 0.5% = buckets 0..49"
        );
    }
}
