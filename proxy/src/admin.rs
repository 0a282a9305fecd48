//! admin: the operator API on its own listener (loopback by default). Bearer token on every
//! endpoint except `/healthz`, compared in constant time.
//!
//! - `GET /healthz` — liveness, no token.
//! - `GET /ui` — a read-only status page (static; it reads the API with `#token=...`).
//! - `GET /status` — config hash and reload history, routes, clusters, endpoint health (JSON).
//! - `GET /metrics` — Prometheus text.
//! - `POST /reload` — re-read the config; 200 with the new hash, or 422 with every error.
//! - `GET /explain?url=...` — how a request would be routed (see `proxyctl explain`).
//! - `GET /rollouts`, `POST /rollouts/{route|_}/{shift|promote|rollback|pause|resume}`,
//!   `GET /events` — rollouts and their audit trail.
//! - `GET /demo/origins`, `PUT /demo/origins/{region}[/{version}]` — demo fault injection.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Value, json};

use crate::clock;
use crate::demo::DemoOrigins;
use crate::listen::RequestBody;
use crate::state::Proxy;
use crate::telemetry;

/// The read-only status page (`/ui`): plain HTML and JS, no build step.
const UI_PAGE: &str = include_str!("admin_ui/index.html");

/// What the admin API serves.
#[derive(Debug)]
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub token: String,
    pub demo: Option<Arc<DemoOrigins>>,
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(body).unwrap_or_default();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

