//! Caching, the pure part: header rules per path, the directive parsers (`Cache-Control`,
//! RFC 9213 targeted fields), and RFC 9111's arithmetic — what may be stored, for how long,
//! and whether a stored response may answer a request now. The proxy owns the store, the
//! clock and the wire; everything here takes numbers (Unix seconds) and strings.

use crate::config::{RawCache, RawCacheRule, RawSize};
use crate::snapshot::{Route, RouteId};
use crate::units::parse_duration;

/// Header names a rule may set, default or remove (lower case).
pub(crate) const RULE_HEADERS: [&str; 4] = [
    "cache-control",
    "cdn-cache-control",
    "surrogate-control",
    "vary",
];

/// The validated `[cache]` section.
#[derive(Debug, Clone, Default)]
pub struct CachePolicy {
    /// The shared cache's bounds; `None`: no shared cache, header rules only.
    pub store: Option<StoreLimits>,
    /// Response header naming what the cache did; `None`: not sent.
    pub status_header: Option<String>,
    /// RFC 9213 targeted fields this cache obeys, in precedence order (lower case).
    pub targeted_fields: Vec<String>,
    /// Cookies that make a request authenticated.
    pub auth_cookies: Vec<String>,
    pub heuristic: Heuristic,
    pub rules: Vec<CacheRule>,
}

/// Bounds of the shared cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
}

/// Heuristic freshness (RFC 9111 §4.2.2): a share of the time since `Last-Modified`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heuristic {
    pub percent: u32,
    pub max_secs: u64,
}

impl Default for Heuristic {
    fn default() -> Heuristic {
        Heuristic {
            percent: 10,
            max_secs: 86_400,
        }
    }
}

/// One header rule.
#[derive(Debug, Clone)]
pub struct CacheRule {
    pub name: String,
    pub paths: Vec<PathPattern>,
    /// Exact hosts or `*.suffix`; empty: any.
    pub hosts: Vec<String>,
    /// Only these routes; empty: any.
    pub routes: Vec<RouteId>,
    pub no_store: bool,
    /// (lower-case name, value): replaces what the origin sent.
    pub set: Vec<(String, String)>,
    /// (lower-case name, value): only where the origin sent none.
    pub default: Vec<(String, String)>,
    /// Lower-case names removed from the origin's response.
    pub remove: Vec<String>,
}

impl CacheRule {
    pub fn matches(&self, route: RouteId, host: &str, path: &str) -> bool {
        (self.routes.is_empty() || self.routes.contains(&route))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| host_matches(h, host)))
            && self.paths.iter().any(|p| p.matches(path))
    }
}

