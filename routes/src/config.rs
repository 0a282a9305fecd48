//! Raw configuration: the TOML file as written, before validation.
//!
//! These types only describe shape (`deny_unknown_fields` everywhere, so a typo is an error, not a
//! silently ignored key). Meaning — references, ranges, addresses — is checked by
//! [`crate::validate`], which turns a [`RawConfig`] into an immutable [`crate::Snapshot`].

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    /// Region name → its settings. A `BTreeMap` so errors and status list regions in a stable order.
    #[serde(default)]
    pub regions: BTreeMap<String, RawRegion>,
    #[serde(default)]
    pub tls: RawTls,
    /// How a request's jurisdiction is found.
    #[serde(default)]
    pub classify: RawClassify,
    /// Jurisdiction → the only regions its requests may reach. A jurisdiction listed here is
    /// *restricted*; others may go anywhere.
    #[serde(default)]
    pub residency: BTreeMap<String, Vec<String>>,
    /// Cluster name → cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Cache-header policy per path and the shared HTTP cache.
    #[serde(default)]
    pub cache: RawCache,
}

/// `[cache]`: the shared cache's bounds and behaviour, and the header rules (`[[cache.rules]]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Memory bound of the shared cache: bytes, or text such as `"256MiB"`. Absent or 0: no
    /// shared cache (the header rules still apply).
    pub max_bytes: Option<RawSize>,
    /// Responses larger than this are never stored. Default `"8MiB"`.
    pub max_object_bytes: Option<RawSize>,
    /// Response header saying what the cache did (`HIT`, `MISS`, ...). Default `x-cache`;
    /// `""` leaves it out.
    pub status_header: Option<String>,
    /// RFC 9213 targeted fields this cache obeys, first valid one wins over `Cache-Control`.
    /// Default `["CDN-Cache-Control"]`.
    pub targeted_fields: Option<Vec<String>>,
    /// Cookies that make a request authenticated (like `Authorization`).
    #[serde(default)]
    pub auth_cookies: Vec<String>,
    /// Heuristic freshness as a percentage of the time since `Last-Modified`. Default 10.
    pub heuristic_percent: Option<u32>,
    /// Upper bound of a heuristic freshness lifetime. Default `"1d"`.
    pub heuristic_max: Option<String>,
    /// Header rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

/// A size: a number of bytes or text with a unit (`"64MiB"`, `"512KiB"`, `"1GB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    /// The size in bytes, or why the text is not one.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Bytes(n) => Ok(*n),
            RawSize::Text(t) => crate::cache::parse_size(t),
        }
    }
}

