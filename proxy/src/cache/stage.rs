//! The cache stage of the request path: before forwarding, answer from the store, wait for
//! another request's fetch, or plan the upstream exchange (plain, or conditional to revalidate
//! a stored response); after it, turn a 304 or an upstream failure into a stored answer, apply
//! the header rules, and tee a storable body into the store.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use routes::cache::{Directives, Usability};
use routes::{ClusterId, Decision, RegionId};

use super::{
    Cache, CacheRuntime, Entry, FillGuard, Status, TeeBody, Turn, entry_for, not_modified,
    not_modified_headers, refreshed, request_directives, storable,
};
use crate::clock::unix_now;
use crate::forward::{self, IdleTimeoutBody};
use crate::respond::ProxyError;
use crate::state::Active;

/// A response from the store.
#[derive(Debug)]
pub struct Served {
    pub response: Response<Full<Bytes>>,
    pub region: Option<RegionId>,
    pub upstream: http::uri::Authority,
    pub status: Status,
}

/// Before forwarding: answer now, or forward with this plan.
#[derive(Debug)]
pub enum Lookup {
    Serve(Served),
    Forward(Plan),
}

/// What to do around the upstream exchange.
#[derive(Debug)]
pub struct Plan {
    /// `x-cache` for the upstream's response: `MISS` or `BYPASS`.
    pub status: Status,
    pub rule: Option<usize>,
    pub authenticated: bool,
    cache: Option<Arc<Cache>>,
    /// Leading the fetch of this key: the response may be stored.
    guard: Option<FillGuard>,
    /// Revalidating this stored response.
    stale: Option<Arc<Entry>>,
    request_cc: Directives,
    /// The client's request headers (secondary keys, its own conditionals).
    request: Option<HeaderMap>,
    method: Method,
    host: String,
    target: String,
    request_time: u64,
}

