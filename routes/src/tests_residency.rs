//! Residency and regional weighting: classification order, allowed sets, region choice, the
//! static leak proof, and a property test that no decision ever names a forbidden region.

use super::*;

const REGIONS: &str = r#"
[regions]
us-central1 = { jurisdiction = "us" }
europe-west1 = { jurisdiction = "eu" }
europe-north1 = { jurisdiction = "eu" }
asia-southeast1 = { jurisdiction = "apac" }

[residency]
eu = ["europe-west1", "europe-north1"]

[clusters.app]
endpoints = [
  { address = "127.0.0.1:1", region = "us-central1", version = "stable" },
  { address = "127.0.0.1:2", region = "europe-west1", version = "stable" },
  { address = "127.0.0.1:3", region = "europe-north1", version = "stable" },
  { address = "127.0.0.1:4", region = "asia-southeast1", version = "stable" },
]
[clusters.eu-only]
endpoints = [{ address = "127.0.0.1:5", region = "europe-west1" }]
"#;

fn load_ok(extra: &str) -> Snapshot {
    load(&format!("{REGIONS}\n{extra}")).unwrap_or_else(|e| panic!("rejected:\n{e}"))
}

fn load_err(extra: &str) -> Vec<String> {
    match load(&format!("{REGIONS}\n{extra}")) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const CLASSIFY: &str = r#"
[classify]
default_jurisdiction = "us"
countries = { US = "us", SG = "apac", PH = "apac", CH = "eu" }
[classify.tenants]
header = "x-tenant-id"
ids = { acme = "eu", globex = "us" }
hosts = { "eu.shop.test" = "eu" }
path_prefixes = { "/t/acme" = "eu" }

[[routes]]
cluster = "app"
[[routes]]
path_prefix = "/apac"
cluster = "app"
default_jurisdiction = "apac"
"#;

/// Tenant path prefixes match without regard to ASCII case: an upstream that reads paths so
/// would serve `/T/ACME/...` as the tenant's, from wherever the request went.
#[test]
fn tenant_path_prefixes_ignore_case() {
    let s = load_ok(CLASSIFY);
    for (path, want) in [
        ("/t/acme/orders", "eu"),
        ("/T/ACME/orders", "eu"),
        ("/t/Acme", "eu"),
        ("/t/acmex", "us"),
        ("/T/ACMEX", "us"),
    ] {
        let (jurisdiction, _) = tenant_decision(&s, "a.test", path, None);
        assert_eq!(jurisdiction, want, "{path}");
    }
    // Two prefixes the same but for case cannot name different jurisdictions.
    let errors = load_err(&CLASSIFY.replace(
        r#"path_prefixes = { "/t/acme" = "eu" }"#,
        r#"path_prefixes = { "/t/acme" = "eu", "/T/Acme" = "us" }"#,
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("path_prefixes") && e.contains("differing only in case")),
        "{errors:?}"
    );
}

/// Within the tenant map, a source that restricts residency wins over an earlier one that
/// does not: a tenant header naming a US tenant does not lift the EU restriction of the EU
/// tenant's host or path. Among unrestricted ones, the order holds.
#[test]
fn a_restricted_tenant_source_wins() {
    let s = load_ok(CLASSIFY);
    for (host, path, tenant, want) in [
        ("a.test", "/t/acme/orders", Some("globex"), "eu"),
        ("eu.shop.test", "/", Some("globex"), "eu"),
        ("a.test", "/t/other", Some("globex"), "us"),
        ("a.test", "/t/acme", Some("acme"), "eu"),
    ] {
        let decided = tenant_decision(&s, host, path, tenant);
        assert_eq!(
            decided,
            (want, JurisdictionSource::Tenant),
            "{host} {path} {tenant:?}"
        );
    }
}

/// The jurisdiction (by name) and its source for a request with only a host, a path and a
/// tenant header.
fn tenant_decision<'a>(
    s: &'a Snapshot,
    host: &str,
    path: &str,
    tenant: Option<&str>,
) -> (&'a str, JurisdictionSource) {
    let facts = RequestFacts {
        host,
        path,
        tenant,
        jurisdiction: None,
        country: None,
        geoip_country: None,
        ..Default::default()
    };
    let d = s.decide(&facts).expect("routed");
    let name = d.jurisdiction.map_or("none", |j| s.jurisdiction(j));
    (name, d.jurisdiction_source)
}