impl CachePolicy {
    /// The first rule matching the request, by index.
    pub fn rule_for(&self, route: RouteId, host: &str, path: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.matches(route, host, path))
    }

    /// What the cache rules do to a response on this request when the origin sends no cache
    /// headers, and what the shared cache then does with it.
    pub fn explain(&self, route: RouteId, host: &str, path: &str) -> String {
        let mut out = String::new();
        let store = match self.store {
            Some(s) => format!(
                "on ({} bytes, objects up to {} bytes)",
                s.max_bytes, s.max_object_bytes
            ),
            None => "off (header rules only)".to_string(),
        };
        out.push_str(&format!("  cache:        shared cache {store}\n"));
        let Some(i) = self.rule_for(route, host, path) else {
            out.push_str("  cache rule:   none matches; the origin's headers pass unchanged\n");
            return out;
        };
        let rule = &self.rules[i];
        let patterns: Vec<&str> = rule.paths.iter().map(|p| p.text.as_str()).collect();
        out.push_str(&format!(
            "  cache rule:   {:?} (cache.rules[{i}], paths {}; first match wins)\n",
            rule.name,
            patterns.join(" ")
        ));
        if rule.no_store {
            out.push_str(
                "  headers:      Cache-Control: no-store (set; CDN-Cache-Control and Surrogate-Control removed)\n  shared cache: never looked up, never stored\n",
            );
            return out;
        }
        let mut effective: Vec<(String, String)> = Vec::new();
        for (name, value) in &rule.set {
            out.push_str(&format!(
                "  headers:      {}: {value} (set: replaces the origin's)\n",
                display_name(name)
            ));
            effective.push((name.clone(), value.clone()));
        }
        for (name, value) in &rule.default {
            out.push_str(&format!(
                "  headers:      {}: {value} (default: when the origin sends no caching headers; not for authenticated requests)\n",
                display_name(name)
            ));
            if !rule.set.iter().any(|(n, _)| n == name) {
                effective.push((name.clone(), value.clone()));
            }
        }
        for name in &rule.remove {
            out.push_str(&format!("  headers:      {} removed\n", display_name(name)));
        }
        if self.store.is_none() {
            return out;
        }
        let get = |n: &str| {
            effective
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let (directives, from) = self.shared_directives(get);
        let facts = ResponseFacts {
            status: 200,
            directives,
            targeted: from != "Cache-Control",
            ..ResponseFacts::default()
        };
        let (life, source) = facts.lifetime(self.heuristic);
        let verdict = match facts.storable(false) {
            Err(reason) => format!("not stored ({reason})"),
            Ok(()) if life == 0 => "stored only with a validator, revalidated on every use".into(),
            Ok(()) => {
                let mut v = format!("stored, fresh for {life} s ({from} {})", source.as_str());
                if from != "Cache-Control" && get("cache-control").is_some() {
                    v.push_str("; Cache-Control is for other caches here (RFC 9213)");
                }
                v
            }
        };
        out.push_str(&format!(
            "  shared cache: {verdict} (with a 200 from an origin that sends no cache headers)\n"
        ));
        out
    }

    /// The directives this (shared) cache obeys: the first valid, non-empty targeted field in
    /// precedence order, else `Cache-Control`. Returns them and the field's display name.
    pub fn shared_directives<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> (Directives, String) {
        for field in &self.targeted_fields {
            if let Some(d) = get(field).and_then(Directives::parse_targeted) {
                return (d, display_name(field));
            }
        }
        (
            Directives::parse_cache_control(get("cache-control").into_iter()),
            "Cache-Control".to_string(),
        )
    }
}

/// `cdn-cache-control` → `CDN-Cache-Control`, for messages.
fn display_name(lower: &str) -> String {
    lower
        .split('-')
        .map(|w| match w {
            "cdn" => "CDN".to_string(),
            _ => {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && {
                host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
        None => pattern == "*" || pattern == host,
    }
}

// ---------------------------------------------------------------------------------------------
// Path patterns

/// One segment of a [`PathPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    /// `*`: any one segment.
    Any,
    /// `pre*suf` inside a segment.
    Glob(String, String),
}

impl Seg {
    fn matches(&self, s: &str) -> bool {
        match self {
            Seg::Literal(l) => l == s,
            Seg::Any => true,
            Seg::Glob(pre, suf) => {
                s.len() >= pre.len() + suf.len()
                    && s.starts_with(pre.as_str())
                    && s.ends_with(suf.as_str())
            }
        }
    }

    /// Every segment `other` matches, `self` matches too.
    fn covers(&self, other: &Seg) -> bool {
        match (self, other) {
            (Seg::Any, _) => true,
            (_, Seg::Any) => false,
            (a, Seg::Literal(l)) => a.matches(l),
            (Seg::Glob(..), g @ Seg::Glob(..)) => self == g,
            (Seg::Literal(_), Seg::Glob(..)) => false,
        }
    }
}

/// `/exact`, `/dir/**` (the directory and everything below), `*` for one segment, `*.css`
/// inside a segment. Empty segments are ignored (`/a//b/` is `/a/b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub text: String,
    segs: Vec<Seg>,
    /// Ends with `/**`.
    tail: bool,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with '/'"));
        }
        let parts: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
        let mut segs = Vec::with_capacity(parts.len());
        let mut tail = false;
        for (i, p) in parts.iter().enumerate() {
            if *p == "**" {
                if i + 1 != parts.len() {
                    return Err(format!(
                        "{text:?}: '**' is only allowed as the last segment"
                    ));
                }
                tail = true;
            } else if p.contains("**") {
                return Err(format!("{text:?}: '**' must be a whole segment"));
            } else if *p == "*" {
                segs.push(Seg::Any);
            } else if let Some((pre, suf)) = p.split_once('*') {
                if suf.contains('*') {
                    return Err(format!("{text:?}: one '*' per segment"));
                }
                segs.push(Seg::Glob(pre.to_string(), suf.to_string()));
            } else {
                segs.push(Seg::Literal((*p).to_string()));
            }
        }
        Ok(PathPattern {
            text: text.to_string(),
            segs,
            tail,
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segs {
            match parts.next() {
                Some(p) if seg.matches(p) => {}
                _ => return false,
            }
        }
        self.tail || parts.next().is_none()
    }

    /// Every path `other` matches, `self` matches too.
    pub fn covers(&self, other: &PathPattern) -> bool {
        if other.tail && !self.tail {
            return false;
        }
        let n = self.segs.len();
        if self.tail {
            other.segs.len() >= n && self.segs.iter().zip(&other.segs).all(|(a, b)| a.covers(b))
        } else {
            other.segs.len() == n && self.segs.iter().zip(&other.segs).all(|(a, b)| a.covers(b))
        }
    }

    /// Whether some path under the segment-wise `prefix` (a route's) can match.
    fn overlaps_prefix(&self, prefix: &str) -> bool {
        let pre: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        if !self.tail && self.segs.len() < pre.len() {
            return false;
        }
        self.segs.iter().zip(&pre).all(|(s, p)| s.matches(p))
    }
}

// ---------------------------------------------------------------------------------------------
// Directives

/// Delta-seconds beyond this are this (RFC 9111 §1.2.2).
const DELTA_MAX: u64 = 2_147_483_648;

/// Cache directives, of a request or a response (RFC 9111 §5.2; RFC 5861 for the stale-*).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// `max-stale` without a value is any staleness (`u64::MAX`).
    pub max_stale: Option<u64>,
    pub min_fresh: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub only_if_cached: bool,
    pub immutable: bool,
}