/// One header rule: which requests it matches and what it does to their responses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub name: Option<String>,
    /// Path patterns: `/exact`, `/dir/**` (the directory and everything below), `*` for one
    /// segment, `*.css` inside a segment.
    pub paths: Vec<String>,
    /// Only for these hosts (exact or `*.suffix`); empty: any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Only on these routes (by name); empty: any.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Never stored, by this cache or any downstream one (`Cache-Control: no-store`).
    #[serde(default)]
    pub no_store: bool,
    /// Header → value, replacing what the origin sent.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Header → value, only where the origin sent none (never for authenticated requests).
    /// Cache-controlling fields (`Cache-Control`, targeted fields, `Surrogate-Control`) are
    /// defaulted only when the origin sent none of them, nor `Expires`.
    #[serde(default)]
    pub default: BTreeMap<String, String>,
    /// Headers removed from the origin's response.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Listener addresses and process-wide behaviour.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// The region this front door runs in (the `--region` flag overrides it).
    pub region: Option<String>,
    /// Plain HTTP listener (HTTP/1.1 and h2c prior knowledge), e.g. `"127.0.0.1:8080"`.
    pub http: Option<String>,
    /// TLS listener (ALPN h2, http/1.1). Needs `[tls]` certificates.
    pub https: Option<String>,
    /// Admin API listener; loopback by default.
    pub admin: Option<String>,
    /// Peers whose `X-Forwarded-*` and other edge headers are believed, as CIDRs.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// One JSON line per request on stdout (target `access`). Default on.
    pub access_log: Option<bool>,
    /// How long SIGTERM waits for in-flight requests before exiting. Default `"30s"`.
    pub drain_timeout: Option<String>,
    /// Longest silence inside a client's request body before it is answered 408. Default
    /// `"30s"`.
    pub client_body_timeout: Option<String>,
    /// Slowest average rate (bytes per second) a request body may arrive at, judged after
    /// `client_body_min_rate_grace` (default 10 s); slower gets 408. Default 0: off.
    pub client_body_min_rate: Option<u64>,
    pub client_body_min_rate_grace: Option<String>,
    /// Longest a client may take to send a request head (HTTP/1.1) once it has started one;
    /// then it is answered 408 and closed. Default `"10s"`. Listener setting: read at start.
    pub header_timeout: Option<String>,
    /// How long an HTTP/1.1 connection may sit idle after a request before it is closed (the
    /// wait for a first request is `header_timeout`), and an HTTP/2 connection without a
    /// stream before it is closed with a GOAWAY. Default `"60s"`. Listener setting.
    pub keepalive_timeout: Option<String>,
    /// Longest a client may go without taking any more of an answer: on HTTP/1.1 (a write to
    /// it cannot go on) the connection is then closed; on HTTP/2 (the stream's answer is not
    /// asked for more) the answer is dropped and the stream reset. Default `"60s"` (nginx's
    /// `send_timeout`). Listener setting.
    pub send_timeout: Option<String>,
    /// How long a WebSocket tunnel may carry nothing either way before it is closed. Default
    /// `"1h"`. Listener setting.
    pub tunnel_idle_timeout: Option<String>,
    /// How long an HTTP/1.1 connection (plain listener) may sit idle after a request before
    /// it is parked: its task and buffers are freed, one thread watches its socket, and the
    /// next request takes it back up. `"off"` keeps every connection a task. Default `"1s"`;
    /// at or above `keepalive_timeout`, nothing is parked. Listener setting.
    pub park_idle_after: Option<String>,
    /// Requests one HTTP/1.1 connection may carry; the last answer says `Connection: close`.
    /// Default 1,000. Listener setting.
    pub max_requests_per_connection: Option<usize>,
    /// Value for the `Via` header's pseudonym. Default `"frontdoor"`.
    pub via: Option<String>,
    /// Largest HTTP/1.1 request head (request line and header fields), bytes; larger gets 431.
    /// Default 32 KiB, at least 8 KiB. Listener setting: read at start.
    pub max_request_head_bytes: Option<usize>,
    /// Most header fields in an HTTP/1.1 request head; more gets 431. Default 100. Listener
    /// setting: read at start.
    pub max_request_headers: Option<usize>,
    /// Longest request target (path and query), bytes; longer gets 414. Default 8 KiB.
    pub max_uri_bytes: Option<usize>,
    /// Open client connections at most, over all listeners (default 100,000).
    pub max_connections: Option<usize>,
    /// Open client connections at most per client address (default 1,000).
    pub max_connections_per_ip: Option<usize>,
    /// Answer a request that came over plain HTTP with a redirect to the same URL over HTTPS
    /// (301 for `GET` and `HEAD`, 308 for other methods, which keeps the method and body),
    /// on every route that does not say otherwise (`routes[].https_redirect`). A request a
    /// trusted proxy forwarded with `X-Forwarded-Proto: https` came over HTTPS. Default false.
    pub https_redirect: Option<bool>,
    /// The port the redirect names. Default: the port of this front door's HTTPS listener,
    /// 443 without one (443 is not written in the URL).
    pub https_redirect_port: Option<u16>,
    /// `Strict-Transport-Security` on every answer sent over HTTPS (never over plain HTTP)
    /// that does not carry its own.
    pub hsts: Option<RawHsts>,
    /// Connections from `trusted_proxies` may open with a PROXY protocol header (HAProxy's,
    /// version 1 or 2, as TCP balancers send): the client it names is the connection's
    /// client. Listener setting: read at start. Default false.
    pub proxy_protocol: Option<bool>,
    /// Largest request body (bytes, or `"10MiB"`) on every route that does not say otherwise
    /// (`routes[].max_request_body`): a larger declared `Content-Length` gets 413 before
    /// anything goes upstream; a body without one that grows past it is cut off upstream and
    /// answered 413. Default: no limit.
    pub max_request_body: Option<RawSize>,
}

/// `hsts = { max_age = 31536000, include_subdomains = true, preload = false }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsts {
    /// Seconds a browser keeps to HTTPS for the host, as in the header; 0 tells it to forget.
    pub max_age: u64,
    /// The policy covers the host's subdomains too. Default false.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Consent to browsers' preload lists; needs `include_subdomains` and a year or more.
    #[serde(default)]
    pub preload: bool,
}

