//! Request classification on a residency config: whatever the host, path, tenant, country and
//! jurisdiction headers say, a decision for a restricted jurisdiction never allows a region
//! outside its residency set.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[regions]
us-central1 = { jurisdiction = "us" }
europe-west1 = { jurisdiction = "eu" }
asia-southeast1 = { jurisdiction = "apac" }
[residency]
eu = ["europe-west1"]
[classify]
countries = { US = "us", SG = "apac" }
[classify.tenants]
header = "x-tenant-id"
ids = { acme = "eu" }
hosts = { "eu.example.com" = "eu" }
path_prefixes = { "/t/acme" = "eu" }
[clusters.app]
endpoints = [
  { address = "127.0.0.1:9001", region = "us-central1" },
  { address = "127.0.0.1:9002", region = "europe-west1" },
  { address = "127.0.0.1:9003", region = "asia-southeast1" },
]
[[routes]]
cluster = "app"
[[routes]]
path_prefix = "/ai"
cluster = "app"
regional_weights = { us-central1 = 70, europe-west1 = 30 }
[clusters.eu-app]
endpoints = [{ address = "127.0.0.1:9002", region = "europe-west1" }]
[[routes]]
path_prefix = "/gdpr"
cluster = "eu-app"
residency = "eu"
"#;

fuzz_target!(|data: &[u8]| {
    static SNAPSHOT: OnceLock<routes::Snapshot> = OnceLock::new();
    let s = SNAPSHOT.get_or_init(|| routes::load(CONFIG).expect("fuzz config loads"));
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{0}');
    let mut next = || parts.next().filter(|p| !p.is_empty());
    let host = routes::normalize_host(next().unwrap_or("example.com"));
    let path = next().and_then(routes::normalize_path).unwrap_or_else(|| "/".into());
    let facts = routes::RequestFacts {
        host: &host,
        path: &path,
        tenant: next(),
        country: next(),
        jurisdiction: next(),
        geoip_country: next(),
        method: next(),
        header: None,
    };
    let Some(d) = s.decide(&facts) else { return };
    let _ = s.explain(&facts);
    let eu = s.region_named("europe-west1").expect("region");
    if d.restricted
        && let Some(allowed) = d.jurisdiction.and_then(|j| s.allowed_regions(j))
    {
        assert!(d.allowed.is_subset(allowed), "allowed regions stay inside the residency set");
    }
    if path == "/gdpr" || path.starts_with("/gdpr/") {
        assert!(d.restricted && d.allowed.contains(eu), "the pinned route stays in the EU");
        assert_eq!(d.allowed.intersect(routes::RegionSet::default().with(eu)), d.allowed);
    }
});
