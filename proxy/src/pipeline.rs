//! The request path, top to bottom, for one request:
//!
//! classify (host, client, request id) → route (`Snapshot::decide`) → rewrite the head
//! (hop-by-hop, `X-Forwarded-*`, `Via`) → forward (endpoint, pool, timeouts, retries) →
//! respond (errors → statuses, in `respond`) → record (metrics, access log; the access line is
//! finished, and a cut answer counted, when the answer's body ends: `LoggedBody`).
//!
//! Stages are plain functions over one `Arc<Active>` loaded once per request, so a reload
//! mid-request never mixes two configs. (No tower layers on the hot path: each would box.)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::cache::TeeBody;
use crate::cache::stage::{Lookup, Served};
use crate::classify::{self, Peer};
use crate::forward::{self, IdleTimeoutBody};
use crate::listen::RequestBody;
use crate::respond::ProxyError;
use crate::rollout::{self, Version as RolloutVersion, Windows};
use crate::state::{Active, Proxy};
use crate::telemetry::{AccessRecord, AnswerEnd, Ending, OpenLine};

/// The region whose endpoint answered, on every proxied response.
pub const SERVED_REGION: http::HeaderName = http::HeaderName::from_static("x-served-region");

/// Body of every response the proxy sends: streamed from upstream, or our own error body.
pub type ProxyBody = Either<TeeBody, Full<Bytes>>;

/// What the record stage needs to know about how the request went.
struct Outcome {
    route: Option<usize>,
    upstream: Option<http::uri::Authority>,
    attempts: u32,
    upstream_time: std::time::Duration,
    /// Of `upstream_time`, the wait for a slot under an endpoint's cap.
    queue_time: std::time::Duration,
    error: Option<ProxyError>,
    decision: Option<routes::Decision>,
    /// What the cache did, when it was consulted.
    cache: Option<crate::cache::Status>,
    /// The request came over HTTPS and the answer carries `server.hsts`.
    hsts: bool,
}