/// A region and the jurisdiction its data falls under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    /// Jurisdiction code such as `"us"`, `"eu"`, `"apac"`.
    pub jurisdiction: String,
}

/// Jurisdiction classification: tenant map, trusted headers, GeoIP, defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClassify {
    /// ISO 3166 alpha-2 country header set by a CDN. Default `x-client-country`.
    pub country_header: Option<String>,
    /// Jurisdiction header set by a CDN. Default `x-client-jurisdiction`.
    pub jurisdiction_header: Option<String>,
    /// MaxMind country database (`.mmdb`) looked up on the client address.
    pub geoip_db: Option<String>,
    /// Country → jurisdiction, added to (or overriding) the built-in EU/EEA → `eu` list.
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
    /// Jurisdiction when nothing else decides and the route has no default.
    pub default_jurisdiction: Option<String>,
    #[serde(default)]
    pub tenants: RawTenants,
}

/// Tenant → jurisdiction, the first source consulted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenants {
    /// Header carrying the tenant id (e.g. `x-tenant-id`).
    pub header: Option<String>,
    /// Tenant id (header value) → jurisdiction.
    #[serde(default)]
    pub ids: BTreeMap<String, String>,
    /// Exact host → jurisdiction.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    /// Path prefix (segment-wise) → jurisdiction.
    #[serde(default)]
    pub path_prefixes: BTreeMap<String, String>,
}

/// Certificates for the TLS listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// Directories of `NAME.crt`/`NAME.pem` + `NAME.key` pairs, each served for the DNS names
    /// in its certificate.
    #[serde(default)]
    pub directories: Vec<String>,
    /// `hosts` entry of the certificate served when SNI is absent or unknown. Default: the first
    /// certificate. Set `reject_unknown_sni = true` to refuse such handshakes instead.
    pub default_host: Option<String>,
    #[serde(default)]
    pub reject_unknown_sni: bool,
    /// `"intermediate"` (default: TLS 1.2 and 1.3, Mozilla's intermediate suites) or
    /// `"modern"` (TLS 1.3 only). Takes effect at start.
    pub profile: Option<String>,
    /// Certificates issued and renewed automatically by an ACME CA (RFC 8555).
    pub acme: Option<RawAcme>,
}

/// `[tls.acme]`: one certificate for `hosts`, issued with HTTP-01 challenges that frontdoor's
/// own HTTP listener answers, kept in `storage`, renewed `renew_before` its expiry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// The CA's directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URIs for the account, e.g. `["mailto:ops@example.com"]`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Exact DNS names on the certificate (the first names the files).
    pub hosts: Vec<String>,
    /// Directory for the account credentials and the issued certificate and key.
    pub storage: String,
    /// Renew this long before expiry. Default `"30d"`.
    pub renew_before: Option<String>,
    /// Extra root (PEM) trusted for the CA's own HTTPS, for a private or test CA.
    pub ca_file: Option<String>,
    /// `"http-01"` (default: answered on the HTTP listener, port 80) or `"tls-alpn-01"`
    /// (answered by the TLS listener, port 443, RFC 8737).
    pub challenge: Option<String>,
}

/// One certificate chain and key, in PEM files, for a set of host patterns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// Exact names (`example.com`) or one-label wildcards (`*.example.com`).
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
    /// A DER OCSP response to staple (refresh the file; changes are picked up on reload).
    pub ocsp: Option<String>,
}

/// An upstream cluster: endpoints in one or more regions, and how to talk to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `"http1"` (default) or `"h2"` (prior knowledge, cleartext).
    pub protocol: Option<String>,
    /// `"round_robin"` (default) or `"least_request"`.
    pub lb: Option<String>,
    /// An endpoint back in service (its ejection over, or its health checks passing again)
    /// takes a share of requests growing from a tenth of its weight to all of it over this
    /// long, so a cold instance is not handed its whole load at once. Default: none.
    pub slow_start: Option<String>,
    pub connect_timeout: Option<String>,
    /// Time allowed from sending the request until the response head arrives.
    pub request_timeout: Option<String>,
    /// Idle keep-alive connections in the pool are closed after this long.
    pub idle_timeout: Option<String>,
    /// Longest pause between two body chunks (either direction) before the exchange is cut.
    pub body_idle_timeout: Option<String>,
    pub retries: Option<RawRetries>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier: Option<RawOutlier>,
    /// How many requests each endpoint is given at once, and how the rest wait.
    pub limits: Option<RawLimits>,
    /// TLS to the endpoints (and a client certificate for mutual TLS).
    pub tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
}

