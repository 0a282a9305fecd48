//! The shared cache end to end: a real front door in front of a scripted origin that counts
//! the requests it gets.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{admin_call, cluster, eventually, start, url};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use loadtest::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the origin answers: status, headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);
type Script = dyn Fn(&http::request::Parts, u64) -> Reply + Send + Sync;

/// An origin that answers by script and counts requests (the count is passed to the script,
/// starting at 1).
struct Scripted {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl Scripted {
    async fn start(
        delay: Duration,
        script: impl Fn(&http::request::Parts, u64) -> Reply + Send + Sync + 'static,
    ) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let script = Arc::clone(&script);
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let script = Arc::clone(&script);
                        let counter = Arc::clone(&counter);
                        async move {
                            let (parts, _) = req.into_parts();
                            if parts.uri.path() == "/healthz" {
                                return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                            }
                            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let (status, headers, body) = script(&parts, n);
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = StatusCode::from_u16(status).expect("status");
                            for (k, v) in headers {
                                resp.headers_mut().append(k, v.parse().expect("value"));
                            }
                            Ok(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Scripted { addr, hits }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The reference policy in front of `origin`.
fn config(origin: SocketAddr, extra_cache: &str) -> String {
    format!(
        r#"
{}
[[routes]]
cluster = "app"

[cache]
max_bytes = "8MiB"
max_object_bytes = "4KiB"
auth_cookies = ["session"]
{extra_cache}

[[cache.rules]]
name = "api"
paths = ["/api/**"]
no_store = true

[[cache.rules]]
name = "site"
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=3600, s-maxage=86400"
CDN-Cache-Control = "public, max-age=3600"
"#,
        cluster("app", "", &[(origin, "", "v1")])
    )
}

async fn get(
    fd: &frontdoor::server::Running,
    path: &str,
    headers: &[(&str, &str)],
) -> loadtest::Collected {
    let mut req = Request::get(url(fd, path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Client::http1()
        .send(req.body(Full::default()).expect("request"))
        .await
        .expect("response")
}

#[tokio::test]
async fn reference_policy_caches_the_site_and_never_the_api() {
    let origin = Scripted::start(Duration::ZERO, |p, n| {
        (200, vec![], format!("{} #{n}", p.uri.path()))
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;

    let first = get(&fd, "/index.html", &[]).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(
        first.header("cache-control"),
        Some("public, max-age=3600, s-maxage=86400"),
        "the rule's default applies when the origin sends none"
    );
    assert_eq!(
        first.header("cdn-cache-control"),
        Some("public, max-age=3600")
    );
    for _ in 0..3 {
        let again = get(&fd, "/index.html", &[]).await;
        assert_eq!(again.header("x-cache"), Some("HIT"));
        assert_eq!(again.text(), "/index.html #1");
        assert!(
            again.header("age").is_some(),
            "a stored response carries Age"
        );
        assert!(again.header("x-request-id").is_some());
    }
    assert_eq!(origin.hits(), 1, "a cacheable path reaches the origin once");

    for i in 1..=3 {
        let api = get(&fd, "/api/orders", &[]).await;
        assert_eq!(api.header("x-cache"), Some("BYPASS"));
        assert_eq!(api.header("cache-control"), Some("no-store"));
        assert_eq!(api.header("cdn-cache-control"), None);
        assert_eq!(api.text(), format!("/api/orders #{}", i + 1));
    }
    assert_eq!(origin.hits(), 4, "/api/** is never cached");

    // The metrics count what happened.
    let metrics = admin_call(&fd, Method::GET, "/metrics", "").await.text();
    assert!(
        metrics.contains("frontdoor_cache_requests_total{result=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("frontdoor_cache_requests_total{result=\"bypass\"} 3"));
}

#[tokio::test]
async fn vary_keeps_one_variant_per_request_value() {
    let origin = Scripted::start(Duration::ZERO, |p, _| {
        let lang = p
            .headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        (200, vec![("vary", "Accept-Language".into())], lang)
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    for (lang, status) in [("en", "MISS"), ("de", "MISS"), ("en", "HIT"), ("de", "HIT")] {
        let r = get(&fd, "/page", &[("accept-language", lang)]).await;
        assert_eq!(r.text(), lang);
        assert_eq!(r.header("x-cache"), Some(status), "{lang}");
    }
    assert_eq!(origin.hits(), 2);
    // Vary: * is never stored.
    let origin = Scripted::start(Duration::ZERO, |_, n| {
        (200, vec![("vary", "*".into())], n.to_string())
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    get(&fd, "/x", &[]).await;
    assert_eq!(get(&fd, "/x", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    // The origin takes a while, so the requests overlap; followers wait for the leader.
    let origin = Scripted::start(Duration::from_millis(300), |_, n| {
        (200, vec![], format!("body {n}"))
    })
    .await;
    let fd = Arc::new(start(&config(origin.addr, "")).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let fd = Arc::clone(&fd);
        tasks.push(tokio::spawn(async move { get(&fd, "/hot", &[]).await }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "body 1");
        *statuses
            .entry(r.header("x-cache").unwrap_or("-").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(origin.hits(), 1, "statuses: {statuses:?}");
    assert_eq!(statuses.get("MISS"), Some(&1), "{statuses:?}");
}

#[tokio::test]
async fn stale_entries_revalidate_with_validators_and_304_refreshes() {
    // max-age=0: every use revalidates. The origin answers If-None-Match "v1" with 304.
    let origin = Scripted::start(Duration::ZERO, |p, n| {
        let etag = "\"v1\"".to_string();
        if p.headers
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return (
                304,
                vec![
                    ("etag", etag),
                    ("cache-control", "max-age=0".into()),
                    ("x-refresh", n.to_string()),
                ],
                String::new(),
            );
        }
        (
            200,
            vec![("etag", etag), ("cache-control", "max-age=0".into())],
            "full body".into(),
        )
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    assert_eq!(get(&fd, "/doc", &[]).await.header("x-cache"), Some("MISS"));
    let r = get(&fd, "/doc", &[]).await;
    assert_eq!(r.header("x-cache"), Some("REVALIDATED"));
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "full body", "the stored body answers after a 304");
    assert_eq!(
        r.header("x-refresh"),
        Some("2"),
        "headers updated from the 304"
    );
    assert_eq!(origin.hits(), 2);
    // The client's own conditional is answered from the refreshed entry.
    let r = get(&fd, "/doc", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some("\"v1\""));
}

#[tokio::test]
async fn client_conditionals_on_a_fresh_hit_get_304_from_the_cache() {
    let origin = Scripted::start(Duration::ZERO, |_, _| {
        (
            200,
            vec![
                ("etag", "\"abc\"".into()),
                ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT".into()),
            ],
            "x".into(),
        )
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    get(&fd, "/p", &[]).await;
    let r = get(&fd, "/p", &[("if-none-match", "\"zzz\", \"abc\"")]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("x-cache"), Some("HIT"));
    let r = get(
        &fd,
        "/p",
        &[("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get(
        &fd,
        "/p",
        &[("if-modified-since", "Sun, 01 Nov 2026 10:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn stale_if_error_and_stale_while_revalidate() {
    // First answer is cacheable but immediately stale; later ones fail.
    let origin = Scripted::start(Duration::ZERO, |_, n| {
        if n == 1 {
            (
                200,
                vec![("cache-control", "max-age=0, stale-if-error=600".into())],
                "good".into(),
            )
        } else {
            (503, vec![], "down".into())
        }
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    assert_eq!(get(&fd, "/s", &[]).await.text(), "good");
    let r = get(&fd, "/s", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "good"));
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert_eq!(origin.hits(), 2, "the origin was asked and failed");

    // stale-while-revalidate: answered at once from the stale entry; refreshed behind.
    let origin = Scripted::start(Duration::ZERO, |_, n| {
        (
            200,
            vec![(
                "cache-control",
                "max-age=0, stale-while-revalidate=600".into(),
            )],
            format!("v{n}"),
        )
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    assert_eq!(get(&fd, "/w", &[]).await.text(), "v1");
    let r = get(&fd, "/w", &[]).await;
    assert_eq!(
        (r.header("x-cache"), r.text().as_str()),
        (Some("STALE"), "v1")
    );
    eventually("background revalidation reaches the origin", || async {
        origin.hits() == 2
    })
    .await;
    eventually("the refreshed body is served", || async {
        get(&fd, "/w", &[]).await.text() == "v2"
    })
    .await;
}

#[tokio::test]
async fn unsafe_methods_invalidate_and_purge_drops() {
    let origin = Scripted::start(Duration::ZERO, |_, n| (200, vec![], n.to_string())).await;
    let fd = start(&config(origin.addr, "")).await;
    get(&fd, "/doc", &[]).await;
    assert_eq!(get(&fd, "/doc", &[]).await.header("x-cache"), Some("HIT"));
    let post = Client::http1()
        .send(
            Request::post(url(&fd, "/doc"))
                .body(Full::new(Bytes::from("x")))
                .expect("req"),
        )
        .await
        .expect("post");
    assert_eq!(post.status, StatusCode::OK);
    assert_eq!(
        get(&fd, "/doc", &[]).await.header("x-cache"),
        Some("MISS"),
        "POST invalidated it"
    );
    assert_eq!(get(&fd, "/doc", &[]).await.header("x-cache"), Some("HIT"));

    // Admin purge by URL, then by prefix.
    let admin = |body: &'static str| admin_call(&fd, Method::POST, "/cache/purge", body);
    let r = admin(r#"{"url": "http://127.0.0.1/doc"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(get(&fd, "/doc", &[]).await.header("x-cache"), Some("MISS"));
    get(&fd, "/static/a.css", &[]).await;
    assert_eq!(
        get(&fd, "/static/a.css", &[]).await.header("x-cache"),
        Some("HIT")
    );
    assert_eq!(
        admin(r#"{"prefix": "/static/"}"#).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&fd, "/static/a.css", &[]).await.header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        get(&fd, "/doc", &[]).await.header("x-cache"),
        Some("HIT"),
        "outside the prefix"
    );
    assert_eq!(admin(r#"{"all": true}"#).await.status, StatusCode::OK);
    assert_eq!(get(&fd, "/doc", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(
        admin(r#"{"url": "x", "all": true}"#).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn authenticated_requests_share_only_what_the_origin_allows() {
    let origin = Scripted::start(Duration::ZERO, |p, n| {
        if p.uri.path() == "/public" {
            (
                200,
                vec![("cache-control", "public, max-age=60".into())],
                n.to_string(),
            )
        } else {
            (200, vec![], format!("private {n}"))
        }
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    // No origin headers: the rule's default would make it public, but not for a session.
    for cred in [
        ("authorization", "Bearer u1"),
        ("cookie", "a=1; session=s1"),
    ] {
        let r = get(&fd, "/me", &[cred]).await;
        assert_eq!(
            r.header("cache-control"),
            None,
            "no default for authenticated requests"
        );
    }
    let r = get(&fd, "/me", &[("cookie", "session=s2")]).await;
    assert_eq!(
        r.text(),
        "private 3",
        "never served another user's response"
    );
    assert_eq!(origin.hits(), 3);
    // An anonymous copy is not served to an authenticated request either (not explicit).
    get(&fd, "/me", &[]).await;
    let r = get(&fd, "/me", &[("authorization", "Bearer u1")]).await;
    assert_eq!(r.header("x-cache"), Some("MISS"));
    // Explicitly public: shared.
    get(&fd, "/public", &[("authorization", "Bearer u1")]).await;
    let r = get(&fd, "/public", &[("authorization", "Bearer u2")]).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn cdn_cache_control_wins_for_this_cache_and_passes_on() {
    // Browsers must not store it (private), CDNs may for a minute: this cache is a CDN cache.
    let origin = Scripted::start(Duration::ZERO, |_, n| {
        (
            200,
            vec![
                ("cache-control", "private, no-store".into()),
                ("cdn-cache-control", "max-age=60".into()),
            ],
            n.to_string(),
        )
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    get(&fd, "/t", &[]).await;
    let r = get(&fd, "/t", &[]).await;
    assert_eq!(r.header("x-cache"), Some("HIT"));
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    assert_eq!(r.header("cdn-cache-control"), Some("max-age=60"));
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn size_limits_request_directives_and_set_cookie() {
    let origin = Scripted::start(Duration::ZERO, |p, n| match p.uri.path() {
        "/big" => (200, vec![], "x".repeat(8 * 1024)),
        "/cookie" => (200, vec![("set-cookie", "id=1".into())], n.to_string()),
        _ => (200, vec![], n.to_string()),
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    for _ in 0..2 {
        let r = get(&fd, "/big", &[]).await;
        assert_eq!(r.text().len(), 8 * 1024, "streamed in full");
        assert_eq!(
            r.header("x-cache"),
            Some("MISS"),
            "over max_object_bytes: not stored"
        );
    }
    get(&fd, "/cookie", &[]).await;
    assert_eq!(
        get(&fd, "/cookie", &[]).await.header("x-cache"),
        Some("MISS")
    );
    // only-if-cached with nothing stored: 504; request no-store: not stored.
    let r = get(&fd, "/n", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    get(&fd, "/n", &[("cache-control", "no-store")]).await;
    assert_eq!(get(&fd, "/n", &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(
        get(&fd, "/n", &[("cache-control", "only-if-cached")])
            .await
            .header("x-cache"),
        Some("HIT")
    );
    // A stored response that needs revalidation does not answer only-if-cached either.
    let r = get(&fd, "/n", &[("cache-control", "only-if-cached, no-cache")]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    // Request no-cache forces a trip to the origin.
    let before = origin.hits();
    get(&fd, "/n", &[("cache-control", "no-cache")]).await;
    assert_eq!(origin.hits(), before + 1);
}

#[tokio::test]
async fn entries_never_cross_jurisdictions() {
    let us = Scripted::start(Duration::ZERO, |_, n| (200, vec![], format!("us {n}"))).await;
    let eu = Scripted::start(Duration::ZERO, |_, n| (200, vec![], format!("eu {n}"))).await;
    let text = format!(
        r#"
[server]
region = "us-central1"
trusted_proxies = ["127.0.0.0/8"]
[regions]
us-central1 = {{ jurisdiction = "us" }}
europe-west1 = {{ jurisdiction = "eu" }}
[residency]
eu = ["europe-west1"]
{}
[[routes]]
cluster = "app"
version = "v1"
[cache]
max_bytes = "1MiB"
max_object_bytes = "64KiB"
[[cache.rules]]
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=600"
"#,
        cluster(
            "app",
            "",
            &[
                (us.addr, "us-central1", "v1"),
                (eu.addr, "europe-west1", "v1")
            ]
        )
    );
    let fd = start(&text).await;
    let us_user = get(&fd, "/home", &[("x-client-country", "US")]).await;
    assert_eq!(us_user.text(), "us 1");
    let eu_user = get(&fd, "/home", &[("x-client-country", "DE")]).await;
    assert_eq!(
        eu_user.text(),
        "eu 1",
        "an entry from the US is never served to an EU user"
    );
    assert_eq!(eu_user.header("x-served-region"), Some("europe-west1"));
    let eu_again = get(&fd, "/home", &[("x-client-country", "FR")]).await;
    assert_eq!(
        (eu_again.text().as_str(), eu_again.header("x-cache")),
        ("eu 1", Some("HIT"))
    );
    assert_eq!(eu_again.header("x-served-region"), Some("europe-west1"));
    let us_again = get(&fd, "/home", &[("x-client-country", "US")]).await;
    assert_eq!(
        (us_again.text().as_str(), us_again.header("x-cache")),
        ("us 1", Some("HIT"))
    );
}

#[tokio::test]
async fn explain_shows_the_effective_headers() {
    let origin = Scripted::start(Duration::ZERO, |_, _| (200, vec![], String::new())).await;
    let fd = start(&config(origin.addr, "")).await;
    let r = admin_call(
        &fd,
        Method::GET,
        "/explain?url=http%3A%2F%2Fexample.com%2Fdocs%2Fa",
        "",
    )
    .await;
    let text = r.text();
    assert!(text.contains("cache rule:   \"site\""), "{text}");
    assert!(
        text.contains("CDN-Cache-Control: public, max-age=3600 (default"),
        "{text}"
    );
    assert!(
        text.contains("fresh for 3600 s (CDN-Cache-Control max-age"),
        "{text}"
    );
}

/// A client's `Connection` field cannot take away the `Host` the answer is cached under: the
/// origin would answer for another host (its default), and the entry would serve everyone
/// who asks for this one.
#[tokio::test]
async fn a_connection_option_cannot_strip_the_host_an_entry_is_kept_under() {
    let origin = Scripted::start(Duration::ZERO, |p, _| {
        let host = p.headers.get("host").map(|h| h.to_str().unwrap_or("?"));
        (200, vec![], format!("for {}", host.unwrap_or("no host")))
    })
    .await;
    let fd = start(&config(origin.addr, "")).await;
    let first = get(
        &fd,
        "/page",
        &[("host", "shop.example"), ("connection", "host")],
    )
    .await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.text(), "for shop.example");
    let next = get(&fd, "/page", &[("host", "shop.example")]).await;
    assert_eq!(
        (next.text().as_str(), next.header("x-cache")),
        ("for shop.example", Some("HIT"))
    );
}

/// The scheme the upstream is told (`X-Forwarded-Proto`) is part of the key, as nginx's
/// default key holds `$scheme`: an origin that redirects plain HTTP to HTTPS would otherwise
/// have its redirect served from the cache to HTTPS clients, who would follow it forever.
#[tokio::test]
async fn entries_are_kept_apart_by_the_scheme_the_upstream_sees() {
    let origin = Scripted::start(Duration::ZERO, |p, _| {
        let proto = p.headers.get("x-forwarded-proto").map(|v| v.as_bytes());
        if proto == Some(b"https") {
            (200, vec![], "secure page".to_string())
        } else {
            let to = "https://shop.example/page".to_string();
            let cc = "public, max-age=3600".to_string();
            (
                301,
                vec![("location", to), ("cache-control", cc)],
                String::new(),
            )
        }
    })
    .await;
    let text = config(origin.addr, "").replacen(
        "\n[[routes]]",
        "\n[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[[routes]]",
        1,
    );
    let fd = start(&text).await;
    let plain = [("host", "shop.example"), ("x-forwarded-proto", "http")];
    let secure = [("host", "shop.example"), ("x-forwarded-proto", "https")];
    let first = get(&fd, "/page", &plain).await;
    assert_eq!(first.status, StatusCode::MOVED_PERMANENTLY);
    let again = get(&fd, "/page", &plain).await;
    assert_eq!(
        (again.status, again.header("x-cache")),
        (StatusCode::MOVED_PERMANENTLY, Some("HIT"))
    );
    let over_tls = get(&fd, "/page", &secure).await;
    assert_eq!(
        (over_tls.status, over_tls.text().as_str()),
        (StatusCode::OK, "secure page")
    );
    assert_eq!(origin.hits(), 2);
    let hit = get(&fd, "/page", &secure).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    // An unsafe method's success drops the URL under either scheme (RFC 9111 §4.4).
    let req = Request::post(url(&fd, "/page"))
        .header("host", "shop.example")
        .header("x-forwarded-proto", "https")
        .body(Full::default())
        .expect("request");
    let post = Client::http1().send(req).await.expect("response");
    assert_eq!(post.status, StatusCode::OK);
    for headers in [plain, secure] {
        let after = get(&fd, "/page", &headers).await;
        assert_eq!(after.header("x-cache"), Some("MISS"), "{headers:?}");
    }
}

/// A `GET` with a body ("fat GET") goes to the origin but never into the cache, nor is it
/// answered from it: the body is no part of the key, and an origin that reads it (some
/// frameworks merge body parameters into a GET's) would have its answer to one client's body
/// served to everyone who asks for the URL.
#[tokio::test]
async fn a_get_with_a_body_is_never_cached() {
    let addr = common::raw_upstream(|stream| async move {
        let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await?.to_bytes();
            let text = if body.is_empty() {
                Bytes::from_static(b"page")
            } else {
                body
            };
            let mut resp = Response::new(Full::new(text));
            resp.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("public, max-age=600"),
            );
            Ok::<_, hyper::Error>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    })
    .await;
    let fd = start(&config(addr, "")).await;
    let fat = |body: &'static str| {
        Request::get(url(&fd, "/article"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request")
    };
    let first = Client::http1()
        .send(fat("injected"))
        .await
        .expect("response");
    assert_eq!(first.text(), "injected");
    assert_eq!(first.header("x-cache"), Some("BYPASS"));
    let plain = get(&fd, "/article", &[]).await;
    assert_eq!(
        (plain.text().as_str(), plain.header("x-cache")),
        ("page", Some("MISS"))
    );
    let hit = get(&fd, "/article", &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    // An empty body said so is no body.
    let empty = get(&fd, "/article", &[("content-length", "0")]).await;
    assert_eq!(empty.header("x-cache"), Some("HIT"));
    // Nor is a body answered from the store.
    let again = Client::http1().send(fat("other")).await.expect("response");
    assert_eq!(
        (again.text().as_str(), again.header("x-cache")),
        ("other", Some("BYPASS"))
    );
}

/// Larger than the socket buffers between the proxy and a client that does not read.
const SIZE: usize = 24 << 20;

#[tokio::test]
async fn a_slow_or_vanished_client_does_not_hold_back_a_fill() {
    let origin = Scripted::start(Duration::ZERO, |_, _| (200, vec![], "x".repeat(SIZE))).await;
    let config = format!(
        r#"
{}
[[routes]]
cluster = "app"

[cache]
max_bytes = "64MiB"
max_object_bytes = "32MiB"

[[cache.rules]]
name = "site"
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=3600"
"#,
        cluster(
            "app",
            "request_timeout = \"30s\"",
            &[(origin.addr, "", "v1")]
        )
    );
    let fd = start(&config).await;
    let addr = fd.http.expect("http listener");
    let ask = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n\r\n");

    // A client asks and never reads: the fill goes on at the origin's pace, and the next
    // request for the key is answered from the stored entry, not held up behind the first.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stalled
        .write_all(ask("/stalled").as_bytes())
        .await
        .expect("send");
    eventually("the origin asked", || async { origin.hits() == 1 }).await;
    whole_hit(addr, "/stalled").await;
    assert_eq!(origin.hits(), 1);

    // A client goes away after the head: the fetch is not wasted.
    let mut gone = tokio::net::TcpStream::connect(addr).await.expect("connect");
    gone.write_all(ask("/gone").as_bytes()).await.expect("send");
    let mut head = [0u8; 12];
    gone.read_exact(&mut head).await.expect("the answer starts");
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(gone);
    whole_hit(addr, "/gone").await;
    assert_eq!(origin.hits(), 2);
    drop(stalled);
}

/// A `GET` for `path` on `site.test` is a hit with the whole `SIZE`-byte body.
async fn whole_hit(addr: SocketAddr, path: &str) {
    let req = Request::get(format!("http://{addr}{path}")).header("host", "site.test");
    let r = Client::http1()
        .send(req.body(Full::default()).expect("request"))
        .await
        .expect("response");
    assert_eq!(
        (r.status, r.header("x-cache")),
        (StatusCode::OK, Some("HIT"))
    );
    assert_eq!(r.body.len(), SIZE);
}
