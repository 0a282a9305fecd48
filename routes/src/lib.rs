//! `routes`: frontdoor's routing model. Pure — no I/O, no async runtime, no clock reads.
//!
//! Config text → [`load`] (parse + [`validate`]) → an immutable [`Snapshot`]. For each request the
//! proxy hands over [`RequestFacts`] and gets a [`Decision`]: which route, which cluster, which
//! version label. [`Snapshot::explain`] says why, for `proxyctl explain` and tests.

#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
mod residency;
pub mod rollout;
mod snapshot;
mod table;
mod units;
mod validate;

pub use residency::{
    EU_EEA_COUNTRIES, JurisdictionId, JurisdictionSource, MAX_REGIONS, RegionPolicy, RegionSet, mix,
};
pub use snapshot::{
    Acme, Address, CertificateSource, Classify, Cluster, ClusterId, Endpoint, FailurePercentage,
    HeaderOps, HealthCheck, LbPolicy, Limits, Outlier, RateKey, RateLimit, Region, RegionId,
    Retries, Route, RouteId, Server, Snapshot, Timeouts, Tls, UpstreamProtocol, UpstreamTls,
};
pub use table::{normalize_host, normalize_path};
pub use units::{Cidr, parse_duration};
pub use validate::{ConfigError, ConfigErrors, content_hash, load, validate};

/// A map built once (from config, or per connection pool) and looked up on every request:
/// hashed with foldhash, several times cheaper than SipHash on short keys. Keys from requests
/// only look up; what is inserted comes from config or our own addresses, so there is no
/// flooding to defend against.
pub type LookupMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What the routing decision may look at: already extracted from the request by the proxy.
/// Header-derived facts must only be filled in when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// Normalised host (see [`normalize_host`]).
    pub host: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Value of the tenant header, when one is configured.
    pub tenant: Option<&'a str>,
    /// Trusted country header (ISO 3166 alpha-2).
    pub country: Option<&'a str>,
    /// Trusted jurisdiction header.
    pub jurisdiction: Option<&'a str>,
    /// Country of the client address from the GeoIP database.
    pub geoip_country: Option<&'a str>,
    /// The request's method, for routes with `methods`.
    pub method: Option<&'a str>,
    /// The request's header fields, for routes with `match_headers`.
    pub header: Option<HeaderSource<'a>>,
}

/// A request's header field by lower-case name: its first value, as text.
#[derive(Clone, Copy)]
pub struct HeaderSource<'a>(pub &'a dyn Fn(&str) -> Option<&'a str>);

impl std::fmt::Debug for HeaderSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderSource")
    }
}

impl<'a> RequestFacts<'a> {
    pub fn new(host: &'a str, path: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            host,
            path,
            ..Default::default()
        }
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: RouteId,
    pub cluster: ClusterId,
    pub jurisdiction: Option<JurisdictionId>,
    pub jurisdiction_source: JurisdictionSource,
    /// Regions this request may be forwarded to; every declared region when unrestricted.
    pub allowed: RegionSet,
    /// True when a residency policy (the request's or the route's) limits `allowed`.
    pub restricted: bool,
}

impl Snapshot {
    /// Whether some route looks at a request's method or header fields (`methods`,
    /// `match_headers`): only then need [`RequestFacts`] carry them.
    pub fn routes_by_request(&self) -> bool {
        self.table.conditional
    }

    /// Routes a request; `None` means no route matches (the proxy answers 404).
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Option<Decision> {
        let route_id = self
            .table
            .find(facts.host, facts.path, |id| self.routes[id.0].takes(facts))?;
        let route = &self.routes[route_id.0];
        let (jurisdiction, jurisdiction_source) = self.jurisdiction_of(facts, route);
        let mut allowed = self.all_regions();
        let mut restricted = false;
        for j in jurisdiction.into_iter().chain(route.residency) {
            if let Some(set) = self.allowed_regions(j) {
                allowed = allowed.intersect(set);
                restricted = true;
            }
        }
        Some(Decision {
            route: route_id,
            cluster: route.cluster,
            jurisdiction,
            jurisdiction_source,
            allowed,
            restricted,
        })
    }

