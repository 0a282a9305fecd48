//! cache: the shared HTTP cache (RFC 9111) and the cache-header rules on responses.
//!
//! The arithmetic (what may be stored, for how long, whether an entry may answer now) is pure
//! and lives in `routes::cache`. Here: the store (moka, bounded by bytes, TinyLFU admission),
//! secondary keys for `Vary`, request coalescing (one upstream fetch per key; the others wait
//! for it), the body tee that fills an entry while the response streams to its client, and
//! header handling (rules, `Age`, conditional requests, 304 merges).
//!
//! Keys carry a *scope*: the residency jurisdiction when the request is restricted (`*`
//! otherwise) and the cluster and version that serve it, so an entry fetched for one
//! jurisdiction or rollout arm is never served to another. Each entry also remembers the region
//! that produced it, and a lookup refuses an entry from a region the request may not reach.

pub mod stage;
mod tee;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use metrics::{Counter, Gauge};
use routes::cache::{CachePolicy, CacheRule, Directives, ResponseFacts, StoreLimits, age_value};
use routes::{RegionId, RegionSet};
use tokio::sync::watch;

pub use tee::TeeBody;

use crate::telemetry;

/// What the cache did for a response (the `x-cache` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Stale,
    Revalidated,
    /// Not looked up: method, rule, request `no-store`, upgrade.
    Bypass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Stale => "STALE",
            Status::Revalidated => "REVALIDATED",
            Status::Bypass => "BYPASS",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Stale => "stale",
            Status::Revalidated => "revalidated",
            Status::Bypass => "bypass",
        }
    }
}

/// Primary cache key: its scope (jurisdiction or `*`, cluster and version), the host and the
/// normalised path and query, as one text with a NUL before the host and before the target
/// (neither a host nor a target can hold one), so that a lookup needs no key of its own: it
/// borrows the text it built ([`key_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Key {
        Key(text.into())
    }
}

impl Key {
    /// Scope, host and target (split at the last two NULs: a scope, from config names, could
    /// hold one).
    fn parts(&self) -> (&str, &str, &str) {
        let mut it = self.0.rsplitn(3, '\0');
        let target = it.next().unwrap_or_default();
        let host = it.next().unwrap_or_default();
        (it.next().unwrap_or_default(), host, target)
    }
}

/// Writes a key's text into `out` (cleared first): the scope's parts joined by `|`, then the
/// host and the target.
pub fn key_text(out: &mut String, scope: &[&str], host: &str, target: &str) {
    out.clear();
    for (i, part) in scope.iter().enumerate() {
        if i > 0 {
            out.push('|');
        }
        out.push_str(part);
    }
    out.push('\0');
    out.push_str(host);
    out.push('\0');
    out.push_str(target);
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// As sent to clients (rules applied, hop-by-hop removed), without `Age`.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub facts: ResponseFacts,
    /// The request's values of the response's `Vary` fields.
    pub vary: Vec<(HeaderName, String)>,
    pub region: Option<RegionId>,
    /// The endpoint that answered (`ip:port`).
    pub upstream: http::uri::Authority,
    /// The origin (or a `set` rule), not a `default` rule, made it shareable with
    /// authenticated requests (public, s-maxage or must-revalidate; RFC 9111 §3.5).
    pub for_authenticated: bool,
}

impl Entry {
    fn size(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request_value(request, name) == *value)
    }

    /// Validators for revalidation.
    pub fn validators(&self) -> (Option<HeaderValue>, Option<HeaderValue>) {
        (
            self.headers.get(header::ETAG).cloned(),
            self.headers.get(header::LAST_MODIFIED).cloned(),
        )
    }

    pub fn has_validator(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }
}

/// All variants stored under one key (different `Vary` values).
#[derive(Debug, Default)]
pub struct Variants(Vec<Arc<Entry>>);

const MAX_VARIANTS: usize = 8;