/// Request headers that make a request conditional.
const CONDITIONALS: [header::HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Writes the request's key text into `out` ([`super::key_text`]): its scope (the residency
/// jurisdiction when restricted, the serving cluster and version, the scheme the upstream is
/// told), host and target.
///
/// The scheme is the `X-Forwarded-Proto` that goes upstream (the listener's, or a trusted
/// proxy's), as nginx's default key holds `$scheme`: an origin answers a plain-HTTP request
/// with a redirect to HTTPS, which served from the cache to HTTPS clients would send them
/// round for ever.
fn write_key(
    out: &mut String,
    active: &Active,
    decision: &Decision,
    cluster: ClusterId,
    version: Option<&str>,
    head: &Parts,
    host: &str,
) {
    let scheme = head
        .headers
        .get(&crate::classify::X_FORWARDED_PROTO)
        .map_or(&b""[..], |v| v.as_bytes());
    let s = &active.snapshot;
    let jurisdiction = match (decision.restricted, decision.jurisdiction) {
        (true, Some(j)) => s.jurisdiction(j),
        (true, None) => "restricted",
        (false, _) => "*",
    };
    let scope = [
        jurisdiction,
        s.cluster(cluster).name.as_str(),
        version.unwrap_or("-"),
        std::str::from_utf8(scheme).unwrap_or("?"),
    ];
    let target = target_of(head);
    // Room for all of it at once (separators included), not grown part by part.
    out.reserve(scope.iter().map(|p| p.len() + 1).sum::<usize>() + host.len() + target.len() + 1);
    super::key_text(out, &scope, host, target);
}

/// The plan of a request that goes upstream after its lookup: the client's own headers are
/// kept (secondary keys, its conditionals) before a stored response's validators (`stale`,
/// revalidating it) replace its conditionals. Copied only here, so a hit copies nothing.
fn forward_after_lookup(
    mut plan: Plan,
    head: &mut Parts,
    request_cc: Directives,
    host: &str,
    stale: Option<Arc<Entry>>,
) -> Lookup {
    plan.request = Some(head.headers.clone());
    plan.request_cc = request_cc;
    plan.host = host.to_string();
    plan.target = target_of(head).to_string();
    if let Some(entry) = stale {
        set_validators(&mut head.headers, &entry);
        plan.stale = Some(entry);
    }
    plan.request_time = unix_now();
    Lookup::Forward(plan)
}

fn target_of(head: &Parts) -> &str {
    head.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// Looks the request up. `head` is the rewritten request; its conditionals are replaced by the
/// stored validators when revalidating.
#[allow(clippy::too_many_arguments)]
pub async fn lookup(
    active: &Arc<Active>,
    decision: &Decision,
    cluster: ClusterId,
    version: Option<&str>,
    host: &str,
    head: &mut Parts,
    eligible: bool,
) -> Result<Lookup, ProxyError> {
    let rt = &active.cache;
    let policy = &active.snapshot.cache;
    let rule = if rt.rules.is_empty() {
        None
    } else {
        policy.rule_for(decision.route, host, head.uri.path())
    };
    let mut plan = Plan {
        status: Status::Bypass,
        rule,
        authenticated: false,
        cache: None,
        guard: None,
        stale: None,
        request_cc: Directives::default(),
        request: None,
        method: head.method.clone(),
        host: String::new(),
        target: String::new(),
        request_time: 0,
    };
    if rule.is_none() && rt.store.is_none() {
        return Ok(Lookup::Forward(plan));
    }
    plan.authenticated = rt.authenticated(&head.headers);
    let Some(cache) = &rt.store else {
        return Ok(Lookup::Forward(plan));
    };
    let safe = matches!(
        head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !safe {
        // Unsafe methods invalidate what is stored for the URL (RFC 9111 §4.4).
        plan.cache = Some(Arc::clone(cache));
        plan.host = host.to_string();
        plan.target = target_of(head).to_string();
        return Ok(Lookup::Forward(plan));
    }
    let no_store_rule = rule.is_some_and(|i| rt.rules[i].no_store);
    let cacheable_method = head.method == Method::GET || head.method == Method::HEAD;
    let request_cc = request_directives(&head.headers);
    if !eligible || no_store_rule || !cacheable_method || request_cc.no_store {
        cache.record(Status::Bypass);
        return Ok(Lookup::Forward(plan));
    }
    plan.status = Status::Miss;
    plan.cache = Some(Arc::clone(cache));
    let mut key_text = String::new();
    write_key(
        &mut key_text,
        active,
        decision,
        cluster,
        version,
        head,
        host,
    );
    // A key of its own only for a miss (to lead or wait for its fetch): one copy of the text.
    let key = |text: &str| super::Key::from(text);
    let heuristic = policy.heuristic;
    let wait = active
        .snapshot
        .route(decision.route)
        .request_timeout
        .unwrap_or(active.upstreams.clusters[cluster.0].config.timeouts.request);
    let is_head = head.method == Method::HEAD;
    for attempt in 0..2 {
        let now = unix_now();
        let entry = cache
            .lookup(key_text.as_str(), &head.headers, decision.allowed)
            .filter(|e| !plan.authenticated || e.for_authenticated);
        if let Some(entry) = entry {
            match entry.facts.usability(&request_cc, now, heuristic) {
                Usability::Fresh => {
                    return Ok(Lookup::Serve(serve(
                        &entry,
                        Status::Hit,
                        head,
                        now,
                        rt,
                        cache,
                    )));
                }
                Usability::StaleAccepted => {
                    return Ok(Lookup::Serve(serve(
                        &entry,
                        Status::Stale,
                        head,
                        now,
                        rt,
                        cache,
                    )));
                }
                Usability::StaleWhileRevalidate => {
                    if let Some(guard) = cache.try_lead(&key(&key_text)) {
                        revalidate_in_background(
                            Arc::clone(active),
                            guard,
                            Arc::clone(&entry),
                            head,
                            *decision,
                            cluster,
                            version.map(str::to_string),
                            rule,
                        );
                    }
                    return Ok(Lookup::Serve(serve(
                        &entry,
                        Status::Stale,
                        head,
                        now,
                        rt,
                        cache,
                    )));
                }
                Usability::Revalidate => {
                    if request_cc.only_if_cached {
                        // Never to the origin (RFC 9111 §5.2.1.7).
                        cache.record(Status::Miss);
                        return Err(ProxyError::NotCached);
                    }
                    if is_head {
                        return Ok(forward_after_lookup(plan, head, request_cc, host, None));
                    }
                    match cache.join(&key(&key_text)) {
                        Turn::Leader(guard) => {
                            plan.guard = Some(guard);
                            let entry = Some(entry);
                            return Ok(forward_after_lookup(plan, head, request_cc, host, entry));
                        }
                        Turn::Follower(mut rx) if attempt == 0 => {
                            let _ = tokio::time::timeout(wait, rx.changed()).await;
                            continue;
                        }
                        Turn::Follower(_) => {
                            let entry = Some(entry);
                            return Ok(forward_after_lookup(plan, head, request_cc, host, entry));
                        }
                    }
                }
            }
        }
        if request_cc.only_if_cached {
            cache.record(Status::Miss);
            return Err(ProxyError::NotCached);
        }
        if is_head {
            break;
        }
        match cache.join(&key(&key_text)) {
            Turn::Leader(guard) => {
                plan.guard = Some(guard);
                break;
            }
            Turn::Follower(mut rx) if attempt == 0 => {
                let _ = tokio::time::timeout(wait, rx.changed()).await;
            }
            Turn::Follower(_) => break,
        }
    }
    Ok(forward_after_lookup(plan, head, request_cc, host, None))
}

/// Replaces the client's conditionals with the stored response's validators.
fn set_validators(headers: &mut HeaderMap, entry: &Entry) {
    for name in &CONDITIONALS {
        headers.remove(name);
    }
    let (etag, last_modified) = entry.validators();
    if let Some(v) = etag {
        headers.insert(header::IF_NONE_MATCH, v);
    }
    if let Some(v) = last_modified {
        headers.insert(header::IF_MODIFIED_SINCE, v);
    }
}

/// A response from a stored entry: `Age`, the status header, a 304 when the client's own
/// conditionals match, no body for HEAD.
fn serve(
    entry: &Entry,
    status: Status,
    request: &Parts,
    now: u64,
    rt: &CacheRuntime,
    cache: &Cache,
) -> Served {
    cache.record(status);
    serve_entry(entry, status, &request.method, &request.headers, now, rt)
}

fn serve_entry(
    entry: &Entry,
    status: Status,
    method: &Method,
    request: &HeaderMap,
    now: u64,
    rt: &CacheRuntime,
) -> Served {
    let (code, mut headers, body) = if not_modified(request, entry) {
        (
            StatusCode::NOT_MODIFIED,
            not_modified_headers(entry),
            Bytes::new(),
        )
    } else if *method == Method::HEAD {
        (entry.status, entry.headers.clone(), Bytes::new())
    } else {
        (entry.status, entry.headers.clone(), entry.body.clone())
    };
    headers.insert(header::AGE, HeaderValue::from(entry.facts.current_age(now)));
    if let Some(name) = &rt.status_header {
        headers.insert(name.clone(), HeaderValue::from_static(status.as_str()));
    }
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    Served {
        response,
        region: entry.region,
        upstream: entry.upstream.clone(),
        status,
    }
}

impl Plan {
    /// The upstream failed: a stale entry may answer if `stale-if-error` allows.
    pub fn on_error(&mut self, active: &Active) -> Option<Served> {
        let entry = self.stale.as_ref()?;
        let now = unix_now();
        let heuristic = active.snapshot.cache.heuristic;
        if !entry.facts.stale_if_error(&self.request_cc, now, heuristic) {
            return None;
        }
        let cache = self.cache.as_ref()?;
        cache.record(Status::Stale);
        let request = self.request.as_ref()?;
        Some(serve_entry(
            entry,
            Status::Stale,
            &self.method,
            request,
            now,
            &active.cache,
        ))
    }

    /// A response head arrived. A 304 to our revalidation refreshes the stored response and
    /// answers from it; a 5xx may be replaced by a stale answer.
    pub fn on_response(
        &mut self,
        active: &Active,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Served> {
        let entry = self.stale.clone()?;
        if status == StatusCode::NOT_MODIFIED {
            let now = unix_now();
            let cache = self.cache.as_ref()?;
            let fresh = refreshed(
                &active.snapshot.cache,
                &active.cache,
                self.rule,
                &entry,
                headers,
                self.request_time,
                now,
            );
            let served = serve_entry(
                &fresh,
                Status::Revalidated,
                &self.method,
                self.request.as_ref()?,
                now,
                &active.cache,
            );
            if let Some(guard) = self.guard.take() {
                cache.insert(guard.key.clone(), fresh);
            }
            cache.record(Status::Revalidated);
            return Some(served);
        }
        if matches!(status.as_u16(), 500 | 502 | 503 | 504) {
            return self.on_error(active);
        }
        None
    }

    /// Applies the rule's headers and the status header, invalidates on unsafe methods, and
    /// wraps the body, filling the store when the response may be stored.
    pub fn respond(
        mut self,
        active: &Active,
        parts: &mut http::response::Parts,
        body: IdleTimeoutBody,
        region: Option<RegionId>,
        upstream: &http::uri::Authority,
    ) -> TeeBody {
        let rt = &active.cache;
        let policy = &active.snapshot.cache;
        rt.apply_overrides(self.rule, &mut parts.headers);
        // Shareable with authenticated requests only on the origin's (or a set rule's) word.
        let for_authenticated = self.guard.is_some()
            && super::facts_of(policy, parts.status, &parts.headers, 0, 0)
                .directives
                .allows_authenticated();
        if !self.authenticated {
            rt.apply_defaults(self.rule, &mut parts.headers);
        }
        let status_header = rt
            .status_header
            .as_ref()
            .filter(|_| rt.store.is_some())
            .map(|name| (name.clone(), HeaderValue::from_static(self.status.as_str())));
        let Some(cache) = self.cache.take() else {
            parts.headers.extend(status_header);
            return TeeBody::plain(body);
        };
        if self.request.is_none() {
            // An unsafe method: a success invalidates the URL and its Location (RFC 9111 §4.4).
            if parts.status.is_success() || parts.status.is_redirection() {
                cache.invalidate_url(&self.host, &self.target);
                for name in [header::LOCATION, header::CONTENT_LOCATION] {
                    if let Some(path) = parts
                        .headers
                        .get(&name)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| same_host_target(v, &self.host))
                    {
                        cache.invalidate_url(&self.host, &path);
                    }
                }
            }
            parts.headers.extend(status_header);
            return TeeBody::plain(body);
        }
        let mut out = None;
        if let (Some(guard), Some(request)) = (self.guard.take(), self.request.as_ref()) {
            let limits = cache.limits;
            let length = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let entry = entry_for(
                policy,
                request,
                parts.status,
                &parts.headers,
                self.request_time,
                unix_now(),
                region,
                upstream,
            );
            if let Some(mut entry) = entry {
                entry.for_authenticated = for_authenticated;
                // Worth keeping: fresh for a while, revalidatable, or servable stale.
                let d = &entry.facts.directives;
                let useful = entry.facts.lifetime(policy.heuristic).0 > 0
                    || entry.has_validator()
                    || d.stale_if_error.is_some()
                    || d.stale_while_revalidate.is_some();
                let ok = storable(
                    &self.method,
                    &self.request_cc,
                    self.authenticated,
                    &entry,
                    limits.max_object_bytes,
                    length,
                );
                if ok.is_ok() && useful {
                    out = Some((guard, entry, limits.max_object_bytes));
                } else if let Err(why) = ok {
                    tracing::trace!(reason = why, "response not stored");
                }
            }
        }
        parts.headers.extend(status_header);
        cache.record(self.status);
        match out {
            Some((guard, entry, max)) => TeeBody::filling(body, guard, entry, max),
            None => TeeBody::plain(body),
        }
    }
}

/// The path and query of a `Location`-style value when it names `host` (or is relative).
fn same_host_target(value: &str, host: &str) -> Option<String> {
    let uri: http::Uri = value.parse().ok()?;
    if let Some(authority) = uri.authority()
        && routes::normalize_host(authority.as_str()) != host
    {
        return None;
    }
    let pq = uri.path_and_query()?.as_str();
    pq.starts_with('/').then(|| pq.to_string())
}

/// Serves stale now and refreshes the entry in a task of its own (stale-while-revalidate).
#[allow(clippy::too_many_arguments)]
fn revalidate_in_background(
    active: Arc<Active>,
    guard: FillGuard,
    entry: Arc<Entry>,
    head: &Parts,
    decision: Decision,
    cluster: ClusterId,
    version: Option<String>,
    rule: Option<usize>,
) {
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = Method::GET;
    parts.uri = head.uri.clone();
    parts.version = head.version;
    parts.headers = head.headers.clone();
    set_validators(&mut parts.headers, &entry);
    let request = head.headers.clone();
    tokio::spawn(async move {
        let request_time = unix_now();
        let runtime = Arc::clone(&active.upstreams.clusters[cluster.0]);
        let sent = forward::send(
            &runtime,
            &active.snapshot,
            &decision,
            version.as_deref(),
            parts,
            None,
            tokio::time::Instant::now(),
        )
        .await;
        let Ok(forwarded) = sent else {
            return;
        };
        let response_time = unix_now();
        let cache = Arc::clone(guard.cache());
        let policy = &active.snapshot.cache;
        let (mut parts, body) = forwarded.response.into_parts();
        // Read with the exchange's own idle timeout, and judged at its end like any other.
        let body =
            IdleTimeoutBody::new(body, runtime.config.timeouts.body_idle).watched(forwarded.watch);
        crate::classify::strip_hop_by_hop(&mut parts.headers, false);
        crate::classify::add_via(&mut parts.headers, parts.version, &active.via);
        if parts.status == StatusCode::NOT_MODIFIED {
            let fresh = refreshed(
                policy,
                &active.cache,
                rule,
                &entry,
                &parts.headers,
                request_time,
                response_time,
            );
            cache.insert(guard.key.clone(), fresh);
            cache.record(Status::Revalidated);
            return;
        }
        let authenticated = active.cache.authenticated(&request);
        active.cache.apply_overrides(rule, &mut parts.headers);
        let for_authenticated = super::facts_of(policy, parts.status, &parts.headers, 0, 0)
            .directives
            .allows_authenticated();
        if !authenticated {
            active.cache.apply_defaults(rule, &mut parts.headers);
        }
        let Some(mut fresh) = entry_for(
            policy,
            &request,
            parts.status,
            &parts.headers,
            request_time,
            response_time,
            forwarded.member.region,
            &forwarded.member.authority,
        ) else {
            return;
        };
        fresh.for_authenticated = for_authenticated;
        let max = cache.limits.max_object_bytes;
        let allowed = storable(
            &Method::GET,
            &Directives::default(),
            authenticated,
            &fresh,
            max,
            None,
        );
        if allowed.is_err() {
            return;
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        if let Ok(collected) = Limited::new(body, limit).collect().await {
            fresh.body = collected.to_bytes();
            cache.insert(guard.key.clone(), fresh);
        }
        drop(guard);
    });
}