impl Admin {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
        }
        if path == "/ui" || path == "/ui/" {
            // Static and data-free: the page reads the API with the token it is given.
            let mut resp = Response::new(Full::new(Bytes::from_static(UI_PAGE.as_bytes())));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                ),
            );
            return Ok(resp);
        }
        if !self.authorized(&req) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Ok(resp);
        }
        let method = req.method().clone();
        let resp = match (method, path.as_str()) {
            (Method::GET, "/status") => json_response(StatusCode::OK, &self.status()),
            (Method::GET, "/metrics") => {
                let mut resp =
                    Response::new(Full::new(Bytes::from(telemetry::prometheus().render())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            (Method::POST, "/reload") => match self.proxy.reload().await {
                Ok(hash) => json_response(StatusCode::OK, &json!({ "ok": true, "hash": hash })),
                Err(errors) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({ "ok": false, "errors": errors, "serving": self.proxy.active().snapshot.hash }),
                ),
            },
            (Method::GET, "/rollouts") => json_response(StatusCode::OK, &self.rollouts()),
            (Method::GET, "/events") => {
                json_response(StatusCode::OK, &json!(self.proxy.rollouts.events()))
            }
            (Method::POST, p) if p.starts_with("/rollouts/") => self.rollout_action(p, req).await,
            (Method::GET, "/explain") => self.explain(req.uri().query().unwrap_or_default()),
            (Method::GET, "/cache") => self.cache_status(),
            (Method::GET, "/certs") => self.certs(),
            (Method::POST, "/certs/reload") => match self.proxy.reload_tls() {
                Ok(n) => json_response(StatusCode::OK, &json!({ "ok": true, "certificates": n })),
                Err(errors) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({ "ok": false, "errors": errors }),
                ),
            },
            (Method::POST, "/cache/purge") => self.purge(req).await,
            (Method::GET, "/demo/origins") => match &self.demo {
                Some(demo) => json_response(StatusCode::OK, &demo.list()),
                None => error(StatusCode::NOT_FOUND, "not running in demo mode"),
            },
            (Method::PUT, p) if p.starts_with("/demo/origins/") => self.put_fault(p, req).await,
            (
                _,
                "/status" | "/metrics" | "/reload" | "/demo/origins" | "/rollouts" | "/events"
                | "/cache" | "/cache/purge" | "/certs" | "/certs/reload",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        };
        Ok(resp)
    }

    /// `GET /explain?url=URL[&country=DE][&jurisdiction=eu][&tenant=T][&client=IP]`: the
    /// decision for such a request (headers as if sent by a trusted proxy), and where it
    /// would be served from right now.
    fn explain(&self, query: &str) -> Response<Full<Bytes>> {
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(url) = get("url") else {
            return error(StatusCode::BAD_REQUEST, "missing url parameter");
        };
        let Ok(uri) = url.parse::<http::Uri>() else {
            return error(StatusCode::BAD_REQUEST, "url is not a valid URL");
        };
        let Some(authority) = uri.authority() else {
            return error(
                StatusCode::BAD_REQUEST,
                "url needs a host (https://host/path)",
            );
        };
        let host = routes::normalize_host(authority.as_str());
        let active = self.proxy.active_full();
        let s = &active.snapshot;
        let client: Option<std::net::IpAddr> = get("client").and_then(|c| c.parse().ok());
        let geo = client.and_then(|ip| active.geoip.as_ref().and_then(|g| g.country(ip)));
        // `header=name:value`, as often as there are fields, for routes with `match_headers`.
        let header = |name: &str| {
            params.iter().find_map(|(k, v)| {
                let (n, value) = v.split_once(':')?;
                (k == "header" && n.trim().eq_ignore_ascii_case(name)).then(|| value.trim())
            })
        };
        let method = get("method").unwrap_or("GET").to_ascii_uppercase();
        let facts = routes::RequestFacts {
            host: &host,
            path: uri.path(),
            tenant: get("tenant"),
            country: get("country"),
            jurisdiction: get("jurisdiction"),
            geoip_country: geo.as_ref().and_then(|c| std::str::from_utf8(c).ok()),
            method: Some(&method),
            header: Some(routes::HeaderSource(&header)),
        };
        let mut text = s.explain(&facts);
        if let Some(d) = s.decide(&facts) {
            let cluster = &active.upstreams.clusters[d.cluster.0];
            // Never a probe: explaining a request must not take one from a real request.
            let route = s.route(d.route);
            if route.https_redirect && uri.scheme_str() == Some("http") {
                let port = self.proxy.https_redirect_port(&s.server);
                text.push_str(&format!(
                    "  plain HTTP:   redirected to {} (301 for GET and HEAD, 308 otherwise); the rest is what HTTPS gets\n",
                    crate::pipeline::https_location(&host, port, &uri)
                ));
            }
            let ask = crate::forward::pool::Ask {
                snapshot: s,
                route,
                version: route.version.as_deref(),
                allowed: d.allowed,
                avoid: None,
                now: crate::clock::now_ms(),
            };
            let now = match cluster.pick_among(&ask, |h| h.available(ask.now)) {
                Some(m) => format!(
                    "  now:          {} ({}) — healthy endpoints as of this moment\n",
                    m.region.map_or("-", |r| s.region(r).name.as_str()),
                    m.addr
                ),
                None if d.restricted => "  now:          503 residency refusal: no healthy endpoint in the allowed regions\n".to_string(),
                None => "  now:          503: no healthy endpoint\n".to_string(),
            };
            text.push_str(&now);
        }
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }

    fn rollouts(&self) -> Value {
        let table = self.proxy.rollouts.table();
        let mut names: Vec<&String> = table.by_route.keys().collect();
        names.sort();
        let list: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let rr = &table.by_route[name];
                let s = &rr.state;
                let gate = rr.gate.lock().map(|g| g.clone()).unwrap_or_default();
                json!({
                    "route": name,
                    "mode": format!("{:?}", s.config.mode).to_lowercase(),
                    "candidate": s.config.candidate_version,
                    "stable": s.config.stable_version,
                    "weight": s.weight,
                    "phase": s.phase,
                    "reason": s.reason,
                    "steps": s.config.steps,
                    "mirror_percent": s.config.mirror_percent,
                    "gate": gate,
                })
            })
            .collect();
        json!(list)
    }

    /// `GET /certs`: every served certificate (names, expiry, where it comes from) and the
    /// ACME settings with the next renewal.
    fn certs(&self) -> Response<Full<Bytes>> {
        let Some(resolver) = &self.proxy.tls else {
            return json_response(StatusCode::OK, &json!({ "tls": false, "certificates": [] }));
        };
        let store = resolver.current();
        let active = self.proxy.active_full();
        let acme = active.snapshot.tls.acme.as_ref();
        let now = clock::unix_now() as i64;
        let certificates: Vec<Value> = store
            .certificates()
            .into_iter()
            .map(|(names, not_after, issuer)| {
                let from_file = store
                    .sources
                    .iter()
                    .find(|s| s.hosts.iter().any(|h| names.contains(h)));
                let is_acme = acme.is_some_and(|a| names.contains(&a.hosts[0]));
                let source = match (from_file, is_acme) {
                    (Some(_), true) => "acme".to_string(),
                    (Some(s), false) => format!("file {}", s.cert_path),
                    (None, true) => "acme placeholder (not issued yet)".to_string(),
                    (None, false) => "built-in (dev)".to_string(),
                };
                let renewal = match (acme, is_acme && from_file.is_some()) {
                    (Some(a), true) => json!(not_after - a.renew_before.as_secs() as i64),
                    _ => Value::Null,
                };
                json!({
                    "names": names,
                    "issuer": issuer,
                    "not_after_unix": not_after,
                    "days_left": (not_after - now) / 86_400,
                    "source": source,
                    "next_renewal_unix": renewal,
                })
            })
            .collect();
        let acme = acme.map(|a| {
            json!({ "directory": a.directory, "hosts": a.hosts, "storage": a.storage,
                    "renew_before_s": a.renew_before.as_secs() })
        });
        json_response(
            StatusCode::OK,
            &json!({ "tls": true, "certificates": certificates, "acme": acme }),
        )
    }

    /// `GET /cache`: whether the shared cache is on, its limits and what it holds.
    fn cache_status(&self) -> Response<Full<Bytes>> {
        let active = self.proxy.active_full();
        let rules: Vec<Value> = active
            .snapshot
            .cache
            .rules
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "paths": r.paths.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
                    "no_store": r.no_store,
                })
            })
            .collect();
        let body = match &active.cache.store {
            Some(cache) => {
                let (entries, bytes) = cache.usage();
                json!({
                    "enabled": true,
                    "max_bytes": cache.limits.max_bytes,
                    "max_object_bytes": cache.limits.max_object_bytes,
                    "entries": entries,
                    "bytes": bytes,
                    "rules": rules,
                })
            }
            None => json!({ "enabled": false, "rules": rules }),
        };
        json_response(StatusCode::OK, &body)
    }

    /// `POST /cache/purge`, body `{"url": "https://host/path?q"}`, `{"prefix": "/static/",
    /// "host": "optional"}` or `{"all": true}`: drops stored responses in every scope and
    /// variant.
    async fn purge(&self, req: Request<RequestBody>) -> Response<Full<Bytes>> {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
        };
        let purge: crate::cache::Purge = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
        };
        if let Err(e) = purge.validate() {
            return error(StatusCode::BAD_REQUEST, &e);
        }
        let active = self.proxy.active_full();
        let Some(cache) = &active.cache.store else {
            return error(
                StatusCode::CONFLICT,
                "the shared cache is off ([cache] max_bytes)",
            );
        };
        match purge.apply(cache) {
            Ok(Some(n)) => json_response(StatusCode::OK, &json!({ "ok": true, "purged_keys": n })),
            Ok(None) => json_response(StatusCode::OK, &json!({ "ok": true })),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        }
    }

    /// `POST /rollouts/{route}/{action}` or `/rollouts/_/{action}` (the only rollout), body
    /// `{"weight":10,"force":false,"reason":"...","actor":"..."}`.
    async fn rollout_action(&self, path: &str, req: Request<RequestBody>) -> Response<Full<Bytes>> {
        let mut parts = path["/rollouts/".len()..].split('/');
        let (Some(route), Some(verb), None) = (parts.next(), parts.next(), parts.next()) else {
            return error(
                StatusCode::NOT_FOUND,
                "use /rollouts/{route}/{shift|promote|rollback|pause|resume}",
            );
        };
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
        };
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        struct Body {
            weight: Option<f64>,
            force: bool,
            reason: String,
            actor: String,
        }
        let b: Body = if body.is_empty() {
            Body::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
            }
        };
        use crate::rollout::{Action, ActionError};
        let action = match verb {
            "shift" => match b.weight {
                Some(weight) => Action::Shift {
                    weight,
                    force: b.force,
                },
                None => return error(StatusCode::BAD_REQUEST, "shift needs {\"weight\": percent}"),
            },
            "promote" => Action::Promote,
            "rollback" => Action::Rollback,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => {
                return error(
                    StatusCode::NOT_FOUND,
                    "actions: shift, promote, rollback, pause, resume",
                );
            }
        };
        let actor = if b.actor.trim().is_empty() {
            "admin-api"
        } else {
            b.actor.trim()
        };
        let route = (route != "_").then_some(route);
        match self
            .proxy
            .rollouts
            .act(route, action, actor, b.reason.trim())
        {
            Ok(event) => json_response(StatusCode::OK, &json!(event)),
            Err(e) => {
                let status = match e {
                    ActionError::NoSuchRollout(_) => StatusCode::NOT_FOUND,
                    ActionError::GatesRed(_) => StatusCode::CONFLICT,
                    ActionError::Ambiguous(_) | ActionError::Invalid(_) => StatusCode::BAD_REQUEST,
                };
                error(status, &e.to_string())
            }
        }
    }

    fn authorized(&self, req: &Request<RequestBody>) -> bool {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        !self.token.is_empty() && constant_time_eq(token, self.token.as_bytes())
    }

    async fn put_fault(&self, path: &str, req: Request<RequestBody>) -> Response<Full<Bytes>> {
        let Some(demo) = &self.demo else {
            return error(StatusCode::NOT_FOUND, "not running in demo mode");
        };
        let mut parts = path["/demo/origins/".len()..].split('/');
        let decoded: Vec<String> = parts.by_ref().map(percent_decode).collect();
        let mut parts = decoded.iter().map(String::as_str);
        let (Some(region), version, None) = (parts.next(), parts.next(), parts.next()) else {
            return error(
                StatusCode::NOT_FOUND,
                "use /demo/origins/{region}[/{version}]",
            );
        };
        if region.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "use /demo/origins/{region}[/{version}]",
            );
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"),
        };
        let spec: loadtest::FaultSpec = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid fault JSON: {e}")),
        };
        if !(0.0..=1.0).contains(&spec.error_rate) {
            return error(
                StatusCode::BAD_REQUEST,
                "error_rate must be between 0 and 1",
            );
        }
        match demo.set(region, version, spec) {
            0 => error(
                StatusCode::NOT_FOUND,
                &format!("no demo origin {region}/{}", version.unwrap_or("*")),
            ),
            n => json_response(StatusCode::OK, &json!({ "updated": n, "fault": spec })),
        }
    }

    fn status(&self) -> Value {
        let active = self.proxy.active_full();
        let s = &active.snapshot;
        let reload = self
            .proxy
            .status
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let now = clock::now_ms();
        let region_name = |r: Option<routes::RegionId>| r.map(|r| s.region(r).name.clone());
        let routes: Vec<Value> = s
            .routes
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "hosts": r.hosts,
                    "path_prefix": r.path_prefix,
                    "cluster": s.cluster(r.cluster).name,
                    "version": r.version,
                    "websocket": r.websocket,
                })
            })
            .collect();
        let clusters: Vec<Value> = active
            .upstreams
            .clusters
            .iter()
            .map(|c| {
                let members: Vec<Value> = c
                    .members
                    .load()
                    .iter()
                    .map(|m| {
                        json!({
                            "address": m.addr.to_string(),
                            "region": region_name(m.region),
                            "version": m.version.as_deref(),
                            "weight": m.weight,
                            "healthy": m.health.available(now),
                            "active_check_ok": m.health.active_ok(),
                            "ejected": m.health.ejected(now),
                            "in_flight": m.health.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                            "slots": m.health.slots().map(|(cap, taken)| json!({ "cap": cap, "taken": taken })),
                        })
                    })
                    .collect();
                json!({
                    "name": c.config.name,
                    "protocol": format!("{:?}", c.config.protocol).to_lowercase(),
                    "lb": format!("{:?}", c.config.lb),
                    "endpoints": c.config.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
                    "members": members,
                    "queued": c.waitlist.waiting(),
                })
            })
            .collect();
        json!({
            "config": {
                "hash": s.hash,
                "loaded_at_unix": reload.loaded_at_unix,
                "reloads_ok": reload.reloads_ok,
                "reloads_rejected": reload.reloads_rejected,
                "last_errors": reload.last_errors,
            },
            "region": region_name(s.server.region),
            "version": env!("CARGO_PKG_VERSION"),
            "routes": routes,
            "clusters": clusters,
            "rollouts": self.rollouts(),
            "fleet": self.proxy.fleet_status.lock().map(|f| f.clone()).unwrap_or_default(),
        })
    }
}

/// Decodes `%XX` escapes and `+` (form encoding) in a query component.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn percent_decoding() {
        use super::percent_decode;
        let cases = [
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("https%3A%2F%2Fx%2Fy", "https://x/y"),
            ("%zz", "%zz"),
            ("100%", "100%"),
            ("%4", "%4"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }
}
