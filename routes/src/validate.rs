//! Validation: raw config → [`Snapshot`], or every error found, each with its path.
//!
//! Nothing stops at the first problem: an operator fixing a config wants the whole list
//! (`routes[2].cluster: unknown cluster "ap"`), not one error per attempt.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{RawClassify, RawCluster, RawConfig, RawEndpoint, RawRoute, RawServer};
use crate::residency::{EU_EEA_COUNTRIES, JurisdictionId, MAX_REGIONS, RegionPolicy, RegionSet};
use crate::snapshot::{
    Address, CertificateSource, Classify, Cluster, ClusterId, Endpoint, FailurePercentage,
    HeaderOps, HealthCheck, LbPolicy, Limits, Outlier, Region, RegionId, Retries, Route, RouteId,
    Server, Snapshot, Timeouts, Tls, UpstreamProtocol,
};
use crate::table::{PrefixMap, RouteTable, Slot, canonical_prefix};
use crate::units::{Cidr, parse_duration};

/// One problem in a config, located by its path in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path such as `routes[2].cluster`; empty for a whole-file (syntax) error.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All errors of a rejected config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Parses TOML text and validates it. The snapshot's hash is taken over `text`.
pub fn load(text: &str) -> Result<Snapshot, ConfigErrors> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("TOML: {}", e.to_string().trim_end()),
        }])
    })?;
    validate(&raw, &content_hash(text))
}

/// FNV-1a 64 of the text, as 16 hex digits: stable across processes and builds.
pub fn content_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Collects errors while walking the raw config.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: String, value: Option<&String>, default: Duration) -> Duration {
        match value.map(|v| parse_duration(v)) {
            None => default,
            Some(Ok(d)) if d.is_zero() => {
                self.push(path, "must be greater than zero");
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(path, e);
                default
            }
        }
    }

    fn addr(&mut self, path: &str, value: Option<&String>) -> Option<SocketAddr> {
        let v = value?;
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("{v:?} is not an IP:port address"));
                None
            }
        }
    }
}

/// Checks a raw config and builds its snapshot.
pub fn validate(raw: &RawConfig, hash: &str) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Errors::default();

    let regions: Vec<Region> = raw
        .regions
        .iter()
        .map(|(name, r)| {
            if r.jurisdiction.trim().is_empty() {
                errors.push(format!("regions.{name}.jurisdiction"), "must not be empty");
            }
            if !valid_header_name(name) {
                errors.push(
                    format!("regions.{name}"),
                    "region names use letters, digits, '-' and '_'",
                );
            }
            Region {
                name: name.clone(),
                jurisdiction: r.jurisdiction.trim().to_ascii_lowercase(),
            }
        })
        .collect();
    let region_ids: HashMap<&str, RegionId> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), RegionId(i)))
        .collect();

    if regions.len() > MAX_REGIONS {
        errors.push(
            "regions",
            format!("at most {MAX_REGIONS} regions, got {}", regions.len()),
        );
    }
    let mut jurisdictions = Jurisdictions::default();
    for r in &regions {
        jurisdictions.id(&r.jurisdiction);
    }
    let residency = residency(raw, &regions, &region_ids, &mut jurisdictions, &mut errors);
    let classify = classify(&raw.classify, &mut jurisdictions, &mut errors);

    let server = server(&raw.server, &region_ids, &mut errors);
    let tls = tls(raw, &mut errors);

    let cluster_ids: BTreeMap<&str, ClusterId> = raw
        .clusters
        .keys()
        .enumerate()
        .map(|(i, name)| (name.as_str(), ClusterId(i)))
        .collect();
    let clusters: Vec<Cluster> = raw
        .clusters
        .iter()
        .map(|(name, c)| cluster(name, c, &region_ids, &mut errors))
        .collect();

    let server_body_limit = raw
        .server
        .max_request_body
        .as_ref()
        .and_then(|v| body_limit("server.max_request_body", v, &mut errors));
    let mut table = RouteTable::default();
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut sharing = Sharing::new();
    let mut conditions = vec![None; raw.routes.len()];
    for (i, r) in raw.routes.iter().enumerate() {
        let Some(mut route) = route(
            i,
            r,
            &cluster_ids,
            &clusters,
            &mut table,
            &mut sharing,
            &mut conditions,
            &mut errors,
        ) else {
            continue;
        };
        route.regions = region_policy(i, r, &region_ids, &mut errors);
        route.https_redirect = r
            .https_redirect
            .or(raw.server.https_redirect)
            .unwrap_or(false);
        route.max_request_body = match (&r.max_request_body, &raw.server.max_request_body) {
            (Some(own), _) => {
                body_limit(&format!("routes[{i}].max_request_body"), own, &mut errors)
            }
            (None, Some(_)) => server_body_limit,
            (None, None) => None,
        };
        route.rollout = r
            .rollout
            .as_ref()
            .and_then(|raw| rollout(i, raw, &route, &cluster_ids, &clusters, &mut errors));
        route.default_jurisdiction = r
            .default_jurisdiction
            .as_deref()
            .map(|j| jurisdictions.id(j));
        if let Some(pinned) = &r.residency {
            let id = jurisdictions.id(pinned);
            match residency.get(&id) {
                None => errors.push(
                    format!("routes[{i}].residency"),
                    format!("{pinned:?} has no [residency] policy: say which regions it may reach"),
                ),
                Some(allowed) => {
                    route.residency = Some(id);
                    prove_route_residency(
                        i,
                        &route,
                        &clusters,
                        &regions,
                        *allowed,
                        pinned,
                        &mut errors,
                    );
                }
            }
        }
        routes.push(route);
    }
    check_shared(&mut table, &sharing, &conditions, &mut errors);
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(name) = &r.name
            && let Some(first) = names.insert(name.as_str(), i)
        {
            errors.push(
                format!("routes[{i}].name"),
                format!("{name:?} is already the name of routes[{first}]"),
            );
        }
    }
    if routes.is_empty() && errors.0.is_empty() {
        errors.push("routes", "at least one route is required");
    }
    let cache = crate::cache::compile(&raw.cache, &routes, &mut |p, m| errors.push(p, m));

    if !errors.0.is_empty() {
        return Err(ConfigErrors(errors.0));
    }
    let residency = (0..jurisdictions.0.len())
        .map(|j| residency.get(&JurisdictionId(j)).copied())
        .collect();
    Ok(Snapshot {
        hash: hash.to_string(),
        server,
        regions,
        tls,
        clusters,
        routes,
        jurisdictions: jurisdictions.0,
        residency,
        classify,
        table,
        cache,
    })
}