impl Directives {
    /// Parses `Cache-Control` field lines (all lines of the field, in order). Unknown
    /// directives are ignored; names are case-insensitive; quoted values are accepted. An
    /// invalid or conflicting `max-age`/`s-maxage` makes the response stale (RFC 9111 §4.2.1).
    pub fn parse_cache_control<'a>(lines: impl Iterator<Item = &'a str>) -> Directives {
        let mut d = Directives::default();
        for line in lines {
            for item in split_items(line) {
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item.trim(), None),
                };
                if name.is_empty() {
                    continue;
                }
                let name = name.to_ascii_lowercase();
                let delta = || value.map(parse_delta);
                match name.as_str() {
                    "max-age" => set_age(&mut d.max_age, delta()),
                    "s-maxage" => set_age(&mut d.s_maxage, delta()),
                    "max-stale" => {
                        d.max_stale = Some(value.map_or(u64::MAX, |v| parse_delta(v).unwrap_or(0)))
                    }
                    "min-fresh" => d.min_fresh = delta().flatten().or(d.min_fresh),
                    "stale-while-revalidate" => {
                        d.stale_while_revalidate = delta().flatten().or(d.stale_while_revalidate)
                    }
                    "stale-if-error" => d.stale_if_error = delta().flatten().or(d.stale_if_error),
                    "no-store" => d.no_store = true,
                    // Qualified forms (`no-cache="Set-Cookie"`) are treated as unqualified:
                    // stricter, and allowed (RFC 9111 §5.2.2.4, §5.2.2.7).
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "immutable" => d.immutable = true,
                    _ => {}
                }
            }
        }
        d
    }

    /// Parses a targeted field (RFC 9213 §2.1): a Structured Fields dictionary. `None` when
    /// it is empty or not a valid dictionary (then the cache falls back to `Cache-Control`).
    /// Directives whose value has the wrong type are ignored.
    pub fn parse_targeted(text: &str) -> Option<Directives> {
        let members = sf_dictionary(text)?;
        if members.is_empty() {
            return None;
        }
        let mut d = Directives::default();
        for (key, value) in members {
            let int = match value {
                Bare::Integer(i) if i >= 0 => Some((i as u64).min(DELTA_MAX)),
                _ => None,
            };
            let flag = !matches!(value, Bare::Boolean(false));
            match key.as_str() {
                "max-age" => d.max_age = int.or(d.max_age),
                "s-maxage" => d.s_maxage = int.or(d.s_maxage),
                "stale-while-revalidate" => {
                    d.stale_while_revalidate = int.or(d.stale_while_revalidate)
                }
                "stale-if-error" => d.stale_if_error = int.or(d.stale_if_error),
                "no-store" => d.no_store |= flag,
                "no-cache" => d.no_cache |= flag,
                "private" => d.private |= flag,
                "public" => d.public |= flag,
                "must-revalidate" => d.must_revalidate |= flag,
                "proxy-revalidate" => d.proxy_revalidate |= flag,
                "immutable" => d.immutable |= flag,
                _ => {}
            }
        }
        Some(d)
    }

    /// Stale responses may never be served: no-cache, must-revalidate, proxy-revalidate, or
    /// s-maxage (which implies proxy-revalidate in a shared cache) (RFC 9111 §4.2.4,
    /// §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.no_cache || self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }

    /// Explicit permission to serve an authenticated request from the shared cache
    /// (RFC 9111 §3.5).
    pub fn allows_authenticated(&self) -> bool {
        self.public || self.must_revalidate || self.s_maxage.is_some()
    }
}

