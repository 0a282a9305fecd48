//! End-to-end: requests through a real front door to in-process origins.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cluster, dead_addr, one_route, start, url};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use loadtest::{Client, FaultSpec, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One route to `origin`, with `trusted` as the trusted proxies.
fn trusting(trusted: &str, origin: std::net::SocketAddr) -> String {
    format!(
        "[server]\ntrusted_proxies = [\"{trusted}\"]\n{}\n[[routes]]\ncluster = \"app\"\n",
        cluster("app", "", &[(origin, "", "stable")])
    )
}

/// What the origin saw of a `GET /` with `headers`, sent by `client` through `fd`.
async fn echoed(
    fd: &frontdoor::server::Running,
    client: &Client,
    headers: &[(&str, &str)],
) -> loadtest::Echo {
    let mut req = Request::get(url(fd, "/"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    client
        .send(req.body(Full::default()).expect("req"))
        .await
        .expect("resp")
        .echo()
        .expect("echo")
}

#[tokio::test]
async fn http1_and_h2c_reach_the_origin_with_proxy_headers() {
    let origin = Origin::builder()
        .region("us")
        .version("stable")
        .start()
        .await
        .expect("origin");
    let config = trusting("10.0.0.0/8", origin.addr);
    let fd = start(&config).await;

    let authority = fd.http.expect("http listener").to_string();
    for (client, host, forwarded_host) in [
        // `X-Forwarded-Host` is the host the client addressed, as sent (port and case kept).
        (
            Client::http1(),
            "Shop.example.com:8443",
            "Shop.example.com:8443",
        ),
        (Client::h2c(), "127.0.0.1", authority.as_str()),
    ] {
        // HTTP/2 carries the host in :authority (the URL's), which wins over any Host header.
        let req = Request::get(url(&fd, "/hello?q=1"))
            .header("host", host)
            .header("connection", "x-secret")
            .header("x-secret", "must not pass")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .body(Full::default())
            .expect("req");
        let resp = client.send(req).await.expect("response");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.header("x-origin-region"), Some("us"));
        let rid = resp
            .header("x-request-id")
            .expect("request id on the response")
            .to_string();
        let echo = resp.echo().expect("origin echo");
        assert_eq!(echo.path, "/hello?q=1");
        assert_eq!(echo.header("x-request-id"), Some(rid.as_str()));
        assert_eq!(
            echo.header("x-secret"),
            None,
            "header named in Connection must be dropped"
        );
        assert_eq!(echo.header("connection"), None);
        // The peer (127.0.0.1) is not trusted: its forwarding headers are replaced.
        assert_eq!(echo.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(echo.header("x-forwarded-proto"), Some("http"));
        assert_eq!(echo.header("x-forwarded-host"), Some(forwarded_host));
        assert!(
            echo.header("host").is_some_and(|h| h.starts_with(host)),
            "{:?}",
            echo.header("host")
        );
        let via = echo.header("via").expect("via");
        assert!(via.ends_with("frontdoor"), "{via}");
        assert!(resp.header("via").is_some_and(|v| v.contains("frontdoor")));
        if resp.version == Version::HTTP_2 {
            assert_eq!(via, "2 frontdoor");
        }
    }
    // A request id from a peer that is no trusted proxy is replaced: the client does not name
    // its request in the logs and the upstream's traces.
    let req = Request::get(url(&fd, "/"))
        .header("x-request-id", "abc-123")
        .body(Full::default())
        .expect("req");
    let resp = Client::http1().send(req).await.expect("response");
    let given = resp.header("x-request-id").expect("request id");
    assert_eq!(given.len(), 16, "{given}");
    assert_eq!(
        resp.echo().expect("echo").header("x-request-id"),
        Some(given)
    );
    fd.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_are_kept_from_trusted_proxies() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = trusting("127.0.0.0/8", origin.addr);
    let fd = start(&config).await;
    let echo = echoed(
        &fd,
        &Client::http1(),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    // So is the request id an earlier hop gave the request.
    let echo = echoed(&fd, &Client::h2c(), &[("x-request-id", "cdn-7f3a")]).await;
    assert_eq!(echo.header("x-request-id"), Some("cdn-7f3a"));
    fd.shutdown().await;
}

/// A `Connection` field cannot take `Host` or the proxy's own fields off the request the
/// upstream sees (a trusted proxy's forwarding chain included); any other field it names goes.
#[tokio::test]
async fn connection_options_cannot_take_the_proxys_fields_off_a_request() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = trusting("127.0.0.0/8", origin.addr);
    let fd = start(&config).await;
    let req = Request::get(url(&fd, "/"))
        .header("host", "shop.example")
        .header(
            "connection",
            "host, x-request-id, x-forwarded-for, x-forwarded-proto, x-forwarded-host, via, x-secret",
        )
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "shop.example:443")
        .header("via", "1.1 cdn")
        .header("x-secret", "must not pass")
        .body(Full::default())
        .expect("req");
    let resp = Client::http1().send(req).await.expect("resp");
    let rid = resp.header("x-request-id").expect("request id").to_string();
    let echo = resp.echo().expect("echo");
    assert_eq!(echo.header("host"), Some("shop.example"));
    assert_eq!(echo.header("x-request-id"), Some(rid.as_str()));
    assert_eq!(
        echo.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.header("x-forwarded-host"), Some("shop.example:443"));
    assert_eq!(echo.header("via"), Some("1.1 cdn, 1.1 frontdoor"));
    assert_eq!(echo.header("x-secret"), None);
    assert_eq!(echo.header("connection"), None);
    fd.shutdown().await;
}

/// What a client claims an earlier proxy saw (its address, scheme, port, path prefix, the
/// original URL) reaches the upstream only from a trusted proxy: frameworks build redirects
/// and links from these fields and take client addresses from them, and none is part of a
/// cache key, so one client's claim would be served to others from the cache.
#[tokio::test]
async fn forwarding_claims_pass_only_from_trusted_proxies() {
    const CLAIMS: [(&str, &str); 11] = [
        ("forwarded", "for=6.6.6.6;proto=http;host=evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-scheme", "http"),
        ("x-forwarded-ssl", "off"),
        ("x-forwarded-server", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
    ];
    let origin = Origin::builder().start().await.expect("origin");
    for (trusted, kept) in [("10.0.0.0/8", false), ("127.0.0.0/8", true)] {
        let config = trusting(trusted, origin.addr);
        let fd = start(&config).await;
        let headers: Vec<_> = CLAIMS.into_iter().chain([("x-other", "kept")]).collect();
        for client in [Client::http1(), Client::h2c()] {
            let echo = echoed(&fd, &client, &headers).await;
            for (name, value) in CLAIMS {
                let want = kept.then_some(value);
                assert_eq!(echo.header(name), want, "{name} (trusted: {kept})");
            }
            assert_eq!(echo.header("x-other"), Some("kept"));
        }
        fd.shutdown().await;
    }
}

/// CGI, WSGI and Rack read `X_Forwarded_For` and `X-Forwarded-For` as one variable
/// (`HTTP_X_FORWARDED_FOR`): a field that is one of the proxy's own, a forwarding claim or a
/// classification header once `_` reads as `-` never reaches the upstream, from any peer.
/// Other names with `_` pass.
#[tokio::test]
async fn underscore_spellings_of_the_proxys_fields_are_dropped() {
    const SPOOFS: [(&str, &str); 7] = [
        ("x_forwarded_for", "6.6.6.6"),
        ("X_Forwarded-Proto", "http"),
        ("x-forwarded_host", "evil.example"),
        ("x_real_ip", "6.6.6.6"),
        ("x_client_country", "US"),
        ("x_frontdoor_version", "canary"),
        ("x_request_id", "chosen"),
    ];
    let origin = Origin::builder().start().await.expect("origin");
    for trusted in ["10.0.0.0/8", "127.0.0.0/8"] {
        let config = trusting(trusted, origin.addr);
        let fd = start(&config).await;
        let headers: Vec<_> = SPOOFS.into_iter().chain([("api_key", "k1")]).collect();
        let echo = echoed(&fd, &Client::http1(), &headers).await;
        for (name, _) in SPOOFS {
            let name = name.to_ascii_lowercase();
            assert_eq!(echo.header(&name), None, "{name} (trusted {trusted})");
        }
        assert_eq!(echo.header("api_key"), Some("k1"));
        fd.shutdown().await;
    }
}

#[tokio::test]
async fn routes_by_host_then_longest_prefix() {
    let a = Origin::builder().version("exact").start().await.expect("a");
    let b = Origin::builder().version("wild").start().await.expect("b");
    let c = Origin::builder().version("any").start().await.expect("c");
    let config = format!(
        "{}{}{}
[[routes]]
hosts = [\"api.example.com\"]
path_prefix = \"/v1\"
cluster = \"a\"
[[routes]]
hosts = [\"*.example.com\"]
cluster = \"b\"
[[routes]]
path_prefix = \"/public\"
cluster = \"c\"
",
        cluster("a", "", &[(a.addr, "", "exact")]),
        cluster("b", "", &[(b.addr, "", "wild")]),
        cluster("c", "", &[(c.addr, "", "any")]),
    );
    let fd = start(&config).await;
    let client = Client::http1();
    let cases = [
        ("api.example.com", "/v1/users", Some("exact")),
        ("api.example.com", "/v2", Some("wild")),
        ("www.example.com", "/public", Some("wild")),
        ("other.org", "/public/x", Some("any")),
        ("other.org", "/private", None),
    ];
    for (host, path, want) in cases {
        let req = Request::get(url(&fd, path))
            .header("host", host)
            .body(Full::default())
            .expect("req");
        let resp = client.send(req).await.expect("resp");
        match want {
            Some(v) => assert_eq!(resp.header("x-origin-version"), Some(v), "{host}{path}"),
            None => {
                assert_eq!(resp.status, StatusCode::NOT_FOUND, "{host}{path}");
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.body).expect("json error body");
                assert_eq!(body["error"], "no_route");
                assert_eq!(body["request_id"].as_str(), resp.header("x-request-id"));
            }
        }
    }
    fd.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let slow = Origin::builder().start().await.expect("slow");
    slow.faults.set(FaultSpec {
        latency_ms: 3_000,
        ..Default::default()
    });
    let dead = dead_addr().await;
    let checked = dead_addr().await;
    let config = format!(
        "{}{}{}
[[routes]]
path_prefix = \"/slow\"
cluster = \"slow\"
[[routes]]
path_prefix = \"/dead\"
cluster = \"dead\"
[[routes]]
path_prefix = \"/checked\"
cluster = \"checked\"
",
        cluster(
            "slow",
            "request_timeout = \"200ms\"",
            &[(slow.addr, "", "v")]
        ),
        cluster(
            "dead",
            "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\" }",
            &[(dead, "", "v")]
        ),
        cluster(
            "checked",
            "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 1 }",
            &[(checked, "", "v")]
        ),
    );
    let fd = start(&config).await;
    let client = Client::http1();
    let slow_resp = client.get(&url(&fd, "/slow")).await.expect("resp");
    assert_eq!(slow_resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(slow_resp.text().contains("upstream_timeout"));
    // Two connect failures (502) eject the only endpoint; the next request probes it (one a
    // second: a 502 again), and the one after that is refused at once: 503.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let resp = client.get(&url(&fd, "/dead")).await.expect("resp");
        statuses.push(resp.status.as_u16());
    }
    assert_eq!(statuses, vec![502, 502, 502, 503]);
    common::metrics_with(
        &fd,
        &[
            "frontdoor_upstream_ejections_total{cluster=\"dead\"} 1",
            "frontdoor_upstream_probes_total{cluster=\"dead\"} 1",
        ],
    )
    .await;
    // An endpoint its active checks find down is out: 503, no healthy upstream.
    common::eventually("the checked endpoint is taken out", || {
        let client = &client;
        let fd = &fd;
        async move {
            let resp = client.get(&url(fd, "/checked")).await.expect("resp");
            resp.status == StatusCode::SERVICE_UNAVAILABLE
                && resp.text().contains("no_healthy_upstream")
        }
    })
    .await;
    fd.shutdown().await;
}

/// An upstream that failed a burst of requests (one shedding load under a spike) is ejected,
/// and the first request after the burst probes it: answered, the ejection ends there — not
/// after the hour the ejection would last.
#[tokio::test]
async fn an_answered_probe_ends_the_ejection() {
    let origin = Origin::builder().start().await.expect("origin");
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 3, ejection_time = \"1h\" }";
    let fd = start(&one_route(extra, &[(origin.addr, "", "v")])).await;
    let client = Client::http1();
    origin.faults.set(FaultSpec {
        error_rate: 1.0,
        ..Default::default()
    });
    for _ in 0..3 {
        let resp = client.get(&url(&fd, "/")).await.expect("resp");
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    origin.faults.set(FaultSpec::default());
    for i in 0..5 {
        let resp = client.get(&url(&fd, "/")).await.expect("resp");
        assert_eq!(resp.status, StatusCode::OK, "request {i} after the burst");
    }
    let metrics = common::metrics_with(
        &fd,
        &[
            "frontdoor_upstream_ejections_total{cluster=\"app\"} 1",
            "frontdoor_upstream_probes_total{cluster=\"app\"} 1",
        ],
    )
    .await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("frontdoor_upstream_healthy{cluster=\"app\"") && l.ends_with(" 1")
        ),
        "healthy again:\n{metrics}"
    );
    fd.shutdown().await;
}

/// An ejection that runs out puts the endpoint back in `frontdoor_upstream_healthy` (the gauge
/// the no-healthy-upstream alert reads), not only back in rotation.
#[tokio::test]
async fn the_healthy_gauge_comes_back_when_an_ejection_runs_out() {
    let bad = Origin::builder().start().await.expect("origin");
    let good = Origin::builder().start().await.expect("origin");
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"300ms\" }";
    let fd = start(&one_route(
        extra,
        &[(bad.addr, "", "v"), (good.addr, "", "v")],
    ))
    .await;
    let client = Client::http1();
    bad.faults.set(FaultSpec {
        error_rate: 1.0,
        ..Default::default()
    });
    // Round-robin: two of these four meet the failing endpoint, which ejects it.
    for _ in 0..4 {
        client.get(&url(&fd, "/")).await.expect("resp");
    }
    let gauge = format!(
        "frontdoor_upstream_healthy{{cluster=\"app\",endpoint=\"{}\"}}",
        bad.addr
    );
    common::metrics_with(&fd, &[&format!("{gauge} 0")]).await;
    bad.faults.set(FaultSpec::default());
    common::eventually("the gauge says 1 again", || {
        let (client, fd, want) = (&client, &fd, format!("{gauge} 1"));
        async move {
            client.get(&url(fd, "/")).await.expect("resp");
            common::admin_call(fd, Method::GET, "/metrics", "")
                .await
                .text()
                .contains(&want)
        }
    })
    .await;
    fd.shutdown().await;
}

/// An upstream that breaks off its answers. `/big`: 64 MiB, written for as long as the proxy
/// takes them; anything else: a head promising 1,000 bytes, 100 of them, and the connection
/// closed.
async fn breaker() -> std::net::SocketAddr {
    common::raw_upstream(|mut s| async move {
        let Some(head) = common::read_head(&mut s).await else {
            return;
        };
        if head.starts_with(b"GET /big ") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
                .await;
            let chunk = vec![b'b'; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
            return;
        }
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
        answer.extend([b'x'; 100]);
        let _ = s.write_all(&answer).await;
    })
    .await
}

/// A probe of an ejected endpoint ends the ejection only when its answer is read whole: one
/// that breaks off leaves it out, and the next request (no probe due yet) is refused at once.
#[tokio::test]
async fn a_probe_that_breaks_off_leaves_the_endpoint_out() {
    let breaker = breaker().await;
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\" }";
    let fd = start(&one_route(extra, &[(breaker, "", "v")])).await;
    let client = Client::http1();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(match client.get(&url(&fd, "/")).await {
            Ok(r) => r.status.to_string(),
            Err(_) => "cut".to_string(),
        });
    }
    // Two cut answers eject it; the probe is cut too; the next gets no upstream.
    assert_eq!(got[..3], ["cut", "cut", "cut"]);
    assert!(got[3].starts_with("503"), "{got:?}");
    common::metrics_with(&fd, &["frontdoor_upstream_probes_total{cluster=\"app\"} 1"]).await;
    fd.shutdown().await;
}

/// An endpoint that answers `200` and breaks off every body fails its users as surely as one
/// answering `503`: an answer counts as its success only once its body is read whole, so
/// `consecutive_failures` broken answers eject it. A client that abandons its answer counts
/// neither way.
#[tokio::test]
async fn an_endpoint_that_breaks_off_its_answers_is_ejected() {
    let breaker = breaker().await;
    let good = Origin::builder().start().await.expect("origin");
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\" }";
    let fd = start(&one_route(
        extra,
        &[(breaker, "", "v"), (good.addr, "", "v")],
    ))
    .await;
    let addr = fd.http.expect("http");

    // Clients that leave mid-answer: not the endpoint's failures. Round-robin gives the
    // breaker every other request, each read a little and let go.
    for _ in 0..6 {
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("request");
        let head = common::read_head(&mut client).await.expect("a head");
        assert!(head.starts_with(b"HTTP/1.1 200"));
    }
    let client = Client::http1();
    let mut broken = 0;
    for _ in 0..8 {
        match client.get(&url(&fd, "/")).await {
            Ok(r) if r.status == StatusCode::OK && r.echo().is_some() => {}
            _ => broken += 1,
        }
    }
    // Two cut answers in a row eject the breaker; the good endpoint serves the rest whole.
    assert_eq!(broken, 2);
    common::metrics_with(
        &fd,
        &[
            "frontdoor_upstream_ejections_total{cluster=\"app\"} 1",
            &format!("frontdoor_upstream_healthy{{cluster=\"app\",endpoint=\"{breaker}\"}} 0"),
        ],
    )
    .await;
    fd.shutdown().await;
}

/// A failure every endpoint shares (here both answer `500`) with `max_ejection_percent = 50`:
/// one of the two is ejected, the other stays in, and clients get the upstream's `500`s
/// rather than `503`s from a cluster with nothing left in it.
#[tokio::test]
async fn a_failure_every_endpoint_shares_ejects_no_more_than_the_cap() {
    let failing = FaultSpec {
        error_rate: 1.0,
        ..Default::default()
    };
    let a = Origin::builder().start().await.expect("origin");
    let b = Origin::builder().start().await.expect("origin");
    a.faults.set(failing);
    b.faults.set(failing);
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\", max_ejection_percent = 50 }";
    let fd = start(&one_route(extra, &[(a.addr, "", "v"), (b.addr, "", "v")])).await;
    let client = Client::http1();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            client
                .get(&url(&fd, "/"))
                .await
                .expect("resp")
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![500; 10]);
    let metrics = common::metrics_with(
        &fd,
        &["frontdoor_upstream_ejections_total{cluster=\"app\"} 1"],
    )
    .await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("frontdoor_upstream_ejections_capped_total{cluster=\"app\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    fd.shutdown().await;
}

/// A gRPC server answers `200` whatever a call's outcome; its `grpc-status` says how it went.
/// One whose calls fail as a server's fault (here UNAVAILABLE in the trailers, and INTERNAL in
/// a trailers-only head) is ejected like one answering `503`, and the healthy one serves the
/// rest.
#[tokio::test]
async fn grpc_failures_under_a_200_eject_the_endpoint() {
    let in_trailers = common::grpc_upstream("14", "failing", false).await;
    let in_head = common::grpc_upstream("13", "failing", true).await;
    let good = common::grpc_upstream("0", "good", false).await;
    let extra = "protocol = \"h2\"\nretries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\" }";
    let config = format!(
        "{}\n{}\n[[routes]]\npath_prefix = \"/t\"\ncluster = \"t\"\n[[routes]]\npath_prefix = \"/h\"\ncluster = \"h\"\n",
        cluster("t", extra, &[(in_trailers, "", "v"), (good, "", "v")]),
        cluster("h", extra, &[(in_head, "", "v"), (good, "", "v")]),
    );
    let fd = start(&config).await;
    let client = Client::http1();
    for path in ["/t", "/h"] {
        let mut versions = Vec::new();
        for _ in 0..8 {
            let r = client.get(&url(&fd, path)).await.expect("answer");
            assert_eq!(r.status, StatusCode::OK);
            versions.push(r.header("x-origin-version").unwrap_or("?").to_string());
        }
        // Round-robin: the failing endpoint's second call ejects it; the rest go to the other.
        assert_eq!(
            versions.iter().filter(|v| *v == "failing").count(),
            2,
            "{path}: {versions:?}"
        );
        assert!(
            versions[4..].iter().all(|v| v == "good"),
            "{path}: {versions:?}"
        );
    }
    common::metrics_with(
        &fd,
        &[
            "frontdoor_upstream_ejections_total{cluster=\"t\"} 1",
            "frontdoor_upstream_ejections_total{cluster=\"h\"} 1",
        ],
    )
    .await;
    fd.shutdown().await;
}

/// An endpoint failing often but never many times in a row is ejected on its failure rate
/// (`failure_percentage`): here half its answers fail, alternately, so `consecutive_failures`
/// would never reach 2; over an interval, 50 % does. The good endpoint serves the rest.
#[tokio::test]
async fn an_endpoint_failing_half_its_answers_is_ejected_on_its_failure_rate() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let answered = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&answered);
    // Every other answer a 500, the others whole.
    let flaky = common::raw_upstream(move |mut s| {
        let count = Arc::clone(&count);
        async move {
            while common::read_head(&mut s).await.is_some() {
                let answer: &[u8] = if count.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"
                } else {
                    b"HTTP/1.1 200 OK\r\nx-flaky: 1\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let good = Origin::builder().start().await.expect("origin");
    let extra = "retries = { attempts = 0 }\noutlier = { consecutive_failures = 2, ejection_time = \"1h\", failure_percentage = 50, failure_percentage_min_requests = 4, interval = \"100ms\" }";
    let fd = start(&one_route(extra, &[(flaky, "", "v"), (good.addr, "", "v")])).await;
    let client = Client::http1();
    common::eventually("the flaky endpoint is ejected", || {
        let (client, fd) = (&client, &fd);
        async move {
            client.get(&url(fd, "/")).await.expect("resp");
            common::admin_call(fd, Method::GET, "/metrics", "")
                .await
                .text()
                .contains("frontdoor_upstream_ejections_total{cluster=\"app\"} 1")
        }
    })
    .await;
    let before = answered.load(Ordering::SeqCst);
    for _ in 0..6 {
        let r = client.get(&url(&fd, "/")).await.expect("resp");
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.echo().is_some(), "the good endpoint answered");
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        before,
        "the flaky one is out"
    );
    fd.shutdown().await;
}

#[tokio::test]
async fn retries_only_what_is_safe() {
    let live = Origin::builder().start().await.expect("live");
    let dead = dead_addr().await;
    let extra = "retries = { attempts = 1 }\noutlier = { consecutive_failures = 0 }";
    let config = one_route(extra, &[(live.addr, "", "v"), (dead, "", "v")]);
    let fd = start(&config).await;
    let client = Client::http1();
    // Bodiless requests are retried on the live endpoint after a connect failure.
    for _ in 0..10 {
        assert_eq!(
            client.get(&url(&fd, "/")).await.expect("resp").status,
            StatusCode::OK
        );
    }
    // A POST with a body is never replayed: half of them (round-robin) meet the dead endpoint.
    let mut failed = 0;
    for _ in 0..10 {
        let req = Request::post(url(&fd, "/echo"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .expect("req");
        let resp = client.send(req).await.expect("resp");
        match resp.status.as_u16() {
            200 => assert_eq!(&resp.body[..], b"payload"),
            502 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(failed, 5);
    fd.shutdown().await;
}

#[tokio::test]
async fn an_upstream_dying_mid_stream_ends_the_response_never_hangs() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = one_route("body_idle_timeout = \"300ms\"", &[(origin.addr, "", "v")]);
    let fd = start(&config).await;
    for (client, path) in [
        (Client::http1(), "/truncate"),
        (Client::h2c(), "/truncate"),
        (Client::http1(), "/stall"),
        (Client::h2c(), "/stall"),
    ] {
        let req = Request::get(url(&fd, path))
            .body(Full::default())
            .expect("req");
        let resp = client.send_streaming(req).await.expect("head arrives");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: body hung"));
        assert!(
            body.is_err(),
            "{path}: an incomplete body must end in an error, not look complete"
        );
    }
    fd.shutdown().await;
}

#[tokio::test]
async fn h2_upstream_cluster() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = one_route("protocol = \"h2\"", &[(origin.addr, "", "v")]);
    let fd = start(&config).await;
    let echo = Client::http1()
        .get(&url(&fd, "/"))
        .await
        .expect("resp")
        .echo()
        .expect("echo");
    assert_eq!(echo.version_http, "HTTP/2.0");
    fd.shutdown().await;
}

/// RFC 9113 §8.2.3: an HTTP/2 client may send each cookie as a field of its own (browsers do,
/// for HPACK); an HTTP/1.1 origin gets them as one `Cookie` field, joined with "; ". An
/// HTTP/1.1 client's fields go as they came.
#[tokio::test]
async fn h2_cookie_crumbs_reach_an_http1_origin_as_one_field() {
    let origin = Origin::builder().start().await.expect("origin");
    let fd = start(&one_route("", &[(origin.addr, "", "v")])).await;
    let cookies = |echo: &loadtest::Echo| -> Vec<String> {
        echo.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for (client, expected) in [
        (Client::h2c(), vec!["a=1; b=2; theme=dark".to_string()]),
        (
            Client::http1(),
            vec![
                "a=1".to_string(),
                "b=2".to_string(),
                "theme=dark".to_string(),
            ],
        ),
    ] {
        let req = Request::get(url(&fd, "/"))
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "theme=dark")
            .body(Full::default())
            .expect("req");
        let resp = client.send(req).await.expect("response");
        assert_eq!(resp.status, StatusCode::OK);
        let echo = resp.echo().expect("echo");
        assert_eq!(echo.version_http, "HTTP/1.1");
        assert_eq!(cookies(&echo), expected, "{:?}", resp.version);
    }
    // One cookie field from HTTP/2 goes as it is.
    let req = Request::get(url(&fd, "/"))
        .header("cookie", "only=1")
        .body(Full::default())
        .expect("req");
    let echo = Client::h2c()
        .send(req)
        .await
        .expect("response")
        .echo()
        .expect("echo");
    assert_eq!(cookies(&echo), ["only=1"]);
    fd.shutdown().await;
}

/// An upstream's trailer section may name fields that belong to a connection or to framing
/// (RFC 9110 §6.5.1 forbids them there): they stop at frontdoor, the others pass. An HTTP/2
/// client's stream refuses such trailers outright, so one of them cost it the whole answer.
#[tokio::test]
async fn trailers_lose_connection_and_framing_fields() {
    let upstream = common::raw_upstream(|mut s| async move {
        while common::read_head(&mut s).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                          5\r\nhello\r\n0\r\nx-sum: 5\r\nconnection: x-sum\r\n\
                          transfer-encoding: chunked\r\ncontent-length: 5\r\nkeep-alive: 1\r\n\r\n";
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let fd = start(&one_route("", &[(upstream, "", "v")])).await;
    for client in [Client::h2c(), Client::http1()] {
        let resp = client
            .send(
                Request::get(url(&fd, "/t"))
                    .header("te", "trailers")
                    .body(Full::default())
                    .expect("req"),
            )
            .await
            .expect("the whole answer");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(&resp.body[..], b"hello", "{:?}", resp.version);
    }
    // What an HTTP/1.1 client reads after the last chunk: the allowed trailer only.
    let mut s = tokio::net::TcpStream::connect(fd.http.expect("http listener"))
        .await
        .expect("connect");
    s.write_all(b"GET /t HTTP/1.1\r\nhost: a\r\nte: trailers\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("answer");
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let trailer = raw.rsplit("\r\n0\r\n").next().expect("a last chunk");
    assert_eq!(trailer, "x-sum: 5\r\n\r\n", "{raw}");
    fd.shutdown().await;
}

#[tokio::test]
async fn dns_endpoints_resolve() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = format!(
        "[clusters.app]\nendpoints = [{{ address = \"localhost:{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        origin.addr.port()
    );
    let fd = start(&config).await;
    // localhost may also resolve to ::1, where nothing listens: the retry covers that.
    let resp = Client::http1().get(&url(&fd, "/")).await.expect("resp");
    assert_eq!(resp.status, StatusCode::OK);
    let status: serde_json::Value = admin_get(&fd, "/status").await;
    let members = status["clusters"][0]["members"]
        .as_array()
        .expect("members")
        .clone();
    assert!(
        members
            .iter()
            .any(|m| m["address"] == origin.addr.to_string()),
        "{members:?}"
    );
    fd.shutdown().await;
}

async fn admin_get(fd: &frontdoor::server::Running, path: &str) -> serde_json::Value {
    let req = Request::get(format!("http://{}{}", fd.admin, path))
        .header("authorization", format!("Bearer {}", common::TOKEN))
        .body(Full::default())
        .expect("req");
    serde_json::from_slice(&Client::http1().send(req).await.expect("admin").body).expect("json")
}

#[tokio::test]
async fn websocket_passthrough_only_where_enabled_and_never_h2c() {
    let origin = Origin::builder().start().await.expect("origin");
    // Every connection's first request is its last under the cap: an upgrade still becomes a
    // tunnel (no `Connection: close` on the 101).
    let config = format!(
        "[server]\nmax_requests_per_connection = 1\n{}\n[[routes]]\npath_prefix = \"/ws\"\ncluster = \"app\"\nwebsocket = true\n[[routes]]\ncluster = \"app\"\n",
        cluster("app", "", &[(origin.addr, "", "v")])
    );
    let fd = start(&config).await;
    let addr = fd.http.expect("http");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.expect("read"),
            1,
            "connection closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    s.write_all(b"ping through the tunnel")
        .await
        .expect("write");
    let mut buf = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping through the tunnel");

    // The same upgrade on a route without websocket: forwarded as a plain request.
    let raw =
        b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let out = loadtest::client::raw_exchange(addr, raw, 12)
        .await
        .expect("exchange");
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // h2c upgrade: refused.
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let out = loadtest::client::raw_exchange(addr, raw, 12)
        .await
        .expect("exchange");
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    fd.shutdown().await;
}

/// Resident set size of this process, from /proc.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let origin = Origin::builder().start().await.expect("origin");
    let config = one_route("", &[(origin.addr, "", "v")]);
    let fd = start(&config).await;
    let before = rss_bytes();

    // Download: counted chunk by chunk, never held.
    let req = Request::get(url(&fd, &format!("/bytes/{SIZE}")))
        .body(Full::default())
        .expect("req");
    let resp = Client::http1().send_streaming(req).await.expect("resp");
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            got += data.len() as u64;
        }
    }
    assert_eq!(got, SIZE);

    // Upload: a streamed request body echoed back, counted on the way out.
    let (mut sender, conn) = {
        let tcp = tokio::net::TcpStream::connect(fd.http.expect("http"))
            .await
            .expect("connect");
        hyper::client::conn::http1::handshake::<
            _,
            http_body_util::StreamBody<tokio_stream_shim::Chunks>,
        >(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake")
    };
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/echo")
        .header("host", "a")
        .header("content-length", SIZE)
        .body(http_body_util::StreamBody::new(
            tokio_stream_shim::Chunks::new(SIZE),
        ))
        .expect("req");
    let resp = sender.send_request(req).await.expect("resp");
    let mut body = resp.into_body();
    let mut echoed = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            echoed += data.len() as u64;
        }
    }
    assert_eq!(echoed, SIZE);
    let growth = rss_bytes().saturating_sub(before);
    // 512 MiB moved through the process (proxy, origin and client all in it); far less stays.
    assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
    fd.shutdown().await;
}

/// A body stream of zeros in 64 KiB chunks.
mod tokio_stream_shim {
    use bytes::Bytes;
    use hyper::body::Frame;

    pub struct Chunks {
        left: u64,
        chunk: Bytes,
    }

    impl Chunks {
        pub fn new(total: u64) -> Chunks {
            Chunks {
                left: total,
                chunk: Bytes::from(vec![7u8; 64 * 1024]),
            }
        }
    }

    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let n = self.left.min(self.chunk.len() as u64) as usize;
            self.left -= n as u64;
            let data = self.chunk.slice(..n);
            std::task::Poll::Ready(Some(Ok(Frame::data(data))))
        }
    }
}