/// Serves one request. Never fails: every error becomes a response here.
pub async fn handle(
    proxy: Arc<Proxy>,
    peer: Peer,
    mut req: Request<RequestBody>,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    if req.uri().path().starts_with(certs::acme::CHALLENGE_PREFIX)
        && let Some(resp) = crate::acme::challenge_response(&proxy, req.uri().path())
    {
        // An ACME CA validating our HTTP-01 challenge; never routed.
        return Ok(resp.map(|body| LoggedBody {
            body: Either::Right(body),
            line: None,
            route: None,
            end: None,
            grpc_call: false,
            grpc: None,
        }));
    }
    let active = proxy.active_full();
    let logs = active.snapshot.server.access_log;
    // A trusted proxy's claims are believed: its request id, forwarding and edge headers.
    let trusted = active.snapshot.is_trusted_proxy(peer.addr.ip());
    let mut ex = Exchange {
        active: &active,
        peer: &peer,
        started,
        request_id: classify::ensure_request_id(req.headers_mut(), trusted),
        method: req.method().clone(),
        protocol: req.version(),
        host: classify::host_of(&req).unwrap_or_default(),
        // Kept for the access log only (the request moves on): the target shares the head's
        // bytes, so this is no copy.
        target: logs.then(|| req.uri().clone()),
        client: classify::client_ip(&active.snapshot, peer.addr.ip(), req.headers()),
        outcome: Outcome {
            route: None,
            upstream: None,
            attempts: 0,
            upstream_time: std::time::Duration::ZERO,
            queue_time: std::time::Duration::ZERO,
            error: None,
            decision: None,
            cache: None,
            hsts: false,
        },
        answered: false,
    };
    // A gRPC call gets the proxy's own failures as gRPC statuses (only HTTP/2 is looked at).
    let grpc = crate::respond::is_grpc(ex.protocol, req.headers());
    let wrong_host = peer
        .sni
        .as_deref()
        .is_some_and(|sni| misdirected(&proxy, sni, &ex.host));
    let result = if wrong_host {
        ex.outcome.hsts = active.hsts.is_some();
        Err(ProxyError::Misdirected)
    } else {
        // Boxed: the request's whole state machine is several KiB, and the service future
        // (this one) is moved by value; a pointer is cheaper to move than the state.
        let forward = pin_boxed!(proxy_request(
            &active,
            &proxy,
            &peer,
            req,
            &ex.host,
            ex.client,
            trusted,
            &ex.request_id,
            &mut ex.outcome,
        ));
        forward.await
    };
    ex.answered = true;
    let mut response = match result {
        Ok(resp) => resp,
        Err(err) => {
            let id = ex.request_id.to_str().unwrap_or_default();
            if let (
                ProxyError::ResidencyRefused {
                    jurisdiction,
                    allowed,
                },
                Some(d),
            ) = (&err, &ex.outcome.decision)
            {
                crate::telemetry::audit_residency_refusal(
                    id,
                    &active.snapshot.route(d.route).name,
                    jurisdiction,
                    d.jurisdiction_source.as_str(),
                    allowed,
                );
            }
            let resp = if grpc {
                err.into_grpc_response(id)
            } else {
                err.into_response(id)
            };
            ex.outcome.error = Some(err);
            resp.map(Either::Right)
        }
    };
    // The route's changes to its answers: upstream's, the cache's and the proxy's own alike.
    if let Some(edits) = ex
        .outcome
        .route
        .and_then(|i| active.route_headers[i].response.as_ref())
    {
        edits.apply(response.headers_mut());
    }
    // An upstream's own policy for its host stands.
    if let Some(hsts) = active.hsts.as_ref().filter(|_| ex.outcome.hsts)
        && !response
            .headers()
            .contains_key(header::STRICT_TRANSPORT_SECURITY)
    {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }

    // record: a failure by its own status, also when a gRPC call got it as a gRPC status
    let head_time = started.elapsed();
    let status = ex
        .outcome
        .error
        .as_ref()
        .map_or_else(|| response.status(), ProxyError::status);
    if let Some(i) = ex.outcome.route {
        active.route_metrics[i].record(status, head_time.as_secs_f64());
    }
    // The access line is written, and a cut answer counted, when the body ends (`LoggedBody`).
    let line = if logs {
        ex.record(status.as_u16(), head_time).open(started)
    } else {
        None
    };
    let s = response.status();
    // An answer that sends no body is complete with its head.
    let end = (ex.method == Method::HEAD
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED)
        .then_some(AnswerEnd::Complete);
    let route = ex
        .outcome
        .route
        .map(|i| Arc::clone(&active.route_metrics[i]));
    // An upstream's answer to a gRPC call: its status is in its trailers, or in its head when
    // it has no body (the proxy's own gRPC answers count by their HTTP status, above).
    let grpc_call = grpc && ex.outcome.error.is_none() && ex.outcome.upstream.is_some();
    let grpc = if grpc_call {
        crate::respond::grpc_code(response.headers())
    } else {
        None
    };
    Ok(response.map(|body| LoggedBody {
        body,
        line,
        route,
        end,
        grpc_call,
        grpc,
    }))
}

/// One request as the record stage sees it. Dropped before its answer (the client went away
/// while the request was routed, queued or forwarded), it counts the request in its route's
/// `frontdoor_aborted_total{by="client"}` and writes its access line with status `499`
/// (nginx's "client closed request") and `end` `client_gone`.
struct Exchange<'a> {
    active: &'a Active,
    peer: &'a Peer,
    started: Instant,
    request_id: HeaderValue,
    method: Method,
    protocol: Version,
    host: String,
    /// The request's target, when there is an access log.
    target: Option<http::Uri>,
    client: std::net::IpAddr,
    outcome: Outcome,
    answered: bool,
}

/// The access log's status for a client that went away before its answer.
const CLIENT_CLOSED: u16 = 499;