/// A second, different value for an age directive makes the response stale (RFC 9111 §4.2.1).
fn set_age(slot: &mut Option<u64>, value: Option<Option<u64>>) {
    let v = match value {
        Some(Some(v)) => v,
        // Missing or invalid value: treat as stale.
        _ => 0,
    };
    *slot = match *slot {
        Some(prev) if prev != v => Some(0),
        _ => Some(v),
    };
}

/// delta-seconds: digits only; too large saturates at 2^31.
fn parse_delta(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX)))
}

/// An `Age` field value (RFC 9111 §5.1): its first list member, delta-seconds; anything else
/// (a sign, a fraction, a word) is `None`, which a cache ignores.
pub fn age_value(value: &str) -> Option<u64> {
    parse_delta(value.split(',').next()?.trim())
}

/// Splits a list on commas outside quoted strings.
fn split_items(line: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                items.push(&line[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&line[start..]);
    items
}

/// A Structured Fields bare item, as far as cache directives care.
#[derive(Debug, Clone, PartialEq)]
enum Bare {
    Integer(i64),
    Boolean(bool),
    Other,
}

/// RFC 8941 §4.2.2 dictionary, keys and bare values (parameters and inner lists are parsed
/// and dropped). `None` on any syntax error.
fn sf_dictionary(text: &str) -> Option<Vec<(String, Bare)>> {
    let b = text.as_bytes();
    let mut i = 0;
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    ows(&mut i);
    while i < b.len() {
        let key = sf_key(b, &mut i)?;
        let value = if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && b[i] == b'(' {
                sf_inner_list(b, &mut i)?;
                Bare::Other
            } else {
                sf_bare(b, &mut i)?
            }
        } else {
            Bare::Boolean(true)
        };
        sf_params(b, &mut i)?;
        out.push((key, value));
        ows(&mut i);
        if i == b.len() {
            return Some(out);
        }
        if b[i] != b',' {
            return None;
        }
        i += 1;
        ows(&mut i);
        if i == b.len() {
            return None; // trailing comma
        }
    }
    Some(out)
}

fn sf_key(b: &[u8], i: &mut usize) -> Option<String> {
    let start = *i;
    if *i >= b.len() || !(b[*i].is_ascii_lowercase() || b[*i] == b'*') {
        return None;
    }
    *i += 1;
    while *i < b.len()
        && (b[*i].is_ascii_lowercase()
            || b[*i].is_ascii_digit()
            || matches!(b[*i], b'_' | b'-' | b'.' | b'*'))
    {
        *i += 1;
    }
    Some(String::from_utf8_lossy(&b[start..*i]).into_owned())
}

