//! The validated, immutable routing model a request reads: one [`Snapshot`] per config version.
//!
//! Everything is resolved: clusters are referenced by [`ClusterId`], regions by [`RegionId`],
//! durations are [`Duration`]s. A snapshot never changes after [`crate::validate`] builds it; a
//! reload builds a new one and the proxy swaps it in with one store.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::residency::{JurisdictionId, RegionPolicy, RegionSet};
use crate::table::{PrefixMap, RouteTable};
use crate::units::Cidr;

/// Index of a cluster in [`Snapshot::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub usize);

/// Index of a route in [`Snapshot::routes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub usize);

/// Index of a region in [`Snapshot::regions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub usize);

/// One immutable, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Stable hash of the source text (hex), shown on `/status` and as a metric label.
    pub hash: String,
    pub server: Server,
    pub regions: Vec<Region>,
    pub tls: Tls,
    pub clusters: Vec<Cluster>,
    pub routes: Vec<Route>,
    /// Every jurisdiction name the config mentions, interned.
    pub jurisdictions: Vec<String>,
    /// By jurisdiction: the only regions its requests may reach (`None`: unrestricted).
    pub residency: Vec<Option<RegionSet>>,
    pub classify: Classify,
    pub(crate) table: RouteTable,
    /// Cache-header rules and the shared cache's settings.
    pub cache: crate::cache::CachePolicy,
}

impl Snapshot {
    pub fn cluster(&self, id: ClusterId) -> &Cluster {
        &self.clusters[id.0]
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    pub fn region(&self, id: RegionId) -> &Region {
        &self.regions[id.0]
    }

    pub fn jurisdiction(&self, id: JurisdictionId) -> &str {
        &self.jurisdictions[id.0]
    }

    pub fn jurisdiction_named(&self, name: &str) -> Option<JurisdictionId> {
        self.jurisdictions
            .iter()
            .position(|j| j.eq_ignore_ascii_case(name))
            .map(JurisdictionId)
    }

    /// The regions a jurisdiction is restricted to, if it is restricted.
    pub fn allowed_regions(&self, id: JurisdictionId) -> Option<RegionSet> {
        self.residency.get(id.0).copied().flatten()
    }

    pub fn region_names(&self, set: RegionSet) -> Vec<&str> {
        set.iter()
            .filter(|r| r.0 < self.regions.len())
            .map(|r| self.regions[r.0].name.as_str())
            .collect()
    }

    pub fn region_named(&self, name: &str) -> Option<RegionId> {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .map(RegionId)
    }

    /// True when `peer` is inside one of `server.trusted_proxies`.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.server.trusted_proxies.iter().any(|c| c.contains(peer))
    }
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct Server {
    pub region: Option<RegionId>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub trusted_proxies: Vec<Cidr>,
    pub access_log: bool,
    pub drain_timeout: Duration,
    pub client_body_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// A client that takes none of an answer for this long loses it: an HTTP/1.1 write that
    /// cannot go on ends the connection, an HTTP/2 stream not asked for more is reset.
    pub send_timeout: Duration,
    /// A WebSocket tunnel silent both ways for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Idle this long after a request, a plain HTTP/1.1 connection is parked; `None`: never.
    pub park_idle_after: Option<Duration>,
    pub max_requests_per_connection: usize,
    /// Bytes per second (0: off) and the grace before it is judged.
    pub client_body_min_rate: (u64, Duration),
    pub via: String,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_request_head_bytes: usize,
    pub max_request_headers: usize,
    pub max_uri_bytes: usize,
    /// The port a redirect to HTTPS names, when set; otherwise the HTTPS listener's.
    pub https_redirect_port: Option<u16>,
    /// The `Strict-Transport-Security` value for answers over HTTPS, when set.
    pub hsts: Option<String>,
    /// Connections from `trusted_proxies` may open with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// A region and its jurisdiction (`us`, `eu`, `apac`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub jurisdiction: String,
}

/// Certificate sources for the TLS listener; loaded by the `certs` crate.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub certificates: Vec<CertificateSource>,
    pub directories: Vec<String>,
    pub default_host: Option<String>,
    pub reject_unknown_sni: bool,
    /// TLS 1.3 only (Mozilla "modern"); otherwise "intermediate".
    pub modern: bool,
    pub acme: Option<Acme>,
}

/// Validated `[tls.acme]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    pub directory: String,
    pub contact: Vec<String>,
    pub hosts: Vec<String>,
    pub storage: String,
    pub renew_before: std::time::Duration,
    pub ca_file: Option<String>,
    /// TLS-ALPN-01 instead of HTTP-01.
    pub tls_alpn: bool,
}