#[test]
fn jurisdiction_sources_in_order() {
    let s = load_ok(CLASSIFY);
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        JurisdictionSource,
    );
    use JurisdictionSource as S;
    let cases: [Case; 12] = [
        // host, path, tenant, jurisdiction hdr, country hdr, geoip → jurisdiction, source
        (
            "a.test",
            "/",
            Some("acme"),
            Some("us"),
            Some("US"),
            Some("US"),
            "eu",
            S::Tenant,
        ),
        (
            "eu.shop.test",
            "/",
            None,
            Some("us"),
            None,
            None,
            "eu",
            S::Tenant,
        ),
        (
            "a.test",
            "/t/acme/orders",
            None,
            None,
            Some("US"),
            None,
            "eu",
            S::Tenant,
        ),
        (
            "a.test",
            "/t/acmex",
            None,
            None,
            Some("US"),
            None,
            "us",
            S::CountryHeader,
        ),
        (
            "a.test",
            "/",
            Some("unknown-tenant"),
            Some("EU"),
            Some("US"),
            None,
            "eu",
            S::JurisdictionHeader,
        ),
        (
            "a.test",
            "/",
            None,
            Some("mars"),
            Some("de"),
            None,
            "eu",
            S::CountryHeader,
        ),
        (
            "a.test",
            "/",
            None,
            None,
            Some("SG"),
            Some("DE"),
            "apac",
            S::CountryHeader,
        ),
        (
            "a.test",
            "/",
            None,
            None,
            Some("BR"),
            Some("SE"),
            "eu",
            S::GeoIp,
        ),
        ("a.test", "/", None, None, None, Some("CH"), "eu", S::GeoIp),
        (
            "a.test",
            "/apac/x",
            None,
            None,
            None,
            Some("BR"),
            "apac",
            S::RouteDefault,
        ),
        (
            "a.test",
            "/",
            None,
            None,
            None,
            None,
            "us",
            S::GlobalDefault,
        ),
        (
            "a.test",
            "/",
            Some("globex"),
            None,
            Some("FR"),
            None,
            "us",
            S::Tenant,
        ),
    ];
    for (host, path, tenant, jur, country, geo, want, source) in cases {
        let facts = RequestFacts {
            host,
            path,
            tenant,
            jurisdiction: jur,
            country,
            geoip_country: geo,
            ..Default::default()
        };
        let d = s.decide(&facts).expect("routed");
        assert_eq!(
            d.jurisdiction.map(|j| s.jurisdiction(j)),
            Some(want),
            "{facts:?}"
        );
        assert_eq!(d.jurisdiction_source, source, "{facts:?}");
    }
    let none = load_ok("[[routes]]\ncluster = \"app\"\n");
    let d = none.decide(&RequestFacts::new("a", "/")).expect("routed");
    assert_eq!(
        (d.jurisdiction, d.jurisdiction_source, d.restricted),
        (None, JurisdictionSource::None, false)
    );
}

#[test]
fn every_eu_and_eea_country_is_eu_by_default() {
    let s = load_ok("[[routes]]\ncluster = \"app\"\n");
    for c in EU_EEA_COUNTRIES {
        let d = s
            .decide(&RequestFacts {
                country: Some(c),
                ..RequestFacts::new("a", "/")
            })
            .expect("routed");
        assert_eq!(d.jurisdiction.map(|j| s.jurisdiction(j)), Some("eu"), "{c}");
        assert!(d.restricted, "{c}");
    }
    for c in ["GB", "CH", "US", "TR"] {
        let d = s
            .decide(&RequestFacts {
                country: Some(c),
                ..RequestFacts::new("a", "/")
            })
            .expect("routed");
        assert!(!d.restricted, "{c} is not in the built-in EU/EEA list");
    }
}

