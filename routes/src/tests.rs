use super::*;

const BASE: &str = r#"
[regions]
us-central1 = { jurisdiction = "us" }
europe-west1 = { jurisdiction = "eu" }

[clusters.app]
endpoints = [
  { address = "127.0.0.1:9001", region = "us-central1", version = "stable" },
  { address = "127.0.0.1:9002", region = "europe-west1", version = "canary" },
]
[clusters.api]
endpoints = [{ address = "api.internal:8080", region = "us-central1" }]
[clusters.static]
endpoints = [{ address = "[::1]:9003", region = "europe-west1" }]
"#;

fn snapshot(routes: &str) -> Snapshot {
    load(&format!("{BASE}\n{routes}")).unwrap_or_else(|e| panic!("config rejected:\n{e}"))
}

fn errors_of(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn route_name(s: &Snapshot, host: &str, path: &str) -> Option<String> {
    let host = normalize_host(host);
    s.decide(&RequestFacts::new(&host, path))
        .map(|d| s.route(d.route).name.clone())
}

#[test]
fn host_and_prefix_precedence() {
    let s = snapshot(
        r#"
[[routes]]
name = "any-root"
cluster = "app"
[[routes]]
name = "any-api"
path_prefix = "/api"
cluster = "api"
[[routes]]
name = "wild-root"
hosts = ["*.example.com"]
cluster = "static"
[[routes]]
name = "wild-deep"
hosts = ["*.eu.example.com"]
cluster = "static"
[[routes]]
name = "exact-v1"
hosts = ["shop.example.com"]
path_prefix = "/api/v1/"
cluster = "api"
[[routes]]
name = "exact-assets"
hosts = ["shop.example.com"]
path_prefix = "/assets"
cluster = "static"
"#,
    );
    let cases = [
        ("other.org", "/", Some("any-root")),
        ("other.org", "/api", Some("any-api")),
        ("other.org", "/api/x", Some("any-api")),
        ("other.org", "/apix", Some("any-root")), // segment-wise, not byte-wise
        ("a.example.com", "/api", Some("wild-root")), // wildcard host beats any-host prefix
        ("a.b.example.com", "/", Some("wild-root")),
        ("x.eu.example.com", "/", Some("wild-deep")), // more specific wildcard
        ("example.com", "/", Some("any-root")),       // *.example.com needs a label
        ("shop.example.com", "/api/v1/users", Some("exact-v1")),
        ("shop.example.com", "/api/v1", Some("exact-v1")),
        (
            "SHOP.Example.COM:8443",
            "/assets/app.js",
            Some("exact-assets"),
        ),
        ("shop.example.com.", "/assets", Some("exact-assets")),
        ("shop.example.com", "/api/v2", Some("wild-root")), // no exact prefix: fall to wildcard
        ("shop.example.com", "/", Some("wild-root")),
    ];
    for (host, path, want) in cases {
        assert_eq!(route_name(&s, host, path).as_deref(), want, "{host}{path}");
    }
}

#[test]
fn no_catch_all_means_no_route() {
    let s = snapshot(
        r#"
[[routes]]
hosts = ["a.test"]
path_prefix = "/x"
cluster = "app"
"#,
    );
    assert_eq!(route_name(&s, "a.test", "/x/1").as_deref(), Some("route-0"));
    assert_eq!(route_name(&s, "a.test", "/y"), None);
    assert_eq!(route_name(&s, "b.test", "/x"), None);
    let host = "b.test";
    assert!(
        s.explain(&RequestFacts::new(host, "/x"))
            .contains("no route")
    );
}

#[test]
fn normalize_host_cases() {
    let cases = [
        ("Example.COM", "example.com"),
        ("example.com:8080", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        // Found by the path fuzz target: a malformed name is kept whole, so normalising is
        // idempotent (it used to lose one ':' segment per pass).
        ("P:422.:2", "p:422.:2"),
        ("a:1.", "a"),
        ("/x/:.", "/x/:"),
        ("example.com:", "example.com:"),
        ("a.b..:12", "a.b"),
        ("[::1].", "[::1]"),
        ("[::1", "[::1"),
        (":80", ""),
        ("...", ""),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_host(raw), want, "{raw}");
        assert_eq!(normalize_host(want), want, "idempotent for {raw}");
    }
}

#[test]
fn resolves_references_and_defaults() {
    let s = snapshot(
        r#"
[[routes]]
cluster = "app"
version = "canary"
"#,
    );
    let app = &s.clusters[s.routes[0].cluster.0];
    assert_eq!(app.name, "app");
    assert_eq!(s.routes[0].version.as_deref(), Some("canary"));
    assert_eq!(app.endpoints[1].region, s.region_named("europe-west1"));
    assert_eq!(
        s.region(app.endpoints[1].region.expect("region"))
            .jurisdiction,
        "eu"
    );
    assert_eq!(app.protocol, UpstreamProtocol::Http1);
    assert_eq!(app.timeouts.connect, std::time::Duration::from_secs(2));
    assert_eq!(app.retries.attempts, 1);
    let api = s.clusters.iter().find(|c| c.name == "api").expect("api");
    assert_eq!(
        api.endpoints[0].address,
        Address::Dns {
            host: "api.internal".into(),
            port: 8080
        }
    );
    assert_eq!(s.server.admin, "127.0.0.1:9901".parse().expect("addr"));
    assert!(s.server.access_log);
    assert_eq!(
        s.server.park_idle_after,
        Some(std::time::Duration::from_secs(1))
    );
}

#[test]
fn parking_idle_connections_can_be_turned_off() {
    let off = load(&format!(
        "[server]\npark_idle_after = \"off\"\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ))
    .expect("valid");
    assert_eq!(off.server.park_idle_after, None);
    let set = load(&format!(
        "[server]\npark_idle_after = \"250ms\"\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ))
    .expect("valid");
    assert_eq!(
        set.server.park_idle_after,
        Some(std::time::Duration::from_millis(250))
    );
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = r#"
[server]
region = "mars-north1"
trusted_proxies = ["10.0.0.0/8", "bogus"]
drain_timeout = "ten seconds"
send_timeout = "0s"
tunnel_idle_timeout = "soon"
park_idle_after = "0s"
max_request_head_bytes = 4096
max_request_headers = 0
max_uri_bytes = 100000

[regions]
us-central1 = { jurisdiction = "us" }

[clusters.app]
protocol = "h3"
connect_timeout = "0s"
slow_start = "soon"
retries = { attempts = 9, on_status = [503, 404] }
health_check = { path = "healthz", healthy_threshold = 0 }
outlier = { max_ejection_percent = 150, failure_percentage = 101, failure_percentage_min_requests = 0, interval = "0s" }
endpoints = [
  { address = "127.0.0.1", region = "us-central1" },
  { address = "ok.internal:80", region = "eu-west9" },
  { address = "127.0.0.1:81", region = "us-central1", weight = 0 },
]
[clusters.empty]

[[routes]]
cluster = "nope"
path_prefix = "api"
[[routes]]
name = "dup"
cluster = "app"
version = "canary"
hosts = ["bad host"]
[[routes]]
name = "dup"
cluster = "app"
request_timeout = "forever"
[[routes]]
cluster = "app"
"#;
    let got = errors_of(text);
    let want_paths = [
        "server.region:",
        "server.trusted_proxies[1]:",
        "server.drain_timeout:",
        "server.send_timeout:",
        "server.tunnel_idle_timeout:",
        "server.park_idle_after:",
        "server.max_request_head_bytes:",
        "server.max_request_headers:",
        "server.max_uri_bytes:",
        "clusters.app.protocol:",
        "clusters.app.connect_timeout:",
        "clusters.app.slow_start:",
        "clusters.app.retries.attempts:",
        "clusters.app.retries.on_status[1]:",
        "clusters.app.health_check.path:",
        "clusters.app.health_check.healthy_threshold:",
        "clusters.app.outlier.max_ejection_percent:",
        "clusters.app.outlier.failure_percentage:",
        "clusters.app.outlier.failure_percentage_min_requests:",
        "clusters.app.outlier.interval:",
        "clusters.app.endpoints[0].address:",
        "clusters.app.endpoints[1].region:",
        "clusters.app.endpoints[2].weight:",
        "clusters.empty.endpoints:",
        "routes[0].cluster:",
        "routes[0].path_prefix:",
        "routes[1].version:",
        "routes[1].hosts[0]:",
        "routes[2].name:",
        "routes[2].request_timeout:",
        "routes[3].path_prefix:", // "/" on any host already taken by routes[2]
    ];
    for p in want_paths {
        assert!(
            got.iter().any(|e| e.starts_with(p)),
            "missing {p} in:\n{}",
            got.join("\n")
        );
    }
    assert_eq!(
        got.len(),
        want_paths.len(),
        "unexpected extra errors:\n{}",
        got.join("\n")
    );
}

#[test]
fn endpoint_limits_default_off_and_are_checked() {
    let s = snapshot("[[routes]]\ncluster = \"app\"\n");
    assert_eq!(s.clusters[0].limits, Limits::default());
    assert_eq!(s.clusters[0].limits.max_per_endpoint, 0);
    let one = |limits: &str| {
        format!(
            "[clusters.app]\nlimits = {{ {limits} }}\nendpoints = [{{ address = \"127.0.0.1:9001\" }}]\n[[routes]]\ncluster = \"app\"\n"
        )
    };
    let set = load(&one(
        "max_requests_per_endpoint = 64, max_queued = 10, queue_timeout = \"250ms\"",
    ))
    .expect("valid");
    assert_eq!(
        set.clusters[0].limits,
        Limits {
            max_per_endpoint: 64,
            max_queued: 10,
            queue_timeout: std::time::Duration::from_millis(250),
        }
    );
    let got = errors_of(&one(
        "max_requests_per_endpoint = 2000000, max_queued = 2000000, queue_timeout = \"soon\"",
    ));
    for p in [
        "clusters.app.limits.max_requests_per_endpoint:",
        "clusters.app.limits.max_queued:",
        "clusters.app.limits.queue_timeout:",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(p)),
            "missing {p} in {got:?}"
        );
    }
    assert_eq!(got.len(), 3, "{got:?}");
    // A queue without a cap would never be used: say so rather than ignore it.
    let got = errors_of(&one("queue_timeout = \"2s\""));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("clusters.app.limits:"), "{got:?}");
}

#[test]
fn syntax_and_unknown_fields_are_errors() {
    let unknown = errors_of("[server]\nregoin = \"us\"\n");
    assert!(unknown[0].contains("regoin"), "{unknown:?}");
    let syntax = errors_of("[[routes]\n");
    assert!(syntax[0].starts_with("TOML:"), "{syntax:?}");
    assert_eq!(
        errors_of(""),
        vec!["routes: at least one route is required".to_string()]
    );
}

#[test]
fn https_needs_a_certificate() {
    let got = errors_of(&format!(
        "[server]\nhttps = \"127.0.0.1:8443\"\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("tls.certificates:"), "{got:?}");
}

#[test]
fn hash_follows_content() {
    let a = snapshot("[[routes]]\ncluster = \"app\"\n");
    let b = snapshot("[[routes]]\ncluster = \"app\"\n");
    let c = snapshot("[[routes]]\ncluster = \"api\"\n");
    assert_eq!(a.hash, b.hash);
    assert_ne!(a.hash, c.hash);
    assert_eq!(a.hash.len(), 16);
}

#[test]
fn large_tables_route_exactly() {
    let mut text = String::new();
    for i in 0..1000 {
        text.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\nhosts = [\"h{}.example.com\"]\npath_prefix = \"/p{}\"\ncluster = \"app\"\n",
            i % 50,
            i
        ));
    }
    let s = snapshot(&text);
    for i in [0, 1, 499, 999] {
        let host = format!("h{}.example.com", i % 50);
        assert_eq!(
            route_name(&s, &host, &format!("/p{i}/x")),
            Some(format!("r{i}"))
        );
    }
    assert_eq!(route_name(&s, "h1.example.com", "/p0"), None);
}

#[test]
fn rollouts_validate() {
    let s = snapshot(
        r#"
[[routes]]
cluster = "app"
version = "stable"
rollout = { candidate = "canary", weight = 0.5, steps = [1, 10, 50, 100], gates = { max_error_rate = 0.05, max_p95 = "2s", min_requests = 20 } }
"#,
    );
    let r = s.routes[0].rollout.as_ref().expect("rollout");
    assert_eq!(r.candidate_version.as_deref(), Some("canary"));
    assert_eq!(r.stable_version.as_deref(), Some("stable"));
    assert_eq!(r.initial_weight, 0.5);
    assert_eq!(r.sticky, rollout::Sticky::Cookie("fd-uid".into()));
    assert_eq!(r.override_header, "x-frontdoor-version");
    assert_eq!(r.gates.max_p95, Some(std::time::Duration::from_secs(2)));
    assert_eq!(r.mirror_percent, 0.0, "no copies unless asked");

    let got = errors_of(&format!(
        r#"{BASE}
[[routes]]
cluster = "app"
version = "stable"
rollout = {{ candidate = "nightly" }}
[[routes]]
path_prefix = "/bg"
cluster = "app"
version = "stable"
rollout = {{ mode = "blue-green", candidate = "canary", weight = 30 }}
[[routes]]
path_prefix = "/steps"
cluster = "app"
version = "stable"
rollout = {{ candidate = "canary", steps = [10, 5], sticky = "header" }}
[[routes]]
path_prefix = "/same"
cluster = "app"
version = "stable"
rollout = {{ candidate = "stable", gates = {{ max_error_rate = 5 }} }}
[[routes]]
path_prefix = "/shadow"
cluster = "app"
version = "stable"
rollout = {{ candidate = "canary", mirror_percent = 150 }}
"#
    ));
    for p in [
        "routes[0].rollout.candidate:",
        "routes[1].rollout.weight:",
        "routes[2].rollout.steps[1]:",
        "routes[2].rollout.header:",
        "routes[3].rollout.candidate:",
        "routes[3].rollout.gates.max_error_rate:",
        "routes[4].rollout.mirror_percent: must be 0..=100, got 150",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(p)),
            "missing {p} in:\n{}",
            got.join("\n")
        );
    }
}

#[test]
fn rate_limits_validate() {
    let s = snapshot(
        "[[routes]]\ncluster = \"app\"\nrate_limit = { rps = 10, key = \"header:X-Api-Key\" }\n",
    );
    let rl = s.routes[0].rate_limit.as_ref().expect("limit");
    assert_eq!((rl.rps, rl.burst), (10.0, 10.0));
    assert_eq!(rl.key, RateKey::Header("x-api-key".into()));
    let got = errors_of(&format!(
        "{BASE}\n[[routes]]\ncluster = \"app\"\nrate_limit = {{ rps = 0, burst = 0.5, key = \"cookie\" }}\n"
    ));
    for p in [
        "routes[0].rate_limit.rps:",
        "routes[0].rate_limit.burst:",
        "routes[0].rate_limit.key:",
    ] {
        assert!(
            got.iter().any(|e| e.starts_with(p)),
            "missing {p} in {got:?}"
        );
    }
}

#[test]
fn acme_settings_validate() {
    let ok = snapshot(
        r#"
[[routes]]
cluster = "app"
[tls]
default_host = "shop.example.com"
[tls.acme]
directory = "https://acme.example/dir"
contact = ["mailto:ops@example.com"]
hosts = ["Shop.example.com", "www.example.com"]
storage = "/var/lib/frontdoor/acme"
"#,
    );
    let acme = ok.tls.acme.as_ref().expect("acme");
    assert_eq!(acme.hosts, ["shop.example.com", "www.example.com"]);
    assert_eq!(
        acme.renew_before,
        std::time::Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        acme.cert_path(),
        "/var/lib/frontdoor/acme/shop.example.com.crt"
    );
    let errors = errors_of(&format!(
        "{BASE}\n{}",
        r#"
[[routes]]
cluster = "app"
[tls.acme]
directory = "http://acme.example/dir"
contact = ["ops@example.com"]
hosts = ["*.example.com"]
storage = ""
renew_before = "soon"
"#
    ))
    .join("\n");
    for want in [
        "tls.acme.directory: must be an https:// URL",
        "tls.acme.hosts[0]: wildcards need DNS-01",
        "tls.acme.contact[0]: use mailto: URIs",
        "tls.acme.storage: must name a directory",
        "tls.acme.renew_before:",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
}

#[test]
fn failure_percentage_ejection_is_read_with_its_defaults() {
    let base = r#"
[clusters.app]
endpoints = [{ address = "127.0.0.1:9000" }]
[[routes]]
cluster = "app"
"#;
    let with =
        |outlier: &str| base.replace("[clusters.app]\n", &format!("[clusters.app]\n{outlier}\n"));
    let s = crate::load(&with("outlier = { failure_percentage = 30 }")).expect("valid");
    assert_eq!(
        s.clusters[0].outlier.failure_percentage,
        Some(crate::FailurePercentage {
            percent: 30,
            min_requests: 20,
            interval: std::time::Duration::from_secs(10),
        })
    );
    assert_eq!(
        s.clusters[0].outlier.consecutive_failures, 5,
        "kept beside it"
    );
    assert_eq!(
        crate::load(base).expect("valid").clusters[0]
            .outlier
            .failure_percentage,
        None
    );
    // Its settings without it are a mistake, said as one.
    let got = errors_of(&with("outlier = { interval = \"5s\" }"));
    assert!(
        got.iter()
            .any(|e| e.starts_with("clusters.app.outlier.interval:")
                && e.contains("go with failure_percentage")),
        "{got:?}"
    );
}

#[test]
fn https_redirects_and_hsts_are_read_with_their_defaults() {
    let routes = "[[routes]]\nname = \"web\"\ncluster = \"app\"\n[[routes]]\nname = \"hook\"\npath_prefix = \"/hook\"\ncluster = \"app\"\nhttps_redirect = false\n[[routes]]\nname = \"only\"\npath_prefix = \"/only\"\ncluster = \"app\"\nhttps_redirect = true\n";
    let redirects =
        |s: &Snapshot| -> Vec<bool> { s.routes.iter().map(|r| r.https_redirect).collect() };
    // Off unless said; a route's own word beats the server's either way.
    let plain = snapshot(routes);
    assert_eq!(redirects(&plain), [false, false, true]);
    assert_eq!(plain.server.https_redirect_port, None);
    assert_eq!(plain.server.hsts, None);
    let on = load(&format!(
        "[server]\nhttps_redirect = true\nhttps_redirect_port = 8443\nhsts = {{ max_age = 31536000, include_subdomains = true, preload = true }}\n{BASE}\n{routes}"
    ))
    .expect("valid");
    assert_eq!(redirects(&on), [true, false, true]);
    assert_eq!(on.server.https_redirect_port, Some(8443));
    assert_eq!(
        on.server.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    // Zero is how a policy is withdrawn (RFC 6797 §6.1.1).
    let forget = load(&format!(
        "[server]\nhsts = {{ max_age = 0 }}\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ))
    .expect("valid");
    assert_eq!(forget.server.hsts.as_deref(), Some("max-age=0"));
}

#[test]
fn https_redirect_and_hsts_mistakes_are_errors_with_their_paths() {
    let got = errors_of(&format!(
        "[server]\nhttps_redirect_port = 0\nhsts = {{ max_age = 86400, preload = true }}\nproxy_protocol = true\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ));
    assert_eq!(
        got,
        [
            "server.https_redirect_port: must be a port, 1 to 65535",
            "server.hsts.preload: needs include_subdomains = true: a preloaded policy covers every subdomain",
            "server.hsts.preload: needs max_age of a year (31536000) or more",
            "server.proxy_protocol: needs trusted_proxies: the balancers whose PROXY headers are believed",
        ],
    );
    let got = errors_of(&format!(
        "[server]\nhsts = {{ include_subdomains = true }}\n{BASE}\n[[routes]]\ncluster = \"app\"\n"
    ));
    assert!(got[0].contains("missing field `max_age`"), "{got:?}");
}

#[test]
fn a_rewrite_replaces_the_matched_prefix() {
    let s = snapshot(
        "[[routes]]\ncluster = \"app\"\nrewrite_prefix = \"/v1\"\n[[routes]]\npath_prefix = \"/api/\"\ncluster = \"app\"\nrewrite_prefix = \"/\"\n[[routes]]\npath_prefix = \"/old\"\ncluster = \"app\"\nrewrite_prefix = \"/new/\"\n[[routes]]\npath_prefix = \"/same\"\ncluster = \"app\"\n",
    );
    let upstream = |path: &str| {
        let d = s.decide(&RequestFacts::new("h", path)).expect("routed");
        s.route(d.route).rewritten(path)
    };
    for (path, want) in [
        ("/", "/v1/"),
        ("/x/y", "/v1/x/y"),
        ("/api", "/"),
        ("/api/", "/"),
        ("/api/users/7", "/users/7"),
        ("/old", "/new/"),
        ("/old/a", "/new/a"),
        ("/older", "/v1/older"),
    ] {
        assert_eq!(upstream(path).as_deref(), Some(want), "{path}");
    }
    assert_eq!(
        upstream("/same/x"),
        None,
        "no rewrite: the path goes as it came"
    );
    let explained = s.explain(&RequestFacts::new("h", "/api/users"));
    assert!(
        explained.contains("rewritten:    upstream gets path \"/users\""),
        "{explained}"
    );
}

#[test]
fn route_header_edits_are_checked_with_their_paths() {
    let ok = snapshot(
        "[[routes]]\ncluster = \"app\"\nrequest_headers = { set = { \"X-Internal\" = \" yes \" }, remove = [\"X-Debug\"] }\nresponse_headers = { default = { \"x-frame-options\" = \"DENY\" } }\n",
    );
    let r = &ok.routes[0];
    assert_eq!(r.request_headers.set, [("x-internal".into(), "yes".into())]);
    assert_eq!(r.request_headers.remove, ["x-debug"]);
    assert_eq!(
        r.response_headers.default,
        [("x-frame-options".into(), "DENY".into())]
    );
    assert!(ok.routes[0].response_headers.remove.is_empty());
    let got = errors_of(&format!(
        "{BASE}\n[[routes]]\ncluster = \"app\"\nrewrite_prefix = \"v2?x\"\nrequest_headers = {{ set = {{ \"x-forwarded-for\" = \"1.2.3.4\", \"bad name\" = \"v\", \"x-ok\" = \"caf\u{e9}\" }}, remove = [\"Host\", \"x-a\"], default = {{ \"X-A\" = \"1\" }} }}\nresponse_headers = {{ set = {{ \"cache-control\" = \"no-store\", \"transfer-encoding\" = \"chunked\" }}, remove = [\"x-forwarded-for\"] }}\n"
    ));
    assert_eq!(
        got,
        [
            "routes[0].rewrite_prefix: \"v2?x\" must be a path: starting with '/', visible ASCII, no ? or #",
            "routes[0].request_headers.set.bad name: \"bad name\" is not a header name",
            "routes[0].request_headers.set.x-forwarded-for: x-forwarded-for records the forwarding; the proxy sets it",
            "routes[0].request_headers.set.x-ok: must be a header value of visible ASCII",
            "routes[0].request_headers.remove[0]: Host is set by the proxy for each connection",
            "routes[0].request_headers: x-a is named more than once",
            "routes[0].response_headers.set.cache-control: cache-control is cache policy: set it in a [[cache.rules]] set or default",
            "routes[0].response_headers.set.transfer-encoding: transfer-encoding is set by the proxy for each connection",
        ],
    );
}

#[test]
fn body_limits_are_the_routes_or_the_servers() {
    let routes = "[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/up\"\ncluster = \"app\"\nmax_request_body = \"64MiB\"\n";
    let none = snapshot(routes);
    assert_eq!(none.routes[0].max_request_body, None, "no limit unless set");
    assert_eq!(none.routes[1].max_request_body, Some(64 << 20));
    let server = load(&format!(
        "[server]\nmax_request_body = 1048576\n{BASE}\n{routes}"
    ))
    .expect("valid");
    assert_eq!(server.routes[0].max_request_body, Some(1 << 20));
    assert_eq!(server.routes[1].max_request_body, Some(64 << 20));
    let got = errors_of(&format!(
        "[server]\nmax_request_body = 0\n{BASE}\n[[routes]]\ncluster = \"app\"\nmax_request_body = \"lots\"\n"
    ));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("server.max_request_body: must be at least 1 byte"),
        "{got:?}"
    );
    assert!(got[1].starts_with("routes[0].max_request_body:"), "{got:?}");
}

#[test]
fn retried_statuses_are_the_5xx_named() {
    let s = snapshot("[[routes]]\ncluster = \"app\"\n");
    assert!(!s.clusters[0].retries.on(503), "none unless named");
    let text = BASE.replace(
        "[clusters.api]",
        "retries = { on_status = [502, 503, 599] }\n[clusters.api]",
    ) + "[[routes]]\ncluster = \"app\"\n";
    let named = load(&text).expect("valid");
    let app = named
        .clusters
        .iter()
        .find(|c| c.name == "app")
        .expect("app");
    let retries = app.retries;
    assert_eq!(retries.attempts, 1);
    for (status, on) in [
        (502, true),
        (503, true),
        (599, true),
        (500, false),
        (504, false),
        (404, false),
    ] {
        assert_eq!(retries.on(status), on, "{status}");
    }
}

#[test]
fn routes_of_one_prefix_are_told_apart_by_method_and_headers() {
    let s = snapshot(
        r#"
[[routes]]
name = "root"
cluster = "app"
[[routes]]
name = "api"
path_prefix = "/api"
cluster = "app"
[[routes]]
name = "writes"
path_prefix = "/api"
cluster = "api"
methods = ["post", "PUT"]
[[routes]]
name = "beta"
path_prefix = "/api"
cluster = "static"
match_headers = { "X-Beta" = "1", "x-user" = "*" }
[[routes]]
name = "reads-only"
path_prefix = "/v2"
cluster = "api"
methods = ["GET"]
"#,
    );
    let decide = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        let facts = RequestFacts {
            method: Some(method),
            header: Some(HeaderSource(&lookup)),
            ..RequestFacts::new("h", path)
        };
        s.decide(&facts).map(|d| s.route(d.route).name.clone())
    };
    let name = |n: &str| Some(n.to_string());
    assert_eq!(
        decide("GET", "/api/x", &[]),
        name("api"),
        "no condition met"
    );
    assert_eq!(decide("POST", "/api/x", &[]), name("writes"));
    assert_eq!(decide("PUT", "/api", &[]), name("writes"));
    assert_eq!(
        decide("GET", "/api/x", &[("x-beta", " 1 "), ("x-user", "u")]),
        name("beta")
    );
    assert_eq!(
        decide("GET", "/api/x", &[("x-beta", "2"), ("x-user", "u")]),
        name("api")
    );
    assert_eq!(
        decide("GET", "/api/x", &[("x-beta", "1")]),
        name("api"),
        "x-user missing"
    );
    // In config order: a POST with the beta headers is a write.
    assert_eq!(
        decide("POST", "/api/x", &[("x-beta", "1"), ("x-user", "u")]),
        name("writes")
    );
    // A prefix whose routes all have conditions, none met: the shorter prefix's route.
    assert_eq!(decide("GET", "/v2/a", &[]), name("reads-only"));
    assert_eq!(decide("DELETE", "/v2/a", &[]), name("root"));
    let explained = s.explain(&RequestFacts {
        method: Some("POST"),
        ..RequestFacts::new("h", "/api/x")
    });
    assert!(
        explained.contains("longest prefix \"/api\"; methods POST, PUT)"),
        "{explained}"
    );

    let got = errors_of(&format!(
        r#"{BASE}
[[routes]]
path_prefix = "/api"
cluster = "app"
methods = ["GET"]
[[routes]]
path_prefix = "/api"
cluster = "app"
methods = ["get"]
[[routes]]
path_prefix = "/api"
cluster = "app"
[[routes]]
path_prefix = "/api/"
cluster = "app"
[[routes]]
path_prefix = "/b"
cluster = "app"
methods = ["G T"]
match_headers = {{ "bad name" = "1" }}
"#
    ));
    assert_eq!(
        got,
        [
            "routes[4].methods[0]: \"G T\" is not a method",
            "routes[4].match_headers.bad name: \"bad name\" is not a header name",
            "routes[1].path_prefix: host \"*\" with path_prefix \"/api\": routes[0] takes the same requests first (the same methods and match_headers)",
            "routes[3].path_prefix: host \"*\" with path_prefix \"/api\" is already routed by routes[2]",
        ],
    );
}