impl Exchange<'_> {
    fn record(&self, status: u16, head_time: std::time::Duration) -> AccessRecord<'_> {
        let outcome = &self.outcome;
        AccessRecord {
            request_id: self.request_id.to_str().unwrap_or_default(),
            client: self.client,
            client_text: self.peer.text_if(self.client),
            method: self.method.as_str(),
            host: &self.host,
            path: self.target.as_ref().map_or("", http::Uri::path),
            protocol: self.protocol,
            route: outcome
                .route
                .map(|i| self.active.snapshot.routes[i].name.as_str())
                .unwrap_or("-"),
            upstream: outcome.upstream.as_ref().map_or("", |a| a.as_str()),
            status,
            error: outcome.error.as_ref().map(ProxyError::code).unwrap_or(""),
            attempts: outcome.attempts,
            upstream_time: outcome.upstream_time,
            queue_time: outcome.queue_time,
            head_time,
            cache: outcome.cache.map_or("-", crate::cache::Status::as_str),
        }
    }
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Some(i) = self.outcome.route {
            self.active.route_metrics[i].ended(AnswerEnd::ClientGone);
        }
        if self.target.is_some() {
            let waited = self.started.elapsed();
            self.record(CLIENT_CLOSED, waited).emit(Ending {
                bytes: 0,
                end: AnswerEnd::ClientGone,
                total: waited,
                grpc: None,
            });
        }
    }
}

/// Every answer's body on its way to the client. It notes how it ends, and, when the request
/// has an access line, counts the bytes it hands over. When it is done with (dropped by the
/// connection: at its end, or when the connection gave it up), the line is written and an
/// answer that did not reach its client whole is counted in its route's
/// `frontdoor_aborted_total`.
pub struct LoggedBody {
    body: ProxyBody,
    line: Option<OpenLine>,
    route: Option<Arc<crate::telemetry::RouteMetrics>>,
    /// How the body ended, once it said so (the first word stands).
    end: Option<AnswerEnd>,
    /// A gRPC call an upstream answered: its trailers are read for its status.
    grpc_call: bool,
    /// The call's status, from the upstream's trailers or trailers-only head.
    grpc: Option<u8>,
}

impl std::fmt::Debug for LoggedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedBody")
            .field("logged", &self.line.is_some())
            .finish_non_exhaustive()
    }
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::listen::BoxError;

    #[inline]
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        let poll = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(line) = &mut this.line {
                    line.sent(frame.data_ref().map_or(0, |d| d.len() as u64));
                }
                if this.grpc_call
                    && let Some(trailers) = frame.trailers_ref()
                {
                    this.grpc = crate::respond::grpc_code(trailers);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                this.end
                    .get_or_insert(if e.is::<forward::BodyIdleTimeout>() {
                        AnswerEnd::UpstreamTimeout
                    } else if e.is::<forward::ClientBodyBroke>() {
                        AnswerEnd::ClientGone
                    } else {
                        AnswerEnd::UpstreamFailed
                    });
            }
            Poll::Ready(None) => {
                this.end.get_or_insert(AnswerEnd::Complete);
            }
            Poll::Pending => {}
        }
        poll
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        use hyper::body::Body;
        if self.line.is_none() && self.route.is_none() {
            return;
        }
        // A server may stop polling at the last frame (`is_end_stream`) rather than at `None`.
        let end = self.end.unwrap_or(if self.body.is_end_stream() {
            AnswerEnd::Complete
        } else {
            AnswerEnd::ClientGone
        });
        if let Some(route) = &self.route {
            route.ended(end);
            if let Some(code) = self.grpc {
                route.grpc_answered(code);
            }
        }
        if let Some(line) = self.line.take() {
            line.finish(end, self.grpc);
        }
    }
}