/// A request header's value as a secondary key: all lines, trimmed, joined.
fn request_value(headers: &HeaderMap, name: &HeaderName) -> String {
    let mut out = String::new();
    for v in headers.get_all(name) {
        for part in v.to_str().unwrap_or("\u{fffd}").split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(part);
        }
    }
    out
}

/// The response's `Vary` field names; `None` for `Vary: *` (never stored).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        for part in v.to_str().ok()?.split(',') {
            let part = part.trim();
            if part == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(part.as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    Some(names)
}

/// Pre-registered metric handles.
struct Metrics {
    results: [Counter; 5],
    stored: Counter,
    coalesced: Counter,
    bytes: Gauge,
    entries: Gauge,
}

/// The shared cache: one per process, kept across reloads while its limits stay the same.
pub struct Cache {
    store: moka::sync::Cache<Key, Arc<Variants>>,
    pub limits: StoreLimits,
    inflight: Mutex<HashMap<Key, watch::Receiver<()>>>,
    /// Every scope an entry was stored under, to invalidate one URL in all of them.
    scopes: Mutex<HashSet<Arc<str>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("limits", &self.limits)
            .field("entries", &self.store.entry_count())
            .finish()
    }
}

/// Either the one fetching a key, or one waiting for it.
pub enum Turn {
    Leader(FillGuard),
    Follower(watch::Receiver<()>),
}

/// Held by the request (or body, or background task) fetching a key; dropping it wakes the
/// waiters, who then look the key up again.
pub struct FillGuard {
    cache: Arc<Cache>,
    pub key: Key,
    tx: Option<watch::Sender<()>>,
}

impl std::fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillGuard").field("key", &self.key).finish()
    }
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut inflight = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        inflight.remove(&self.key);
        drop(inflight);
        // Dropping the sender wakes every receiver.
        self.tx.take();
    }
}

impl FillGuard {
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
}