    /// The request's jurisdiction and where it came from, sources in order: tenant map,
    /// jurisdiction header, country header, GeoIP, the route's default, the global default.
    pub fn jurisdiction_of(
        &self,
        facts: &RequestFacts<'_>,
        route: &Route,
    ) -> (Option<JurisdictionId>, JurisdictionSource) {
        let c = &self.classify;
        // The tenant map's three sources, in order (id header, host, path prefix). Fail
        // closed: one that restricts residency wins over an earlier one that does not, so a
        // tenant header (which any client may send) cannot lift the restriction the host or
        // path puts on a request.
        let tenant = {
            let id = facts
                .tenant
                .and_then(|t| c.tenant_ids.get(t.trim()))
                .copied();
            let host = c.tenant_hosts.get(facts.host).copied();
            let path = c.tenant_prefix(facts.path);
            let sources = [id, host, path];
            let restricted = sources
                .iter()
                .flatten()
                .find(|j| self.allowed_regions(**j).is_some());
            restricted
                .or_else(|| sources.iter().flatten().next())
                .copied()
        };
        if let Some(j) = tenant {
            return (Some(j), JurisdictionSource::Tenant);
        }
        if let Some(j) = facts
            .jurisdiction
            .and_then(|j| self.jurisdiction_named(j.trim()))
        {
            return (Some(j), JurisdictionSource::JurisdictionHeader);
        }
        if let Some(j) = facts.country.and_then(|code| c.country(code.trim())) {
            return (Some(j), JurisdictionSource::CountryHeader);
        }
        if let Some(j) = facts.geoip_country.and_then(|code| c.country(code)) {
            return (Some(j), JurisdictionSource::GeoIp);
        }
        if let Some(j) = route.default_jurisdiction {
            return (Some(j), JurisdictionSource::RouteDefault);
        }
        match c.default {
            Some(j) => (Some(j), JurisdictionSource::GlobalDefault),
            None => (None, JurisdictionSource::None),
        }
    }

    /// Human-readable account of a decision: route, jurisdiction and its source, allowed
    /// regions, and the region the route's policy would choose with every region healthy.
    pub fn explain(&self, facts: &RequestFacts<'_>) -> String {
        let Some(d) = self.decide(facts) else {
            return format!(
                "host {:?} path {:?}: no route matches (404)",
                facts.host, facts.path
            );
        };
        let r = self.route(d.route);
        let hosts = if r.hosts.is_empty() {
            "any host".to_string()
        } else {
            r.hosts.join(", ")
        };
        let version = r
            .version
            .as_deref()
            .map(|v| format!(", version {v:?}"))
            .unwrap_or_default();
        let mut out = format!(
            "host {:?} path {:?}\n  route:        {:?} (routes[{}]; hosts: {hosts}; longest prefix {:?}{}) → cluster {:?}{version}\n",
            facts.host,
            facts.path,
            r.name,
            d.route.0,
            r.path_prefix,
            r.conditions(),
            self.cluster(d.cluster).name,
        );
        if let Some(upstream) = r.rewritten(facts.path) {
            out.push_str(&format!(
                "  rewritten:    upstream gets path {upstream:?}\n"
            ));
        }
        let jurisdiction = d.jurisdiction.map_or("none", |j| self.jurisdiction(j));
        out.push_str(&format!(
            "  jurisdiction: {jurisdiction} (from {})\n",
            d.jurisdiction_source.as_str()
        ));
        if !self.regions.is_empty() {
            let allowed = self.region_names(d.allowed).join(", ");
            if d.restricted {
                out.push_str(&format!("  residency:    restricted to [{allowed}]; never forwarded elsewhere, 503 if none is healthy\n"));
            } else {
                out.push_str(&format!(
                    "  residency:    unrestricted (any of [{allowed}])\n"
                ));
            }
            let policy = match &r.regions {
                RegionPolicy::LocalFirst => {
                    "local region first, then the others in name order".to_string()
                }
                RegionPolicy::Weighted(w) => format!(
                    "weighted {}",
                    w.iter()
                        .map(|(id, w)| format!("{} {w}", self.region(*id).name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                RegionPolicy::Failover(o) => format!(
                    "failover order {}",
                    o.iter()
                        .map(|id| self.region(*id).name.as_str())
                        .collect::<Vec<_>>()
                        .join(" → ")
                ),
            };
            let chosen = match &r.regions {
                RegionPolicy::Weighted(_) => {
                    "one of the weighted regions above, in proportion".to_string()
                }
                _ => self
                    .pick_region(r, d.allowed, self.all_regions(), 0)
                    .map_or("none: 503".to_string(), |id| self.region(id).name.clone()),
            };
            out.push_str(&format!(
                "  regions:      {policy}\n  chosen:       {chosen} (with every region healthy)\n"
            ));
        }
        out.push_str(&self.cache.explain(d.route, facts.host, facts.path));
        out
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cache;
#[cfg(test)]
mod tests_residency;
