//! Sliding windows of requests, errors (5xx, failed exchanges, answers broken off after their
//! head) and latency per route × version, in 1 s buckets on tokio's clock. Latency goes into a
//! log-scale histogram (10% wide buckets from 0.5 ms to ~2 min), so percentiles are within 10%
//! without keeping samples.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use routes::rollout::WindowStats;

/// Histogram buckets: bucket k covers up to `BASE_MS × GROWTH^k`.
const HIST: usize = 130;
const BASE_MS: f64 = 0.5;
const GROWTH: f64 = 1.1;

#[derive(Clone)]
struct Bucket {
    /// The second (clock ms / 1000) this bucket holds; buckets of other seconds are stale.
    sec: u64,
    requests: u64,
    errors: u64,
    hist: [u32; HIST],
}

impl Bucket {
    fn empty() -> Bucket {
        Bucket {
            sec: u64::MAX,
            requests: 0,
            errors: 0,
            hist: [0; HIST],
        }
    }
}

/// One route × version window.
pub struct Window {
    buckets: Mutex<Vec<Bucket>>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window").finish_non_exhaustive()
    }
}

/// Each bucket's upper bound in nanoseconds ([`hist_upper`]).
static UPPER_NS: LazyLock<[u64; HIST]> = LazyLock::new(|| {
    std::array::from_fn(|k| u64::try_from(hist_upper(k).as_nanos()).unwrap_or(u64::MAX))
});

/// The bucket of `latency`: the first whose upper bound is not below it (the last for
/// anything longer). A search of the bounds, where a logarithm per request cost ~100
/// instructions.
fn hist_index(latency: Duration) -> usize {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    UPPER_NS.partition_point(|upper| *upper < ns).min(HIST - 1)
}

fn hist_upper(k: usize) -> Duration {
    Duration::from_secs_f64(BASE_MS * GROWTH.powi(k as i32) / 1000.0)
}

impl Window {
    /// A window of `len` one-second buckets.
    pub fn new(len: Duration) -> Window {
        let n = len.as_secs().clamp(1, 3600) as usize;
        Window {
            buckets: Mutex::new(vec![Bucket::empty(); n]),
        }
    }

    pub fn record(&self, now_ms: u64, error: bool, latency: Duration) {
        self.at(now_ms, |b| {
            b.requests += 1;
            b.errors += u64::from(error);
            b.hist[hist_index(latency)] += 1;
        });
    }

    /// Counts an error for an exchange recorded earlier (its answer broke off after its head):
    /// in the second it broke, with no request of its own.
    pub fn broke(&self, now_ms: u64) {
        self.at(now_ms, |b| b.errors += 1);
    }

    /// Changes the bucket of `now_ms`'s second (emptied first when it held an older one).
    fn at(&self, now_ms: u64, change: impl FnOnce(&mut Bucket)) {
        let sec = now_ms / 1000;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let n = buckets.len();
        let b = &mut buckets[(sec % n as u64) as usize];
        if b.sec != sec {
            *b = Bucket::empty();
            b.sec = sec;
        }
        change(b);
    }

    /// Totals over the last `len` seconds up to `now_ms` (the current, partial second included).
    pub fn stats(&self, now_ms: u64) -> WindowStats {
        let now = now_ms / 1000;
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let n = buckets.len() as u64;
        let mut hist = [0u64; HIST];
        let mut out = WindowStats::default();
        for b in buckets.iter().filter(|b| b.sec <= now && now - b.sec < n) {
            out.requests += b.requests;
            out.errors += b.errors;
            for (h, c) in hist.iter_mut().zip(b.hist.iter()) {
                *h += u64::from(*c);
            }
        }
        let percentile = |q: f64| {
            let rank = (q * out.requests as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            hist.iter().position(|c| {
                seen += c;
                seen >= rank
            })
        };
        // An answer that broke off after its exchange left the window counts no more errors
        // than there are exchanges.
        out.errors = out.errors.min(out.requests);
        if out.requests > 0 {
            out.p95 = percentile(0.95).map(hist_upper);
            out.p99 = percentile(0.99).map(hist_upper);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::new(Duration::from_secs(10));
        for i in 0..100u64 {
            w.record(1_000 + i * 100, i % 10 == 0, Duration::from_millis(5));
        }
        // 100 requests over 10 s (t = 1.0 s .. 10.9 s), 10 errors.
        let s = w.stats(10_900);
        assert_eq!((s.requests, s.errors), (100, 10));
        // 5 s later, the first 5 seconds have left the window.
        let s = w.stats(15_900);
        assert_eq!((s.requests, s.errors), (50, 5));
        assert_eq!(w.stats(40_000).requests, 0);
    }

    /// An answer that breaks off after its head is an error of the exchange counted at its
    /// head, in the second it broke; never more errors than exchanges in the window.
    #[test]
    fn an_answer_broken_after_its_head_counts_as_an_error() {
        let w = Window::new(Duration::from_secs(10));
        for i in 0..10u64 {
            w.record(1_000 + i * 100, false, Duration::from_millis(5));
        }
        w.broke(2_500);
        let s = w.stats(2_500);
        assert_eq!((s.requests, s.errors), (10, 1));
        // The exchanges leave the window; the late breaks do not outnumber what is left.
        for _ in 0..3 {
            w.broke(11_500);
        }
        let s = w.stats(11_500);
        assert_eq!((s.requests, s.errors), (0, 0));
        w.record(11_600, false, Duration::from_millis(5));
        let s = w.stats(11_600);
        assert_eq!((s.requests, s.errors), (1, 1));
    }

    #[test]
    fn a_latency_falls_in_the_first_bucket_that_covers_it() {
        let ns = Duration::from_nanos;
        assert_eq!(hist_index(Duration::ZERO), 0);
        assert_eq!(hist_index(ns(500_000)), 0, "0.5 ms is the first bound");
        assert_eq!(hist_index(ns(500_001)), 1);
        assert_eq!(hist_index(ns(550_000)), 1, "0.55 ms, the second bound");
        assert_eq!(hist_index(ns(550_001)), 2);
        for k in 1..HIST {
            let upper = hist_upper(k);
            assert_eq!(hist_index(upper), k, "bucket {k}'s own bound");
            assert_eq!(hist_index(upper + ns(1)), (k + 1).min(HIST - 1));
            assert_eq!(hist_index(hist_upper(k - 1) + ns(1)), k);
        }
        assert_eq!(hist_index(Duration::from_secs(3600)), HIST - 1);
    }

    #[test]
    fn percentiles_are_within_ten_percent() {
        let w = Window::new(Duration::from_secs(60));
        for i in 1..=1000u64 {
            w.record(5_000, false, Duration::from_millis(i)); // 1..1000 ms uniform
        }
        let s = w.stats(5_000);
        let p95 = s.p95.expect("p95").as_secs_f64() * 1000.0;
        let p99 = s.p99.expect("p99").as_secs_f64() * 1000.0;
        assert!((950.0..=1045.0).contains(&p95), "p95 {p95}");
        assert!((990.0..=1089.0).contains(&p99), "p99 {p99}");
        assert_eq!(Window::new(Duration::from_secs(5)).stats(0).p95, None);
    }
}