impl Acme {
    /// Where the issued chain and key live.
    pub fn cert_path(&self) -> String {
        format!(
            "{}/{}.crt",
            self.storage.trim_end_matches('/'),
            self.hosts[0]
        )
    }

    pub fn key_path(&self) -> String {
        format!(
            "{}/{}.key",
            self.storage.trim_end_matches('/'),
            self.hosts[0]
        )
    }
}

/// A PEM chain + key for some host patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSource {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
    pub ocsp: Option<String>,
}

/// Wire protocol towards a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge over cleartext.
    H2,
}

/// How an endpoint is chosen within a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
}

/// An upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub lb: LbPolicy,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub health_check: Option<HealthCheck>,
    pub outlier: Outlier,
    pub limits: Limits,
    pub endpoints: Vec<Endpoint>,
    pub tls: Option<UpstreamTls>,
    /// How long an endpoint back in service takes to reach its whole weight (zero: at once).
    pub slow_start: Duration,
}

/// TLS towards a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub ca: String,
    pub server_name: Option<String>,
    /// (cert chain, key) files for mutual TLS.
    pub client_cert: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
    pub idle: Duration,
    pub body_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    /// Extra attempts after the first.
    pub attempts: u32,
    /// Retries in flight may be at most this share (0..=1) of requests in flight, plus one.
    pub budget_ratio: f64,
    /// The 5xx statuses retried (`on_status`), bit `s - 500` for status `s`.
    pub on_status: u128,
}

impl Retries {
    /// Whether an upstream's answer with `status` is retried.
    pub fn on(&self, status: u16) -> bool {
        (500..600).contains(&status) && self.on_status & (1 << (status - 500)) != 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive failures that eject an endpoint (a failed exchange, a `5xx` head, a body
    /// broken off after a good head); 0 disables ejection.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    /// The most of the cluster's endpoints ejected at once, in percent of them (rounded down,
    /// but one may always be): beyond it, an endpoint that reaches `consecutive_failures` stays
    /// in. A failure every endpoint shares (a database they all need is down) then reaches
    /// clients as it is, instead of as `503`s from a cluster with nothing left in it. 100: no
    /// cap.
    pub max_ejection_percent: u32,
    /// Ejection on a failure rate, for an endpoint failing often but seldom many times in a
    /// row (30 % of its answers fail: five in a row come once in ~600 requests).
    pub failure_percentage: Option<FailurePercentage>,
}

impl Outlier {
    /// Whether live outcomes can eject an endpoint at all.
    pub fn ejects(&self) -> bool {
        self.consecutive_failures > 0 || self.failure_percentage.is_some()
    }
}

/// An endpoint is ejected when, over an `interval` in which it had at least `min_requests`,
/// `percent` or more of them failed (failures as for `consecutive_failures`). Each endpoint's
/// interval is judged at its first outcome after the interval ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePercentage {
    pub percent: u32,
    pub min_requests: u32,
    pub interval: Duration,
}

/// Concurrency cap per endpoint (see `RawLimits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests at one endpoint at once; 0: no cap (then nothing waits).
    pub max_per_endpoint: u32,
    /// Requests of the cluster waiting for a slot at most.
    pub max_queued: u32,
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_per_endpoint: 0,
            max_queued: 1024,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Where an endpoint lives on the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    Ip(SocketAddr),
    /// Resolved with DNS and re-resolved when the record's TTL runs out.
    Dns {
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Ip(a) => write!(f, "{a}"),
            Address::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: Address,
    pub region: Option<RegionId>,
    pub version: Option<String>,
    /// Relative share of requests, 1..=1000.
    pub weight: u32,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub cluster: ClusterId,
    pub version: Option<String>,
    pub websocket: bool,
    /// How requests are spread over regions.
    pub regions: RegionPolicy,
    pub default_jurisdiction: Option<JurisdictionId>,
    /// Pinned residency: every request is restricted to this jurisdiction's regions.
    pub residency: Option<JurisdictionId>,
    pub rollout: Option<crate::rollout::Rollout>,
    pub rate_limit: Option<RateLimit>,
    /// Plain-HTTP requests get a redirect to HTTPS (the route's setting, or the server's).
    pub https_redirect: bool,
    /// What replaces `path_prefix` in the path sent upstream.
    pub rewrite_prefix: Option<String>,
    /// Changes to the request's header fields as it goes upstream.
    pub request_headers: HeaderOps,
    /// Changes to the header fields of every answer to the client.
    pub response_headers: HeaderOps,
    /// Largest request body in bytes (the route's, or the server's); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// The route's own time to an answer's head, over its cluster's `request_timeout`.
    pub request_timeout: Option<Duration>,
    /// Upper-case methods the route takes; empty: any.
    pub methods: Vec<String>,
    /// Lower-case header names and the exact value each must have (`None`: any value).
    pub match_headers: Vec<(String, Option<String>)>,
}

impl Route {
    /// Whether the route takes a request it is the prefix of: its `methods` and
    /// `match_headers` hold.
    #[inline]
    pub fn takes(&self, facts: &crate::RequestFacts<'_>) -> bool {
        if self.methods.is_empty() && self.match_headers.is_empty() {
            return true;
        }
        let method = self.methods.is_empty()
            || facts
                .method
                .is_some_and(|m| self.methods.iter().any(|x| x == m));
        method
            && self.match_headers.iter().all(|(name, want)| {
                match facts.header.and_then(|h| (h.0)(name)) {
                    Some(v) => want.as_deref().is_none_or(|w| v.trim() == w),
                    None => false,
                }
            })
    }