fn sf_bare(b: &[u8], i: &mut usize) -> Option<Bare> {
    let c = *b.get(*i)?;
    match c {
        b'-' | b'0'..=b'9' => {
            let start = *i;
            if c == b'-' {
                *i += 1;
            }
            let digits = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            if *i == digits || *i - digits > 15 {
                return None;
            }
            if *i < b.len() && b[*i] == b'.' {
                *i += 1;
                let frac = *i;
                while *i < b.len() && b[*i].is_ascii_digit() {
                    *i += 1;
                }
                if *i == frac || *i - frac > 3 {
                    return None;
                }
                return Some(Bare::Other);
            }
            std::str::from_utf8(&b[start..*i])
                .ok()?
                .parse()
                .ok()
                .map(Bare::Integer)
        }
        b'"' => {
            *i += 1;
            loop {
                let c = *b.get(*i)?;
                *i += 1;
                match c {
                    b'\\' => {
                        let e = *b.get(*i)?;
                        if e != b'"' && e != b'\\' {
                            return None;
                        }
                        *i += 1;
                    }
                    b'"' => return Some(Bare::Other),
                    0x20..=0x7e => {}
                    _ => return None,
                }
            }
        }
        b'?' => {
            let v = match b.get(*i + 1)? {
                b'0' => false,
                b'1' => true,
                _ => return None,
            };
            *i += 2;
            Some(Bare::Boolean(v))
        }
        b':' => {
            *i += 1;
            while *b.get(*i)? != b':' {
                let c = b[*i];
                if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                    return None;
                }
                *i += 1;
            }
            *i += 1;
            Some(Bare::Other)
        }
        c if c.is_ascii_alphabetic() || c == b'*' => {
            *i += 1;
            while *i < b.len()
                && (b[*i].is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b[*i]))
            {
                *i += 1;
            }
            Some(Bare::Other)
        }
        _ => None,
    }
}

fn sf_params(b: &[u8], i: &mut usize) -> Option<()> {
    while *i < b.len() && b[*i] == b';' {
        *i += 1;
        while *i < b.len() && b[*i] == b' ' {
            *i += 1;
        }
        sf_key(b, i)?;
        if *i < b.len() && b[*i] == b'=' {
            *i += 1;
            sf_bare(b, i)?;
        }
    }
    Some(())
}

fn sf_inner_list(b: &[u8], i: &mut usize) -> Option<()> {
    *i += 1; // '('
    loop {
        while *i < b.len() && b[*i] == b' ' {
            *i += 1;
        }
        if *b.get(*i)? == b')' {
            *i += 1;
            return Some(());
        }
        sf_bare(b, i)?;
        sf_params(b, i)?;
        match b.get(*i)? {
            b' ' | b')' => {}
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 9111 arithmetic

/// Status codes this cache understands and may store (RFC 9111 §3); the heuristically
/// cacheable ones (RFC 9110 §15.1) may also get heuristic freshness.
pub fn storable_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    SMaxAge,
    MaxAge,
    Expires,
    Heuristic,
    None,
}

impl LifetimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LifetimeSource::SMaxAge => "s-maxage",
            LifetimeSource::MaxAge => "max-age",
            LifetimeSource::Expires => "Expires",
            LifetimeSource::Heuristic => "heuristic",
            LifetimeSource::None => "no lifetime",
        }
    }
}

/// What a stored response said, as numbers (times are Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    pub status: u16,
    /// The directives this shared cache obeys (see [`CachePolicy::shared_directives`]).
    pub directives: Directives,
    /// The directives came from a targeted field: `Expires` is ignored (RFC 9213 §2.1).
    pub targeted: bool,
    pub date: Option<u64>,
    /// `Some(None)`: an `Expires` that does not parse, which means already expired.
    pub expires: Option<Option<u64>>,
    pub last_modified: Option<u64>,
    /// The `Age` header as received.
    pub age: Option<u64>,
    /// When the request that got this response was sent, and when the response arrived.
    pub request_time: u64,
    pub response_time: u64,
}

/// How a stored response may answer a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    Fresh,
    /// Stale, but the request's `max-stale` accepts it.
    StaleAccepted,
    /// Stale within `stale-while-revalidate`: serve it and revalidate in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin before use.
    Revalidate,
}

impl ResponseFacts {
    /// Freshness lifetime for a shared cache (RFC 9111 §4.2.1), and what set it.
    pub fn lifetime(&self, heuristic: Heuristic) -> (u64, LifetimeSource) {
        let d = &self.directives;
        if let Some(s) = d.s_maxage {
            return (s, LifetimeSource::SMaxAge);
        }
        if let Some(m) = d.max_age {
            return (m, LifetimeSource::MaxAge);
        }
        if !self.targeted
            && let Some(expires) = self.expires
        {
            let date = self.date.unwrap_or(self.response_time);
            return (
                expires.map_or(0, |e| e.saturating_sub(date)),
                LifetimeSource::Expires,
            );
        }
        if (heuristically_cacheable(self.status) || d.public)
            && let Some(lm) = self.last_modified
        {
            let date = self.date.unwrap_or(self.response_time);
            let since = date.saturating_sub(lm);
            let life =
                (since.saturating_mul(u64::from(heuristic.percent)) / 100).min(heuristic.max_secs);
            return (life, LifetimeSource::Heuristic);
        }
        (0, LifetimeSource::None)
    }