impl Cache {
    pub fn new(limits: StoreLimits) -> Arc<Cache> {
        let on_evict = metrics::counter!(telemetry::CACHE_EVICTIONS);
        let store = moka::sync::Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(|_k: &Key, v: &Arc<Variants>| {
                v.0.iter()
                    .map(|e| e.size())
                    .fold(64u32, u32::saturating_add)
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    on_evict.increment(1);
                }
            })
            .support_invalidation_closures()
            .build();
        let result = |s: Status| metrics::counter!(telemetry::CACHE_REQUESTS, telemetry::L_RESULT => s.label());
        Arc::new(Cache {
            store,
            limits,
            inflight: Mutex::new(HashMap::new()),
            scopes: Mutex::new(HashSet::new()),
            metrics: Metrics {
                results: [
                    result(Status::Hit),
                    result(Status::Miss),
                    result(Status::Stale),
                    result(Status::Revalidated),
                    result(Status::Bypass),
                ],
                stored: metrics::counter!(telemetry::CACHE_STORED),
                coalesced: metrics::counter!(telemetry::CACHE_COALESCED),
                bytes: metrics::gauge!(telemetry::CACHE_BYTES),
                entries: metrics::gauge!(telemetry::CACHE_ENTRIES),
            },
        })
    }

    pub fn record(&self, status: Status) {
        self.metrics.results[status as usize].increment(1);
    }

    /// The key for a request.
    pub fn key(&self, scope: &str, host: &str, target: &str) -> Key {
        let mut text = String::with_capacity(scope.len() + host.len() + target.len() + 2);
        key_text(&mut text, &[scope], host, target);
        Key::from(text.as_str())
    }

    /// The variant stored for this request, if any, from a region the request may reach. `key`:
    /// a [`Key`], or its text.
    pub fn lookup<K>(&self, key: &K, request: &HeaderMap, allowed: RegionSet) -> Option<Arc<Entry>>
    where
        K: std::hash::Hash + Eq + ?Sized,
        Key: std::borrow::Borrow<K>,
    {
        let variants = self.store.get(key)?;
        variants
            .0
            .iter()
            .find(|e| e.matches(request) && e.region.is_none_or(|r| allowed.contains(r)))
            .cloned()
    }

    /// Stores an entry, replacing the variant with the same secondary key.
    pub fn insert(&self, key: Key, entry: Entry) {
        // Only scopes that hold entries need visiting when a URL is invalidated; registered
        // here, off the lookup path.
        {
            let mut scopes = self.scopes.lock().unwrap_or_else(|p| p.into_inner());
            let scope = key.parts().0;
            if !scopes.contains(scope) {
                scopes.insert(scope.into());
            }
        }
        let entry = Arc::new(entry);
        let mut list: Vec<Arc<Entry>> = match self.store.get(&key) {
            Some(old) => old
                .0
                .iter()
                .filter(|e| {
                    // Same Vary names and different values: another variant, kept.
                    e.vary.len() == entry.vary.len()
                        && e.vary.iter().zip(&entry.vary).all(|(a, b)| a.0 == b.0)
                        && e.vary != entry.vary
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        list.truncate(MAX_VARIANTS - 1);
        list.insert(0, entry);
        self.store.insert(key, Arc::new(Variants(list)));
        self.metrics.stored.increment(1);
        self.metrics.bytes.set(self.store.weighted_size() as f64);
        self.metrics.entries.set(self.store.entry_count() as f64);
    }

    /// Joins the fetch of `key`: the first caller leads, the others wait for it.
    pub fn join(self: &Arc<Self>, key: &Key) -> Turn {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(key) {
            self.metrics.coalesced.increment(1);
            return Turn::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(key.clone(), rx);
        Turn::Leader(FillGuard {
            cache: Arc::clone(self),
            key: key.clone(),
            tx: Some(tx),
        })
    }

    /// Only lead: `None` when someone already fetches the key (background revalidation).
    pub fn try_lead(self: &Arc<Self>, key: &Key) -> Option<FillGuard> {
        match self.join(key) {
            Turn::Leader(g) => Some(g),
            Turn::Follower(_) => None,
        }
    }

    /// Drops one URL in every scope and variant (unsafe methods, RFC 9111 §4.4; purge).
    pub fn invalidate_url(&self, host: &str, target: &str) -> usize {
        let scopes: Vec<Arc<str>> = self
            .scopes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut n = 0;
        let mut key = String::new();
        for scope in scopes {
            key_text(&mut key, &[&scope], host, target);
            if self.store.remove(key.as_str()).is_some() {
                n += 1;
            }
        }
        n
    }

    /// Drops every entry whose path starts with `prefix` (on `host`, or any host).
    pub fn purge_prefix(&self, host: Option<&str>, prefix: &str) -> Result<(), String> {
        let host = host.map(str::to_string);
        let prefix = prefix.to_string();
        self.store
            .invalidate_entries_if(move |k, _| {
                let (_, key_host, target) = k.parts();
                host.as_deref().is_none_or(|h| key_host == h) && target.starts_with(&prefix)
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn purge_all(&self) {
        self.store.invalidate_all();
    }

    /// Entries and bytes held (after pending maintenance).
    pub fn usage(&self) -> (u64, u64) {
        self.store.run_pending_tasks();
        self.metrics.bytes.set(self.store.weighted_size() as f64);
        self.metrics.entries.set(self.store.entry_count() as f64);
        (self.store.entry_count(), self.store.weighted_size())
    }
}

/// An operator's purge: one URL (`{"url": "https://host/path?q"}`), a path prefix
/// (`{"prefix": "/static/", "host": "optional"}`), or everything (`{"all": true}`). The body
/// of `POST /cache/purge`, and the record a fleet purge puts in etcd.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Purge {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl Purge {
    /// Checks the shape: exactly one of url, prefix, all; a URL with a host; a prefix path.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.url, &self.prefix, self.all) {
            (Some(url), None, false) if self.host.is_none() => {
                let uri: http::Uri = url.parse().map_err(|_| "url is not a valid URL")?;
                if uri.authority().is_none() {
                    return Err("url needs a host (https://host/path)".into());
                }
                Ok(())
            }
            (None, Some(p), false) if p.starts_with('/') => Ok(()),
            (None, None, true) if self.host.is_none() => Ok(()),
            _ => Err(
                "give exactly one of {\"url\": URL}, {\"prefix\": \"/path\"[, \"host\": H]} or {\"all\": true}"
                    .into(),
            ),
        }
    }

    /// Drops what it names in every scope and variant; returns the keys dropped when known.
    pub fn apply(&self, cache: &Cache) -> Result<Option<usize>, String> {
        self.validate()?;
        if let Some(url) = &self.url {
            let uri: http::Uri = url.parse().map_err(|_| "url is not a valid URL")?;
            let host = routes::normalize_host(uri.authority().map_or("", |a| a.as_str()));
            let path = routes::normalize_path(uri.path())
                .ok_or("invalid path")?
                .into_owned();
            let target = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let n = cache.invalidate_url(&host, &target);
            tracing::info!(host, target, keys = n, "cache purge (url)");
            return Ok(Some(n));
        }
        if let Some(prefix) = &self.prefix {
            let host = self.host.as_deref().map(routes::normalize_host);
            cache.purge_prefix(host.as_deref(), prefix)?;
            tracing::info!(
                prefix,
                host = host.as_deref().unwrap_or("*"),
                "cache purge (prefix)"
            );
            return Ok(None);
        }
        cache.purge_all();
        tracing::info!("cache purge (all)");
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// Headers

/// A rule's headers, parsed once per snapshot.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub no_store: bool,
    set: Vec<(HeaderName, HeaderValue)>,
    default: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// The per-snapshot cache settings the request path needs.
#[derive(Debug)]
pub struct CacheRuntime {
    /// The shared cache, when configured.
    pub store: Option<Arc<Cache>>,
    pub rules: Vec<CompiledRule>,
    pub status_header: Option<HeaderName>,
    /// Targeted fields, removed on `no_store` paths.
    targeted: Vec<HeaderName>,
    auth_cookies: Vec<String>,
}

impl CacheRuntime {
    /// Builds the runtime for `policy`, reusing `previous` store when its limits are the same.
    pub fn new(policy: &CachePolicy, previous: Option<&Arc<Cache>>) -> CacheRuntime {
        let store = policy.store.map(|limits| match previous {
            Some(p) if p.limits == limits => Arc::clone(p),
            _ => Cache::new(limits),
        });
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect()
        };
        let rules = policy
            .rules
            .iter()
            .map(|r: &CacheRule| CompiledRule {
                no_store: r.no_store,
                set: pairs(&r.set),
                default: pairs(&r.default),
                remove: r
                    .remove
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect(),
            })
            .collect();
        CacheRuntime {
            store,
            rules,
            status_header: policy
                .status_header
                .as_ref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            targeted: policy
                .targeted_fields
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            auth_cookies: policy.auth_cookies.clone(),
        }
    }

    /// Applies rule `rule` to response headers. Defaults are skipped for authenticated
    /// requests: what makes their responses shareable must come from the origin.
    pub fn apply(&self, rule: Option<usize>, headers: &mut HeaderMap, authenticated: bool) {
        self.apply_overrides(rule, headers);
        if !authenticated {
            self.apply_defaults(rule, headers);
        }
    }

    /// `no_store`, `remove` and `set`: what the rule imposes whatever the origin said.
    pub fn apply_overrides(&self, rule: Option<usize>, headers: &mut HeaderMap) {
        let Some(rule) = rule.and_then(|i| self.rules.get(i)) else {
            return;
        };
        if rule.no_store {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.remove(header::EXPIRES);
            headers.remove("surrogate-control");
            for t in &self.targeted {
                headers.remove(t);
            }
            return;
        }
        for name in &rule.remove {
            headers.remove(name);
        }
        for (name, value) in &rule.set {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// `default`: only where the origin sent none.
    pub fn apply_defaults(&self, rule: Option<usize>, headers: &mut HeaderMap) {
        let Some(rule) = rule.and_then(|i| self.rules.get(i)) else {
            return;
        };
        if rule.no_store {
            return;
        }
        // An origin that states any caching policy keeps it whole: defaults for the
        // cache-controlling fields apply only when it sent none of them (a default
        // CDN-Cache-Control must not outlive an origin's `max-age=0`).
        let states_policy = headers.contains_key(header::CACHE_CONTROL)
            || headers.contains_key(header::EXPIRES)
            || headers.contains_key("surrogate-control")
            || self.targeted.iter().any(|t| headers.contains_key(t));
        for (name, value) in &rule.default {
            let controlling = *name != header::VARY;
            let origin_decides = headers.contains_key(name) || (controlling && states_policy);
            if !origin_decides {
                headers.insert(name.clone(), value.clone());
            }
        }
    }

    /// `Authorization`, or one of the configured cookies.
    pub fn authenticated(&self, request: &HeaderMap) -> bool {
        if request.contains_key(header::AUTHORIZATION) {
            return true;
        }
        if self.auth_cookies.is_empty() {
            return false;
        }
        request.get_all(header::COOKIE).iter().any(|v| {
            v.to_str().unwrap_or_default().split(';').any(|c| {
                let name = c.split('=').next().unwrap_or_default().trim();
                self.auth_cookies.iter().any(|a| a == name)
            })
        })
    }
}

/// The request's cache directives (`Pragma: no-cache` counts when there is no
/// `Cache-Control`, RFC 9111 §5.4).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    let lines = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let mut d = Directives::parse_cache_control(lines);
    if !headers.contains_key(header::CACHE_CONTROL)
        && headers.get_all(header::PRAGMA).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("no-cache"))
        })
    {
        d.no_cache = true;
    }
    d
}

fn date_of(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Reads a response's caching facts.
pub fn facts_of(
    policy: &CachePolicy,
    status: StatusCode,
    headers: &HeaderMap,
    request_time: u64,
    response_time: u64,
) -> ResponseFacts {
    let get = |n: &str| {
        let mut values = headers.get_all(n).iter();
        let first = values.next()?;
        // A targeted field given twice is not one valid dictionary we can trust.
        if values.next().is_some() && n != "cache-control" {
            return None;
        }
        first.to_str().ok()
    };
    let (directives, from) = if headers.get_all(header::CACHE_CONTROL).iter().count() > 1 {
        // Several Cache-Control lines are one list; targeted fields still win.
        let (d, from) =
            policy.shared_directives(|n| if n == "cache-control" { None } else { get(n) });
        if from == "Cache-Control" {
            let lines = headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok());
            (Directives::parse_cache_control(lines), from)
        } else {
            (d, from)
        }
    } else {
        policy.shared_directives(get)
    };
    ResponseFacts {
        status: status.as_u16(),
        directives,
        targeted: from != "Cache-Control",
        date: date_of(headers, header::DATE),
        expires: headers
            .contains_key(header::EXPIRES)
            .then(|| date_of(headers, header::EXPIRES)),
        last_modified: date_of(headers, header::LAST_MODIFIED),
        age: headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(age_value),
        request_time,
        response_time,
    }
}

/// Room for the fields each answer from the store adds to a copy of its entry's (`Age`, the
/// status header, the request id, the serving region, `Set-Cookie`, `Via`): reserved in the
/// entry, whose copies keep its table, so that no answer grows and rehashes its own.
const SERVED_ROOM: usize = 8;

/// Builds an entry from a response head (body added when it has been read).
#[allow(clippy::too_many_arguments)]
pub fn entry_for(
    policy: &CachePolicy,
    request: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    request_time: u64,
    response_time: u64,
    region: Option<RegionId>,
    upstream: &http::uri::Authority,
) -> Option<Entry> {
    let names = vary_names(headers)?;
    // The received Age counts (RFC 9111 §4.2.3); what clients see is computed per use.
    let facts = facts_of(policy, status, headers, request_time, response_time);
    let mut headers = headers.clone();
    headers.remove(header::AGE);
    if !headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a cache adds the Date it received the response at.
        let date = std::time::UNIX_EPOCH + std::time::Duration::from_secs(response_time);
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(date)) {
            headers.insert(header::DATE, v);
        }
    }
    headers.reserve(SERVED_ROOM);
    Some(Entry {
        status,
        vary: names
            .into_iter()
            .map(|n| {
                let v = request_value(request, &n);
                (n, v)
            })
            .collect(),
        headers,
        body: Bytes::new(),
        facts,
        region,
        upstream: upstream.clone(),
        for_authenticated: false,
    })
}