#[test]
fn allowed_sets_follow_residency() {
    let s = load_ok(
        "[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/gdpr\"\ncluster = \"eu-only\"\nresidency = \"eu\"\n",
    );
    let names = |d: Decision| s.region_names(d.allowed).join(",");
    let de = s
        .decide(&RequestFacts {
            country: Some("DE"),
            ..RequestFacts::new("a", "/")
        })
        .expect("routed");
    assert!(de.restricted);
    assert_eq!(names(de), "europe-north1,europe-west1");
    let us = s
        .decide(&RequestFacts {
            country: Some("US"),
            ..RequestFacts::new("a", "/")
        })
        .expect("routed");
    assert!(!us.restricted);
    assert_eq!(
        names(us),
        "asia-southeast1,europe-north1,europe-west1,us-central1"
    );
    let pinned = s
        .decide(&RequestFacts {
            country: Some("US"),
            ..RequestFacts::new("a", "/gdpr/x")
        })
        .expect("routed");
    assert!(pinned.restricted);
    assert_eq!(names(pinned), "europe-north1,europe-west1");
    let explain = s.explain(&RequestFacts {
        country: Some("DE"),
        ..RequestFacts::new("a", "/")
    });
    assert!(
        explain.contains("jurisdiction: eu (from country-header)"),
        "{explain}"
    );
    assert!(
        explain.contains("restricted to [europe-north1, europe-west1]"),
        "{explain}"
    );
}

fn region_set(s: &Snapshot, names: &[&str]) -> RegionSet {
    names.iter().fold(RegionSet::EMPTY, |set, n| {
        set.with(s.region_named(n).expect(n))
    })
}

#[test]
fn weighted_shares_hold_and_follow_health() {
    let s = load_ok(
        "[[routes]]\ncluster = \"app\"\nregional_weights = { us-central1 = 70, europe-west1 = 30 }\n",
    );
    let route = &s.routes[0];
    let all = s.all_regions();
    let share = |healthy: RegionSet, allowed: RegionSet| {
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for n in 0..10_000u64 {
            if let Some(r) = s.pick_region(route, allowed, healthy, n) {
                *counts.entry(s.region(r).name.clone()).or_default() += 1;
            }
        }
        counts
    };
    let c = share(all, all);
    let us = f64::from(c["us-central1"]) / 100.0;
    let eu = f64::from(c["europe-west1"]) / 100.0;
    assert!(
        (us - 70.0).abs() <= 2.0 && (eu - 30.0).abs() <= 2.0,
        "us {us}% eu {eu}%"
    );
    assert_eq!(c.len(), 2, "unlisted regions get nothing: {c:?}");
    // EU down: its share moves to the US, and comes back when it recovers.
    let c = share(region_set(&s, &["us-central1", "asia-southeast1"]), all);
    assert_eq!(c.get("us-central1"), Some(&10_000), "{c:?}");
    // An EU-restricted request: only EU, even though the US has the larger weight.
    let eu_only = s
        .allowed_regions(s.jurisdiction_named("eu").expect("eu"))
        .expect("restricted");
    let c = share(all, eu_only);
    assert_eq!(c.get("europe-west1"), Some(&10_000), "{c:?}");
    // ...and nothing at all when the EU is down.
    assert!(share(region_set(&s, &["us-central1"]), eu_only).is_empty());
}

#[test]
fn failover_and_local_first() {
    let s = load_ok(
        "[server]\nregion = \"asia-southeast1\"\n[[routes]]\ncluster = \"app\"\nfailover = [\"europe-north1\", \"us-central1\"]\n[[routes]]\npath_prefix = \"/l\"\ncluster = \"app\"\n",
    );
    let all = s.all_regions();
    let name = |r: Option<RegionId>| r.map(|r| s.region(r).name.clone());
    let (failover, local) = (&s.routes[0], &s.routes[1]);
    assert_eq!(
        name(s.pick_region(failover, all, all, 1)).as_deref(),
        Some("europe-north1")
    );
    let no_north = region_set(&s, &["us-central1", "europe-west1", "asia-southeast1"]);
    assert_eq!(
        name(s.pick_region(failover, all, no_north, 1)).as_deref(),
        Some("us-central1")
    );
    assert_eq!(
        s.pick_region(failover, all, region_set(&s, &["asia-southeast1"]), 1),
        None
    );
    assert_eq!(
        name(s.pick_region(local, all, all, 1)).as_deref(),
        Some("asia-southeast1")
    );
    // Local region unavailable: the others in name order.
    assert_eq!(
        name(s.pick_region(
            local,
            all,
            region_set(&s, &["us-central1", "europe-west1"]),
            1
        ))
        .as_deref(),
        Some("europe-west1")
    );
}