    /// Current age (RFC 9111 §4.2.3).
    pub fn current_age(&self, now: u64) -> u64 {
        let apparent = self
            .date
            .map_or(0, |date| self.response_time.saturating_sub(date));
        let delay = self.response_time.saturating_sub(self.request_time);
        let corrected_age_value = self.age.unwrap_or(0).saturating_add(delay);
        let initial = apparent.max(corrected_age_value);
        initial.saturating_add(now.saturating_sub(self.response_time))
    }

    /// Whether a shared cache may store this response to a GET (RFC 9111 §3, §3.5), and if
    /// not, why. (Request `no-store`, `Vary: *` and `Set-Cookie` are checked by the caller.)
    pub fn storable(&self, authenticated: bool) -> Result<(), &'static str> {
        let d = &self.directives;
        if !storable_status(self.status) {
            return Err("status not cacheable");
        }
        if d.no_store {
            return Err("no-store");
        }
        if d.private {
            return Err("private (shared cache)");
        }
        if authenticated && !d.allows_authenticated() {
            return Err("authenticated request without public, s-maxage or must-revalidate");
        }
        let explicit = d.public
            || d.s_maxage.is_some()
            || d.max_age.is_some()
            || (!self.targeted && self.expires.is_some());
        if !explicit && !heuristically_cacheable(self.status) && !d.no_cache {
            return Err("no explicit freshness and status not heuristically cacheable");
        }
        Ok(())
    }

    /// Whether the stored response may answer a request with directives `req` now
    /// (RFC 9111 §4.2, §5.2.1; RFC 5861 §3).
    pub fn usability(&self, req: &Directives, now: u64, heuristic: Heuristic) -> Usability {
        let d = &self.directives;
        let age = self.current_age(now);
        let (life, _) = self.lifetime(heuristic);
        if d.no_cache || req.no_cache || req.max_age.is_some_and(|m| age > m) {
            return Usability::Revalidate;
        }
        if life > age {
            return if req.min_fresh.is_some_and(|mf| life - age < mf) {
                Usability::Revalidate
            } else {
                Usability::Fresh
            };
        }
        if d.forbids_stale() {
            return Usability::Revalidate;
        }
        let staleness = age - life;
        if req.max_stale.is_some_and(|ms| staleness <= ms) {
            return Usability::StaleAccepted;
        }
        if d.stale_while_revalidate.is_some_and(|w| staleness <= w) {
            return Usability::StaleWhileRevalidate;
        }
        Usability::Revalidate
    }

    /// Whether, the origin failing (error, 500, 502, 503, 504), this stale response may be
    /// served instead (RFC 5861 §4; either side's `stale-if-error`).
    pub fn stale_if_error(&self, req: &Directives, now: u64, heuristic: Heuristic) -> bool {
        if self.directives.forbids_stale() {
            return false;
        }
        let (life, _) = self.lifetime(heuristic);
        let staleness = self.current_age(now).saturating_sub(life);
        let window = self
            .directives
            .stale_if_error
            .into_iter()
            .chain(req.stale_if_error)
            .max();
        window.is_some_and(|w| staleness <= w)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Builds the cache policy; every problem goes to `error(path, message)`.
pub(crate) fn compile(
    raw: &RawCache,
    routes: &[Route],
    error: &mut dyn FnMut(String, String),
) -> CachePolicy {
    let max_bytes = size(raw.max_bytes.as_ref(), "cache.max_bytes", 0, error);
    let max_object_bytes = size(
        raw.max_object_bytes.as_ref(),
        "cache.max_object_bytes",
        8 << 20,
        error,
    );
    if max_bytes > 0 && max_object_bytes > max_bytes {
        error(
            "cache.max_object_bytes".into(),
            "is larger than cache.max_bytes".into(),
        );
    }
    let status_header = match raw.status_header.as_deref() {
        None => Some("x-cache".to_string()),
        Some("") => None,
        Some(h) if valid_field_name(h) => Some(h.to_ascii_lowercase()),
        Some(h) => {
            error(
                "cache.status_header".into(),
                format!("{h:?} is not a header name"),
            );
            None
        }
    };
    let targeted_fields = match &raw.targeted_fields {
        None => vec!["cdn-cache-control".to_string()],
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                if valid_field_name(f) && !f.eq_ignore_ascii_case("cache-control") {
                    Some(f.to_ascii_lowercase())
                } else {
                    error(
                        format!("cache.targeted_fields[{i}]"),
                        format!("{f:?} is not a targeted field name"),
                    );
                    None
                }
            })
            .collect(),
    };
    let heuristic = Heuristic {
        percent: match raw.heuristic_percent {
            Some(p) if p > 100 => {
                error("cache.heuristic_percent".into(), "at most 100".into());
                10
            }
            Some(p) => p,
            None => 10,
        },
        max_secs: match raw.heuristic_max.as_deref().map(parse_duration) {
            None => 86_400,
            Some(Ok(d)) => d.as_secs(),
            Some(Err(e)) => {
                error("cache.heuristic_max".into(), e);
                86_400
            }
        },
    };
    let mut allowed: Vec<String> = RULE_HEADERS.iter().map(|s| s.to_string()).collect();
    allowed.extend(targeted_fields.iter().cloned());
    let mut rules: Vec<CacheRule> = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.iter().enumerate() {
        let path = format!("cache.rules[{i}]");
        let rule = compile_rule(r, &path, i, routes, &allowed, &targeted_fields, error);
        if let Some(rule) = rule {
            if let Some(j) = rules.iter().position(|earlier| shadows(earlier, &rule)) {
                error(
                    path,
                    format!(
                        "can never match: cache.rules[{j}] ({:?}) matches every request it does, and the first match wins",
                        rules[j].name
                    ),
                );
            }
            rules.push(rule);
        }
    }
    CachePolicy {
        store: (max_bytes > 0).then_some(StoreLimits {
            max_bytes,
            max_object_bytes,
        }),
        status_header,
        targeted_fields,
        auth_cookies: raw.auth_cookies.clone(),
        heuristic,
        rules,
    }
}