/// Whether a response to this request may be stored, and if not, why.
pub fn storable(
    method: &Method,
    request: &Directives,
    authenticated: bool,
    entry: &Entry,
    max_object: u64,
    content_length: Option<u64>,
) -> Result<(), &'static str> {
    if *method != Method::GET {
        return Err("method");
    }
    if request.no_store {
        return Err("request no-store");
    }
    if entry.headers.contains_key(header::SET_COOKIE) {
        return Err("Set-Cookie");
    }
    if content_length.is_some_and(|n| n > max_object) {
        return Err("too large");
    }
    entry.facts.storable(authenticated)?;
    Ok(())
}

/// Headers a 304 must not replace in the stored response (RFC 9111 §3.2).
fn keep_on_update(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length" | "content-encoding" | "transfer-encoding" | "content-range"
    )
}

/// The stored response refreshed by a 304 (RFC 9111 §4.3.4): its headers updated from the
/// 304's, rules re-applied, new times.
#[allow(clippy::too_many_arguments)]
pub fn refreshed(
    policy: &CachePolicy,
    runtime: &CacheRuntime,
    rule: Option<usize>,
    old: &Entry,
    not_modified: &HeaderMap,
    request_time: u64,
    response_time: u64,
) -> Entry {
    let mut headers = old.headers.clone();
    for name in not_modified.keys() {
        if keep_on_update(name) || *name == header::AGE {
            continue;
        }
        headers.remove(name);
        for v in not_modified.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    runtime.apply(rule, &mut headers, false);
    headers.reserve(SERVED_ROOM);
    let mut facts = facts_of(policy, old.status, &headers, request_time, response_time);
    facts.age = not_modified
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(age_value);
    Entry {
        status: old.status,
        headers,
        body: old.body.clone(),
        facts,
        vary: old.vary.clone(),
        region: old.region,
        upstream: old.upstream.clone(),
        for_authenticated: old.for_authenticated,
    }
}

/// Whether the client's own conditional request is satisfied by the entry (RFC 9110 §13.1.2,
/// §13.1.3; weak comparison for `If-None-Match`).
pub fn not_modified(request: &HeaderMap, entry: &Entry) -> bool {
    if entry.status != StatusCode::OK {
        return false;
    }
    if let Some(inm) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = entry
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_string();
        let ours = weak(etag);
        return inm
            .to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim() == "*" || weak(t) == ours);
    }
    if let (Some(ims), Some(lm)) = (
        date_of(request, header::IF_MODIFIED_SINCE),
        entry.facts.last_modified,
    ) {
        return lm <= ims;
    }
    false
}

/// Headers a 304 from the cache carries (RFC 9110 §15.4.5).
pub fn not_modified_headers(entry: &Entry) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        header::CACHE_CONTROL,
        header::CONTENT_LOCATION,
        header::DATE,
        header::ETAG,
        header::EXPIRES,
        header::VARY,
        header::LAST_MODIFIED,
        header::VIA,
    ] {
        for v in entry.headers.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests;