/// Retry policy: only idempotent, bodiless requests, only before any response byte.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Extra attempts after the first. Default 1.
    pub attempts: Option<u32>,
    /// Retries may add at most this percentage on top of the requests in flight. Default 20.
    pub budget_percent: Option<f64>,
    /// Upstream answers (5xx statuses) that are retried on another endpoint like a failed
    /// exchange: an idempotent, bodiless request only, its answer dropped unread. Default:
    /// none (an upstream's 5xx is passed on).
    #[serde(default)]
    pub on_status: Vec<u16>,
}

/// Active HTTP health checking of every endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// Passive outlier ejection on consecutive failures seen in real traffic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
    /// The most of the cluster's endpoints out at once, in percent (default 100: no cap).
    pub max_ejection_percent: Option<u32>,
    /// Ejects an endpoint whose failures reach this percent of its requests over an
    /// `interval` (with at least `failure_percentage_min_requests` of them). Absent: off.
    pub failure_percentage: Option<u32>,
    pub failure_percentage_min_requests: Option<u32>,
    pub interval: Option<String>,
}

/// A cap on the requests at one endpoint at once (HTTP/1.1: the connections in use), with a
/// bounded wait for a free slot; what the cap and the queue cannot hold gets a 503.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Requests at one endpoint at once, until each response's body ends. 0 (default): no cap.
    pub max_requests_per_endpoint: Option<u32>,
    /// Requests of the cluster waiting for a slot at most (each takes the first slot given
    /// back at an endpoint it may use); more get a 503 at once. Default 1024; 0: none waits
    /// (a request finding every slot taken gets its 503 at once).
    pub max_queued: Option<u32>,
    /// How long a request waits for a slot before its 503. Default `"1s"`.
    pub queue_timeout: Option<String>,
}

/// One upstream address: an IP with port or a DNS name with port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: String,
    /// Region the endpoint runs in; must be declared in `[regions]` when regions are declared.
    pub region: Option<String>,
    /// Version label (for example `"stable"`, `"canary"`), selected by a route's `version`.
    pub version: Option<String>,
    /// Share of its region's requests relative to the other endpoints there (1..=1000,
    /// default 1): an instance twice the size takes `weight = 2`. A DNS name's addresses
    /// each have it.
    pub weight: Option<u32>,
}

/// One route: which requests (host, path prefix) go to which cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    /// Exact hosts or `*.suffix` wildcards; empty or `["*"]` matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Segment-wise prefix (`/api` matches `/api` and `/api/x`, not `/apix`). Default `/`.
    pub path_prefix: Option<String>,
    pub cluster: String,
    /// Only endpoints with this version label serve the route.
    pub version: Option<String>,
    /// Allow `Upgrade: websocket` on this route. Default false.
    #[serde(default)]
    pub websocket: bool,
    /// Region → weight: requests are spread over these regions in proportion, among the ones
    /// healthy and allowed for the request. Exclusive with `failover`.
    pub regional_weights: Option<BTreeMap<String, f64>>,
    /// Regions in order: the first healthy, allowed one takes the request.
    pub failover: Option<Vec<String>>,
    /// Jurisdiction for this route's requests when no tenant, header or GeoIP decides.
    pub default_jurisdiction: Option<String>,
    /// Every request on this route is restricted to this jurisdiction's regions, whatever its
    /// own jurisdiction; checked statically against the cluster's endpoints.
    pub residency: Option<String>,
    /// A canary or blue-green rollout of a candidate version on this route.
    pub rollout: Option<RawRollout>,
    /// Token-bucket request rate limit, per client key.
    pub rate_limit: Option<RawRateLimit>,
    /// Redirect this route's plain-HTTP requests to HTTPS (see `server.https_redirect`, whose
    /// value it overrides).
    pub https_redirect: Option<bool>,
    /// The upstream gets the path with the route's `path_prefix` replaced by this (`"/"` with
    /// `path_prefix = "/api"`: `/api/users` goes up as `/users`). The query is kept.
    pub rewrite_prefix: Option<String>,
    /// Header fields set, defaulted or removed on the request as it goes upstream.
    pub request_headers: Option<RawHeaderOps>,
    /// Header fields set, defaulted or removed on every answer of the route to its client.
    pub response_headers: Option<RawHeaderOps>,
    /// This route's largest request body (see `server.max_request_body`, which it overrides).
    pub max_request_body: Option<RawSize>,
    /// Time from sending a request until its answer's head, for this route's requests: over
    /// the cluster's `request_timeout` (a report that takes a minute, a long poll). Default:
    /// the cluster's.
    pub request_timeout: Option<String>,
    /// Only requests with one of these methods. Default: any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Only requests with these header fields: name → exact value, or `"*"` for any value.
    /// Routes of one host and prefix are told apart by these and `methods`: tried in config
    /// order, the one without conditions last; none matching, shorter prefixes are tried.
    #[serde(default)]
    pub match_headers: BTreeMap<String, String>,
}