fn compile_rule(
    r: &RawCacheRule,
    path: &str,
    index: usize,
    routes: &[Route],
    allowed: &[String],
    targeted: &[String],
    error: &mut dyn FnMut(String, String),
) -> Option<CacheRule> {
    if r.paths.is_empty() {
        error(
            format!("{path}.paths"),
            "at least one path pattern is needed".into(),
        );
    }
    let paths: Vec<PathPattern> = r
        .paths
        .iter()
        .enumerate()
        .filter_map(|(j, p)| match PathPattern::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                error(format!("{path}.paths[{j}]"), e);
                None
            }
        })
        .collect();
    let mut route_ids = Vec::new();
    for (j, name) in r.routes.iter().enumerate() {
        match routes.iter().position(|rt| &rt.name == name) {
            Some(id) => route_ids.push(RouteId(id)),
            None => error(
                format!("{path}.routes[{j}]"),
                format!("unknown route {name:?}"),
            ),
        }
    }
    let hosts: Vec<String> = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    // Can it ever match? Some route must serve one of its hosts and one of its paths.
    let candidates: Vec<&Route> = if route_ids.is_empty() {
        routes.iter().collect()
    } else {
        route_ids.iter().map(|id| &routes[id.0]).collect()
    };
    let reachable = candidates.iter().any(|rt| {
        let host_ok = hosts.is_empty()
            || rt.hosts.is_empty()
            || hosts.iter().any(|h| {
                rt.hosts.iter().any(|rh| {
                    host_matches(rh, h.trim_start_matches("*.")) || host_matches(h, rh) || rh == h
                })
            });
        host_ok && paths.iter().any(|p| p.overlaps_prefix(&rt.path_prefix))
    });
    if !routes.is_empty() && !paths.is_empty() && !reachable {
        error(
            path.to_string(),
            "can never match: no route serves these hosts and paths".into(),
        );
    }
    let mut headers = |table: &std::collections::BTreeMap<String, String>, key: &str| {
        let mut out = Vec::new();
        for (name, value) in table {
            let lower = name.to_ascii_lowercase();
            let at = format!("{path}.{key}.{name}");
            if !allowed.contains(&lower) {
                error(
                    at,
                    format!("not a cache header (allowed: {})", allowed.join(", ")),
                );
                continue;
            }
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                error(
                    at,
                    "must be a non-empty header value of visible ASCII".into(),
                );
                continue;
            }
            if targeted.contains(&lower) && Directives::parse_targeted(value).is_none() {
                error(
                    at,
                    format!(
                        "{value:?} is not a valid Structured Fields dictionary (RFC 9213); caches would ignore it"
                    ),
                );
                continue;
            }
            out.push((lower, value.clone()));
        }
        out
    };
    let set = headers(&r.set, "set");
    let default = headers(&r.default, "default");
    let mut remove = Vec::new();
    for (j, name) in r.remove.iter().enumerate() {
        let lower = name.to_ascii_lowercase();
        if allowed.contains(&lower) {
            remove.push(lower);
        } else {
            error(
                format!("{path}.remove[{j}]"),
                format!("not a cache header (allowed: {})", allowed.join(", ")),
            );
        }
    }
    // Contradictions.
    if r.no_store && (!set.is_empty() || !default.is_empty()) {
        error(
            path.to_string(),
            "no_store with set/default headers: no_store replaces them with Cache-Control: no-store"
                .into(),
        );
    }
    for (key, list, raw_table) in [("set", &set, &r.set), ("default", &default, &r.default)] {
        // Errors name the header as written.
        let written = |lower: &str| {
            raw_table
                .keys()
                .find(|k| k.eq_ignore_ascii_case(lower))
                .cloned()
                .unwrap_or_else(|| lower.to_string())
        };
        for (name, value) in list.iter() {
            let d = if targeted.contains(name) {
                Directives::parse_targeted(value).unwrap_or_default()
            } else if name == "cache-control" || name == "surrogate-control" {
                Directives::parse_cache_control(std::iter::once(value.as_str()))
            } else {
                if name == "vary" && value.trim() == "*" {
                    error(
                        format!("{path}.{key}.{}", written(name)),
                        "Vary: * makes every response uncacheable; use no_store to say so".into(),
                    );
                }
                continue;
            };
            if let Some(m) = contradiction(&d) {
                error(
                    format!("{path}.{key}.{}", written(name)),
                    format!("{value:?}: {m}"),
                );
            }
        }
        if let Some((_, dup)) = list
            .iter()
            .enumerate()
            .find(|(i, (n, _))| list[..*i].iter().any(|(m, _)| m == n))
        {
            error(
                format!("{path}.{key}.{}", dup.0),
                "given twice (header names are case-insensitive)".into(),
            );
        }
    }
    Some(CacheRule {
        name: r.name.clone().unwrap_or_else(|| format!("rules[{index}]")),
        paths,
        hosts,
        routes: route_ids,
        no_store: r.no_store,
        set,
        default,
        remove,
    })
}

