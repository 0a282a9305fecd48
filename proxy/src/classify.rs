//! classify: facts about a request before routing — the client's address (believing
//! `X-Forwarded-For` only from trusted proxies), the host, the request id — and the header
//! rewriting every forwarded message gets (hop-by-hop removal, `X-Forwarded-*`, `Via`).

use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};
use routes::Snapshot;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies also drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Fields a `Connection` option does not remove (RFC 9110 §7.6.1: a sender must not name a
/// field meant for every recipient). `Host` is what the request was routed and cached by: taken
/// away, the upstream would answer for its default host, and the cache would keep that answer
/// under the host the client named, for everyone who asks for it. The others are the proxy's
/// own fields (a request id, the forwarding chain, `Via`), which a client must not be able to
/// take off the request an upstream sees.
const NOT_CONNECTION_OPTIONS: [HeaderName; 7] = [
    header::HOST,
    REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
    header::VIA,
];

/// Whether a field claims what an earlier proxy saw: the client's address, the scheme, port
/// or path prefix it used, the URL it asked for. Frameworks take client addresses from these
/// and build redirects and links from them (Rack reads `X-Forwarded-Scheme` and `-Ssl`, Spring
/// `Forwarded` and `X-Forwarded-Prefix`; some route by `X-Original-URL`), and no cache key
/// holds them, so one client's claim would reach others from the cache. Only a trusted proxy's
/// pass; `X-Forwarded-For`, `-Proto` and `-Host` are set by [`set_forwarded`].
pub fn forwarding_claim(name: &str) -> bool {
    // Most names are none of these by their first letter (`host`, `accept`, `user-agent`).
    if !matches!(name.as_bytes().first(), Some(b'f' | b't' | b'x')) {
        return false;
    }
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
            | "x-forwarded-server"
            | "x-original-url"
            | "x-rewrite-url"
    )
}

/// Whether a request field named `name` stops at the proxy: from an untrusted peer, our own
/// `x-frontdoor-*` fields and [`forwarding_claim`]s; from any peer, an [`underscore_alias`].
pub fn stops_here(name: &str, trusted: bool, classify: &crate::state::ClassifyHeaders) -> bool {
    if name.bytes().any(|b| b == b'_') {
        return underscore_alias(name, classify);
    }
    !trusted && (name.starts_with("x-frontdoor-") || forwarding_claim(name))
}

/// Whether `name` (with a `_`) reads as one of the proxy's own fields, a forwarding claim or a
/// classification header once each `_` is a `-`: CGI, WSGI and Rack turn both into one
/// variable (`HTTP_X_FORWARDED_FOR`), so an upstream behind them would take it for the real
/// one. nginx drops every name with `_` by default; this drops only those.
pub fn underscore_alias(name: &str, classify: &crate::state::ClassifyHeaders) -> bool {
    let dashed = name.replace('_', "-");
    let same = |n: &HeaderName| n.as_str() == dashed;
    dashed.starts_with("x-forwarded-")
        || dashed.starts_with("x-frontdoor-")
        || forwarding_claim(&dashed)
        || same(&REQUEST_ID)
        || same(&classify.country)
        || same(&classify.jurisdiction)
        || classify.tenant.as_ref().is_some_and(same)
}

/// Where the request came from and how.
#[derive(Debug, Clone)]
pub struct Peer {
    /// TCP peer address.
    pub addr: std::net::SocketAddr,
    /// `true` on the TLS listener.
    pub tls: bool,
    /// The peer's IP as a header value (`X-Forwarded-For`), formatted once per connection.
    ip: HeaderValue,
    /// The server name the TLS client asked for (SNI), if it named one.
    pub sni: Option<std::sync::Arc<str>>,
}

impl Peer {
    pub fn new(addr: std::net::SocketAddr, tls: bool) -> Peer {
        let mut text = Vec::with_capacity(15);
        push_ip(&mut text, addr.ip().to_canonical());
        // Copied to its exact size: kept for the connection's life (one allocation, where the
        // vector's would take two).
        let ip =
            HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            tls,
            ip,
            sni: None,
        }
    }

    /// The same peer, on a TLS connection whose client asked for `sni`.
    pub fn with_sni(mut self, sni: Option<&str>) -> Peer {
        self.sni = sni.map(std::sync::Arc::from);
        self
    }

    /// `client` as text when it is this peer's address: formatted once per connection, for
    /// the access log.
    pub fn text_if(&self, client: IpAddr) -> Option<&[u8]> {
        (client == self.addr.ip().to_canonical()).then(|| self.ip.as_bytes())
    }
}