/// A keep-alive HTTP/1.1 upstream that counts its connections. Each answer is `body` with
/// `Content-Length` (or chunked when `chunked`); with `close_after` it closes each connection
/// that long after answering, without saying so (an upstream's keep-alive timeout).
async fn counting_upstream(
    chunked: bool,
    close_after: Option<Duration>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let addr = common::raw_upstream(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                if common::read_message(&mut s).await.is_none() {
                    return;
                }
                let answer: &[u8] = if chunked {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                if s.write_all(answer).await.is_err() {
                    return;
                }
                if let Some(after) = close_after {
                    tokio::time::sleep(after).await;
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

/// Upstream connections are pooled: sequential requests, with fixed-length or chunked answers,
/// share one connection; one the upstream closed while idle is replaced, and no client sees
/// an error for it.
#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_closed() {
    use std::sync::atomic::Ordering;
    for chunked in [false, true] {
        let (addr, accepted) = counting_upstream(chunked, None).await;
        let fd = start(&one_route("", &[(addr, "", "v")])).await;
        let client = Client::http1();
        for i in 0..20 {
            let r = client
                .get(&url(&fd, &format!("/seq/{i}")))
                .await
                .expect("served");
            assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "chunked={chunked}: 20 requests, one upstream connection"
        );
    }

    // No retries: only the pool's own check may keep a closed connection from being used.
    let (addr, accepted) = counting_upstream(false, Some(Duration::from_millis(20))).await;
    let fd = start(&one_route("retries = { attempts = 0 }", &[(addr, "", "v")])).await;
    let client = Client::http1();
    for i in 0..5 {
        let r = client
            .get(&url(&fd, &format!("/closing/{i}")))
            .await
            .expect("served");
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "each closed connection replaced"
    );
}

/// An upstream may close an idle keep-alive connection just as a request reaches it (nginx
/// does, short of connections): the request went out, nothing came back. An idempotent one
/// goes once more on a fresh connection, without the retry policy; a POST is never replayed.
#[tokio::test]
async fn a_request_the_upstream_closed_on_arrival_goes_again_only_when_idempotent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let posts = Arc::new(AtomicUsize::new(0));
    let (count, seen) = (Arc::clone(&accepted), Arc::clone(&posts));
    // Answers the first request of each connection and closes on the second, unanswered.
    let addr = common::raw_upstream(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        let seen = Arc::clone(&seen);
        async move {
            for n in 0.. {
                let Some(head) = common::read_message(&mut s).await else {
                    return;
                };
                if head.starts_with("POST") {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                if n == 1 {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let fd = start(&one_route("retries = { attempts = 0 }", &[(addr, "", "v")])).await;
    let client = Client::http1();
    let mut statuses = Vec::new();
    for method in [Method::GET, Method::GET, Method::POST, Method::GET] {
        let req = Request::builder()
            .method(method)
            .uri(url(&fd, "/"))
            .body(Full::default())
            .expect("req");
        statuses.push(client.send(req).await.expect("resp").status.as_u16());
    }
    // The second GET met the close and went again on a second connection; the POST met it on
    // that one and got a 502; the last GET opened a third.
    assert_eq!(statuses, vec![200, 200, 502, 200]);
    assert_eq!(posts.load(Ordering::SeqCst), 1, "the POST was sent once");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// A small body of declared length is read whole and goes with its head, on the same pooled
/// connections as bodiless requests: from HTTP/1.1 and HTTP/2 clients alike, intact.
#[tokio::test]
async fn small_bodies_go_whole_on_the_pooled_connections() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (log, count) = (Arc::clone(&seen), Arc::clone(&accepted));
    let addr = common::raw_upstream(move |mut s| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = Arc::clone(&log);
        async move {
            while let Some(message) = common::read_message(&mut s).await {
                log.lock().expect("log").push(message);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if s.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let fd = start(&one_route("", &[(addr, "", "v")])).await;
    let big: String = (0..10 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let sends = [
        (Client::http1(), Method::GET, "/a", String::new()),
        (Client::http1(), Method::POST, "/b", "hello".to_string()),
        (Client::h2c(), Method::PUT, "/c", big.clone()),
        (Client::http1(), Method::GET, "/d", String::new()),
    ];
    for (client, method, path, body) in sends {
        let req = Request::builder()
            .method(method)
            .uri(url(&fd, path))
            .body(Full::new(Bytes::from(body)))
            .expect("req");
        let resp = client.send(req).await.expect("resp");
        assert_eq!(resp.status, StatusCode::OK, "{path}");
    }
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen[1].starts_with("POST /b ") && seen[1].ends_with("\r\n\r\nhello"),
        "{}",
        seen[1]
    );
    assert!(seen[2].starts_with("PUT /c ") && seen[2].ends_with(&format!("\r\n\r\n{big}")));
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the bodies went on the connection the GETs use"
    );
}

/// On a multi-thread runtime (the default layout) a request may take its upstream connection
/// on one thread and give it back on another; the pool still holds no more connections than
/// there are exchanges at once. (With an idle list per thread, connections piled up where they
/// came back while the other thread opened new ones: 50 clients held 1,500 open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_of_one_runtime_share_their_upstream_connections() {
    use std::sync::atomic::Ordering;
    const CLIENTS: usize = 16;
    let (addr, accepted) = counting_upstream(false, None).await;
    let fd = start(&one_route("", &[(addr, "", "v")])).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url(&fd, &format!("/c{c}"));
            tokio::spawn(async move {
                let client = Client::http1();
                for _ in 0..150 {
                    let r = client.get(&url).await.expect("served");
                    assert_eq!(r.status, StatusCode::OK);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        opened <= CLIENTS,
        "{CLIENTS} clients at once, {opened} upstream connections"
    );
}

/// HTTP/2: the origin answers an upload before reading it (and closes: a reset). The client
/// gets the origin's answer (the reset comes after it) and the rest of its upload is called
/// off (RST_STREAM NO_ERROR, RFC 9113 §8.1), so its sending ends: were the request body held
/// anywhere, the stream's window would stay shut and the client would wait for good.
#[tokio::test]
async fn h2_an_answer_before_the_upload_ends_calls_the_rest_off() {
    let origin = Origin::builder().start().await.expect("origin");
    let upstream = origin.addr;
    let fd = start(&one_route("", &[(upstream, "", "v")])).await;
    let tcp = tokio::net::TcpStream::connect(fd.http.expect("http"))
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(1);
    let body = http_body_util::StreamBody::new(loadtest::origin::ReceiverStream(rx));
    let req = Request::post("http://a/upload")
        .header("content-length", 256 * 64 * 1024)
        .body(body)
        .expect("request");
    // 16 MiB, far past the stream's window.
    let uploader = tokio::spawn(async move {
        // The head first, so the origin's answer usually comes before any body bytes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..256 {
            let frame = hyper::body::Frame::data(Bytes::from(vec![b'x'; 64 * 1024]));
            if tx.send(Ok(frame)).await.is_err() {
                return "called off";
            }
        }
        "all sent"
    });
    let resp = tokio::time::timeout(Duration::from_secs(15), send.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"path\":\"/upload\""), "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(15), uploader)
        .await
        .expect("the upload ends instead of waiting for a window that never opens")
        .expect("uploader");
    assert_eq!(ended, "called off");
}

/// An upstream that answers each request's head at once and the rest of its body
/// (`abcd`) only once `release` is set; `active` counts the exchanges under way and `most` the
/// most there were at once.
struct HeldUpstream {
    addr: std::net::SocketAddr,
    active: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn held_upstream() -> HeldUpstream {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (release, released) = tokio::sync::watch::channel(false);
    let (a, m) = (Arc::clone(&active), Arc::clone(&most));
    let addr = common::raw_upstream(move |mut s| {
        let (active, most, mut released) = (Arc::clone(&a), Arc::clone(&m), released.clone());
        async move {
            while common::read_message(&mut s).await.is_some() {
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab";
                let ok = s.write_all(head).await.is_ok()
                    && released.wait_for(|r| *r).await.is_ok()
                    && s.write_all(b"cd").await.is_ok();
                active.fetch_sub(1, Ordering::SeqCst);
                if !ok {
                    return;
                }
            }
        }
    })
    .await;
    HeldUpstream {
        addr,
        active,
        most,
        release,
    }
}

/// Waits until `n` requests to cluster `app` have had to wait for a slot (its
/// `frontdoor_upstream_queued_total`).
async fn until_queued(fd: &frontdoor::server::Running, n: u32) {
    let want = format!("frontdoor_upstream_queued_total{{cluster=\"app\"}} {n}\n");
    common::eventually(&format!("{n} waiting for a slot"), || async {
        common::admin_call(fd, Method::GET, "/metrics", "")
            .await
            .text()
            .contains(&want)
    })
    .await;
}

/// `limits.max_requests_per_endpoint`: an endpoint never has more requests at once than its
/// cap — a slot is held until the response's body ends, not just its head — the next waits
/// for a slot, and what the queue cannot hold, or holds past its timeout, gets a 503 with
/// `Retry-After` and never reaches the upstream.
#[tokio::test]
async fn a_capped_endpoint_holds_the_rest_in_its_queue() {
    use std::sync::atomic::Ordering;
    let (queued, short) = (held_upstream().await, held_upstream().await);
    let config = format!(
        "{}{}
[[routes]]
path_prefix = \"/short\"
cluster = \"short\"
[[routes]]
cluster = \"app\"
",
        cluster(
            "app",
            "limits = { max_requests_per_endpoint = 2, max_queued = 1, queue_timeout = \"30s\" }\noutlier = { consecutive_failures = 1, ejection_time = \"1h\" }",
            &[(queued.addr, "", "v")]
        ),
        cluster(
            "short",
            "limits = { max_requests_per_endpoint = 1, queue_timeout = \"200ms\" }",
            &[(short.addr, "", "v")]
        ),
    );
    let fd = start(&config).await;
    let client = Client::http1();
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), url(&fd, path));
        tokio::spawn(async move { client.get(&url).await.expect("response") })
    };
    let (first, second) = (get("/"), get("/"));
    common::eventually("two requests at the upstream", || async {
        queued.active.load(Ordering::SeqCst) == 2
    })
    .await;
    let third = get("/");
    until_queued(&fd, 1).await;
    let status = admin_get(&fd, "/status").await;
    assert_eq!(status["clusters"][0]["queued"], 1, "{status}");
    let member = &status["clusters"][0]["members"][0];
    assert_eq!(member["slots"], serde_json::json!({ "cap": 2, "taken": 2 }));
    // The queue holds one: the fourth is refused at once.
    let refused = client.get(&url(&fd, "/")).await.expect("response");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        refused.text().contains("upstream_busy"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(!third.is_finished());
    queued.release.send_replace(true);
    for answer in [first, second, third] {
        let answer = answer.await.expect("task");
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "abcd")
        );
    }
    assert_eq!(queued.most.load(Ordering::SeqCst), 2);

    // A queue timeout: no slot comes free in 200 ms.
    let held = get("/short");
    common::eventually("one request at the short upstream", || async {
        short.active.load(Ordering::SeqCst) == 1
    })
    .await;
    let late = client.get(&url(&fd, "/short")).await.expect("response");
    assert_eq!(late.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(late.text().contains("stayed in use"), "{}", late.text());
    short.release.send_replace(true);
    assert_eq!(held.await.expect("task").status, StatusCode::OK);
    assert_eq!(short.most.load(Ordering::SeqCst), 1);
    let metrics = common::metrics_with(
        &fd,
        &[
            "frontdoor_upstream_busy_total{cluster=\"app\",reason=\"queue_full\"} 1",
            "frontdoor_upstream_busy_total{cluster=\"short\",reason=\"queue_timeout\"} 1",
        ],
    )
    .await;
    // A busy 503 is not the endpoint's failure: one failure would have ejected it here.
    assert!(
        metrics.contains("frontdoor_upstream_ejections_total{cluster=\"app\"} 0\n"),
        "{metrics}"
    );
    fd.shutdown().await;
}

/// The queue is the cluster's: with every endpoint at its cap, the waiting requests take the
/// first slot given back at any endpoint — here one endpoint stays busy throughout, and both
/// waiting requests are served by the other as its slot comes back, never sent to the busy one.
#[tokio::test]
async fn waiting_requests_take_the_first_slot_given_back_at_any_endpoint() {
    use std::sync::atomic::Ordering;
    let (busy, quick) = (held_upstream().await, held_upstream().await);
    let fd = start(&one_route(
        "limits = { max_requests_per_endpoint = 1, queue_timeout = \"30s\" }",
        // Listed second, `busy` is round-robin's choice for both waiting requests: the
        // endpoint a per-endpoint queue would have held them at.
        &[(quick.addr, "", "v"), (busy.addr, "", "v")],
    ))
    .await;
    let client = Client::http1();
    let get = || {
        let (client, url) = (client.clone(), url(&fd, "/"));
        tokio::spawn(async move { client.get(&url).await.expect("response") })
    };
    let first = [get(), get()];
    common::eventually("one request at each endpoint", || async {
        busy.active.load(Ordering::SeqCst) == 1 && quick.active.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiting = [get(), get()];
    until_queued(&fd, 2).await;
    let status = admin_get(&fd, "/status").await;
    assert_eq!(status["clusters"][0]["queued"], 2, "{status}");
    common::metrics_with(&fd, &["frontdoor_upstream_waiting{cluster=\"app\"} 2\n"]).await;
    // One endpoint answers: its slot comes back, and again, until both waiting requests are
    // done there; the other endpoint still holds its first request.
    quick.release.send_replace(true);
    for answer in waiting {
        let answer = answer.await.expect("task");
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (StatusCode::OK, "abcd")
        );
    }
    assert_eq!(busy.active.load(Ordering::SeqCst), 1);
    common::metrics_with(&fd, &["frontdoor_upstream_waiting{cluster=\"app\"} 0\n"]).await;
    busy.release.send_replace(true);
    for answer in first {
        assert_eq!(answer.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(busy.most.load(Ordering::SeqCst), 1);
    assert_eq!(quick.most.load(Ordering::SeqCst), 1);
    fd.shutdown().await;
}

/// An HTTP/2 upstream that lets each connection carry at most `streams_per_conn` streams, and
/// answers every request only once `release` is set: counts connections opened and closed, and
/// the most requests it held at once.
struct HeldH2Upstream {
    addr: std::net::SocketAddr,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    active: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn held_h2_upstream(streams_per_conn: u32) -> HeldH2Upstream {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (connections, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (release, released) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (c, d, a, m) = (
        Arc::clone(&connections),
        Arc::clone(&closed),
        Arc::clone(&active),
        Arc::clone(&most),
    );
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (a, m, released) = (Arc::clone(&a), Arc::clone(&m), released.clone());
            let service = hyper::service::service_fn(move |_req| {
                let (a, m, mut released) = (Arc::clone(&a), Arc::clone(&m), released.clone());
                async move {
                    let now = a.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    a.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                }
            });
            let serve =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .max_concurrent_streams(streams_per_conn)
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service);
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let _ = serve.await;
                d.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    HeldH2Upstream {
        addr,
        connections,
        closed,
        active,
        most,
        release,
    }
}

/// HTTP/2 upstreams: the requests that arrive before the first connection is up share its one
/// handshake, and past 100 streams on a connection the next request opens another — rather
/// than waiting in the connection's queue (here the upstream allows 100 per connection, so
/// with one connection the 101st would wait for a stream to end).
#[tokio::test]
async fn h2_upstream_connections_open_once_and_grow_past_100_streams() {
    use std::sync::atomic::Ordering;
    let upstream = held_h2_upstream(100).await;
    let fd = start(&one_route("protocol = \"h2\"", &[(upstream.addr, "", "v")])).await;
    let client = Client::http1();
    let requests: Vec<_> = (0..150)
        .map(|_| {
            let (client, url) = (client.clone(), url(&fd, "/"));
            tokio::spawn(async move { client.get(&url).await.expect("response") })
        })
        .collect();
    common::eventually("all 150 requests at the upstream", || async {
        upstream.active.load(Ordering::SeqCst) == 150
    })
    .await;
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    upstream.release.send_replace(true);
    for r in requests {
        let r = r.await.expect("task");
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
    }
    assert_eq!(upstream.most.load(Ordering::SeqCst), 150);
    // Quiet again: the next request goes on the first connection; the second is let go.
    let again = client.get(&url(&fd, "/")).await.expect("response");
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    common::eventually("the spare connection closed", || async {
        upstream.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    fd.shutdown().await;
}

/// A reload moves an endpoint's cap under the requests already at it: raised, the next request
/// goes at once; lowered below what is there, the next one waits.
#[tokio::test]
async fn a_reload_moves_the_cap_under_the_requests_at_the_endpoint() {
    use std::sync::atomic::Ordering;
    let upstream = held_upstream().await;
    let config = |cap: u32| {
        one_route(
            &format!("limits = {{ max_requests_per_endpoint = {cap}, queue_timeout = \"30s\" }}"),
            &[(upstream.addr, "", "v")],
        )
    };
    let fd = start(&config(1)).await;
    let client = Client::http1();
    let get = || {
        let (client, url) = (client.clone(), url(&fd, "/"));
        tokio::spawn(async move { client.get(&url).await.expect("response") })
    };
    let first = get();
    common::eventually("one request at the upstream", || async {
        upstream.active.load(Ordering::SeqCst) == 1
    })
    .await;
    fd.proxy.reload_text(config(2)).await.expect("reloaded");
    let second = get();
    common::eventually("the second at the upstream without waiting", || async {
        upstream.active.load(Ordering::SeqCst) == 2
    })
    .await;
    fd.proxy.reload_text(config(1)).await.expect("reloaded");
    let third = get();
    until_queued(&fd, 1).await;
    assert_eq!(upstream.active.load(Ordering::SeqCst), 2);
    upstream.release.send_replace(true);
    for answer in [first, second, third] {
        assert_eq!(answer.await.expect("task").status, StatusCode::OK);
    }
    assert_eq!(upstream.most.load(Ordering::SeqCst), 2);
    fd.shutdown().await;
}

/// What an HTTP/2 upstream saw of a request: its `te` field, `:authority` and `host` field.
#[derive(Debug, Clone, PartialEq)]
struct SeenH2 {
    te: Option<String>,
    authority: Option<String>,
    host: Option<String>,
}

/// An HTTP/2 upstream shaped as a gRPC server: it answers at once with
/// `content-type: application/grpc`, sends back each request DATA frame as it arrives, and
/// ends with a `grpc-status: 0` trailer once the request stream ends. It keeps what it saw of
/// each request.
async fn grpc_echo_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<SeenH2>>>,
) {
    use hyper::body::Frame;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let record = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let record = std::sync::Arc::clone(&record);
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let field = |name: &str| {
                    req.headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap_or("?").to_string())
                };
                let seen = SeenH2 {
                    te: field("te"),
                    authority: req.uri().authority().map(ToString::to_string),
                    host: field("host"),
                };
                record.lock().expect("seen").push(seen);
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data()
                            && tx.send(Ok(Frame::data(data))).await.is_err()
                        {
                            return;
                        }
                    }
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                });
                let resp = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(http_body_util::StreamBody::new(
                        loadtest::origin::ReceiverStream(rx),
                    ))
                    .expect("response");
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let serve =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), service);
            tokio::spawn(serve);
        }
    });
    (addr, seen)
}

/// gRPC through an `h2` cluster, as its clients and servers speak it: `te: trailers` reaches
/// the server (gRPC sends it to find proxies that would drop trailers, and servers may refuse
/// a call without it), a bidirectional stream flows message by message (each answer comes back
/// before the next message is sent, so nothing may wait for the whole request), and the
/// `grpc-status` trailer reaches the client. A `TE` without `trailers` does not pass.
#[tokio::test]
async fn grpc_streams_both_ways_through_an_h2_cluster() {
    use hyper::body::Frame;
    let (upstream, seen) = grpc_echo_upstream().await;
    let fd = start(&one_route("protocol = \"h2\"", &[(upstream, "", "v")])).await;
    let tcp = tokio::net::TcpStream::connect(fd.http.expect("http"))
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let req = Request::post("http://a/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::StreamBody::new(
            loadtest::origin::ReceiverStream(rx),
        ))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("the head comes before the request stream ends")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    for i in 0..3u8 {
        // A gRPC message: not compressed, its length, its bytes.
        let text = format!("message {i}");
        let mut message = vec![0u8];
        message.extend_from_slice(&(text.len() as u32).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
        tx.send(Ok(Frame::data(Bytes::from(message.clone()))))
            .await
            .expect("send");
        let mut echoed = Vec::new();
        while echoed.len() < message.len() {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("the answer to this message comes while the stream is open")
                .expect("a frame")
                .expect("data");
            echoed.extend_from_slice(&frame.into_data().expect("data, not trailers"));
        }
        assert_eq!(echoed, message, "message {i}");
    }
    drop(tx);
    let trailers = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the stream ends")
            .expect("trailers")
            .expect("frame");
        if let Ok(trailers) = frame.into_trailers() {
            break trailers;
        }
    };
    assert_eq!(trailers["grpc-status"], "0");

    // A `TE` that does not name `trailers` is the connection's alone.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))))
        .await
        .expect("send");
    drop(tx);
    let req = Request::post("http://a/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "gzip")
        .body(http_body_util::StreamBody::new(
            loadtest::origin::ReceiverStream(rx),
        ))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    resp.into_body().collect().await.expect("body");
    let te: Vec<_> = seen
        .lock()
        .expect("seen")
        .iter()
        .map(|s| s.te.clone())
        .collect();
    assert_eq!(te, [Some("trailers".to_string()), None]);
    fd.shutdown().await;
}

/// An HTTP/2 upstream's `:authority` is the host the client asked for, as RFC 9113 §8.3.1 has
/// it (from an HTTP/1.1 client's `Host`, an HTTP/2 client's `:authority`), not the endpoint's
/// address: a server that picks its virtual host or gRPC service by it must see the client's.
/// No `host` field goes beside it.
#[tokio::test]
async fn h2_upstreams_get_the_clients_authority() {
    let (upstream, seen) = grpc_echo_upstream().await;
    let fd = start(&one_route("protocol = \"h2\"", &[(upstream, "", "v")])).await;
    let http = fd.http.expect("http").to_string();
    for client in [Client::http1(), Client::h2c()] {
        let req = Request::get(url(&fd, "/"))
            .header("host", "shop.example:8443")
            .body(Full::default())
            .expect("request");
        let resp = client.send(req).await.expect("response");
        assert_eq!(resp.status, StatusCode::OK);
    }
    let seen = seen.lock().expect("seen").clone();
    let authorities: Vec<_> = seen.iter().map(|s| s.authority.as_deref()).collect();
    // HTTP/2 carries the host in :authority (the URL's), which wins over a Host field.
    assert_eq!(
        authorities,
        [Some("shop.example:8443"), Some(http.as_str())]
    );
    assert!(seen.iter().all(|s| s.host.is_none()), "{seen:?}");
    fd.shutdown().await;
}

/// An HTTP/2 upstream connection whose peer went silent (a host gone without a reset, a
/// middlebox that dropped the flow) is not chosen again: the request that timed out on it gets
/// its 504, and the next opens a connection of its own, where before every later request
/// waited out its timeout on the dead one.
#[tokio::test]
async fn a_silent_h2_upstream_connection_is_not_chosen_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    // Reads whatever comes and never answers, not even the HTTP/2 preface.
    let upstream = common::raw_upstream(move |mut s| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut sink = vec![0u8; 4096];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await;
    let fd = start(&one_route(
        "protocol = \"h2\"\nrequest_timeout = \"300ms\"",
        &[(upstream, "", "v")],
    ))
    .await;
    for _ in 0..2 {
        let resp = Client::http1().get(&url(&fd, "/")).await.expect("response");
        assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    fd.shutdown().await;

    // With a long request timeout, the connection's unanswered PINGs end the wait: a 502
    // once they give up (10 s + 5 s), not a 504 at the minute. (No retry, which would wait
    // as long again on a new connection.)
    let fd = start(&one_route(
        "protocol = \"h2\"\nrequest_timeout = \"60s\"\nretries = { attempts = 0 }",
        &[(upstream, "", "v")],
    ))
    .await;
    let resp = Client::http1().get(&url(&fd, "/")).await.expect("response");
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    fd.shutdown().await;
}

/// A gRPC call (HTTP/2, `content-type: application/grpc`) that the proxy itself fails gets a
/// gRPC answer: status 200, `grpc-status` as gRPC's clients map the HTTP status (502 →
/// UNAVAILABLE) and the detail as `grpc-message`, with nothing in the body. Other requests,
/// HTTP/1.1 ones with that content type among them, get the JSON error.
#[tokio::test]
async fn grpc_calls_get_the_proxys_failures_as_grpc_statuses() {
    let fd = start(&one_route("", &[(dead_addr().await, "", "v")])).await;
    let call = |content_type: &'static str| {
        Request::post(url(&fd, "/echo.Echo/Say"))
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .expect("request")
    };
    let grpc = Client::h2c()
        .send(call("application/grpc+proto"))
        .await
        .expect("response");
    assert_eq!(grpc.status, StatusCode::OK);
    assert_eq!(grpc.header("content-type"), Some("application/grpc"));
    assert_eq!(grpc.header("grpc-status"), Some("14"));
    assert_eq!(
        grpc.header("grpc-message"),
        Some("could not connect to the upstream")
    );
    assert!(grpc.header("x-request-id").is_some());
    assert!(grpc.body.is_empty());
    for (client, content_type) in [
        (Client::http1(), "application/grpc"),
        (Client::h2c(), "application/json"),
    ] {
        let plain = client.send(call(content_type)).await.expect("response");
        assert_eq!(plain.status, StatusCode::BAD_GATEWAY, "{content_type}");
        assert_eq!(plain.header("grpc-status"), None);
    }
    fd.shutdown().await;
}

/// A WebSocket tunnel lives as long as either side talks: a client that said something and
/// then only listens is not taken for one stuck in a request head (no `408` written into the
/// tunnel after `header_timeout`), an origin that only pushes keeps it open past
/// `keepalive_timeout`, and a tunnel silent both ways is closed after
/// `tunnel_idle_timeout`. Real time (a paused clock lost the origin's pushes once the client
/// had written into the tunnel); the only bound on time asserted is a lower one.
#[tokio::test]
async fn a_websocket_tunnel_lives_while_either_side_talks() {
    const PUSHES: usize = 5;
    let origin = common::raw_upstream(|mut s| async move {
        if common::read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
        // Pushes a byte every second, then falls silent.
        for _ in 0..PUSHES {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if s.write_all(b"!").await.is_err() {
                return;
            }
        }
        let mut sink = [0u8; 64];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    let config = format!(
        "[server]\nheader_timeout = \"1s\"\nkeepalive_timeout = \"2s\"\ntunnel_idle_timeout = \"3s\"\n{}\n[[routes]]\ncluster = \"app\"\nwebsocket = true\n",
        cluster("app", "", &[(origin, "", "v")])
    );
    let fd = start(&config).await;
    let mut s = tokio::net::TcpStream::connect(fd.http.expect("http"))
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.expect("write");
    let head = common::read_head(&mut s).await.expect("the 101");
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s.write_all(b"hello").await.expect("write");
    let t0 = tokio::time::Instant::now();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read_all = async {
        while let Ok(1) = s.read(&mut byte).await {
            got.push(byte[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the tunnel was closed");
    let lasted = t0.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&got),
        "!".repeat(PUSHES),
        "every push arrived, nothing else (the tunnel lasted {lasted:?})"
    );
    // Closed once silent both ways for tunnel_idle_timeout, not before.
    assert!(lasted >= Duration::from_millis(7500), "{lasted:?}");
}

/// An HTTP/2 upstream going away gracefully (a deploy): it sends GOAWAY on its connection and
/// finishes the stream it holds. A request that comes meanwhile goes on a new connection, even
/// one that may not be retried (a POST with a body).
#[tokio::test]
async fn a_request_after_an_h2_upstreams_goaway_goes_on_a_new_connection() {
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release, released) = tokio::sync::watch::channel(false);
    let held = Arc::new(tokio::sync::Notify::new());
    let held_seen = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let going = Arc::new(tokio::sync::Notify::new());
            let go = Arc::clone(&going);
            let (released, held) = (released.clone(), Arc::clone(&held));
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (go, mut released, held) =
                        (Arc::clone(&go), released.clone(), Arc::clone(&held));
                    async move {
                        if req.uri().path() == "/hold" {
                            go.notify_one();
                            held.notify_one();
                            let _ = released.wait_for(|r| *r).await;
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
            tokio::spawn(async move {
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = going.notified() => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
        }
    });
    let fd = start(&one_route(
        "protocol = \"h2\"\nretries = { attempts = 0 }",
        &[(addr, "", "v")],
    ))
    .await;
    let client = Client::http1();
    assert_eq!(
        client.get(&url(&fd, "/")).await.expect("first").status,
        StatusCode::OK
    );
    let hold = {
        let (client, u) = (client.clone(), url(&fd, "/hold"));
        tokio::spawn(async move { client.get(&u).await })
    };
    // The GOAWAY is on its way once the held request is in: give it time to arrive (later,
    // the POSTs would go on the old connection and be answered there: the test would pass
    // without telling anything).
    held_seen.notified().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..3 {
        let post = Request::post(url(&fd, "/"))
            .body(Full::new(Bytes::from_static(b"order")))
            .expect("req");
        let resp = client.send(post).await.expect("resp");
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
    }
    release.send_replace(true);
    assert_eq!(
        hold.await.expect("task").expect("held").status,
        StatusCode::OK
    );
    fd.shutdown().await;
}

/// An HTTP/2 upstream that refuses a stream (`REFUSED_STREAM`: RFC 9113 §8.7, it did not
/// process the request) may have it again, whatever its method: a bodiless POST is retried
/// like a GET. Here the upstream refuses every other stream.
#[tokio::test]
async fn a_stream_an_h2_upstream_refused_goes_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&streams);
    let upstream = common::raw_upstream(move |s| {
        let seen = Arc::clone(&seen);
        async move {
            let Ok(mut conn) = h2::server::handshake(s).await else {
                return;
            };
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    continue;
                }
                if let Ok(mut body) = respond.send_response(http::Response::new(()), false) {
                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                }
            }
        }
    })
    .await;
    let extra = "protocol = \"h2\"\nretries = { attempts = 1 }";
    let fd = start(&one_route(extra, &[(upstream, "", "v")])).await;
    let client = Client::http1();
    for i in 0..3 {
        let post = Request::post(url(&fd, "/orders/confirm"))
            .body(Full::default())
            .expect("req");
        let r = client.send(post).await.expect("resp");
        assert_eq!(r.status, StatusCode::OK, "POST {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(
        streams.load(Ordering::SeqCst),
        6,
        "each refused once, then answered"
    );
    fd.shutdown().await;
}

#[tokio::test]
async fn a_route_rewrites_its_prefix_and_edits_header_fields_both_ways() {
    let origin = Origin::builder().start().await.expect("origin");
    let dead = dead_addr().await;
    let config = format!(
        r#"
[cache]
max_bytes = "1MiB"
max_object_bytes = "64KiB"
[[cache.rules]]
paths = ["/api/cached/**"]
[cache.rules.default]
Cache-Control = "public, max-age=600"
{}{}
[[routes]]
cluster = "app"
[[routes]]
name = "api"
path_prefix = "/api"
cluster = "app"
rewrite_prefix = "/"
request_headers = {{ set = {{ "X-Internal" = "yes" }}, default = {{ "x-tenant" = "public" }}, remove = ["x-debug"] }}
response_headers = {{ set = {{ "x-frame-options" = "DENY" }}, default = {{ "x-content-type-options" = "nosniff" }}, remove = ["x-origin-version"] }}
[[routes]]
path_prefix = "/old"
cluster = "app"
rewrite_prefix = "/new/"
[[routes]]
path_prefix = "/gone"
cluster = "dead"
response_headers = {{ set = {{ "x-frame-options" = "DENY" }} }}
"#,
        cluster("app", "", &[(origin.addr, "", "v")]),
        cluster("dead", "", &[(dead, "", "v")]),
    );
    let fd = start(&config).await;
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = Request::get(url(&fd, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::<Bytes>::default()).expect("request");
        async move { Client::http1().send(req).await.expect("response") }
    };

    // The prefix gives way to the rewrite, the rest and the query kept; the request's fields
    // are set, defaulted (a client's own value kept) and removed; so are the answer's.
    let resp = get(
        "/api/users/7?full=1",
        &[("x-debug", "1"), ("x-tenant", "acme")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let echo = resp.echo().expect("echo");
    assert_eq!(echo.path, "/users/7?full=1");
    assert_eq!(echo.header("x-internal"), Some("yes"));
    assert_eq!(echo.header("x-tenant"), Some("acme"));
    assert_eq!(echo.header("x-debug"), None);
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("x-origin-version"), None);
    assert_eq!(resp.header("x-origin-region"), Some("local"));
    let resp = get("/api", &[]).await;
    let echo = resp.echo().expect("echo");
    assert_eq!(echo.path, "/");
    assert_eq!(echo.header("x-tenant"), Some("public"));
    for (path, upstream) in [
        ("/old", "/new/"),
        ("/old/a/b", "/new/a/b"),
        ("/older", "/older"),
    ] {
        let echo = get(path, &[]).await.echo().expect("echo");
        assert_eq!(echo.path, upstream, "{path}");
    }
    // Another route's requests and answers are left alone.
    let resp = get("/x", &[("x-debug", "1")]).await;
    let echo = resp.echo().expect("echo");
    assert_eq!(echo.path, "/x");
    assert_eq!(echo.header("x-debug"), Some("1"));
    assert_eq!(echo.header("x-internal"), None);
    assert_eq!(resp.header("x-frame-options"), None);
    assert_eq!(resp.header("x-origin-version"), Some("stable"));

    // The cache keys and stores by the client's URL and the upstream's answer; a hit gets the
    // route's edits as a miss does.
    let seen = origin.faults.requests();
    for status in ["MISS", "HIT"] {
        let resp = get("/api/cached/page", &[]).await;
        assert_eq!(resp.header("x-cache"), Some(status));
        assert_eq!(resp.echo().expect("echo").path, "/cached/page");
        assert_eq!(resp.header("x-frame-options"), Some("DENY"), "{status}");
        assert_eq!(resp.header("x-origin-version"), None, "{status}");
    }
    assert_eq!(origin.faults.requests(), seen + 1, "the second was a hit");

    // The proxy's own answers on the route get them too.
    let resp = get("/gone/x", &[]).await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert_eq!(resp.header("x-frame-options"), Some("DENY"));
}

/// `retries.on_status`: an idempotent, bodiless request answered with one of those statuses
/// goes to another endpoint; anything else gets the answer as it was. With nowhere else to
/// go, the upstream's own answer stands (not a 502 of the proxy's).
#[tokio::test]
async fn an_answer_the_cluster_retries_goes_to_another_endpoint() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    let refused = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&refused);
    let unavailable = common::raw_upstream(move |mut s| {
        let count = Arc::clone(&count);
        async move {
            while common::read_message(&mut s).await.is_some() {
                count.fetch_add(1, Ordering::Relaxed);
                let answer = "HTTP/1.1 503 Service Unavailable\r\nx-from: down\r\ncontent-length: 4\r\n\r\ndown";
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let origin = Origin::builder().start().await.expect("origin");
    let dead = dead_addr().await;
    let retrying = "outlier = { consecutive_failures = 0 }\nretries = { attempts = 1, on_status = [502, 503] }";
    let config = format!(
        "{}{}{}{}\n[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/down\"\ncluster = \"down\"\n[[routes]]\npath_prefix = \"/alone\"\ncluster = \"alone\"\n[[routes]]\npath_prefix = \"/plain\"\ncluster = \"plain\"\n",
        cluster(
            "app",
            retrying,
            &[(unavailable, "", "v"), (origin.addr, "", "v")]
        ),
        cluster("down", retrying, &[(unavailable, "", "v")]),
        cluster(
            "alone",
            retrying,
            &[(unavailable, "", "v"), (dead, "", "v")]
        ),
        cluster(
            "plain",
            "outlier = { consecutive_failures = 0 }",
            &[(unavailable, "", "v"), (origin.addr, "", "v")]
        ),
    );
    let fd = start(&config).await;
    let send = |method: Method, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(url(&fd, path))
            .body(Full::<Bytes>::default())
            .expect("request");
        async move { Client::http1().send(req).await.expect("response") }
    };
    // Every GET is answered by the healthy endpoint, some after the other's 503 (as many as
    // were retried).
    for _ in 0..10 {
        assert_eq!(send(Method::GET, "/").await.status, StatusCode::OK);
    }
    let first_tries = refused.load(Ordering::Relaxed);
    assert!(first_tries > 0, "round robin sent some there first");
    common::metrics_with(
        &fd,
        &[&format!(
            "frontdoor_upstream_retries_total{{cluster=\"app\"}} {first_tries}\n"
        )],
    )
    .await;
    // A POST may act twice: the 503 is its answer.
    let statuses: Vec<u16> = futures_statuses(&send, Method::POST, "/", 2).await;
    assert!(statuses.contains(&503), "{statuses:?}");
    // Nowhere better to go — the one endpoint again, or one that cannot be reached (before or
    // after the 503) — the upstream's own 503 (its body), not an answer of the proxy's.
    for path in ["/down", "/alone", "/alone"] {
        let resp = send(Method::GET, path).await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(resp.header("x-from"), Some("down"), "{path}");
        assert_eq!(resp.text(), "down", "{path}");
    }
    // A cluster that does not retry answers passes them on.
    let statuses = futures_statuses(&send, Method::GET, "/plain", 2).await;
    assert!(statuses.contains(&503), "{statuses:?}");
}

/// The statuses of `n` requests sent one after another.
async fn futures_statuses<F, Fut>(send: &F, method: Method, path: &str, n: usize) -> Vec<u16>
where
    F: Fn(Method, &str) -> Fut,
    Fut: std::future::Future<Output = loadtest::Collected>,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(send(method.clone(), path).await.status.as_u16());
    }
    out
}

/// Routes of one prefix told apart by method and header fields, end to end; `explain` takes
/// the method and fields to say which one a request would get.
#[tokio::test]
async fn requests_of_one_prefix_go_where_their_method_and_headers_say() {
    let reads = Origin::builder()
        .version("reads")
        .start()
        .await
        .expect("reads");
    let writes = Origin::builder()
        .version("writes")
        .start()
        .await
        .expect("writes");
    let beta = Origin::builder()
        .version("beta")
        .start()
        .await
        .expect("beta");
    let config = format!(
        "{}{}{}\n[[routes]]\ncluster = \"reads\"\n[[routes]]\ncluster = \"writes\"\nmethods = [\"POST\", \"DELETE\"]\n[[routes]]\ncluster = \"beta\"\nmatch_headers = {{ \"x-beta\" = \"on\" }}\n",
        cluster("reads", "", &[(reads.addr, "", "v")]),
        cluster("writes", "", &[(writes.addr, "", "v")]),
        cluster("beta", "", &[(beta.addr, "", "v")]),
    );
    let fd = start(&config).await;
    for (method, header, want) in [
        (Method::GET, None, "reads"),
        (Method::POST, None, "writes"),
        (Method::DELETE, Some("on"), "writes"),
        (Method::GET, Some("on"), "beta"),
        (Method::GET, Some("off"), "reads"),
    ] {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(url(&fd, "/x"));
        if let Some(v) = header {
            req = req.header("x-beta", v);
        }
        let resp = Client::http1()
            .send(req.body(Full::<Bytes>::default()).expect("request"))
            .await
            .expect("response");
        assert_eq!(
            resp.header("x-origin-version"),
            Some(want),
            "{method} {header:?}"
        );
    }
    let explain = common::admin_call(
        &fd,
        Method::GET,
        "/explain?url=http://h/x&method=get&header=X-Beta:%20on",
        "",
    )
    .await
    .text();
    assert!(explain.contains("route-2"), "{explain}");
    assert!(explain.contains("header x-beta = \"on\""), "{explain}");
}

/// A route's own `request_timeout` stands over its cluster's: a slow report is waited for.
#[tokio::test]
async fn a_routes_request_timeout_stands_over_its_clusters() {
    let slow = Origin::builder().start().await.expect("slow");
    slow.faults.set(FaultSpec {
        latency_ms: 600,
        ..Default::default()
    });
    let config = format!(
        "{}\n[[routes]]\ncluster = \"slow\"\n[[routes]]\npath_prefix = \"/report\"\ncluster = \"slow\"\nrequest_timeout = \"10s\"\n",
        cluster(
            "slow",
            "request_timeout = \"200ms\"",
            &[(slow.addr, "", "v")]
        ),
    );
    let fd = start(&config).await;
    let client = Client::http1();
    for (path, want) in [
        ("/", StatusCode::GATEWAY_TIMEOUT),
        ("/report", StatusCode::OK),
    ] {
        let resp = client.get(&url(&fd, path)).await.expect("response");
        assert_eq!(resp.status, want, "{path}");
    }
}
