//! `routes`: frontdoor's routing model. Pure — no I/O, no async runtime, no clock reads.
//!
//! Config text → [`load`] (parse + [`validate`]) → an immutable [`Snapshot`]. For each request the
//! proxy hands over [`RequestFacts`] and gets a [`Decision`]: which route, which cluster, which
//! version label. [`Snapshot::explain`] says why, for `proxyctl explain` and tests.

#![forbid(unsafe_code)]

pub mod config;
mod snapshot;
mod table;
mod units;
mod validate;

pub use snapshot::{
    Address, CertificateSource, Cluster, ClusterId, Endpoint, HealthCheck, LbPolicy, Outlier,
    Region, RegionId, Retries, Route, RouteId, Server, Snapshot, Timeouts, Tls, UpstreamProtocol,
};
pub use table::normalize_host;
pub use units::{Cidr, parse_duration};
pub use validate::{ConfigError, ConfigErrors, content_hash, load, validate};

/// What the routing decision may look at: already extracted from the request by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Normalised host (see [`normalize_host`]).
    pub host: &'a str,
    /// Path without the query string.
    pub path: &'a str,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub route: RouteId,
    pub cluster: ClusterId,
}

impl Snapshot {
    /// Routes a request; `None` means no route matches (the proxy answers 404).
    pub fn decide(&self, facts: &RequestFacts<'_>) -> Option<Decision> {
        let route = self.table.find(facts.host, facts.path)?;
        Some(Decision {
            route,
            cluster: self.routes[route.0].cluster,
        })
    }

    /// Human-readable account of a decision: which route matched and why.
    pub fn explain(&self, facts: &RequestFacts<'_>) -> String {
        match self.decide(facts) {
            None => format!(
                "host {:?} path {:?}: no route matches (404)",
                facts.host, facts.path
            ),
            Some(d) => {
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
                format!(
                    "host {:?} path {:?}: route {:?} (routes[{}]; hosts: {hosts}; longest prefix {:?}) → cluster {:?}{version}",
                    facts.host,
                    facts.path,
                    r.name,
                    d.route.0,
                    r.path_prefix,
                    self.cluster(d.cluster).name,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