fn server(raw: &RawServer, regions: &HashMap<&str, RegionId>, errors: &mut Errors) -> Server {
    let region = raw.region.as_ref().and_then(|name| {
        let id = regions.get(name.as_str()).copied();
        if id.is_none() {
            errors.push(
                "server.region",
                format!("unknown region {name:?} (declare it under [regions])"),
            );
        }
        id
    });
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            Cidr::parse(t)
                .map_err(|e| errors.push(format!("server.trusted_proxies[{i}]"), e))
                .ok()
        })
        .collect();
    let default_admin = SocketAddr::from(([127, 0, 0, 1], 9901));
    Server {
        region,
        http: errors.addr("server.http", raw.http.as_ref()),
        https: errors.addr("server.https", raw.https.as_ref()),
        admin: errors
            .addr("server.admin", raw.admin.as_ref())
            .unwrap_or(default_admin),
        trusted_proxies,
        access_log: raw.access_log.unwrap_or(true),
        drain_timeout: errors.duration(
            "server.drain_timeout".into(),
            raw.drain_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        client_body_timeout: errors.duration(
            "server.client_body_timeout".into(),
            raw.client_body_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        client_body_min_rate: (
            raw.client_body_min_rate.unwrap_or(0),
            errors.duration(
                "server.client_body_min_rate_grace".into(),
                raw.client_body_min_rate_grace.as_ref(),
                Duration::from_secs(10),
            ),
        ),
        header_timeout: errors.duration(
            "server.header_timeout".into(),
            raw.header_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        keepalive_timeout: errors.duration(
            "server.keepalive_timeout".into(),
            raw.keepalive_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        send_timeout: errors.duration(
            "server.send_timeout".into(),
            raw.send_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        tunnel_idle_timeout: errors.duration(
            "server.tunnel_idle_timeout".into(),
            raw.tunnel_idle_timeout.as_ref(),
            Duration::from_secs(3600),
        ),
        park_idle_after: match raw.park_idle_after.as_ref() {
            Some(v) if v == "off" => None,
            v => Some(errors.duration("server.park_idle_after".into(), v, Duration::from_secs(1))),
        },
        max_requests_per_connection: within(
            errors,
            "server.max_requests_per_connection",
            raw.max_requests_per_connection,
            1_000,
            1..=u32::MAX as usize,
        ),
        via: raw.via.clone().unwrap_or_else(|| "frontdoor".to_string()),
        max_connections: positive(
            errors,
            "server.max_connections",
            raw.max_connections,
            100_000,
        ),
        max_connections_per_ip: positive(
            errors,
            "server.max_connections_per_ip",
            raw.max_connections_per_ip,
            1_000,
        ),
        max_request_head_bytes: within(
            errors,
            "server.max_request_head_bytes",
            raw.max_request_head_bytes,
            32 * 1024,
            8 * 1024..=1024 * 1024,
        ),
        max_request_headers: within(
            errors,
            "server.max_request_headers",
            raw.max_request_headers,
            100,
            1..=1_000,
        ),
        max_uri_bytes: within(
            errors,
            "server.max_uri_bytes",
            raw.max_uri_bytes,
            8 * 1024,
            16..=64 * 1024,
        ),
        https_redirect_port: match raw.https_redirect_port {
            Some(0) => {
                errors.push("server.https_redirect_port", "must be a port, 1 to 65535");
                None
            }
            port => port,
        },
        hsts: raw.hsts.as_ref().and_then(|h| hsts(h, errors)),
        proxy_protocol: match raw.proxy_protocol {
            Some(true) if raw.trusted_proxies.is_empty() => {
                errors.push(
                    "server.proxy_protocol",
                    "needs trusted_proxies: the balancers whose PROXY headers are believed",
                );
                false
            }
            on => on.unwrap_or(false),
        },
    }
}

/// A route's match conditions: its methods (sorted) and headers (sorted), to compare routes.
type Conditions = (
    std::collections::BTreeSet<String>,
    Vec<(String, Option<String>)>,
);

/// Orders the routes of each shared host and prefix — those with conditions in config order,
/// then the one without — and refuses what cannot be told apart: two without conditions, or
/// two with the same ones (the second would never take a request).
fn check_shared(
    table: &mut RouteTable,
    sharing: &Sharing,
    conditions: &[Option<Conditions>],
    errors: &mut Errors,
) {
    let plain = |id: RouteId| {
        conditions[id.0]
            .as_ref()
            .is_none_or(|(m, h)| m.is_empty() && h.is_empty())
    };
    for (chain, id, field, what) in sharing {
        let routes = &table.shared[*chain];
        let before = &routes[..routes.iter().position(|r| r == id).unwrap_or(0)];
        // Two without conditions have the same (none).
        if let Some(first) = before.iter().find(|r| conditions[r.0] == conditions[id.0]) {
            let why = if plain(*id) {
                format!("{what} is already routed by routes[{}]", first.0)
            } else {
                format!(
                    "{what}: routes[{}] takes the same requests first (the same methods and match_headers)",
                    first.0
                )
            };
            errors.push(field.clone(), why);
        }
    }
    for routes in &mut table.shared {
        // Stable: config order within each group.
        routes.sort_by_key(|r| plain(*r));
    }
}

/// A request body limit in bytes: at least 1.
fn body_limit(path: &str, raw: &crate::config::RawSize, errors: &mut Errors) -> Option<u64> {
    match raw.bytes() {
        Ok(0) => {
            errors.push(path, "must be at least 1 byte (leave it out for no limit)");
            None
        }
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(path, e);
            None
        }
    }
}

/// The `Strict-Transport-Security` value, or the errors that keep it from being one.
fn hsts(raw: &crate::config::RawHsts, errors: &mut Errors) -> Option<String> {
    // What browsers' preload lists take (hstspreload.org): a year at least, subdomains too.
    const PRELOAD_MIN_AGE: u64 = 365 * 86_400;
    let before = errors.0.len();
    if raw.preload && !raw.include_subdomains {
        errors.push(
            "server.hsts.preload",
            "needs include_subdomains = true: a preloaded policy covers every subdomain",
        );
    }
    if raw.preload && raw.max_age < PRELOAD_MIN_AGE {
        errors.push(
            "server.hsts.preload",
            format!("needs max_age of a year ({PRELOAD_MIN_AGE}) or more"),
        );
    }
    if errors.0.len() > before {
        return None;
    }
    let mut value = format!("max-age={}", raw.max_age);
    if raw.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if raw.preload {
        value.push_str("; preload");
    }
    Some(value)
}

fn within(
    errors: &mut Errors,
    path: &str,
    value: Option<usize>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> usize {
    match value {
        Some(v) if !range.contains(&v) => {
            errors.push(
                path,
                format!("must be between {} and {}", range.start(), range.end()),
            );
            default
        }
        Some(v) => v,
        None => default,
    }
}

fn positive(errors: &mut Errors, path: &str, value: Option<usize>, default: usize) -> usize {
    match value {
        Some(0) => {
            errors.push(path, "must be at least 1");
            default
        }
        Some(v) => v,
        None => default,
    }
}

fn tls(raw: &RawConfig, errors: &mut Errors) -> Tls {
    let t = &raw.tls;
    let mut certificates = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        if c.hosts.is_empty() {
            errors.push(
                format!("tls.certificates[{i}].hosts"),
                "must list at least one host",
            );
        }
        for (j, h) in c.hosts.iter().enumerate() {
            if let Err(e) = check_host_pattern(h) {
                errors.push(format!("tls.certificates[{i}].hosts[{j}]"), e);
            }
        }
        certificates.push(CertificateSource {
            hosts: c.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            cert: c.cert.clone(),
            key: c.key.clone(),
            ocsp: c.ocsp.clone(),
        });
    }
    if let Some(d) = &t.default_host
        && t.directories.is_empty()
        && !certificates.iter().any(|c| c.hosts.iter().any(|h| h == d))
        && !t
            .acme
            .as_ref()
            .is_some_and(|a| a.hosts.iter().any(|h| h.eq_ignore_ascii_case(d)))
    {
        errors.push(
            "tls.default_host",
            format!("{d:?} is not in any certificate's hosts"),
        );
    }
    let acme = t.acme.as_ref().map(|a| {
        if !a.directory.starts_with("https://") {
            errors.push("tls.acme.directory", "must be an https:// URL");
        }
        if a.hosts.is_empty() {
            errors.push("tls.acme.hosts", "must list at least one host");
        }
        for (j, h) in a.hosts.iter().enumerate() {
            if h.starts_with("*.") {
                errors.push(
                    format!("tls.acme.hosts[{j}]"),
                    "wildcards need DNS-01, which is not supported; list exact names",
                );
            } else if let Err(e) = check_host_pattern(h) {
                errors.push(format!("tls.acme.hosts[{j}]"), e);
            }
        }
        for (j, c) in a.contact.iter().enumerate() {
            if !c.starts_with("mailto:") {
                errors.push(format!("tls.acme.contact[{j}]"), "use mailto: URIs");
            }
        }
        if a.storage.trim().is_empty() {
            errors.push("tls.acme.storage", "must name a directory");
        }
        let renew_before = errors.duration(
            "tls.acme.renew_before".into(),
            a.renew_before.as_ref(),
            Duration::from_secs(30 * 86_400),
        );
        crate::snapshot::Acme {
            directory: a.directory.clone(),
            contact: a.contact.clone(),
            hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            storage: a.storage.clone(),
            renew_before,
            ca_file: a.ca_file.clone(),
            tls_alpn: match a.challenge.as_deref() {
                None | Some("http-01") => false,
                Some("tls-alpn-01") => true,
                Some(other) => {
                    errors.push(
                        "tls.acme.challenge",
                        format!("{other:?} is not one of \"http-01\", \"tls-alpn-01\""),
                    );
                    false
                }
            },
        }
    });
    if raw.server.https.is_some()
        && certificates.is_empty()
        && acme.is_none()
        && t.directories.is_empty()
    {
        errors.push(
            "tls.certificates",
            "server.https is set but no certificate is configured",
        );
    }
    Tls {
        certificates,
        directories: t.directories.clone(),
        default_host: t.default_host.clone(),
        reject_unknown_sni: t.reject_unknown_sni,
        modern: match t.profile.as_deref() {
            None | Some("intermediate") => false,
            Some("modern") => true,
            Some(other) => {
                errors.push(
                    "tls.profile",
                    format!("{other:?} is not one of \"intermediate\", \"modern\""),
                );
                false
            }
        },
        acme,
    }
}

fn cluster(
    name: &str,
    raw: &RawCluster,
    regions: &HashMap<&str, RegionId>,
    errors: &mut Errors,
) -> Cluster {
    let at = |field: &str| format!("clusters.{name}.{field}");
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2") => UpstreamProtocol::H2,
        Some(other) => {
            errors.push(
                at("protocol"),
                format!("{other:?} is not one of \"http1\", \"h2\""),
            );
            UpstreamProtocol::Http1
        }
    };
    let lb = match raw.lb.as_deref() {
        None | Some("round_robin") => LbPolicy::RoundRobin,
        Some("least_request") => LbPolicy::LeastRequest,
        Some(other) => {
            errors.push(
                at("lb"),
                format!("{other:?} is not one of \"round_robin\", \"least_request\""),
            );
            LbPolicy::RoundRobin
        }
    };
    let timeouts = Timeouts {
        connect: errors.duration(
            at("connect_timeout"),
            raw.connect_timeout.as_ref(),
            Duration::from_secs(2),
        ),
        request: errors.duration(
            at("request_timeout"),
            raw.request_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        idle: errors.duration(
            at("idle_timeout"),
            raw.idle_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        body_idle: errors.duration(
            at("body_idle_timeout"),
            raw.body_idle_timeout.as_ref(),
            Duration::from_secs(60),
        ),
    };
    let retries = match &raw.retries {
        None => Retries {
            attempts: 1,
            budget_ratio: 0.2,
            on_status: 0,
        },
        Some(r) => {
            let attempts = r.attempts.unwrap_or(1);
            if attempts > 5 {
                errors.push(
                    at("retries.attempts"),
                    format!("must be 0..=5, got {attempts}"),
                );
            }
            let pct = r.budget_percent.unwrap_or(20.0);
            if !(0.0..=100.0).contains(&pct) {
                errors.push(
                    at("retries.budget_percent"),
                    format!("must be 0..=100, got {pct}"),
                );
            }
            let mut on_status = 0u128;
            for (j, &status) in r.on_status.iter().enumerate() {
                if (500..600).contains(&status) {
                    on_status |= 1 << (status - 500);
                } else {
                    errors.push(
                        at(&format!("retries.on_status[{j}]")),
                        format!("{status} is not a 5xx status"),
                    );
                }
            }
            Retries {
                attempts: attempts.min(5),
                budget_ratio: pct.clamp(0.0, 100.0) / 100.0,
                on_status,
            }
        }
    };
    let health_check = raw.health_check.as_ref().map(|h| {
        let path = h.path.clone().unwrap_or_else(|| "/healthz".to_string());
        if !path.starts_with('/') {
            errors.push(
                at("health_check.path"),
                format!("{path:?} must start with '/'"),
            );
        }
        let threshold = |errors: &mut Errors, field: &str, v: Option<u32>, d: u32| {
            let v = v.unwrap_or(d);
            if v == 0 {
                errors.push(at(field), "must be at least 1");
            }
            v.max(1)
        };
        HealthCheck {
            path,
            interval: errors.duration(
                at("health_check.interval"),
                h.interval.as_ref(),
                Duration::from_secs(5),
            ),
            timeout: errors.duration(
                at("health_check.timeout"),
                h.timeout.as_ref(),
                Duration::from_secs(1),
            ),
            healthy_threshold: threshold(
                errors,
                "health_check.healthy_threshold",
                h.healthy_threshold,
                2,
            ),
            unhealthy_threshold: threshold(
                errors,
                "health_check.unhealthy_threshold",
                h.unhealthy_threshold,
                3,
            ),
        }
    });
    let outlier = match &raw.outlier {
        None => Outlier {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            failure_percentage: None,
        },
        Some(o) => Outlier {
            consecutive_failures: o.consecutive_failures.unwrap_or(5),
            ejection_time: errors.duration(
                at("outlier.ejection_time"),
                o.ejection_time.as_ref(),
                Duration::from_secs(30),
            ),
            max_ejection_percent: match o.max_ejection_percent.unwrap_or(100) {
                pct @ 0..=100 => pct,
                pct => {
                    errors.push(
                        at("outlier.max_ejection_percent"),
                        format!("must be 0..=100, got {pct}"),
                    );
                    100
                }
            },
            failure_percentage: o.failure_percentage.map(|percent| {
                if !(1..=100).contains(&percent) {
                    errors.push(
                        at("outlier.failure_percentage"),
                        format!("must be 1..=100, got {percent}"),
                    );
                }
                let min_requests = o.failure_percentage_min_requests.unwrap_or(20);
                if min_requests == 0 {
                    errors.push(
                        at("outlier.failure_percentage_min_requests"),
                        "must be at least 1",
                    );
                }
                FailurePercentage {
                    percent,
                    min_requests,
                    interval: errors.duration(
                        at("outlier.interval"),
                        o.interval.as_ref(),
                        Duration::from_secs(10),
                    ),
                }
            }),
        },
    };
    if let Some(o) = &raw.outlier
        && o.failure_percentage.is_none()
        && (o.failure_percentage_min_requests.is_some() || o.interval.is_some())
    {
        errors.push(
            at("outlier.interval"),
            "failure_percentage_min_requests and interval go with failure_percentage",
        );
    }
    let limits = match &raw.limits {
        None => Limits::default(),
        Some(l) => {
            let defaults = Limits::default();
            let max_per_endpoint = l.max_requests_per_endpoint.unwrap_or(0);
            let max_queued = l.max_queued.unwrap_or(defaults.max_queued);
            for (field, v) in [
                ("limits.max_requests_per_endpoint", max_per_endpoint),
                ("limits.max_queued", max_queued),
            ] {
                if v > MAX_LIMIT {
                    errors.push(at(field), format!("must be 0..={MAX_LIMIT}, got {v}"));
                }
            }
            let queue_timeout = errors.duration(
                at("limits.queue_timeout"),
                l.queue_timeout.as_ref(),
                defaults.queue_timeout,
            );
            if max_per_endpoint == 0 && (l.max_queued.is_some() || l.queue_timeout.is_some()) {
                errors.push(
                    at("limits"),
                    "a queue needs a cap: set max_requests_per_endpoint",
                );
            }
            Limits {
                max_per_endpoint: max_per_endpoint.min(MAX_LIMIT),
                max_queued: max_queued.min(MAX_LIMIT),
                queue_timeout,
            }
        }
    };
    if raw.endpoints.is_empty() {
        errors.push(at("endpoints"), "must list at least one endpoint");
    }
    let endpoints = raw
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| endpoint(&at(&format!("endpoints[{i}]")), e, regions, errors))
        .collect();
    let tls = raw.tls.as_ref().map(|t| {
        let client_cert = match (&t.cert, &t.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                errors.push(at("tls"), "cert and key go together (mutual TLS)");
                None
            }
        };
        if let Some(n) = &t.server_name
            && check_host_pattern(n).is_err()
        {
            errors.push(at("tls.server_name"), format!("{n:?} is not a DNS name"));
        }
        crate::snapshot::UpstreamTls {
            ca: t.ca.clone(),
            server_name: t.server_name.clone(),
            client_cert,
        }
    });
    Cluster {
        name: name.to_string(),
        protocol,
        lb,
        timeouts,
        retries,
        health_check,
        outlier,
        limits,
        endpoints,
        tls,
        slow_start: raw.slow_start.as_ref().map_or(Duration::ZERO, |v| {
            errors.duration(at("slow_start"), Some(v), Duration::ZERO)
        }),
    }
}

/// The largest per-endpoint cap or cluster queue a config may set (a semaphore's permits fit
/// easily).
const MAX_LIMIT: u32 = 1_000_000;

fn endpoint(
    path: &str,
    raw: &RawEndpoint,
    regions: &HashMap<&str, RegionId>,
    errors: &mut Errors,
) -> Option<Endpoint> {
    let address = match parse_address(&raw.address) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(format!("{path}.address"), e);
            None
        }
    };
    let region = match &raw.region {
        None if !regions.is_empty() => {
            errors.push(format!("{path}.region"), "must name the endpoint's region: [regions] is declared, and residency needs every endpoint placed");
            None
        }
        None => None,
        Some(name) => {
            let id = regions.get(name.as_str()).copied();
            if id.is_none() {
                errors.push(
                    format!("{path}.region"),
                    format!("unknown region {name:?} (declare it under [regions])"),
                );
            }
            id
        }
    };
    let weight = raw.weight.unwrap_or(1);
    if !(1..=1000).contains(&weight) {
        errors.push(format!("{path}.weight"), "must be 1..=1000");
    }
    Some(Endpoint {
        address: address?,
        region,
        version: raw.version.clone(),
        weight,
    })
}

