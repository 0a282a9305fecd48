//! forward: from a routed request to an upstream response — pick an endpoint (health-aware,
//! own region first), send over the cluster's pooled connection, bound the wait, retry what is
//! safe to retry, and feed the outcome back into passive outlier detection.
//!
//! A body of at most [`SMALL_BODY`] bytes declared by `Content-Length` is read whole before an
//! endpoint is chosen and sent inline with its head; larger ones stream.
//!
//! Retries: only when the request has no body (so it can be sent again as it was), and either
//! the method is idempotent or the failure was a connect error (nothing was sent). Never after
//! a response head arrived, never after a timeout, and within the cluster's retry budget.

mod body;
mod dns;
mod health;
pub mod pool;
pub mod upstream;
pub(crate) mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Body as _;

use crate::listen::RequestBody;
use routes::{Decision, Snapshot, UpstreamProtocol};

pub use body::{BodyIdleTimeout, ClientBody, ClientBodyBroke, IdleTimeoutBody, Watch};
use pool::{ClientRegistry, ClusterRuntime, HealthRegistry, Member};
pub use upstream::UpstreamIncoming;
use upstream::{Times, UpstreamError};

use crate::respond::ProxyError;
use crate::telemetry;

/// The run-time upstream state for one snapshot: one [`ClusterRuntime`] per cluster, by index.
#[derive(Debug)]
pub struct Upstreams {
    pub clusters: Vec<Arc<ClusterRuntime>>,
}

/// Registries that outlive snapshots: health by address, clients by transport settings.
#[derive(Debug, Default)]
pub struct Shared {
    pub health: Arc<HealthRegistry>,
    pub clients: ClientRegistry,
    /// Rate limiters by route name, kept across reloads.
    pub limiters:
        std::sync::Mutex<std::collections::HashMap<String, Arc<crate::limit::RateLimiter>>>,
    /// The shared cache, kept across reloads.
    pub cache: std::sync::Mutex<Option<Arc<crate::cache::Cache>>>,
}

