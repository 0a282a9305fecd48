//! Shadow traffic (`mirror_percent`): copies of requests stable serves, sent to the candidate,
//! whose answers are judged by the rollout's analysis and then dropped. A candidate at weight 0
//! is judged, and advanced through its steps, on real requests before any user gets it.
//!
//! A copy never touches its request: it goes after the original's routing, in a task of its
//! own, with the original's head as stable gets it (and `x-frontdoor-mirror: 1`, so the
//! candidate can tell a copy from a user). Only bodiless `GET`, `HEAD` and `OPTIONS` are
//! copied: a copy of anything else could act twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use http::HeaderValue;
use http::request::Parts;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{Version, Windows};
use crate::forward::{self, IdleTimeoutBody};
use crate::state::Active;
use crate::telemetry;

/// Marks a copy for the candidate.
pub const MIRROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-frontdoor-mirror");

/// Copies in flight per route and front door at most: beyond it (a slow candidate) a copy is
/// not made, and counted `dropped`.
pub const MAX_IN_FLIGHT: u32 = 128;

/// A route's copying: which request's turn it is, and the copies in flight.
#[derive(Debug, Default)]
pub struct Mirror {
    seen: AtomicU64,
    in_flight: AtomicU32,
}

impl Mirror {
    /// Whether the next request stable serves is copied at `percent`: the n-th is when
    /// `⌊n·p/100⌋` steps up, so copies are spread evenly over the requests.
    pub fn turn(&self, percent: f64) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * percent / 100.0).floor() > (n * percent / 100.0).floor()
    }
}

/// Whether a request may be copied: it cannot change anything and has no body.
pub fn copyable(method: &http::Method, bodiless: bool) -> bool {
    bodiless
        && matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        )
}

/// Sends a copy of `head` to the route's candidate and judges its answer, read to its end, as
/// the candidate's in `windows`.
pub fn send(
    active: &Arc<Active>,
    windows: &Arc<Windows>,
    route: &routes::Route,
    decision: routes::Decision,
    mut head: Parts,
) {
    let Some(cfg) = &route.rollout else { return };
    let mirror = &windows.mirror;
    if mirror.in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        mirror.in_flight.fetch_sub(1, Ordering::Relaxed);
        count(route.name.clone(), "dropped");
        return;
    }
    head.headers
        .insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    let (active, windows) = (Arc::clone(active), Arc::clone(windows));
    let cluster = cfg.candidate_cluster;
    let version = cfg.candidate_version.clone();
    let route = route.name.clone();
    tokio::spawn(async move {
        let runtime = &active.upstreams.clusters[cluster.0];
        let sent = Instant::now();
        let outcome = forward::send(
            runtime,
            &active.snapshot,
            &decision,
            version.as_deref(),
            head,
            None,
            sent,
        )
        .await;
        let answered = Instant::now();
        windows.judge(Version::Candidate, &outcome, answered - sent, answered);
        let failed = match outcome {
            Ok(f) => {
                let mut watch = f.watch;
                if !f.failed {
                    watch.get_or_insert_default().judged = Some(super::Judged {
                        windows: Arc::clone(&windows),
                        version: Version::Candidate,
                        region: f.member.region,
                    });
                }
                let body =
                    IdleTimeoutBody::new(f.response.into_body(), runtime.config.timeouts.body_idle)
                        .watched(watch);
                // Read to its end, where a broken body counts against the candidate.
                let mut body = std::pin::pin!(body);
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
                f.failed
            }
            Err(_) => true,
        };
        windows.mirror.in_flight.fetch_sub(1, Ordering::Relaxed);
        count(route, if failed { "failed" } else { "answered" });
    });
}

/// `frontdoor_rollout_mirrored_total{route, result}`.
fn count(route: String, result: &'static str) {
    metrics::counter!(telemetry::MIRRORED, telemetry::L_ROUTE => route, telemetry::L_RESULT => result)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_spread_evenly_at_their_share() {
        for (percent, of, want) in [
            (100.0, 50, 50),
            (0.0, 50, 0),
            (10.0, 1000, 100),
            (2.5, 400, 10),
        ] {
            let m = Mirror::default();
            let turns: Vec<bool> = (0..of).map(|_| m.turn(percent)).collect();
            assert_eq!(turns.iter().filter(|t| **t).count(), want, "{percent}%");
            if percent == 10.0 {
                // One in every ten, not a burst of a hundred.
                for chunk in turns.chunks(10) {
                    assert_eq!(chunk.iter().filter(|t| **t).count(), 1);
                }
            }
        }
        assert!(copyable(&http::Method::GET, true));
        assert!(!copyable(&http::Method::GET, false));
        assert!(!copyable(&http::Method::POST, true));
    }
}