#[test]
fn static_proof_rejects_every_leak_path() {
    // A residency policy that lists a region of another jurisdiction.
    let bad_policy = REGIONS.replace(
        r#"eu = ["europe-west1", "europe-north1"]"#,
        r#"eu = ["europe-west1", "us-central1"]"#,
    );
    let errors =
        load(&format!("{bad_policy}\n[[routes]]\ncluster = \"app\"\n")).expect_err("leaky policy");
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.to_string().starts_with("residency.eu[1]: leak")),
        "{errors}"
    );
    let cases: [(&str, &str); 6] = [
        (
            "[[routes]]\ncluster = \"app\"\nresidency = \"eu\"\n",
            "routes[0].residency: leak",
        ),
        (
            "[[routes]]\ncluster = \"eu-only\"\nresidency = \"eu\"\nregional_weights = { europe-west1 = 90, us-central1 = 10 }\n",
            "routes[0].regional_weights.us-central1: leak",
        ),
        (
            "[[routes]]\ncluster = \"eu-only\"\nresidency = \"eu\"\nfailover = [\"europe-west1\", \"asia-southeast1\"]\n",
            "routes[0].failover.asia-southeast1: leak",
        ),
        (
            "[[routes]]\ncluster = \"eu-only\"\nresidency = \"apac\"\n",
            "routes[0].residency: \"apac\" has no [residency] policy",
        ),
        (
            "[[routes]]\ncluster = \"app\"\nversion = \"stable\"\nresidency = \"eu\"\n",
            "routes[0].residency: leak",
        ),
        (
            "[clusters.loose]\nendpoints = [{ address = \"127.0.0.1:9\" }]\n[[routes]]\ncluster = \"loose\"\n",
            "clusters.loose.endpoints[0].region: must name",
        ),
    ];
    for (extra, want) in cases {
        let errors = load_err(extra);
        assert!(
            errors.iter().any(|e| e.starts_with(want)),
            "want {want:?} in {errors:?}"
        );
    }
    // A leak names the route and the endpoint that would leak.
    let errors = load_err("[[routes]]\nname = \"gdpr\"\ncluster = \"app\"\nresidency = \"eu\"\n");
    assert!(
        errors.iter().any(|e| e.contains("\"gdpr\"")
            && e.contains("clusters.app.endpoints[3]")
            && e.contains("asia-southeast1")),
        "{errors:?}"
    );
    assert_eq!(
        errors.len(),
        2,
        "one line per leaking endpoint (us, apac): {errors:?}"
    );
    // The same route on an EU-only cluster is accepted.
    load_ok(
        "[[routes]]\ncluster = \"eu-only\"\nresidency = \"eu\"\nfailover = [\"europe-west1\"]\n",
    );
}