/// Whether a request for `host` came on a TLS connection whose certificate is not for it:
/// the certificate shown for the name the client asked for (`sni`) is not the one held for
/// `host` by name (a name no certificate is for is covered by none, the default included).
/// The same name (the usual case) costs a comparison.
fn misdirected(proxy: &Proxy, sni: &str, host: &str) -> bool {
    if host.is_empty() || sni.eq_ignore_ascii_case(host) {
        return false;
    }
    let Some(resolver) = &proxy.tls else {
        return false;
    };
    let store = resolver.current();
    match (store.find(Some(sni)), store.named(host)) {
        (Some(shown), Some(wanted)) => !Arc::ptr_eq(&shown, &wanted),
        _ => true,
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy_request(
    active: &Arc<Active>,
    proxy: &Proxy,
    peer: &Peer,
    mut req: Request<RequestBody>,
    host: &str,
    client: std::net::IpAddr,
    trusted: bool,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<ProxyBody>, ProxyError> {
    let snapshot = &active.snapshot;
    // Every answer over HTTPS carries the HSTS policy, when there is one (noted here, where
    // the request is at hand, for the answer `handle` makes of any outcome).
    outcome.hsts = active.hsts.is_some() && classify::came_over_https(peer, trusted, req.headers());
    // HTTP/1.1 must send `Host` (RFC 9112 §3.2); HTTP/1.0 may not, and is then routed among the
    // routes for any host, as a default server would take it (the upstream gets its endpoint's
    // authority as `Host`). A health check that sends `OPTIONS / HTTP/1.0` is one such client.
    if host.is_empty() && req.version() != http::Version::HTTP_10 {
        return Err(ProxyError::BadRequest("missing Host"));
    }
    classify::check_framing(&req)?;
    let method = req.method();
    if *method == Method::TRACE || *method == Method::CONNECT || method.as_str() == "TRACK" {
        return Err(ProxyError::MethodNotAllowed);
    }
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > snapshot.server.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    // One normal form of the path for every rule, and the same form goes upstream.
    // After this the request's path is that form: `req.uri().path()` below.
    let normalized = match routes::normalize_path(req.uri().path()) {
        None => return Err(ProxyError::BadRequest("invalid request path")),
        // A borrowed path is the request's own; an owned one may still be the same text.
        Some(std::borrow::Cow::Owned(path)) if path != req.uri().path() => Some(path),
        Some(_) => None,
    };
    if let Some(path) = normalized {
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(
            target
                .parse()
                .map_err(|_| ProxyError::BadRequest("invalid request path"))?,
        );
        *req.uri_mut() = http::Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("invalid request path"))?;
    }

    // classify + route: jurisdiction facts (edge headers only from trusted peers), decision
    let geo = active.geoip.as_ref().and_then(|g| g.country(client));
    let geo_text = geo.as_ref().and_then(|c| std::str::from_utf8(c).ok());
    let decision = {
        let headers = req.headers();
        let text = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        // For routes with `methods` and `match_headers` (looked up only for them).
        let by_request = snapshot.routes_by_request();
        let by_name = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let c = &active.classify_headers;
        let facts = routes::RequestFacts {
            host,
            path: req.uri().path(),
            tenant: c.tenant.as_ref().and_then(text),
            country: if trusted { text(&c.country) } else { None },
            jurisdiction: if trusted { text(&c.jurisdiction) } else { None },
            geoip_country: geo_text,
            method: if by_request {
                Some(req.method().as_str())
            } else {
                None
            },
            header: if by_request {
                Some(routes::HeaderSource(&by_name))
            } else {
                None
            },
        };
        snapshot.decide(&facts).ok_or(ProxyError::NoRoute)?
    };
    outcome.route = Some(decision.route.0);
    outcome.decision = Some(decision);
    let route = snapshot.route(decision.route);
    // Plain HTTP where the route wants HTTPS: the same URL there, and nothing goes upstream.
    if route.https_redirect && !classify::came_over_https(peer, trusted, req.headers()) {
        let port = proxy.https_redirect_port(&snapshot.server);
        return to_https(&req, host, port, request_id);
    }
    // A body declared larger than the route takes never goes upstream; one without a length
    // is counted as it streams (`forward::body::ClientBody`).
    if let Some(limit) = route.max_request_body
        && classify::declared_length(req.headers()).is_some_and(|n| n > limit)
    {
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    if !trusted {
        // Edge classification headers from anyone else are ignored and not passed on. Rarely
        // sent: one look over the names (no hashing) finds whether there is anything to remove.
        let c = &active.classify_headers;
        if req
            .headers()
            .keys()
            .any(|k| *k == c.country || *k == c.jurisdiction)
        {
            req.headers_mut().remove(&c.country);
            req.headers_mut().remove(&c.jurisdiction);
        }
    }

    // limit: the route's token bucket for this client key
    if let Some(limiter) = &active.limiters[decision.route.0] {
        let ip_text;
        let key = match &limiter.config.key {
            routes::RateKey::Route => "",
            routes::RateKey::Header(h) => {
                match req.headers().get(h.as_str()).and_then(|v| v.to_str().ok()) {
                    Some(v) => v,
                    None => {
                        ip_text = classify::ip_text(client);
                        &ip_text
                    }
                }
            }
            routes::RateKey::Ip => {
                ip_text = classify::ip_text(client);
                &ip_text
            }
        };
        if let Err(retry_after_secs) = limiter.check(key) {
            metrics::counter!(crate::telemetry::RATE_LIMITED, crate::telemetry::L_ROUTE => route.name.clone()).increment(1);
            return Err(ProxyError::RateLimited { retry_after_secs });
        }
    }

    // rollout: which version (and cluster) serves this request
    let mut target = (route.cluster, route.version.as_deref());
    let mut set_cookie = None;
    let mut arm: Option<(Arc<Windows>, RolloutVersion)> = None;
    // Stable serves this one, and a copy goes to the candidate (`mirror_percent`).
    let mut mirrored = false;
    if let Some(cfg) = &route.rollout {
        let table = proxy.rollouts.table();
        if let Some(rr) = table.by_route.get(&route.name) {
            let who = rollout::Who {
                client,
                trusted,
                tls: peer.tls,
            };
            let assigned = rollout::assign(&route.name, &rr.state, req.headers(), who);
            set_cookie = assigned.set_cookie;
            let mut version = assigned.version;
            if version == RolloutVersion::Candidate {
                let candidate = &active.upstreams.clusters[cfg.candidate_cluster.0];
                let regions = !snapshot.regions.is_empty();
                let wanted = cfg.candidate_version.as_deref();
                // The split honours residency: with no allowed candidate, stable serves.
                if !candidate.can_serve(wanted, decision.allowed, regions) {
                    if !candidate.can_serve(wanted, snapshot.all_regions(), regions) {
                        // Not residency: the candidate has no healthy endpoint at all. Its
                        // users see stable; the analysis sees a failed candidate request.
                        rr.windows.record(
                            RolloutVersion::Candidate,
                            None,
                            true,
                            std::time::Duration::ZERO,
                            crate::clock::now_ms(),
                        );
                    }
                    version = RolloutVersion::Stable;
                }
            }
            target = match version {
                RolloutVersion::Candidate => {
                    (cfg.candidate_cluster, cfg.candidate_version.as_deref())
                }
                RolloutVersion::Stable => (cfg.stable_cluster, cfg.stable_version.as_deref()),
            };
            mirrored = version == RolloutVersion::Stable
                && cfg.mirror_percent > 0.0
                && matches!(
                    rr.state.phase,
                    rollout::Phase::Progressing | rollout::Phase::Paused
                )
                && rollout::mirror::copyable(
                    req.method(),
                    hyper::body::Body::is_end_stream(req.body()),
                )
                && active.upstreams.clusters[cfg.candidate_cluster.0].can_serve(
                    cfg.candidate_version.as_deref(),
                    decision.allowed,
                    !snapshot.regions.is_empty(),
                )
                && rr.windows.mirror.turn(cfg.mirror_percent);
            arm = Some((Arc::clone(&rr.windows), version));
        }
    }

    // upgrades: WebSocket only where the route allows it; never h2c (a smuggling tunnel).
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .map(|v| v.as_bytes().to_ascii_lowercase());
    if upgrade.as_deref() == Some(b"h2c") {
        return Err(ProxyError::BadRequest("Upgrade: h2c is not accepted"));
    }
    let websocket = route.websocket
        && req.version() == Version::HTTP_11
        && upgrade.as_deref() == Some(b"websocket");
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    // rewrite the head
    let (mut head, body) = req.into_parts();
    // HTTP/2 :authority wins over a Host header (RFC 9113 §8.3.1); upstream gets it as Host.
    if let Some(authority) = head.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        head.headers.insert(header::HOST, v);
    }
    // `TE: trailers` (gRPC clients send it, and servers may refuse a call without it) says the
    // client takes trailers, which the proxy passes on: an HTTP/2 upstream gets it again after
    // the hop-by-hop fields go (the one `TE` RFC 9113 §8.2.2 allows there).
    let te_trailers = active.upstreams.clusters[target.0.0].config.protocol
        == routes::UpstreamProtocol::H2
        && classify::takes_trailers(&head.headers);
    classify::strip_hop_by_hop(&mut head.headers, websocket);
    if te_trailers {
        head.headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if head.version >= Version::HTTP_2 {
        classify::join_cookie_crumbs(&mut head.headers);
    }
    // From an untrusted peer, our own x-frontdoor-* headers (read above, e.g. the version
    // override) stop here, and so do claims of what an earlier proxy saw (`X-Forwarded-*` are
    // replaced below). From any peer, so do those names spelled with `_` (`X_Forwarded_For`),
    // which CGI, WSGI and Rack read as the real ones.
    let c = &active.classify_headers;
    let ours: Vec<header::HeaderName> = head
        .headers
        .keys()
        .filter(|k| classify::stops_here(k.as_str(), trusted, c))
        .cloned()
        .collect();
    for k in ours {
        head.headers.remove(k);
    }
    classify::set_forwarded(&mut head.headers, peer, trusted, host);
    classify::add_via(&mut head.headers, head.version, &active.via);
    // The route's own changes, before the cache: a stored answer varies on what upstream saw.
    if let Some(edits) = &active.route_headers[decision.route.0].request {
        edits.apply(&mut head.headers);
    }

    // The candidate's copy, as stable gets the request (before the cache may make it
    // conditional); sent only if the request goes upstream, and never of a tunnel. Boxed: the
    // future holds a pointer across the lookup, not a head's room.
    let copy = if mirrored && !websocket {
        Some(Box::new(head.clone()))
    } else {
        None
    };

    // cache: answer from the store, or plan the exchange (coalesced, maybe conditional). Not
    // for a tunnel, nor for a request with a body: a `GET`'s body is no part of the key, and
    // an origin that reads it would have one client's answer stored for everyone.
    let eligible = !websocket && hyper::body::Body::is_end_stream(&body);
    let mut plan = match crate::cache::stage::lookup(
        active, &decision, target.0, target.1, host, &mut head, eligible,
    )
    .await?
    {
        Lookup::Serve(served) => {
            return Ok(from_cache(active, served, request_id, set_cookie, outcome));
        }
        Lookup::Forward(plan) => plan,
    };
    if let (Some(copy), Some((windows, _))) = (copy, &arm) {
        rollout::mirror::send(active, windows, route, decision, *copy);
    }

    // forward
    let cluster = &active.upstreams.clusters[target.0.0];
    let sent = Instant::now();
    let result = forward::send(
        cluster,
        snapshot,
        &decision,
        target.1,
        head,
        Some(body),
        sent,
    )
    .await;
    let answered = Instant::now();
    let upstream_time = answered - sent;
    outcome.upstream_time = upstream_time;
    if let Some((windows, version)) = &arm {
        // What the analysis judges: upstream-caused failures and 5xx, and time to the head.
        windows.judge(*version, &result, upstream_time, answered);
    }
    let forwarded = match result {
        Ok(f) => f,
        Err(e) => {
            outcome.attempts = e.attempts;
            outcome.queue_time = e.queued;
            if let Some(served) = plan.on_error(active) {
                // stale-if-error: the stored response stands in for the failed exchange.
                return Ok(from_cache(active, served, request_id, set_cookie, outcome));
            }
            outcome.upstream = e.member.map(|m| m.authority.clone());
            return Err(e.error);
        }
    };
    outcome.attempts = forwarded.attempts;
    outcome.queue_time = forwarded.queued;
    outcome.upstream = Some(forwarded.member.authority.clone());
    if let Some(served) = plan.on_response(
        active,
        forwarded.response.status(),
        forwarded.response.headers(),
    ) {
        // A 304 to our revalidation, or a 5xx replaced by a stale answer.
        return Ok(from_cache(active, served, request_id, set_cookie, outcome));
    }
    outcome.cache = (plan.status != crate::cache::Status::Bypass || active.cache.store.is_some())
        .then_some(plan.status);

    // respond
    let mut response = forwarded.response;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match client_upgrade {
            Some(client_side) => tunnel(client_side, hyper::upgrade::on(&mut response)),
            None => {
                return Err(ProxyError::UpstreamFailed {
                    endpoint: forwarded.member.authority.to_string(),
                });
            }
        }
    }
    let (mut parts, body) = response.into_parts();
    classify::strip_hop_by_hop(&mut parts.headers, switching);
    classify::add_via(&mut parts.headers, parts.version, &active.via);
    let mut watch = forwarded.watch;
    // A failed head was counted as the version's error already; its body is not judged again.
    if let Some((windows, version)) = arm
        && !forwarded.failed
    {
        watch.get_or_insert_default().judged = Some(rollout::Judged {
            windows,
            version,
            region: forwarded.member.region,
        });
    }
    let body = IdleTimeoutBody::new(body, cluster.config.timeouts.body_idle).watched(watch);
    let body = plan.respond(
        active,
        &mut parts,
        body,
        forwarded.member.region,
        &forwarded.member.authority,
    );
    parts
        .headers
        .insert(classify::REQUEST_ID, request_id.clone());
    if let Some(region) = forwarded.member.region {
        parts
            .headers
            .insert(SERVED_REGION, active.region_header(region));
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Ok(Response::from_parts(parts, Either::Left(body)))
}

/// The redirect of a plain-HTTP request to the same URL over HTTPS (`host` is the request's,
/// in routing's form: lower case, without its port): 301 for `GET` and `HEAD`, 308 for other
/// methods, which a client repeats with their body (RFC 9110 §15.4.9).
fn to_https<B>(
    req: &Request<B>,
    host: &str,
    port: u16,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    if host.is_empty() {
        // HTTP/1.0 without `Host`: there is no name to send the client to.
        return Err(ProxyError::BadRequest("a redirect to HTTPS needs a Host"));
    }
    let location = HeaderValue::try_from(https_location(host, port, req.uri()))
        .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(classify::REQUEST_ID, request_id.clone());
    Ok(resp)
}

/// Where a plain-HTTP request for `uri` on `host` is sent over HTTPS: the same path and query
/// at `port` (443 is not written).
pub(crate) fn https_location(host: &str, port: u16, uri: &http::Uri) -> String {
    let target = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    // `OPTIONS *` has no resource of its own: the redirect names the host's root.
    let target = if target.starts_with('/') { target } else { "/" };
    if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    }
}

/// A stored response on its way out: the same per-request headers as a proxied one.
fn from_cache(
    active: &Active,
    served: Served,
    request_id: &HeaderValue,
    set_cookie: Option<HeaderValue>,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    outcome.cache = Some(served.status);
    outcome.upstream = Some(served.upstream);
    let (mut parts, body) = served.response.into_parts();
    parts
        .headers
        .insert(classify::REQUEST_ID, request_id.clone());
    if let Some(region) = served.region {
        parts
            .headers
            .insert(SERVED_REGION, active.region_header(region));
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    Response::from_parts(parts, Either::Right(body))
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}