impl Upstreams {
    /// Builds runtimes for a snapshot: resolves DNS endpoints, reuses health state and clients,
    /// and starts health-check and re-resolve tasks that end when these runtimes are dropped.
    pub async fn build(
        snapshot: &Snapshot,
        shared: &Shared,
        previous: Option<&Upstreams>,
    ) -> Result<Upstreams, Vec<String>> {
        // TLS files first: a cluster whose CA or client certificate cannot be used rejects
        // the config before anything starts.
        let mut clients = Vec::with_capacity(snapshot.clusters.len());
        let mut errors = Vec::new();
        for cluster in &snapshot.clusters {
            match shared.clients.get(cluster) {
                Ok(c) => clients.push(Some(c)),
                Err(e) => {
                    errors.push(e);
                    clients.push(None);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut clusters = Vec::with_capacity(snapshot.clusters.len());
        for (cluster, client) in snapshot.clusters.iter().zip(clients) {
            let Some(client) = client else { continue };
            let prev_members = previous
                .and_then(|p| p.clusters.iter().find(|c| c.config.name == cluster.name))
                .map(|c| c.members.load_full());
            let (members, ttl) = dns::resolve_all(
                cluster,
                &shared.health,
                prev_members.as_deref().map(Vec::as_slice),
            )
            .await;
            let rt = Arc::new(ClusterRuntime::new(
                cluster.clone(),
                client,
                members,
                shared.health.waitlist(&cluster.name),
            ));
            health::spawn(&rt);
            if let Some(ttl) = ttl {
                dns::spawn(&rt, Arc::clone(&shared.health), ttl);
            }
            clusters.push(rt);
        }
        Ok(Upstreams { clusters })
    }

    /// Gives every endpoint its cluster's cap: called as these runtimes go into service.
    pub fn apply_limits(&self) {
        for c in &self.clusters {
            c.apply_limits();
        }
    }
}

/// A successful upstream exchange.
#[derive(Debug)]
pub struct Forwarded {
    pub response: Response<UpstreamIncoming>,
    pub member: Arc<Member>,
    pub attempts: u32,
    /// Time spent waiting for a slot under an endpoint's cap (zero when none was waited for).
    pub queued: std::time::Duration,
    /// Who waits for the response body's end: for it, wrap the body in [`IdleTimeoutBody`]
    /// with it. Dropped unheard, the exchange counts neither way.
    pub watch: Option<Box<Watch>>,
    /// The head says the upstream failed: a 5xx, or (HTTP/2 clusters) a trailers-only gRPC
    /// answer whose status is a server's failure ([`crate::respond::grpc_failed`]).
    pub failed: bool,
}

/// The failed exchange, with the endpoint tried last (if any) and attempts made.
#[derive(Debug)]
pub struct ForwardError {
    pub error: ProxyError,
    pub member: Option<Arc<Member>>,
    pub attempts: u32,
    /// As [`Forwarded::queued`].
    pub queued: std::time::Duration,
}

/// The request target for a rewritten path, the query kept. Validation let only visible
/// ASCII into `rewrite_prefix`, and the rest of the path came from a valid target.
fn upstream_target(
    path: &str,
    query: Option<&str>,
) -> Result<http::uri::PathAndQuery, ForwardError> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).map_err(|_| {
        ForwardError {
            error: ProxyError::BadRequest("invalid request path"),
            member: None,
            attempts: 0,
            queued: std::time::Duration::ZERO,
        }
    })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends the request (head already rewritten by the pipeline) to a member of `cluster`,
/// only ever in the regions `decision.allowed` permits. `now`: the time the caller read as it
/// sent; the first attempt's timeout runs from it.
pub async fn send(
    cluster: &ClusterRuntime,
    snapshot: &Snapshot,
    decision: &Decision,
    version: Option<&str>,
    mut head: Parts,
    mut body: Option<RequestBody>,
    now: Instant,
) -> Result<Forwarded, ForwardError> {
    let route = snapshot.route(decision.route);
    let cfg = &cluster.config;
    head.version = match cfg.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::H2 => Version::HTTP_2,
    };
    let mut path = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    // Looked at here first: the call costs a request without a rewrite, the usual one.
    if route.rewrite_prefix.is_some()
        && let Some(rewritten) = route.rewritten(path.path())
    {
        path = upstream_target(&rewritten, path.query())?;
    }
    let bodiless = body.as_ref().is_none_or(RequestBody::is_end_stream);
    // A small body of declared length is read whole first (nginx buffers request bodies by
    // default) and goes inline, in the head's write: no client task and channel per exchange.
    // A client that fails it gets its 400 or 408 before any upstream is chosen.
    let small_body = if !bodiless
        && small_declared(&head.headers)
        && cluster.client.inline(&head.headers)
        && let Some(b) = body.take()
    {
        let b = client_body(b, snapshot, route);
        let ended = b.ended();
        match http_body_util::BodyExt::collect(b).await {
            Ok(all) => Some(all.to_bytes()),
            Err(_) => {
                return Err(ForwardError {
                    error: client_body_error(ended.load(Ordering::Relaxed), route),
                    member: None,
                    attempts: 0,
                    queued: std::time::Duration::ZERO,
                });
            }
        }
    } else {
        None
    };
    let method = head.method.clone();
    // Keep the head for a possible retry; otherwise it moves into the one attempt (no clone).
    let retryable = bodiless && cfg.retries.attempts > 0;
    let mut head = Some(head);
    let mut failed: Option<Arc<Member>> = None;
    let mut last_error: Option<ProxyError> = None;
    // An upstream's answer given up for a retry (`retries.on_status`): it stands if no other
    // attempt gets an answer. Boxed: rare, and the exchange's future stays its size.
    let mut given_up: Option<Box<Forwarded>> = None;
    // How the client's body ended: when it broke the exchange, that is a 400, not a 502.
    let mut client_body_end: Option<Arc<std::sync::atomic::AtomicU8>> = None;
    let mut attempts = 0u32;
    let mut queued = std::time::Duration::ZERO;
    cluster.in_flight.fetch_add(1, Ordering::Relaxed);
    let _active = Decrement(&cluster.in_flight);
    // Held while a retry attempt is in flight, so the budget sees concurrent retries.
    let mut _retrying: Option<Decrement<'_>> = None;
    // One reading of the clock per attempt: the first is the caller's.
    let mut now = Some(now);
    loop {
        let now = now.take().unwrap_or_else(Instant::now);
        let now_ms = crate::clock::ms_at(now);
        let ask = pool::Ask {
            snapshot,
            route,
            version,
            allowed: decision.allowed,
            avoid: failed.as_deref(),
            now: now_ms,
        };
        let Some(member) = cluster.pick(&ask) else {
            if let Some(answer) = given_up {
                return Ok(*answer);
            }
            let error = if let Some(previous) = last_error {
                // A retry found nowhere (else) to go: report what went wrong with the attempt.
                previous
            } else if decision.restricted {
                ProxyError::ResidencyRefused {
                    jurisdiction: decision
                        .jurisdiction
                        .map_or("-", |j| snapshot.jurisdiction(j))
                        .to_string(),
                    allowed: snapshot.region_names(decision.allowed).join(", "),
                }
            } else {
                ProxyError::NoHealthyUpstream {
                    cluster: cfg.name.clone(),
                }
            };
            return Err(ForwardError {
                error,
                member: failed,
                attempts,
                queued,
            });
        };
        // A slot under the endpoint's cap, if it has one: when all are taken the request waits
        // for one at any member it may use, and its deadline runs from when it got it.
        let (member, slot, now) = match member.health.try_slot() {
            Ok(slot) => (member, slot, now),
            Err(pool::Full) => {
                metrics::counter!(telemetry::UPSTREAM_QUEUED, telemetry::L_CLUSTER => cfg.name.clone())
                    .increment(1);
                let may_use = cluster.may_use(&ask);
                // Boxed: only a request that waits carries the queue's futures.
                let waited = Box::pin(cluster.waitlist.wait(may_use, &cfg.limits)).await;
                let got_at = Instant::now();
                queued += got_at - now;
                match waited {
                    Ok((member, slot)) => (member, slot, got_at),
                    Err(busy) => {
                        metrics::counter!(telemetry::UPSTREAM_BUSY, telemetry::L_CLUSTER => cfg.name.clone(), telemetry::L_REASON => busy.reason())
                            .increment(1);
                        return Err(ForwardError {
                            error: ProxyError::UpstreamBusy {
                                cluster: cfg.name.clone(),
                                why: busy,
                            },
                            member: Some(member),
                            attempts,
                            queued,
                        });
                    }
                }
            }
        };
        attempts += 1;
        // An ejected member was picked: a probe (see `ClusterRuntime::pick`).
        let probe = member.health.ejected(now_ms);
        if probe {
            metrics::counter!(telemetry::UPSTREAM_PROBES, telemetry::L_CLUSTER => cfg.name.clone())
                .increment(1);
        }
        member.health.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = Decrement(&member.health.in_flight);
        let deadline = now + route.request_timeout.unwrap_or(cfg.timeouts.request);
        let outcome = match head.as_ref() {
            // Bodiless HTTP/1.1, or with a small body read whole, goes inline and only reads
            // the head: nothing to copy for a possible retry. The inline connection keeps its
            // own timer for the deadline.
            Some(h) if (bodiless || small_body.is_some()) && cluster.client.inline(&h.headers) => {
                let outgoing = upstream::Outgoing {
                    method: &h.method,
                    target: path.as_str(),
                    headers: &h.headers,
                    body: small_body.as_deref().unwrap_or_default(),
                };
                let times = Times { now, deadline };
                cluster
                    .client
                    .request_inline(member.addr, &member.authority, &outgoing, times)
                    .await
            }
            _ => {
                // The first attempt takes the client's body; a retry is only ever of a
                // bodiless request.
                let upstream_body = match body.take() {
                    Some(b) if !bodiless => {
                        let body = client_body(b, snapshot, route);
                        client_body_end = Some(body.ended());
                        Either::Left(body)
                    }
                    _ => Either::Right(Empty::new()),
                };
                // Kept for a possible retry (bodiless only); otherwise moved (no copy).
                let parts = match (&head, retryable) {
                    (Some(h), true) => Some(h.clone()),
                    _ => head.take(),
                };
                let Some(mut parts) = parts else {
                    return Err(ForwardError {
                        error: ProxyError::NoHealthyUpstream {
                            cluster: cfg.name.clone(),
                        },
                        member: failed,
                        attempts,
                        queued,
                    });
                };
                parts.uri = Uri::from(path.clone());
                let req = Request::from_parts(parts, upstream_body);
                // Boxed: hyper's exchange is several KiB, and bodiless requests (the common
                // case) never need that room in this future.
                tokio::time::timeout_at(
                    deadline,
                    Box::pin(
                        cluster
                            .client
                            .request(member.addr, &member.authority, req, deadline),
                    ),
                )
                .await
                .unwrap_or(Err(UpstreamError::Timeout))
            }
        };
        drop(in_flight);

        let endpoint = || member.addr.to_string();
        // An HTTP/2 upstream said it never processed the request: safe to send again.
        let unprocessed = matches!(&outcome, Err(e) if e.unprocessed());
        let error = match outcome {
            Ok(mut response) => {
                if let Some(slot) = slot {
                    response.body_mut().hold(slot);
                }
                // A gRPC server's trailers-only failure comes with a 200 (only HTTP/2
                // clusters carry gRPC: others are spared the lookup).
                let bad = response.status().is_server_error()
                    || (cfg.protocol == UpstreamProtocol::H2
                        && crate::respond::grpc_failed(response.headers()));
                let ok = !bad;
                // A good head with a body to come is judged at the body's end.
                let endpoint = (ok && cfg.outlier.ejects() && !response.body().is_end_stream())
                    .then(|| (Arc::clone(&member.health), cfg.outlier));
                if endpoint.is_none() {
                    member.health.record_live(ok, &cfg.outlier);
                }
                // An answered probe ends the ejection: at its head, or with its body read.
                if probe && ok && endpoint.is_none() {
                    member.health.restore();
                }
                let watch = (endpoint.is_some() || client_body_end.is_some()).then(|| {
                    Box::new(Watch {
                        probe: probe && endpoint.is_some(),
                        endpoint,
                        judged: None,
                        client_body: client_body_end.take(),
                    })
                });
                // An answer the cluster retries (`retries.on_status`), where a retry may go.
                if bad
                    && cfg.retries.on(response.status().as_u16())
                    && bodiless
                    && attempts <= cfg.retries.attempts
                    && idempotent(&method)
                    && cluster.retry_allowed()
                {
                    metrics::counter!(telemetry::UPSTREAM_RETRIES, telemetry::L_CLUSTER => cfg.name.clone())
                        .increment(1);
                    cluster.retries_in_flight.fetch_add(1, Ordering::Relaxed);
                    _retrying = Some(Decrement(&cluster.retries_in_flight));
                    failed = Some(Arc::clone(&member));
                    // Built where it goes, here and below: one `Forwarded` built first and then
                    // moved on cost every request three copies of it (callgrind).
                    given_up = Some(Box::new(Forwarded {
                        response,
                        member,
                        attempts,
                        queued,
                        watch,
                        failed: bad,
                    }));
                    continue;
                }
                // The request is sent: its header map is kept for a later head.
                if let Some(head) = head {
                    crate::spare::keep(head.headers);
                }
                return Ok(Forwarded {
                    response,
                    member,
                    attempts,
                    queued,
                    watch,
                    failed: bad,
                });
            }
            Err(UpstreamError::Timeout) => ProxyError::Timeout {
                endpoint: endpoint(),
            },
            Err(_)
                if client_body_end
                    .as_ref()
                    .is_some_and(|f| body::client_body_failed(f.load(Ordering::Relaxed))) =>
            {
                // The upstream is not at fault: don't count it against it.
                let how =
                    client_body_end.map_or(body::CLIENT_BODY_GOING, |f| f.load(Ordering::Relaxed));
                return Err(ForwardError {
                    error: client_body_error(how, route),
                    member: Some(member),
                    attempts,
                    queued,
                });
            }
            Err(e) if e.is_connect() => ProxyError::Connect {
                endpoint: endpoint(),
            },
            Err(_) => ProxyError::UpstreamFailed {
                endpoint: endpoint(),
            },
        };
        member.health.record_live(false, &cfg.outlier);
        let may_retry = bodiless
            && attempts <= cfg.retries.attempts
            && !matches!(error, ProxyError::Timeout { .. })
            && (idempotent(&method) || error.nothing_sent() || unprocessed)
            && cluster.retry_allowed();
        if !may_retry {
            // An answer given up for this attempt is better than its failure.
            if let Some(answer) = given_up {
                return Ok(*answer);
            }
            return Err(ForwardError {
                error,
                member: Some(member),
                attempts,
                queued,
            });
        }
        metrics::counter!(telemetry::UPSTREAM_RETRIES, telemetry::L_CLUSTER => cfg.name.clone())
            .increment(1);
        cluster.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        _retrying = Some(Decrement(&cluster.retries_in_flight));
        failed = Some(member);
        last_error = Some(error);
    }
}

/// The most a request body may hold to be read whole and sent inline with its head.
const SMALL_BODY: u64 = 16 * 1024;

/// Whether the head declares a body of at most [`SMALL_BODY`] bytes by `Content-Length` alone
/// (no transfer coding: the length read is then the length declared).
fn small_declared(headers: &http::HeaderMap) -> bool {
    !headers.contains_key(http::header::TRANSFER_ENCODING)
        && crate::classify::declared_length(headers).is_some_and(|n| n <= SMALL_BODY)
}

/// The client's body, bounded by the server's body timeout and minimum rate, and the route's
/// size limit.
fn client_body(b: RequestBody, snapshot: &Snapshot, route: &routes::Route) -> ClientBody {
    let (bytes_per_sec, grace) = snapshot.server.client_body_min_rate;
    let min_rate = (bytes_per_sec > 0).then_some(body::MinRate {
        bytes_per_sec,
        grace,
    });
    ClientBody::new(
        b,
        snapshot.server.client_body_timeout,
        min_rate,
        route.max_request_body,
    )
}

/// What a client's failed body is answered with, by how it ended (`CLIENT_BODY_*`).
fn client_body_error(how: u8, route: &routes::Route) -> ProxyError {
    match how {
        body::CLIENT_BODY_TIMED_OUT => ProxyError::ClientTimeout,
        body::CLIENT_BODY_TOO_LARGE => ProxyError::PayloadTooLarge {
            limit: route.max_request_body.unwrap_or_default(),
        },
        _ => ProxyError::BadRequest("malformed or incomplete request body"),
    }
}

struct Decrement<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