/// `"10.0.0.1:80"`, `"[::1]:80"` or `"origin.internal:80"`.
fn parse_address(text: &str) -> Result<Address, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(Address::Ip(a));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} needs a port (host:port)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?} has an invalid port"))?;
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_name {
        return Err(format!(
            "{text:?} is neither an IP:port nor a DNS name:port"
        ));
    }
    Ok(Address::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn check_host_pattern(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && !name.contains('*')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{h:?} is not a host name or a \"*.suffix\" wildcard"
        ))
    }
}

/// Routes sharing a host and prefix, as `route` found them: (the slot's chain, the route
/// added to it, the field that made it share, the host and prefix), for [`check_shared`].
type Sharing = Vec<(usize, RouteId, String, String)>;

#[allow(clippy::too_many_arguments)]
fn route(
    i: usize,
    raw: &RawRoute,
    cluster_ids: &BTreeMap<&str, ClusterId>,
    clusters: &[Cluster],
    table: &mut RouteTable,
    sharing: &mut Sharing,
    conditions: &mut [Option<Conditions>],
    errors: &mut Errors,
) -> Option<Route> {
    let at = |field: &str| format!("routes[{i}].{field}");
    let before = errors.0.len();
    let name = raw.name.clone().unwrap_or_else(|| format!("route-{i}"));
    let cluster = cluster_ids.get(raw.cluster.as_str()).copied();
    match cluster {
        None => errors.push(at("cluster"), format!("unknown cluster {:?}", raw.cluster)),
        Some(id) => {
            if let Some(v) = &raw.version
                && !clusters[id.0]
                    .endpoints
                    .iter()
                    .any(|e| e.version.as_ref() == Some(v))
            {
                errors.push(
                    at("version"),
                    format!(
                        "cluster {:?} has no endpoint with version {v:?}",
                        raw.cluster
                    ),
                );
            }
        }
    }
    let prefix = raw.path_prefix.clone().unwrap_or_else(|| "/".to_string());
    if !prefix.starts_with('/') {
        errors.push(at("path_prefix"), format!("{prefix:?} must start with '/'"));
    } else if prefix.contains(['?', '#', '*']) {
        errors.push(
            at("path_prefix"),
            format!("{prefix:?} must be a plain path (no ?, #, *)"),
        );
    }
    let prefix = canonical_prefix(&prefix);
    let hosts: Vec<String> = raw.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (j, h) in hosts.iter().enumerate() {
        if h != "*"
            && let Err(e) = check_host_pattern(h)
        {
            errors.push(at(&format!("hosts[{j}]")), e);
        }
    }
    let mut methods = Vec::new();
    for (j, m) in raw.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if !valid_header_name(&upper.to_ascii_lowercase()) {
            errors.push(
                at(&format!("methods[{j}]")),
                format!("{m:?} is not a method"),
            );
        } else if !methods.contains(&upper) {
            methods.push(upper);
        }
    }
    let mut match_headers = Vec::new();
    for (name, value) in &raw.match_headers {
        let lower = name.to_ascii_lowercase();
        if !valid_header_name(&lower) {
            errors.push(
                at(&format!("match_headers.{name}")),
                format!("{name:?} is not a header name"),
            );
        } else if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            errors.push(
                at(&format!("match_headers.{name}")),
                "must be a header value of visible ASCII, or \"*\" for any",
            );
        } else {
            let want = (value.trim() != "*").then(|| value.trim().to_string());
            match_headers.push((lower, want));
        }
    }
    match_headers.sort();
    if errors.0.len() > before {
        return None;
    }
    conditions[i] = Some((methods.iter().cloned().collect(), match_headers.clone()));
    table.conditional |= !methods.is_empty() || !match_headers.is_empty();
    let id = RouteId(i);
    let any = ["*".to_string()];
    let keys: &[String] = if hosts.is_empty() { &any } else { &hosts };
    for (j, h) in keys.iter().enumerate() {
        let map: &mut PrefixMap = if h == "*" {
            &mut table.any
        } else if let Some(suffix) = h.strip_prefix('*') {
            table.wildcard.entry(suffix.to_string()).or_default()
        } else {
            table.exact.entry(h.clone()).or_default()
        };
        if let Some(existing) = map.insert(&prefix, Slot::Route(id)) {
            // Told apart by their conditions, or not: `check_shared` judges once all are in.
            let chain = match existing {
                Slot::Shared(c) => c,
                Slot::Route(first) => {
                    table.shared.push(vec![first]);
                    let c = table.shared.len() - 1;
                    if let Some(slot) = match h.as_str() {
                        "*" => table.any.get_mut(&prefix),
                        w if w.starts_with('*') => table
                            .wildcard
                            .get_mut(&w[1..])
                            .and_then(|m| m.get_mut(&prefix)),
                        exact => table.exact.get_mut(exact).and_then(|m| m.get_mut(&prefix)),
                    } {
                        *slot = Slot::Shared(c);
                    }
                    c
                }
            };
            table.shared[chain].push(id);
            let field = if hosts.is_empty() {
                "path_prefix".to_string()
            } else {
                format!("hosts[{j}]")
            };
            sharing.push((
                chain,
                id,
                at(&field),
                format!("host {h:?} with path_prefix {prefix:?}"),
            ));
        }
    }
    Some(Route {
        name,
        hosts,
        path_prefix: prefix,
        cluster: cluster?,
        version: raw.version.clone(),
        websocket: raw.websocket,
        regions: RegionPolicy::LocalFirst,
        default_jurisdiction: None,
        residency: None,
        rollout: None,
        rate_limit: raw
            .rate_limit
            .as_ref()
            .and_then(|r| rate_limit(i, r, errors)),
        https_redirect: false,
        max_request_body: None,
        request_timeout: raw
            .request_timeout
            .as_ref()
            .map(|v| errors.duration(at("request_timeout"), Some(v), Duration::from_secs(30))),
        methods,
        match_headers,
        rewrite_prefix: raw.rewrite_prefix.as_ref().and_then(|to| {
            let plain = to.starts_with('/')
                && !to.contains(['?', '#'])
                && to.bytes().all(|b| b.is_ascii_graphic());
            if !plain {
                errors.push(
                    at("rewrite_prefix"),
                    format!("{to:?} must be a path: starting with '/', visible ASCII, no ? or #"),
                );
            }
            plain.then(|| to.clone())
        }),
        request_headers: raw
            .request_headers
            .as_ref()
            .map_or_else(HeaderOps::default, |r| {
                header_ops(&at("request_headers"), r, true, errors)
            }),
        response_headers: raw
            .response_headers
            .as_ref()
            .map_or_else(HeaderOps::default, |r| {
                header_ops(&at("response_headers"), r, false, errors)
            }),
    })
}

