//! Regions, jurisdictions and the residency invariant: which regions a request may reach, and
//! which one it goes to.
//!
//! [`RegionSet`] is a bit set of regions. A request's *allowed* set comes from its
//! jurisdiction's residency policy (all regions when unrestricted), intersected with the
//! route's pinned residency. [`Snapshot::pick_region`] chooses only from `allowed ∩ healthy`:
//! there is no fallback outside the allowed set, so a leak cannot happen at run time; the
//! static checks in `validate` reject configs whose own paths would leak.

use std::fmt;

use crate::snapshot::{RegionId, Route, Snapshot};

/// Countries whose requests are in jurisdiction `eu` unless the config says otherwise: the 27
/// EU member states and the three other EEA states (Iceland, Liechtenstein, Norway).
pub const EU_EEA_COUNTRIES: [&str; 30] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", // EU 27
    "IS", "LI", "NO", // EEA
];

/// At most this many regions (they live in a `u64` bit set).
pub const MAX_REGIONS: usize = 64;

/// Index of a jurisdiction in [`Snapshot::jurisdictions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JurisdictionId(pub usize);

/// A set of regions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegionSet(u64);

impl RegionSet {
    pub const EMPTY: RegionSet = RegionSet(0);

    /// The first `n` regions.
    pub fn first(n: usize) -> RegionSet {
        if n >= 64 {
            RegionSet(u64::MAX)
        } else {
            RegionSet((1u64 << n) - 1)
        }
    }

    pub fn contains(self, r: RegionId) -> bool {
        r.0 < 64 && self.0 & (1 << r.0) != 0
    }

    pub fn insert(&mut self, r: RegionId) {
        if r.0 < 64 {
            self.0 |= 1 << r.0;
        }
    }

    pub fn with(mut self, r: RegionId) -> RegionSet {
        self.insert(r);
        self
    }

    pub fn intersect(self, other: RegionSet) -> RegionSet {
        RegionSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn is_subset(self, other: RegionSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = RegionId> {
        (0..64)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(RegionId)
    }
}

impl fmt::Debug for RegionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|r| r.0)).finish()
    }
}

/// How a route spreads requests over regions.
#[derive(Debug, Clone, PartialEq)]
pub enum RegionPolicy {
    /// The front door's own region when it can serve, else the others in name order.
    LocalFirst,
    /// In proportion to the weights, over the listed regions that are healthy and allowed.
    Weighted(Vec<(RegionId, f64)>),
    /// The first listed region that is healthy and allowed.
    Failover(Vec<RegionId>),
}

impl RegionPolicy {
    /// Every region this policy may ever name.
    pub fn regions(&self, all: RegionSet) -> RegionSet {
        match self {
            RegionPolicy::LocalFirst => all,
            RegionPolicy::Weighted(w) => w.iter().fold(RegionSet::EMPTY, |s, (r, _)| s.with(*r)),
            RegionPolicy::Failover(o) => o.iter().fold(RegionSet::EMPTY, |s, r| s.with(*r)),
        }
    }
}

/// Where a request's jurisdiction came from (for `explain`, logs and audits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JurisdictionSource {
    Tenant,
    JurisdictionHeader,
    CountryHeader,
    GeoIp,
    RouteDefault,
    GlobalDefault,
    /// Nothing decided: the request is unrestricted.
    None,
}

impl JurisdictionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            JurisdictionSource::Tenant => "tenant",
            JurisdictionSource::JurisdictionHeader => "jurisdiction-header",
            JurisdictionSource::CountryHeader => "country-header",
            JurisdictionSource::GeoIp => "geoip",
            JurisdictionSource::RouteDefault => "route-default",
            JurisdictionSource::GlobalDefault => "default",
            JurisdictionSource::None => "none",
        }
    }
}

/// splitmix64: spreads a counter into well-mixed bits (uniform choice without an RNG).
pub fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Snapshot {
    /// All declared regions.
    pub fn all_regions(&self) -> RegionSet {
        RegionSet::first(self.regions.len())
    }

    /// The regions `route`'s policy can ever choose: every region when it prefers the local
    /// one, else those its failover order lists or its weights give a share.
    pub fn policy_regions(&self, route: &Route) -> RegionSet {
        match &route.regions {
            RegionPolicy::LocalFirst => self.all_regions(),
            RegionPolicy::Failover(order) => order
                .iter()
                .copied()
                .fold(RegionSet::EMPTY, RegionSet::with),
            RegionPolicy::Weighted(weights) => weights
                .iter()
                .filter(|(_, w)| *w > 0.0)
                .map(|(r, _)| *r)
                .fold(RegionSet::EMPTY, RegionSet::with),
        }
    }

    /// Chooses the region for one attempt of a request on `route`: only ever a member of
    /// `allowed ∩ healthy`; `None` when that set has nothing the route's policy can use.
    /// `n` is a per-request counter (spreads weighted choices uniformly).
    pub fn pick_region(
        &self,
        route: &Route,
        allowed: RegionSet,
        healthy: RegionSet,
        n: u64,
    ) -> Option<RegionId> {
        let candidates = allowed.intersect(healthy);
        if candidates.is_empty() {
            return None;
        }
        match &route.regions {
            RegionPolicy::LocalFirst => match self.server.region {
                Some(local) if candidates.contains(local) => Some(local),
                _ => candidates.iter().next(),
            },
            RegionPolicy::Failover(order) => {
                order.iter().copied().find(|r| candidates.contains(*r))
            }
            RegionPolicy::Weighted(weights) => {
                let total: f64 = weights
                    .iter()
                    .filter(|(r, _)| candidates.contains(*r))
                    .map(|(_, w)| w)
                    .sum();
                if total <= 0.0 {
                    return None;
                }
                // 53 random bits → a point in [0, total).
                let mut point = (mix(n) >> 11) as f64 / (1u64 << 53) as f64 * total;
                let mut last = None;
                for (r, w) in weights.iter().filter(|(r, _)| candidates.contains(*r)) {
                    if point < *w {
                        return Some(*r);
                    }
                    point -= w;
                    last = Some(*r);
                }
                last
            }
        }
    }
}
