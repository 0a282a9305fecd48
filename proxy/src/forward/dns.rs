//! DNS endpoints: resolved with hickory-resolver when the snapshot is built, then re-resolved
//! when the answer's TTL runs out (clamped to 1 s..5 min); a failed lookup keeps the last
//! answer and retries in 5 s. Static members are always kept.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use routes::Address;

use super::pool::{ClusterRuntime, HealthRegistry, Member};

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(300);
const RETRY: Duration = Duration::from_secs(5);

fn resolver() -> Option<&'static TokioResolver> {
    static RESOLVER: OnceLock<Option<TokioResolver>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "DNS resolver unavailable; DNS endpoints get no members");
                None
            }
        })
        .as_ref()
}

/// Resolves `host`; returns addresses and how long they may be used.
async fn lookup(host: &str, port: u16) -> Result<(Vec<SocketAddr>, Duration), String> {
    let resolver = resolver().ok_or("no DNS resolver")?;
    let answer = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let ttl = answer
        .valid_until()
        .saturating_duration_since(std::time::Instant::now())
        .clamp(MIN_TTL, MAX_TTL);
    let mut addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok((addrs, ttl))
}

/// Members for every endpoint of the cluster: static ones as they are, DNS ones resolved now.
/// Returns the members and the shortest TTL of the answers (None: no DNS endpoint).
pub async fn resolve_all(
    cluster: &routes::Cluster,
    health: &HealthRegistry,
    previous: Option<&[Arc<Member>]>,
) -> (Vec<Arc<Member>>, Option<Duration>) {
    let mut members = Vec::new();
    let mut ttl: Option<Duration> = None;
    for e in &cluster.endpoints {
        match &e.address {
            Address::Ip(a) => {
                members.extend(ClusterRuntime::members_for(cluster, e, &[*a], health))
            }
            Address::Dns { host, port } => match lookup(host, *port).await {
                Ok((addrs, t)) => {
                    ttl = Some(ttl.map_or(t, |old| old.min(t)));
                    members.extend(ClusterRuntime::members_for(cluster, e, &addrs, health));
                }
                Err(err) => {
                    tracing::warn!(cluster = %cluster.name, host = %host, error = %err, "DNS lookup failed; keeping previous answer");
                    ttl = Some(RETRY);
                    if let Some(prev) = previous {
                        members.extend(
                            prev.iter()
                                .filter(|m| {
                                    m.region == e.region
                                        && m.version.as_deref() == e.version.as_deref()
                                        && !cluster
                                            .endpoints
                                            .iter()
                                            .any(|s| s.address == Address::Ip(m.addr))
                                })
                                .cloned(),
                        );
                    }
                }
            },
        }
    }
    (members, ttl)
}

/// Re-resolves the cluster's DNS endpoints on TTL for as long as the runtime lives.
pub fn spawn(runtime: &Arc<ClusterRuntime>, health: Arc<HealthRegistry>, first_ttl: Duration) {
    let weak: Weak<ClusterRuntime> = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut wait = first_ttl;
        loop {
            tokio::time::sleep(wait).await;
            let Some(rt) = weak.upgrade() else { return };
            let previous = rt.members.load_full();
            let (members, ttl) = resolve_all(&rt.config, &health, Some(&previous)).await;
            let changed = members.len() != previous.len()
                || members
                    .iter()
                    .zip(previous.iter())
                    .any(|(a, b)| a.addr != b.addr);
            if changed {
                tracing::info!(cluster = %rt.config.name, members = members.len(), "DNS answer changed");
                rt.members.store(Arc::new(members));
                rt.apply_limits();
            }
            wait = ttl.unwrap_or(MAX_TTL);
        }
    });
}