/// Fields no route may change: the message's framing and hop-by-hop fields, which the proxy
/// sets for each connection.
const FRAMING_FIELDS: [&str; 9] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request fields that record the forwarding (the proxy's own, and what trusted hops said).
const FORWARDING_FIELDS: [&str; 6] = [
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

/// A route's `request_headers` or `response_headers` (`path` names it), checked.
fn header_ops(
    path: &str,
    raw: &crate::config::RawHeaderOps,
    request: bool,
    errors: &mut Errors,
) -> HeaderOps {
    let mut ops = HeaderOps::default();
    let name = |errors: &mut Errors, at: String, name: &str| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let token = !lower.is_empty()
            && lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let why = if !token {
            Some(format!("{name:?} is not a header name"))
        } else if FRAMING_FIELDS.contains(&lower.as_str()) {
            Some(format!("{name} is set by the proxy for each connection"))
        } else if request && FORWARDING_FIELDS.contains(&lower.as_str()) {
            Some(format!("{name} records the forwarding; the proxy sets it"))
        } else if !request
            && (crate::cache::RULE_HEADERS.contains(&lower.as_str())
                || lower == "expires"
                || lower == "age")
        {
            Some(format!(
                "{name} is cache policy: set it in a [[cache.rules]] set or default"
            ))
        } else {
            None
        };
        match why {
            Some(why) => {
                errors.push(at, why);
                None
            }
            None => Some(lower),
        }
    };
    for (key, table) in [("set", &raw.set), ("default", &raw.default)] {
        for (field, value) in table {
            let at = format!("{path}.{key}.{field}");
            let Some(lower) = name(errors, at.clone(), field) else {
                continue;
            };
            if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                errors.push(at, "must be a header value of visible ASCII");
                continue;
            }
            let list = if key == "set" {
                &mut ops.set
            } else {
                &mut ops.default
            };
            list.push((lower, value.trim().to_string()));
        }
    }
    for (j, field) in raw.remove.iter().enumerate() {
        if let Some(lower) = name(errors, format!("{path}.remove[{j}]"), field) {
            ops.remove.push(lower);
        }
    }
    // A name in two lists (or twice in one, spelled in two cases) has no one meaning.
    let mut seen: Vec<&str> = Vec::new();
    let names = ops
        .set
        .iter()
        .map(|(n, _)| n)
        .chain(ops.default.iter().map(|(n, _)| n))
        .chain(ops.remove.iter());
    for n in names {
        if seen.contains(&n.as_str()) {
            errors.push(path, format!("{n} is named more than once"));
        } else {
            seen.push(n);
        }
    }
    ops
}