/// An IPv4 address as dotted decimal, written by hand (`Display` cost ~1,500 instructions, a
/// visible part of a connection's set-up); IPv6 as `Display` writes it.
pub(crate) fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                let mut buf = [0u8; 20];
                out.extend_from_slice(crate::forward::wire::decimal(u64::from(octet), &mut buf));
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// An address as text, as `Display` writes it but without `fmt`: for keys built per request
/// (rate limits, sticky rollouts by client IP).
pub fn ip_text(ip: IpAddr) -> String {
    let mut text = Vec::with_capacity(16);
    push_ip(&mut text, ip);
    String::from_utf8(text).unwrap_or_else(|_| ip.to_string())
}

/// The request's host for routing: `:authority` (HTTP/2) or `Host`, normalised.
/// `None` when both are missing or unreadable (the caller answers 400).
pub fn host_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(routes::normalize_host(a.as_str()));
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    (!host.is_empty()).then(|| routes::normalize_host(host))
}

/// The client address to log and classify: the peer itself, or — when the peer is a trusted
/// proxy — the right-most untrusted address of `X-Forwarded-For`.
pub fn client_ip(snapshot: &Snapshot, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !snapshot.is_trusted_proxy(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !snapshot.is_trusted_proxy(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// Refuses what the HTTP/1 parser lets through but an upstream could read differently:
/// `Transfer-Encoding` together with `Content-Length` (RFC 9112 §6.1; we never forward such a
/// request), and more than one `Host` (RFC 9112 §3.2: 400).
pub fn check_framing<B>(req: &Request<B>) -> Result<(), crate::respond::ProxyError> {
    let h = req.headers();
    // HTTP/1.1: hyper drops Content-Length when both came; the head timer saw them.
    let ambiguous = req
        .extensions()
        .get::<crate::head_timer::AmbiguousFraming>()
        .is_some();
    // Looked up once: every request pays it.
    let te = h.contains_key(header::TRANSFER_ENCODING);
    if ambiguous || te && h.contains_key(header::CONTENT_LENGTH) {
        return Err(crate::respond::ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    if te {
        // Hyper has checked that the last coding is chunked; anything before it is a coding
        // we would drop on the way (the body goes on de-chunked, without the field).
        let (chunked, other) =
            h.get_all(header::TRANSFER_ENCODING)
                .iter()
                .fold((0, false), |(n, other), v| {
                    let (m, o) = crate::forward::wire::transfer_codings(v.as_bytes());
                    (n + m, other || o)
                });
        if other {
            return Err(crate::respond::ProxyError::UnsupportedCoding);
        }
        if chunked != 1 {
            return Err(crate::respond::ProxyError::BadRequest(
                "chunked applied more than once",
            ));
        }
    }
    let mut hosts = h.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(crate::respond::ProxyError::BadRequest(
            "more than one Host header",
        ));
    }
    // RFC 9112 §3.2: a Host with an invalid value is a 400; so is a target's authority with
    // userinfo (RFC 9110 §4.2.4; HTTP/2's `:authority` must not carry one, RFC 9113 §8.3.1).
    if host.is_some_and(|v| !valid_authority(v.as_bytes())) {
        return Err(crate::respond::ProxyError::BadRequest("invalid Host"));
    }
    if req
        .uri()
        .authority()
        .is_some_and(|a| !valid_authority(a.as_str().as_bytes()))
    {
        return Err(crate::respond::ProxyError::BadRequest(
            "invalid authority in the request target",
        ));
    }
    Ok(())
}

/// Whether `value` is `uri-host [":" port]` (RFC 9110 §7.2, RFC 3986 §3.2.2): an IPv6 literal
/// in brackets, or a name (an IPv4 address is one) of unreserved and sub-delim characters and
/// percent escapes; then a port of digits, which may be empty. No userinfo, path, query,
/// space or non-ASCII byte: an upstream that builds links from its `Host` gets none of them.
/// (Empty is valid: HTTP/1.0 may send an empty `Host`; a missing one is judged elsewhere.)
/// One pass, a table lookup per byte: every request's `Host` goes through it.
pub fn valid_authority(value: &[u8]) -> bool {
    let port_ok = |port: &[u8]| match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if value.first() == Some(&b'[') {
        let Some(end) = value.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&value[1..end]).ok();
        return literal.is_some_and(|l| l.parse::<std::net::Ipv6Addr>().is_ok())
            && port_ok(&value[end + 1..]);
    }
    let mut i = 0;
    while let Some(&b) = value.get(i) {
        if REG_NAME[usize::from(b)] {
            i += 1;
        } else if b == b':' {
            return port_ok(&value[i..]);
        } else if b == b'%'
            && value
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        {
            i += 3;
        } else {
            return false;
        }
    }
    true
}

/// The bytes of an RFC 3986 `reg-name` but `%`: unreserved and sub-delim characters.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Returns the request's id. One sent by a trusted proxy (`keep`: an earlier hop that named the
/// request) is kept when it is not empty and at most 200 bytes; any other is replaced by a fresh
/// one, as is a missing one. A client does not name its own request in our logs and the
/// upstreams' traces: it could reuse another request's id, or give one id to many.
pub fn ensure_request_id(headers: &mut HeaderMap, keep: bool) -> HeaderValue {
    // One lookup for the read and the write (the name is hashed once).
    match headers.entry(REQUEST_ID) {
        header::Entry::Occupied(v) if keep && !v.get().is_empty() && v.get().len() <= 200 => {
            v.get().clone()
        }
        header::Entry::Occupied(mut v) => {
            let id = new_request_id();
            v.insert(id.clone());
            id
        }
        header::Entry::Vacant(v) => v.insert(new_request_id()).clone(),
    }
}

/// 16 hex digits, unique within the process and unpredictable across processes.
///
/// Cut from a block of ids made together, per thread: one allocation per [`IDS_PER_BLOCK`]
/// ids, and an id's clones (the request's, the response's) share its block. An id of its own
/// was an allocation, and its first clone a second one.
///
/// Marked never to be indexed by HPACK ([`unique`]).
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        static BLOCK: std::cell::RefCell<bytes::Bytes> =
            const { std::cell::RefCell::new(bytes::Bytes::new()) };
    }
    let id = BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        if block.len() < 16 {
            let mut ids = Vec::with_capacity(16 * IDS_PER_BLOCK);
            for _ in 0..IDS_PER_BLOCK {
                ids.extend_from_slice(&new_id_digits());
            }
            *block = bytes::Bytes::from(ids);
        }
        block.split_to(16)
    });
    unique(HeaderValue::from_maybe_shared(id).unwrap_or(HeaderValue::from_static("0")))
}