/// `{ set = { "x-frame-options" = "DENY" }, default = { ... }, remove = ["server"] }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    /// Field → value, replacing any the message has.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Field → value, only where the message has none.
    #[serde(default)]
    pub default: BTreeMap<String, String>,
    /// Fields removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `tls = { ca = "...", server_name = "...", cert = "...", key = "..." }` on a cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM root(s) the endpoints' certificates must chain to.
    pub ca: String,
    /// Name sent as SNI and verified in the certificate. Default: the endpoint's host.
    pub server_name: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS; needs `key`.
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `rate_limit = { rps = 100, burst = 200, key = "ip" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Sustained requests per second per key.
    pub rps: f64,
    /// Bucket size: requests a key may send at once. Default: `rps` (at least 1).
    pub burst: Option<f64>,
    /// `"ip"` (default; the client address, trusted-proxy aware), `"header:NAME"`, or
    /// `"route"` (one bucket for everyone).
    pub key: Option<String>,
}

/// A rollout: the route's `version` is stable; the candidate is another version label of the
/// same cluster (`candidate`) and/or another cluster (`candidate_cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// `"canary"` (default) or `"blue-green"` (weight is 0 or 100).
    pub mode: Option<String>,
    pub candidate: Option<String>,
    pub candidate_cluster: Option<String>,
    /// Starting weight in percent (0..=100, fractions allowed). Default 0.
    pub weight: Option<f64>,
    /// User key for sticky assignment: `"cookie"` (default), `"header"`, `"ip"`.
    pub sticky: Option<String>,
    /// Cookie name (sticky = "cookie"); set by frontdoor when absent. Default `fd-uid`.
    pub cookie: Option<String>,
    /// Header holding the user key (sticky = "header"); the client IP when absent.
    pub header: Option<String>,
    /// Header that forces a version (`canary` / `stable`). Default `x-frontdoor-version`.
    pub override_header: Option<String>,
    /// Believe the override header only from trusted proxies. Default false.
    #[serde(default)]
    pub override_trusted_only: bool,
    /// Weights (percent) to advance through while the gates stay green, e.g. `[1, 10, 50, 100]`.
    #[serde(default)]
    pub steps: Vec<f64>,
    /// How long the gates must stay green at a step before the next. Default `"5m"`.
    pub step_hold: Option<String>,
    /// After reaching 100%, keep judging this long and revert on breach. Default `"10m"`.
    pub post_promotion_watch: Option<String>,
    /// Percent of the requests stable serves that are also sent to the candidate, whose
    /// answers are judged and dropped (shadow traffic): a candidate at weight 0 is judged, and
    /// advanced through the steps, on copies of real requests before any user gets it. Only
    /// `GET`, `HEAD` and `OPTIONS` without a body are copied. Default 0 (off).
    pub mirror_percent: Option<f64>,
    #[serde(default)]
    pub gates: RawGates,
}

/// When a candidate is judged bad.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGates {
    /// Sliding window judged, in 1 s buckets. Default `"60s"`.
    pub window: Option<String>,
    /// Largest tolerated 5xx share (0..1). Default 0.05.
    pub max_error_rate: Option<f64>,
    pub max_p95: Option<String>,
    pub max_p99: Option<String>,
    /// No verdict below this many candidate requests in the window. Default 20.
    pub min_requests: Option<u64>,
    /// Also fail when the candidate's error rate is significantly above stable's. Default true.
    pub compare_stable: Option<bool>,
}