fn rate_limit(
    i: usize,
    raw: &crate::config::RawRateLimit,
    errors: &mut Errors,
) -> Option<crate::snapshot::RateLimit> {
    use crate::snapshot::{RateKey, RateLimit};
    let at = |f: &str| format!("routes[{i}].rate_limit.{f}");
    let before = errors.0.len();
    if !raw.rps.is_finite() || raw.rps <= 0.0 {
        errors.push(
            at("rps"),
            format!("must be a positive number, got {}", raw.rps),
        );
    }
    let burst = raw.burst.unwrap_or(raw.rps.max(1.0));
    if !burst.is_finite() || burst < 1.0 {
        errors.push(at("burst"), format!("must be at least 1, got {burst}"));
    }
    let key = match raw.key.as_deref() {
        None | Some("ip") => RateKey::Ip,
        Some("route") => RateKey::Route,
        Some(k) => match k.strip_prefix("header:") {
            Some(h) if valid_header_name(h) => RateKey::Header(h.to_ascii_lowercase()),
            _ => {
                errors.push(
                    at("key"),
                    format!("{k:?} is not \"ip\", \"route\" or \"header:NAME\""),
                );
                RateKey::Ip
            }
        },
    };
    (errors.0.len() == before).then_some(RateLimit {
        rps: raw.rps,
        burst,
        key,
    })
}