/// Marks a value that no other message will repeat (a fresh id, a new user's cookie) as one
/// HTTP/2's header compression must not index (RFC 7541 §6.2.3). Indexed, each response
/// added an entry that no later one matched to the connection's HPACK table, and the encoder
/// walked every earlier entry of that name comparing values: 18% of an HTTP/2 request's
/// instructions went to encoding its response head. HTTP/1.1 does not see the mark.
pub fn unique(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// Request ids made at once by [`new_request_id`].
const IDS_PER_BLOCK: usize = 64;

/// The digits of [`new_request_id`], for ids that are part of a longer value.
pub fn new_id_digits() -> [u8; 16] {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    // splitmix64 over (seed + n): a bijection, so ids never repeat within a process.
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    hex16(z)
}

/// `z` as 16 lower-case hex digits, the most significant first: eight digits at a time, where
/// a digit at a time cost ~100 instructions an id.
fn hex16(z: u64) -> [u8; 16] {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    // A half's eight nibbles, one per byte, the most significant in the top byte.
    let spread = |half: u64| {
        let x = (half | (half << 16)) & 0x0000_ffff_0000_ffff;
        let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
        (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f
    };
    // Each byte's digit: '0' + n, and 'a' - '0' - 10 more where n > 9 (adding 6 carries into
    // the byte's high nibble exactly then).
    let digits = |n: u64| n + ONES * u64::from(b'0') + ((n + ONES * 6) >> 4 & ONES) * 0x27;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&digits(spread(z >> 32)).to_be_bytes());
    out[8..].copy_from_slice(&digits(spread(z & 0xffff_ffff)).to_be_bytes());
    out
}

/// `Upgrade`'s bit in [`hop_bit`]'s answer, after the eight of [`HOP_BY_HOP`].
const UPGRADE_BIT: u16 = 1 << 8;

/// `1 << i` for `HOP_BY_HOP[i]`, [`UPGRADE_BIT`] for `Upgrade`, 0 for any other name: one match
/// on the name's text (its length tells most names apart at once), where comparing each field
/// with the nine names cost ~60 instructions a field.
fn hop_bit(name: &HeaderName) -> u16 {
    match name.as_str() {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "proxy-authenticate" => 1 << 3,
        "proxy-authorization" => 1 << 4,
        "te" => 1 << 5,
        "trailer" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "upgrade" => UPGRADE_BIT,
        _ => 0,
    }
}

/// Takes out of a trailer section what it must not carry on (RFC 9110 §6.5.1): the
/// connection's own fields, `Upgrade`, and framing and routing (`Content-Length`, `Host`). An
/// HTTP/2 peer refuses trailers with a connection's fields (the stream is reset, the answer
/// lost); an HTTP/1.1 one could take them for the next message's. Unlike a head's
/// `Connection`, a trailer's names nothing: it is only dropped.
pub fn strip_trailers(trailers: &mut HeaderMap) {
    if trailers.is_empty() {
        return;
    }
    for name in HOP_BY_HOP
        .iter()
        .chain([&header::UPGRADE, &header::CONTENT_LENGTH, &header::HOST])
    {
        trailers.remove(name);
    }
}

/// Joins an HTTP/2 (or HTTP/3) request's cookie fields into one, "; " between them (RFC 9113
/// §8.2.3, RFC 9114 §4.2.1): such clients may send each cookie as a field of its own (browsers
/// do, for header compression), which must not reach an HTTP/1.1 hop as several `Cookie`
/// fields. One field or none: nothing to do.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if crumb.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Each part was a valid value, and so is "; ".
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes hop-by-hop headers and every header named in `Connection` but those in
/// [`NOT_CONNECTION_OPTIONS`]. `keep_upgrade` keeps `Upgrade` and a `Connection: upgrade`
/// (WebSocket passthrough).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names notes which are here (most heads carry none, or only
    // `Connection`); only those are looked up again.
    let mut present = 0u16;
    for name in headers.keys() {
        present |= hop_bit(name);
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // HOP_BY_HOP[0] is `Connection`: the fields it names go too. Its values are taken out of
    // the map first (one, as a rule; a copy of the others only when there are several). The
    // usual names (`keep-alive`, `upgrade`) are hop-by-hop fields the bits above deal with;
    // any other is looked for among the names present (most often `close`, which is not).
    if present & 1 != 0 {
        let others: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .skip(1)
            .cloned()
            .collect();
        let first = headers.remove(header::CONNECTION);
        for value in first.iter().chain(&others) {
            for name in crate::forward::wire::list_items(value.as_bytes()) {
                let among = |names: &[HeaderName]| {
                    names
                        .iter()
                        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
                };
                if name.is_empty()
                    || name.eq_ignore_ascii_case(b"upgrade")
                    || among(&HOP_BY_HOP)
                    || among(&NOT_CONNECTION_OPTIONS)
                {
                    continue;
                }
                let named = headers
                    .keys()
                    .find(|k| name.eq_ignore_ascii_case(k.as_str().as_bytes()))
                    .cloned();
                if let Some(named) = named {
                    headers.remove(named);
                }
            }
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Whether a `TE` field names `trailers` (RFC 9110 §10.1.4): the client takes a trailer section.
pub fn takes_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        crate::forward::wire::list_items(v.as_bytes())
            .any(|item| item.eq_ignore_ascii_case(b"trailers"))
    })
}

/// Appends our `Via` entry, e.g. `1.1 frontdoor`.
pub fn add_via(headers: &mut HeaderMap, version: Version, via: &ViaValues) {
    let ours = via.for_version(version);
    match headers.entry(header::VIA) {
        header::Entry::Occupied(mut prev) => {
            // Every earlier hop, in order (a list may span several fields), then ours.
            let mut entry = Vec::with_capacity(64);
            for hop in prev.iter() {
                entry.extend_from_slice(hop.as_bytes());
                entry.extend_from_slice(b", ");
            }
            entry.extend_from_slice(ours.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&entry) {
                prev.insert(v);
            }
        }
        header::Entry::Vacant(slot) => {
            slot.insert(ours.clone());
        }
    }
}

/// Our own `Via` entry (`PROTOCOL PSEUDONYM`) for each protocol version, built once per
/// snapshot so the request path only clones a header value.
#[derive(Debug, Clone)]
pub struct ViaValues([HeaderValue; 4]);

impl ViaValues {
    pub fn new(pseudonym: &str) -> ViaValues {
        let value = |proto: &str| {
            HeaderValue::from_str(&format!("{proto} {pseudonym}"))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 frontdoor"))
        };
        ViaValues([value("1.0"), value("1.1"), value("2"), value("3")])
    }

    fn for_version(&self, version: Version) -> &HeaderValue {
        match version {
            Version::HTTP_10 => &self.0[0],
            Version::HTTP_2 => &self.0[2],
            Version::HTTP_3 => &self.0[3],
            _ => &self.0[1],
        }
    }
}

/// A route's changes to a message's header fields (`routes::HeaderOps`), parsed once per
/// snapshot.
#[derive(Debug, Default)]
pub struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    default: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdits {
    /// `None` when there is nothing to change; an error names a field validation let through.
    pub fn of(ops: &routes::HeaderOps) -> Result<Option<HeaderEdits>, String> {
        if ops.is_empty() {
            return Ok(None);
        }
        let name = |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| n.to_string());
        let field = |(n, v): &(String, String)| {
            Ok::<_, String>((name(n)?, HeaderValue::from_str(v).map_err(|_| n.clone())?))
        };
        Ok(Some(HeaderEdits {
            remove: ops
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: ops.set.iter().map(field).collect::<Result<_, _>>()?,
            default: ops.default.iter().map(field).collect::<Result<_, _>>()?,
        }))
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.default {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// The request's `Content-Length`, when it declares one (framing was checked before the request
/// was routed: one value, digits only).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the client's request came over HTTPS: to this front door, or — said by a trusted
/// proxy in front of it, in the first entry of `X-Forwarded-Proto` — to that proxy.
pub fn came_over_https(peer: &Peer, trusted: bool, headers: &HeaderMap) -> bool {
    peer.tls
        || (trusted
            && headers.get(&X_FORWARDED_PROTO).is_some_and(|v| {
                let first = v
                    .as_bytes()
                    .split(|&b| b == b',')
                    .next()
                    .unwrap_or_default();
                first.trim_ascii().eq_ignore_ascii_case(b"https")
            }))
}

/// Sets `X-Forwarded-For/-Proto/-Host`. From a trusted proxy the existing values are kept and
/// the peer is appended to `X-Forwarded-For`; from anyone else they are replaced (and
/// `X-Forwarded-Host` removed when there is no host: HTTP/1.0 without `Host`).
pub fn set_forwarded(headers: &mut HeaderMap, peer: &Peer, trusted: bool, host: &str) {
    // An untrusted peer's own `X-Forwarded-For` is replaced without being read.
    let prev = if trusted {
        headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .filter(|prev| !prev.trim().is_empty())
    } else {
        None
    };
    let xff = match prev {
        Some(prev) => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip().to_canonical())).ok()
        }
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if peer.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        // The host the client addressed as it sent it, port included (`Host`; HTTP/2's
        // `:authority`, which the pipeline has put there): what an application needs to build
        // its own absolute URLs, as nginx's `$http_host` gives it. Not the normal form routing
        // uses, which drops the port. None without a host (HTTP/1.0 without `Host`), and
        // none from the client.
        match headers
            .get(header::HOST)
            .filter(|_| !host.is_empty())
            .cloned()
        {
            Some(v) => headers.insert(X_FORWARDED_HOST, v),
            None => headers.remove(X_FORWARDED_HOST),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        routes::load(
            r#"
[server]
trusted_proxies = ["10.0.0.0/8"]
[clusters.c]
endpoints = [{ address = "127.0.0.1:1" }]
[[routes]]
cluster = "c"
"#,
        )
        .expect("config")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn client_ip_trusts_only_trusted_peers() {
        let s = snapshot();
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        let xff = headers(&[("x-forwarded-for", "1.2.3.4, 10.0.0.7")]);
        assert_eq!(client_ip(&s, ip("10.1.1.1"), &xff), ip("1.2.3.4"));
        assert_eq!(client_ip(&s, ip("8.8.8.8"), &xff), ip("8.8.8.8"));
        let spoof = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5")]);
        assert_eq!(client_ip(&s, ip("10.1.1.1"), &spoof), ip("5.5.5.5"));
        let junk = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(client_ip(&s, ip("10.1.1.1"), &junk), ip("10.1.1.1"));
    }

    #[test]
    fn peer_address_text() {
        for (addr, text) in [
            ("192.0.2.7:1", "192.0.2.7"),
            ("0.0.0.0:1", "0.0.0.0"),
            ("255.255.255.255:1", "255.255.255.255"),
            ("[::ffff:10.0.0.1]:1", "10.0.0.1"),
            ("[2001:db8::1]:1", "2001:db8::1"),
        ] {
            let addr: std::net::SocketAddr = addr.parse().expect("addr");
            let peer = Peer::new(addr, false);
            assert_eq!(peer.ip, text, "{addr}");
            // The access log's client: the text only for the peer itself (in its IPv4 form
            // when it came mapped), not for another address.
            let client = addr.ip().to_canonical();
            assert_eq!(peer.text_if(client), Some(text.as_bytes()), "{addr}");
            assert_eq!(
                peer.text_if("192.0.2.8".parse().expect("ip")),
                None,
                "{addr}"
            );
            // Per-request keys: the text `Display` gives (the address as it came).
            assert_eq!(ip_text(addr.ip()), addr.ip().to_string(), "{addr}");
        }
    }

    #[test]
    fn authorities_are_host_and_port_only() {
        for good in [
            "",
            "a",
            "Shop.Example.COM.",
            "a_b-c~d",
            "127.0.0.1",
            "127.0.0.1:8080",
            "a:",
            "[::1]",
            "[2001:db8::1]:443",
            "%61%2Eb",
            "!$&'()*+,;=",
        ] {
            assert!(valid_authority(good.as_bytes()), "{good:?} is valid");
        }
        for bad in [
            "user@a",
            "a b",
            "a\tb",
            "a/b",
            "a?b",
            "a#b",
            "a\\b",
            "a:1:2",
            "a:x",
            ":1x",
            "[::1",
            "[::1]x",
            "[::1]:a",
            "[a::b::c]",
            "[v1.x]",
            "a%2",
            "a%zz",
            "caf\u{e9}",
            "a\"b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad:?} is invalid");
        }
    }

    #[test]
    fn cookie_crumbs_join_into_one_field() {
        let mut h = headers(&[
            ("cookie", "a=1"),
            ("x-other", "kept"),
            ("cookie", ""),
            ("cookie", "b=2; c=3"),
        ]);
        join_cookie_crumbs(&mut h);
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
        assert_eq!(h.get("x-other").map(|v| v.as_bytes()), Some(&b"kept"[..]));
        let mut one = headers(&[("cookie", "a=1")]);
        join_cookie_crumbs(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().count(), 1);
        let mut none = headers(&[("x-other", "kept")]);
        join_cookie_crumbs(&mut none);
        assert!(!none.contains_key(header::COOKIE));
    }

    #[test]
    fn hop_by_hop_and_forwarded() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        for gone in ["connection", "keep-alive", "x-secret", "te", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert!(h.contains_key("accept"));
        let cases: [&[(&str, &str)]; 2] = [
            // Every `Connection` field names fields to drop, not only the first.
            &[
                ("connection", "x-a"),
                ("connection", "X-B , close"),
                ("x-a", "1"),
                ("x-b", "2"),
            ],
            // Names that are hop-by-hop fields themselves, in any case, and names of no field.
            &[
                ("connection", "Upgrade, KEEP-ALIVE, close, TE"),
                ("upgrade", "websocket"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
            ],
        ];
        for fields in cases {
            let mut h = headers(fields);
            h.append(header::ACCEPT, HeaderValue::from_static("*/*"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"], "{fields:?}");
        }
        // `Host` and the proxy's own fields stay whatever `Connection` names (in any case).
        let mut kept = headers(&[
            (
                "connection",
                "Host, x-request-id, X-Forwarded-For, x-forwarded-proto, x-forwarded-host, forwarded, via, x-a",
            ),
            ("host", "shop.example"),
            ("x-request-id", "r1"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
            ("forwarded", "for=203.0.113.9"),
            ("via", "1.1 cdn"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut kept, false);
        let mut names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "forwarded",
                "host",
                "via",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-request-id",
            ]
        );
        // Each name's bit is its place in HOP_BY_HOP (what is removed for it).
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_bit(name), 1 << i, "{name}");
        }
        assert_eq!(hop_bit(&header::CONTENT_LENGTH), 0);
        // Each one alone, too (a head with none of them is left as it is).
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut one = headers(&[(name, "x"), ("accept", "*/*")]);
            strip_hop_by_hop(&mut one, false);
            assert!(!one.contains_key(name), "{name} kept");
            assert_eq!(one.len(), 1, "{name}");
        }
        let peer = Peer::new("8.8.8.8:1234".parse().expect("addr"), false);
        h.insert(header::HOST, HeaderValue::from_static("Example.com:8443"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        set_forwarded(&mut h, &peer, false, "example.com");
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_eq!(h["x-forwarded-proto"], "http");
        // The host as the client sent it, port and all; the client's own is replaced.
        assert_eq!(h["x-forwarded-host"], "Example.com:8443");
        assert_eq!(h.get_all(&X_FORWARDED_HOST).iter().count(), 1);
        // No host (HTTP/1.0 without one): none forwarded, and the client's is not passed on.
        let mut bare = headers(&[("x-forwarded-host", "spoofed")]);
        set_forwarded(&mut bare, &peer, false, "");
        assert!(!bare.contains_key(&X_FORWARDED_HOST));

        let mut t = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let proxy = Peer::new("10.0.0.2:1".parse().expect("addr"), false);
        set_forwarded(&mut t, &proxy, true, "example.com");
        assert_eq!(t["x-forwarded-for"], "9.9.9.9, 10.0.0.2");
        assert_eq!(t["x-forwarded-proto"], "https");

        let mut ws = headers(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["connection"], "upgrade");
    }

    #[test]
    fn te_says_whether_trailers_are_taken() {
        for (fields, takes) in [
            (&[("te", "trailers")][..], true),
            (&[("te", "Trailers")][..], true),
            (&[("te", "deflate;q=0.5, trailers")][..], true),
            (&[("te", "gzip"), ("te", " trailers ")][..], true),
            (&[("te", "gzip")][..], false),
            (&[("te", "trailersx, x-trailers")][..], false),
            (&[("accept", "trailers")][..], false),
        ] {
            assert_eq!(takes_trailers(&headers(fields)), takes, "{fields:?}");
        }
    }

    #[test]
    fn via_and_request_ids() {
        let mut h = headers(&[("via", "1.1 cdn")]);
        add_via(&mut h, Version::HTTP_2, &ViaValues::new("frontdoor"));
        assert_eq!(h["via"], "1.1 cdn, 2 frontdoor");
        // A list over two fields keeps every hop, in order, in one field.
        let mut h = headers(&[("via", "1.0 a, 1.1 b"), ("via", "1.1 c")]);
        add_via(&mut h, Version::HTTP_11, &ViaValues::new("frontdoor"));
        let all: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(all, ["1.0 a, 1.1 b, 1.1 c, 1.1 frontdoor"]);
        // An id present but empty is replaced by a fresh one.
        let mut e = headers(&[("x-request-id", "")]);
        let id = ensure_request_id(&mut e, true);
        assert_eq!(id.len(), 16);
        assert_eq!(e.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);
        let mut a = HeaderMap::new();
        let id = ensure_request_id(&mut a, true);
        assert_eq!(id.len(), 16);
        assert_eq!(a["x-request-id"], id);
        // A fresh id is never repeated: HPACK must not index it.
        assert!(id.is_sensitive() && a["x-request-id"].is_sensitive());
        // A trusted proxy's id is kept; any other peer's is replaced, every copy of it.
        let mut b = headers(&[("x-request-id", "given")]);
        assert_eq!(ensure_request_id(&mut b, true), "given");
        let mut c = headers(&[("x-request-id", "given"), ("x-request-id", "again")]);
        let id = ensure_request_id(&mut c, false);
        assert_eq!(id.len(), 16);
        assert_eq!(c.get_all("x-request-id").iter().collect::<Vec<_>>(), [&id]);
        let long = "x".repeat(201);
        let mut d = headers(&[("x-request-id", long.as_str())]);
        assert_eq!(ensure_request_id(&mut d, true).len(), 16);
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for z in [
            0,
            9,
            10,
            0xf,
            0x0123_4567_89ab_cdef,
            0xfedc_ba98_7654_3210,
            u64::MAX,
        ]
        .into_iter()
        .chain((0..1000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        {
            assert_eq!(hex16(z), *format!("{z:016x}").as_bytes(), "{z:#x}");
        }
        // (Many blocks of ids: each id whole, never a neighbour's digits.)
        assert!(ids.iter().all(|id| {
            id.len() == 16
                && id
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        }));
    }
}
