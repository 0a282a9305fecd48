//! Active health checks: every `interval`, a GET of the check path on each member; 2xx/3xx
//! within `timeout` counts as a pass. Thresholds decide when a member flips (see
//! [`super::pool::MemberHealth::record_check`]). The task ends with its cluster runtime.

use std::sync::{Arc, Weak};

use http::Request;
use http_body_util::{Either, Empty};

use super::pool::ClusterRuntime;

pub fn spawn(runtime: &Arc<ClusterRuntime>) {
    let Some(check) = runtime.config.health_check.clone() else {
        return;
    };
    let weak: Weak<ClusterRuntime> = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(check.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(rt) = weak.upgrade() else { return };
            let members = rt.members.load_full();
            let client = rt.client.clone();
            drop(rt);
            let checks = members.iter().map(|m| {
                let client = client.clone();
                let m = Arc::clone(m);
                let check = check.clone();
                async move {
                    // One deadline for the whole check (an inline exchange keeps its own timer).
                    let deadline = tokio::time::Instant::now() + check.timeout;
                    let ok = match Request::get(check.path.as_str()).body(Either::Right(Empty::new())) {
                        Ok(req) => matches!(
                            tokio::time::timeout_at(deadline, client.request(m.addr, &m.authority, req, deadline)).await,
                            Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection()
                        ),
                        Err(_) => false,
                    };
                    m.health.record_check(ok, check.healthy_threshold, check.unhealthy_threshold);
                }
            });
            let handles: Vec<_> = checks.map(tokio::spawn).collect();
            for h in handles {
                let _ = h.await;
            }
        }
    });
}