/// Interns jurisdiction names (lower-case) into ids.
#[derive(Default)]
struct Jurisdictions(Vec<String>);

impl Jurisdictions {
    fn id(&mut self, name: &str) -> JurisdictionId {
        let name = name.trim().to_ascii_lowercase();
        match self.0.iter().position(|j| *j == name) {
            Some(i) => JurisdictionId(i),
            None => {
                self.0.push(name);
                JurisdictionId(self.0.len() - 1)
            }
        }
    }
}

fn valid_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `[residency]`: jurisdiction → allowed regions. A region of another jurisdiction in the list
/// would itself be a leak, so it is an error.
fn residency(
    raw: &RawConfig,
    regions: &[Region],
    region_ids: &HashMap<&str, RegionId>,
    jurisdictions: &mut Jurisdictions,
    errors: &mut Errors,
) -> HashMap<JurisdictionId, RegionSet> {
    let mut out = HashMap::new();
    for (j, names) in &raw.residency {
        let at = format!("residency.{j}");
        if names.is_empty() {
            errors.push(
                at.clone(),
                "must list at least one region (an empty list would refuse every request)",
            );
        }
        let mut set = RegionSet::EMPTY;
        for (i, name) in names.iter().enumerate() {
            match region_ids.get(name.as_str()) {
                None => errors.push(
                    format!("{at}[{i}]"),
                    format!("unknown region {name:?} (declare it under [regions])"),
                ),
                Some(id) => {
                    let rj = &regions[id.0].jurisdiction;
                    if !rj.eq_ignore_ascii_case(j) {
                        errors.push(
                            format!("{at}[{i}]"),
                            format!("leak: region {name:?} is in jurisdiction {rj:?}, not {j:?}"),
                        );
                    }
                    set.insert(*id);
                }
            }
        }
        out.insert(jurisdictions.id(j), set);
    }
    out
}

