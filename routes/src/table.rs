//! Route lookup: host tier first (exact beats wildcard beats any), then the longest matching
//! path prefix within that tier, compared segment by segment.
//!
//! Lookups cost one hash probe per host suffix and one per path segment, whatever the number of
//! routes, so a 1,000-route table decides as fast as a 10-route one.

use std::borrow::Cow;

use crate::LookupMap;
use crate::snapshot::RouteId;

/// What one host's path prefix holds: a route, or routes told apart by their match conditions
/// (`methods`, `match_headers`), tried in order (`RouteTable::shared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Route(RouteId),
    Shared(usize),
}

/// Prefix → value (a route slot, or a tenant's jurisdiction), for one host (or one wildcard
/// suffix, or "any host").
#[derive(Debug)]
pub(crate) struct PrefixMap<T = Slot> {
    by_prefix: LookupMap<String, T>,
}

impl<T> Default for PrefixMap<T> {
    fn default() -> Self {
        PrefixMap {
            by_prefix: LookupMap::default(),
        }
    }
}

impl<T: Copy> PrefixMap<T> {
    /// Adds a value; returns the one already holding this prefix, if any.
    pub(crate) fn insert(&mut self, prefix: &str, route: T) -> Option<T> {
        match self.by_prefix.get(prefix) {
            Some(existing) => Some(*existing),
            None => {
                self.by_prefix.insert(prefix.to_string(), route);
                None
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// The value at `prefix`, to change it.
    pub(crate) fn get_mut(&mut self, prefix: &str) -> Option<&mut T> {
        self.by_prefix.get_mut(prefix)
    }

    /// Longest prefix of `path` that has a value: `/a/b/c`, then `/a/b`, `/a`, `/`.
    pub(crate) fn longest(&self, path: &str) -> Option<T> {
        self.longest_taken(path, Some)
    }

    /// The first value `take` makes something of, prefixes of `path` tried longest first.
    #[inline]
    pub(crate) fn longest_taken<R>(
        &self,
        path: &str,
        mut take: impl FnMut(T) -> Option<R>,
    ) -> Option<R> {
        let mut candidate = path;
        loop {
            if let Some(found) = self.by_prefix.get(candidate).and_then(|v| take(*v)) {
                return Some(found);
            }
            match candidate.rfind('/') {
                Some(0) if candidate.len() > 1 => candidate = "/",
                Some(0) | None => return None,
                Some(i) => candidate = &candidate[..i],
            }
        }
    }
}

/// All routes, indexed for lookup.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    pub(crate) exact: LookupMap<String, PrefixMap>,
    /// Keyed by the suffix after `*`, e.g. `.example.com`.
    pub(crate) wildcard: LookupMap<String, PrefixMap>,
    pub(crate) any: PrefixMap,
    /// The routes of each [`Slot::Shared`], in the order they are tried: those with match
    /// conditions in config order, then the one without (if any).
    pub(crate) shared: Vec<Vec<RouteId>>,
    /// Some route has `methods` or `match_headers`.
    pub(crate) conditional: bool,
}

impl RouteTable {
    /// The first route `takes` (the request meets its conditions), host tiers from the most
    /// specific and in each the longest prefix first. `host` must be lower-case without a
    /// port; `path` must start with `/`, without a query.
    #[inline]
    pub(crate) fn find(
        &self,
        host: &str,
        path: &str,
        takes: impl Fn(RouteId) -> bool,
    ) -> Option<RouteId> {
        if !self.conditional {
            // No route has conditions, so no slot is shared: the first route found takes it.
            return self.walk(host, path, |slot| match slot {
                Slot::Route(id) => Some(id),
                Slot::Shared(i) => self.shared[i].first().copied(),
            });
        }
        self.walk(host, path, |slot| match slot {
            Slot::Route(id) => takes(id).then_some(id),
            Slot::Shared(i) => self.shared[i].iter().copied().find(|id| takes(*id)),
        })
    }

    /// The first slot `take` makes a route of: host tiers from the most specific, and in each
    /// the longest prefix first.
    #[inline]
    fn walk(
        &self,
        host: &str,
        path: &str,
        take: impl Fn(Slot) -> Option<RouteId> + Copy,
    ) -> Option<RouteId> {
        if let Some(found) = self
            .exact
            .get(host)
            .and_then(|m| m.longest_taken(path, take))
        {
            return Some(found);
        }
        // Most specific wildcard first: for a.b.example.com try .b.example.com, then .example.com.
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                let suffix = &rest[dot..];
                if let Some(found) = self
                    .wildcard
                    .get(suffix)
                    .and_then(|m| m.longest_taken(path, take))
                {
                    return Some(found);
                }
                rest = &rest[dot + 1..];
            }
        }
        self.any.longest_taken(path, take)
    }
}