/// A directive set that says two opposite things.
fn contradiction(d: &Directives) -> Option<&'static str> {
    if d.no_store {
        if d.s_maxage.is_some() {
            return Some("no-store with s-maxage: the response can never be stored");
        }
        if d.max_age.is_some() {
            return Some("no-store with max-age: the response can never be stored");
        }
        if d.public {
            return Some("no-store with public: the response can never be stored");
        }
        if d.stale_while_revalidate.is_some() || d.stale_if_error.is_some() {
            return Some("no-store with stale-*: nothing is stored to serve stale");
        }
    }
    if d.private && d.public {
        return Some("private with public");
    }
    if d.private && d.s_maxage.is_some() {
        return Some("private with s-maxage: shared caches never store private responses");
    }
    None
}

/// `a` (earlier) matches every request `b` matches.
fn shadows(a: &CacheRule, b: &CacheRule) -> bool {
    let routes = a.routes.is_empty()
        || (!b.routes.is_empty() && b.routes.iter().all(|r| a.routes.contains(r)));
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts.iter().all(|h| {
                a.hosts.iter().any(|ah| {
                    ah == h || (ah.starts_with("*.") && !h.starts_with("*.") && host_matches(ah, h))
                })
            }));
    routes
        && hosts
        && !b.paths.is_empty()
        && b.paths
            .iter()
            .all(|bp| a.paths.iter().any(|ap| ap.covers(bp)))
}

fn valid_field_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn size(
    value: Option<&RawSize>,
    path: &str,
    default: u64,
    error: &mut dyn FnMut(String, String),
) -> u64 {
    match value.map(RawSize::bytes) {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            error(path.to_string(), e);
            default
        }
    }
}

/// `"64MiB"`, `"512 KiB"`, `"1GB"`, `"4096"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"64MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}