    /// `; methods GET, HEAD; header x-a = 1, header x-b` (what [`Self::takes`] looks at), or
    /// nothing.
    pub fn conditions(&self) -> String {
        let mut out = String::new();
        if !self.methods.is_empty() {
            out.push_str(&format!("; methods {}", self.methods.join(", ")));
        }
        for (name, want) in &self.match_headers {
            match want {
                Some(v) => out.push_str(&format!("; header {name} = {v:?}")),
                None => out.push_str(&format!("; header {name} present")),
            }
        }
        out
    }

    /// The path the upstream gets for `path` (a path this route matched, in normal form):
    /// `rewrite_prefix` in place of `path_prefix`, what follows it kept. `None` without a
    /// rewrite.
    pub fn rewritten(&self, path: &str) -> Option<String> {
        let to = self.rewrite_prefix.as_deref()?;
        // The prefix matched segment-wise: what is left is empty or starts with '/'. `/`
        // matches every path, all of which is left.
        let rest = if self.path_prefix == "/" {
            path
        } else {
            path.get(self.path_prefix.len()..).unwrap_or_default()
        };
        Some(match (to.ends_with('/'), rest.strip_prefix('/')) {
            (true, Some(rest)) => format!("{to}{rest}"),
            _ => format!("{to}{rest}"),
        })
    }
}

/// Header fields a route changes on a message, lower-case names: removed, then set (replacing
/// any), then defaulted (only where absent). Validation keeps a name in one list only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub default: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.default.is_empty() && self.remove.is_empty()
    }
}

/// A validated rate limit.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub rps: f64,
    pub burst: f64,
    pub key: RateKey,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    Ip,
    /// A request header (lower-case name); the client IP when absent.
    Header(String),
    Route,
}

/// How a request's jurisdiction is found (sources in order: tenant, trusted headers, GeoIP,
/// route default, global default).
#[derive(Debug, Default)]
pub struct Classify {
    /// Lower-case header names.
    pub country_header: String,
    pub jurisdiction_header: String,
    pub geoip_db: Option<String>,
    /// Upper-case ISO 3166 alpha-2 → jurisdiction (built-in EU/EEA plus config).
    pub(crate) countries: crate::LookupMap<String, JurisdictionId>,
    pub default: Option<JurisdictionId>,
    /// Lower-case header carrying the tenant id.
    pub tenant_header: Option<String>,
    pub(crate) tenant_ids: crate::LookupMap<String, JurisdictionId>,
    pub(crate) tenant_hosts: crate::LookupMap<String, JurisdictionId>,
    pub(crate) tenant_prefixes: PrefixMap<JurisdictionId>,
}

impl Classify {
    /// The jurisdiction of the longest tenant path prefix of `path`, without regard to ASCII
    /// case: an upstream that reads paths so (IIS, ASP.NET, many file systems) serves
    /// `/EU/...` as the tenant's `/eu/...`, which must then be held to the tenant's regions.
    /// A case-sensitive upstream only gets a request it will not find in the tenant's regions.
    pub(crate) fn tenant_prefix(&self, path: &str) -> Option<JurisdictionId> {
        if self.tenant_prefixes.is_empty() {
            return None;
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            self.tenant_prefixes.longest(&path.to_ascii_lowercase())
        } else {
            self.tenant_prefixes.longest(path)
        }
    }

    /// Jurisdiction of a country code, if the country maps to one.
    pub fn country(&self, code: &str) -> Option<JurisdictionId> {
        if code.len() != 2 {
            return None;
        }
        self.countries.get(&code.to_ascii_uppercase()).copied()
    }
}