/// Canonical form of a configured prefix: leading `/`, no trailing `/` except the root.
pub(crate) fn canonical_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The host of a request for matching: lower-case, port and trailing dot removed.
/// IPv6 literals keep their brackets (`[::1]`).
pub fn normalize_host(raw: &str) -> String {
    // One step strips a port and trailing dots; repeat until nothing changes, so a malformed
    // name (`a:1.`) normalises to the same thing however often it is normalised.
    // The steps only look at brackets, colons, digits and dots, which lower-casing leaves
    // alone: strip first, then copy (and lower-case) once.
    let mut host = raw;
    loop {
        let next = normalize_host_step(host);
        // Done when the step changed nothing, or left nothing another step could strip: a
        // port needs a ':' and a trailing dot is a '.' (a name with a port, the usual case,
        // is then scanned once, not twice).
        if next.len() == host.len() || !(next.ends_with('.') || next.contains(':')) {
            return next.to_ascii_lowercase();
        }
        host = next;
    }
}

/// Byte scans, not `str` patterns: this runs for every request (twice for a `Host` with a port).
fn normalize_host_step(raw: &str) -> &str {
    let bytes = raw.as_bytes();
    let without_port = if bytes.first() == Some(&b'[') {
        match bytes.iter().position(|&b| b == b']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        // Only `name:port` has a port: a name with another ':' is malformed and kept whole.
        match bytes.iter().rposition(|&b| b == b':') {
            Some(colon)
                if colon + 1 < bytes.len()
                    && bytes[colon + 1..].iter().all(u8::is_ascii_digit)
                    && !bytes[..colon].contains(&b':') =>
            {
                &raw[..colon]
            }
            _ => raw,
        }
    };
    let mut end = without_port.len();
    while end > 0 && without_port.as_bytes()[end - 1] == b'.' {
        end -= 1;
    }
    &without_port[..end]
}

/// The path as routing sees it, the same for every rule: percent-encoded unreserved
/// characters decoded (`%61` → `a`), other escapes kept with upper-case hex (`%2f` → `%2F`, so
/// an encoded slash never becomes a separator), empty segments kept, and `.` / `..` segments
/// resolved (RFC 3986 §5.2.4) — so `/api/../admin` is `/admin` and cannot slip past a rule.
/// Returns `None` for a path that does not start with `/` or has a broken escape; a path
/// already normal comes back borrowed (most do: no copy per request).
pub fn normalize_path(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('/') {
        return None;
    }
    // Most paths are already normal: no escapes, and no `.` or `..` segment (every segment
    // follows a `/`).
    if !raw.contains('%') && !raw.contains("/.") {
        return Some(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    // Bytes, not chars: non-ASCII UTF-8 passes through untouched (only ASCII is decoded or
    // re-cased below, so the result stays valid UTF-8).
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.extend(hex.to_ascii_uppercase().bytes());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if k == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if k == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(Cow::Owned(format!("/{}", out.join("/"))))
}

#[cfg(test)]
mod path_tests {
    use super::normalize_path;

    #[test]
    fn normalizes_paths_for_routing() {
        let cases = [
            ("/", Some("/")),
            ("/api/x", Some("/api/x")),
            ("/api/../admin", Some("/admin")),
            ("/api/./x", Some("/api/x")),
            ("/a/b/..", Some("/a/")),
            ("/a/b/.", Some("/a/b/")),
            ("/../../etc", Some("/etc")),
            ("/%61pi/x", Some("/api/x")),
            // Found by the path fuzz target: non-ASCII bytes were re-encoded one by one.
            ("/caf\u{e9}/\u{fffd}x", Some("/caf\u{e9}/\u{fffd}x")),
            ("/api/%2e%2e/admin", Some("/admin")),
            ("/a%2fb", Some("/a%2Fb")),
            ("/a%2Fb/..", Some("/a%2Fb/..").map(|_| "/")),
            ("/a//b", Some("/a//b")),
            ("/x%zz", None),
            ("/x%4", None),
            ("relative", None),
            ("/caf%C3%A9", Some("/caf%C3%A9")),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).as_deref(), want, "{raw}");
        }
    }
}