fn classify(raw: &RawClassify, jurisdictions: &mut Jurisdictions, errors: &mut Errors) -> Classify {
    let header = |errors: &mut Errors, field: &str, v: Option<&String>, default: &str| {
        let h = v
            .map(|h| h.to_ascii_lowercase())
            .unwrap_or_else(|| default.to_string());
        if !valid_header_name(&h) {
            errors.push(
                format!("classify.{field}"),
                format!("{h:?} is not a header name"),
            );
        }
        h
    };
    let country_header = header(
        errors,
        "country_header",
        raw.country_header.as_ref(),
        "x-client-country",
    );
    let jurisdiction_header = header(
        errors,
        "jurisdiction_header",
        raw.jurisdiction_header.as_ref(),
        "x-client-jurisdiction",
    );
    let mut countries = crate::LookupMap::default();
    let eu = jurisdictions.id("eu");
    for c in EU_EEA_COUNTRIES {
        countries.insert(c.to_string(), eu);
    }
    for (code, j) in &raw.countries {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            errors.push(
                format!("classify.countries.{code}"),
                "must be an ISO 3166 alpha-2 code such as \"US\"",
            );
            continue;
        }
        countries.insert(code.to_ascii_uppercase(), jurisdictions.id(j));
    }
    let t = &raw.tenants;
    let tenant_header = t.header.as_ref().map(|h| {
        let h = h.to_ascii_lowercase();
        if !valid_header_name(&h) {
            errors.push(
                "classify.tenants.header",
                format!("{h:?} is not a header name"),
            );
        }
        h
    });
    if !t.ids.is_empty() && tenant_header.is_none() {
        errors.push(
            "classify.tenants.ids",
            "needs classify.tenants.header to read the tenant id from",
        );
    }
    let mut tenant_prefixes = PrefixMap::default();
    for (prefix, j) in &t.path_prefixes {
        if !prefix.starts_with('/') {
            errors.push(
                format!("classify.tenants.path_prefixes.{prefix}"),
                "must start with '/'",
            );
        }
        let id = jurisdictions.id(j);
        // Kept in lower case: matched without regard to case (`Classify::tenant_prefix`).
        let key = canonical_prefix(prefix).to_ascii_lowercase();
        if tenant_prefixes
            .insert(&key, id)
            .is_some_and(|other| other != id)
        {
            errors.push(
                format!("classify.tenants.path_prefixes.{prefix}"),
                "another prefix differing only in case names another jurisdiction (prefixes \
                 match without regard to case)",
            );
        }
    }
    Classify {
        country_header,
        jurisdiction_header,
        geoip_db: raw.geoip_db.clone(),
        countries,
        default: raw
            .default_jurisdiction
            .as_deref()
            .map(|j| jurisdictions.id(j)),
        tenant_header,
        tenant_ids: t
            .ids
            .iter()
            .map(|(k, v)| (k.clone(), jurisdictions.id(v)))
            .collect(),
        tenant_hosts: t
            .hosts
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), jurisdictions.id(v)))
            .collect(),
        tenant_prefixes,
    }
}

/// A route's region policy from `regional_weights` or `failover`.
fn region_policy(
    i: usize,
    raw: &RawRoute,
    region_ids: &HashMap<&str, RegionId>,
    errors: &mut Errors,
) -> RegionPolicy {
    let at = |field: &str| format!("routes[{i}].{field}");
    let region = |errors: &mut Errors, path: String, name: &str| {
        let id = region_ids.get(name).copied();
        if id.is_none() {
            errors.push(
                path,
                format!("unknown region {name:?} (declare it under [regions])"),
            );
        }
        id
    };
    match (&raw.regional_weights, &raw.failover) {
        (Some(_), Some(_)) => {
            errors.push(
                at("failover"),
                "set either regional_weights or failover, not both",
            );
            RegionPolicy::LocalFirst
        }
        (Some(weights), None) => {
            let mut out = Vec::new();
            for (name, w) in weights {
                let path = at(&format!("regional_weights.{name}"));
                if !w.is_finite() || *w < 0.0 {
                    errors.push(
                        path.clone(),
                        format!("weight must be a non-negative number, got {w}"),
                    );
                }
                if let Some(id) = region(errors, path, name) {
                    out.push((id, w.max(0.0)));
                }
            }
            if out.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 && errors.0.is_empty() {
                errors.push(at("regional_weights"), "weights must add up to more than 0");
            }
            RegionPolicy::Weighted(out)
        }
        (None, Some(order)) => {
            if order.is_empty() {
                errors.push(at("failover"), "must list at least one region");
            }
            RegionPolicy::Failover(
                order
                    .iter()
                    .enumerate()
                    .filter_map(|(k, name)| region(errors, at(&format!("failover[{k}]")), name))
                    .collect(),
            )
        }
        (None, None) => RegionPolicy::LocalFirst,
    }
}