/// A tiny deterministic generator for the property test.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        mix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Builds a random valid config: regions in random jurisdictions, residency for some of them,
/// one cluster with endpoints everywhere, routes with random region policies.
fn random_config(g: &mut Gen) -> String {
    let jurisdictions = ["us", "eu", "apac", "ch"];
    let n_regions = 1 + g.below(6) as usize;
    let regions: Vec<(String, &str)> = (0..n_regions)
        .map(|i| (format!("r{i}"), g.pick(&jurisdictions)))
        .collect();
    let mut text = String::from("[regions]\n");
    for (r, j) in &regions {
        text.push_str(&format!("{r} = {{ jurisdiction = \"{j}\" }}\n"));
    }
    text.push_str("[residency]\n");
    for j in jurisdictions {
        let own: Vec<&String> = regions
            .iter()
            .filter(|(_, rj)| *rj == j)
            .map(|(r, _)| r)
            .collect();
        if !own.is_empty() && g.below(3) > 0 {
            let keep: Vec<String> = own
                .iter()
                .filter(|_| g.below(4) > 0)
                .map(|r| format!("\"{r}\""))
                .collect();
            let keep = if keep.is_empty() {
                vec![format!("\"{}\"", own[0])]
            } else {
                keep
            };
            text.push_str(&format!("{j} = [{}]\n", keep.join(", ")));
        }
    }
    text.push_str("[classify]\ncountries = { US = \"us\", SG = \"apac\", CH = \"ch\" }\n");
    text.push_str("[clusters.app]\nendpoints = [");
    for (i, (r, _)) in regions.iter().enumerate() {
        text.push_str(&format!(
            "{{ address = \"127.0.0.1:{}\", region = \"{r}\" }}, ",
            1000 + i
        ));
    }
    text.push_str("]\n");
    for k in 0..3 {
        text.push_str(&format!(
            "[[routes]]\npath_prefix = \"/p{k}\"\ncluster = \"app\"\n"
        ));
        match g.below(3) {
            0 => {}
            1 => {
                let mut ws = Vec::new();
                for (r, _) in &regions {
                    if g.below(2) == 0 {
                        ws.push(format!("{r} = {}", 1 + g.below(100)));
                    }
                }
                if !ws.is_empty() {
                    text.push_str(&format!("regional_weights = {{ {} }}\n", ws.join(", ")));
                }
            }
            _ => {
                let order: Vec<String> = regions
                    .iter()
                    .filter(|_| g.below(2) == 0)
                    .map(|(r, _)| format!("\"{r}\""))
                    .collect();
                if !order.is_empty() {
                    text.push_str(&format!("failover = [{}]\n", order.join(", ")));
                }
            }
        }
        if g.below(4) == 0 {
            text.push_str(&format!(
                "default_jurisdiction = \"{}\"\n",
                g.pick(&jurisdictions)
            ));
        }
    }
    text
}

#[test]
fn property_no_decision_names_a_forbidden_region() {
    let mut g = Gen(7);
    let countries = ["DE", "FR", "US", "SG", "CH", "BR", "SE", "xx"];
    let jurisdictions = ["eu", "us", "apac", "ch", "mars"];
    let mut restricted_seen = 0;
    for _ in 0..300 {
        let text = random_config(&mut g);
        let s = load(&text).unwrap_or_else(|e| panic!("generated config rejected:\n{e}\n{text}"));
        for _ in 0..50 {
            let path = format!("/p{}", g.below(3));
            let country = (g.below(2) == 0).then(|| g.pick(&countries));
            let jur = (g.below(4) == 0).then(|| g.pick(&jurisdictions));
            let geo = (g.below(3) == 0).then(|| g.pick(&countries));
            let facts = RequestFacts {
                host: "h",
                path: &path,
                tenant: None,
                jurisdiction: jur,
                country,
                geoip_country: geo,
                ..Default::default()
            };
            let d = s.decide(&facts).expect("routed");
            // The allowed set is exactly the jurisdiction's policy when restricted.
            let policy = d.jurisdiction.and_then(|j| s.allowed_regions(j));
            assert_eq!(d.restricted, policy.is_some(), "{facts:?}\n{text}");
            if let (Some(j), Some(set)) = (d.jurisdiction, policy) {
                restricted_seen += 1;
                assert_eq!(d.allowed, set);
                for r in set.iter() {
                    assert_eq!(s.region(r).jurisdiction, s.jurisdiction(j), "{text}");
                }
            }
            for _ in 0..5 {
                let healthy = RegionSet::first(s.regions.len()).intersect(region_mask(g.next()));
                if let Some(r) = s.pick_region(s.route(d.route), d.allowed, healthy, g.next()) {
                    assert!(
                        d.allowed.contains(r),
                        "picked forbidden region {r:?}\n{facts:?}\n{text}"
                    );
                    assert!(healthy.contains(r), "picked unhealthy region {r:?}");
                }
            }
        }
    }
    assert!(
        restricted_seen > 1000,
        "the generator must exercise restricted requests: {restricted_seen}"
    );
}

fn region_mask(bits: u64) -> RegionSet {
    (0..64)
        .filter(|i| bits & (1 << i) != 0)
        .fold(RegionSet::EMPTY, |s, i| s.with(RegionId(i)))
}