/// The static residency proof for one route: with a pinned `residency`, neither the region
/// policy nor any endpoint the route can use may lie outside the allowed regions.
fn prove_route_residency(
    i: usize,
    route: &Route,
    clusters: &[Cluster],
    regions: &[Region],
    allowed: RegionSet,
    jurisdiction: &str,
    errors: &mut Errors,
) {
    let names = |set: RegionSet| {
        set.iter()
            .map(|r| regions[r.0].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let policy_regions = route.regions.regions(RegionSet::first(regions.len()));
    if !matches!(route.regions, RegionPolicy::LocalFirst) {
        for r in policy_regions.iter().filter(|r| !allowed.contains(*r)) {
            let field = if matches!(route.regions, RegionPolicy::Weighted(_)) {
                "regional_weights"
            } else {
                "failover"
            };
            errors.push(
                format!("routes[{i}].{field}.{}", regions[r.0].name),
                format!(
                    "leak: route {:?} is pinned to residency {jurisdiction:?} (regions {}) but sends traffic to {} ({})",
                    route.name,
                    names(allowed),
                    regions[r.0].name,
                    regions[r.0].jurisdiction
                ),
            );
        }
    }
    let mut reachable = false;
    // Every way the route reaches endpoints: its own cluster/version and a rollout's candidate.
    let mut paths: Vec<(&Cluster, Option<&String>)> =
        vec![(&clusters[route.cluster.0], route.version.as_ref())];
    if let Some(r) = &route.rollout {
        paths.push((
            &clusters[r.candidate_cluster.0],
            r.candidate_version.as_ref(),
        ));
    }
    for (cluster, version) in paths {
        for (k, e) in cluster.endpoints.iter().enumerate() {
            if version.is_some_and(|v| e.version.as_ref() != Some(v)) {
                continue;
            }
            match e.region {
            Some(r) if allowed.contains(r) => reachable = true,
            Some(r) => errors.push(
                format!("routes[{i}].residency"),
                format!(
                    "leak: route {:?} is pinned to residency {jurisdiction:?} (regions {}) but its cluster {:?} has clusters.{}.endpoints[{k}] ({}) in {} ({})",
                    route.name,
                    names(allowed),
                    cluster.name,
                    cluster.name,
                    e.address,
                    regions[r.0].name,
                    regions[r.0].jurisdiction
                ),
            ),
            None => {}
        }
        }
    }
    if !reachable {
        errors.push(
            format!("routes[{i}].residency"),
            format!("route {:?} is pinned to {jurisdiction:?} but has no endpoint in {}: it could only ever answer 503", route.name, names(allowed)),
        );
    }
}

/// A route's rollout: candidate version and/or cluster, weights, stickiness, gates.
fn rollout(
    i: usize,
    raw: &crate::config::RawRollout,
    route: &Route,
    cluster_ids: &BTreeMap<&str, ClusterId>,
    clusters: &[Cluster],
    errors: &mut Errors,
) -> Option<crate::rollout::Rollout> {
    use crate::rollout::{Gates, Rollout, RolloutMode, Sticky};
    let at = |field: &str| format!("routes[{i}].rollout.{field}");
    let before = errors.0.len();
    let mode = match raw.mode.as_deref() {
        None | Some("canary") => RolloutMode::Canary,
        Some("blue-green") => RolloutMode::BlueGreen,
        Some(other) => {
            errors.push(
                at("mode"),
                format!("{other:?} is not one of \"canary\", \"blue-green\""),
            );
            RolloutMode::Canary
        }
    };
    let candidate_cluster = match &raw.candidate_cluster {
        None => route.cluster,
        Some(name) => match cluster_ids.get(name.as_str()) {
            Some(id) => *id,
            None => {
                errors.push(at("candidate_cluster"), format!("unknown cluster {name:?}"));
                route.cluster
            }
        },
    };
    if raw.candidate.is_none() && raw.candidate_cluster.is_none() {
        errors.push(
            at("candidate"),
            "name the candidate: a version label (candidate) and/or a cluster (candidate_cluster)",
        );
    }
    if candidate_cluster == route.cluster
        && raw.candidate.is_some()
        && raw.candidate == route.version
    {
        errors.push(
            at("candidate"),
            "the candidate must differ from the route's (stable) version",
        );
    }
    if candidate_cluster == route.cluster && raw.candidate.is_some() && route.version.is_none() {
        errors.push(
            format!("routes[{i}].version"),
            "a rollout between version labels needs the route's stable version (version = \"...\")",
        );
    }
    if let Some(v) = &raw.candidate
        && let Some(c) = clusters.get(candidate_cluster.0)
        && !c.endpoints.iter().any(|e| e.version.as_ref() == Some(v))
    {
        errors.push(
            at("candidate"),
            format!("cluster {:?} has no endpoint with version {v:?}", c.name),
        );
    }
    let percent = |errors: &mut Errors, path: String, w: f64| {
        if !(0.0..=100.0).contains(&w) || !w.is_finite() {
            errors.push(path, format!("must be 0..=100 (percent), got {w}"));
        }
        w.clamp(0.0, 100.0)
    };
    let weight = percent(errors, at("weight"), raw.weight.unwrap_or(0.0));
    let mut steps = Vec::new();
    for (k, w) in raw.steps.iter().enumerate() {
        let w = percent(errors, at(&format!("steps[{k}]")), *w);
        if steps.last().is_some_and(|prev| *prev >= w) {
            errors.push(at(&format!("steps[{k}]")), "steps must increase");
        }
        steps.push(w);
    }
    if mode == RolloutMode::BlueGreen {
        if weight != 0.0 && weight != 100.0 {
            errors.push(
                at("weight"),
                format!("blue-green switches all at once: 0 or 100, got {weight}"),
            );
        }
        if steps.iter().any(|w| *w != 100.0) {
            errors.push(
                at("steps"),
                "blue-green has no intermediate steps (use [100] or none)",
            );
        }
    }
    let sticky = match raw.sticky.as_deref() {
        None | Some("cookie") => {
            Sticky::Cookie(raw.cookie.clone().unwrap_or_else(|| "fd-uid".into()))
        }
        Some("header") => match &raw.header {
            Some(h) if valid_header_name(h) => Sticky::Header(h.to_ascii_lowercase()),
            _ => {
                errors.push(at("header"), "sticky = \"header\" needs a header name");
                Sticky::Ip
            }
        },
        Some("ip") => Sticky::Ip,
        Some(other) => {
            errors.push(
                at("sticky"),
                format!("{other:?} is not one of \"cookie\", \"header\", \"ip\""),
            );
            Sticky::Ip
        }
    };
    if let Sticky::Cookie(c) = &sticky
        && !valid_header_name(c)
    {
        errors.push(at("cookie"), format!("{c:?} is not a valid cookie name"));
    }
    let override_header = raw
        .override_header
        .clone()
        .unwrap_or_else(|| "x-frontdoor-version".into())
        .to_ascii_lowercase();
    if !valid_header_name(&override_header) {
        errors.push(
            at("override_header"),
            format!("{override_header:?} is not a header name"),
        );
    }
    let g = &raw.gates;
    let max_error_rate = g.max_error_rate.unwrap_or(0.05);
    if !(0.0..=1.0).contains(&max_error_rate) {
        errors.push(
            at("gates.max_error_rate"),
            format!("must be 0..=1, got {max_error_rate}"),
        );
    }
    let window = errors.duration(
        at("gates.window"),
        g.window.as_ref(),
        Duration::from_secs(60),
    );
    if window < Duration::from_secs(1) || window > Duration::from_secs(3600) {
        errors.push(at("gates.window"), "must be between 1s and 1h");
    }
    let gates = Gates {
        window,
        max_error_rate,
        max_p95: g
            .max_p95
            .as_ref()
            .map(|v| errors.duration(at("gates.max_p95"), Some(v), Duration::ZERO)),
        max_p99: g
            .max_p99
            .as_ref()
            .map(|v| errors.duration(at("gates.max_p99"), Some(v), Duration::ZERO)),
        min_requests: g.min_requests.unwrap_or(20),
        compare_stable: g.compare_stable.unwrap_or(true),
    };
    let step_hold = errors.duration(
        at("step_hold"),
        raw.step_hold.as_ref(),
        Duration::from_secs(300),
    );
    let post_promotion_watch = errors.duration(
        at("post_promotion_watch"),
        raw.post_promotion_watch.as_ref(),
        Duration::from_secs(600),
    );
    let mirror_percent = raw.mirror_percent.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&mirror_percent) {
        errors.push(
            at("mirror_percent"),
            format!("must be 0..=100, got {mirror_percent}"),
        );
    }
    if errors.0.len() > before {
        return None;
    }
    Some(Rollout {
        mode,
        stable_cluster: route.cluster,
        stable_version: route.version.clone(),
        candidate_cluster,
        candidate_version: raw.candidate.clone(),
        initial_weight: weight,
        sticky,
        override_header,
        override_trusted_only: raw.override_trusted_only,
        steps,
        step_hold,
        post_promotion_watch,
        gates,
        mirror_percent,
    })
}
