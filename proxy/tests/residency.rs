//! Residency end to end: EU requests stay in the EU, fail closed when the EU is down, and come
//! back when it recovers; weights hold over 10,000 requests; GeoIP and tenants classify.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{TOKEN, eventually, start, url};
use http::{Request, StatusCode};
use http_body_util::Full;
use loadtest::{Client, FaultSpec, Origin, OriginHandle};

struct World {
    us: OriginHandle,
    eu: OriginHandle,
    asia: OriginHandle,
}

async fn world() -> World {
    World {
        us: Origin::builder()
            .region("us-central1")
            .start()
            .await
            .expect("us"),
        eu: Origin::builder()
            .region("europe-west1")
            .start()
            .await
            .expect("eu"),
        asia: Origin::builder()
            .region("asia-southeast1")
            .start()
            .await
            .expect("asia"),
    }
}

fn config(w: &World, trusted: &str, extra_route: &str, extra: &str) -> String {
    format!(
        r#"
[server]
region = "us-central1"
trusted_proxies = [{trusted}]
[regions]
us-central1 = {{ jurisdiction = "us" }}
europe-west1 = {{ jurisdiction = "eu" }}
asia-southeast1 = {{ jurisdiction = "apac" }}
[residency]
eu = ["europe-west1"]
{extra}
[clusters.app]
health_check = {{ path = "/healthz", interval = "50ms", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 1 }}
endpoints = [
  {{ address = "{}", region = "us-central1" }},
  {{ address = "{}", region = "europe-west1" }},
  {{ address = "{}", region = "asia-southeast1" }},
]
[[routes]]
name = "app"
cluster = "app"
{extra_route}
"#,
        w.us.addr, w.eu.addr, w.asia.addr
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
        .send(req.body(Full::default()).expect("req"))
        .await
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eu_requests_stay_in_the_eu_fail_closed_and_come_back() {
    let w = world().await;
    let fd = start(&config(&w, "\"127.0.0.0/8\"", "", "")).await;
    let de = [("x-client-country", "DE")];
    for _ in 0..1000 {
        let r = get(&fd, "/", &de).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-served-region"), Some("europe-west1"));
        assert_eq!(r.header("x-origin-region"), Some("europe-west1"));
    }
    // A US user is served locally meanwhile.
    assert_eq!(
        get(&fd, "/", &[("x-client-country", "US")])
            .await
            .header("x-origin-region"),
        Some("us-central1")
    );

    // The EU goes down. Until the health check notices, EU requests fail (502) — but never
    // leave the EU; once it has, they are refused with the residency header.
    w.eu.faults.set(FaultSpec {
        down: true,
        ..Default::default()
    });
    let fd_ref = &fd;
    eventually("EU requests are refused for residency", || async move {
        let r = get(fd_ref, "/", &de).await;
        assert!(
            r.header("x-origin-region")
                .is_none_or(|reg| reg == "europe-west1"),
            "leak to {:?}",
            r.header("x-origin-region")
        );
        r.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    for _ in 0..200 {
        let r = get(&fd, "/", &de).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("x-frontdoor-refused"), Some("residency"));
        assert_eq!(
            r.header("x-origin-region"),
            None,
            "refused requests reach no origin"
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(body["error"], "residency_refused");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("europe-west1")),
            "{body}"
        );
        assert_eq!(body["request_id"].as_str(), r.header("x-request-id"));
    }
    for _ in 0..50 {
        let r = get(&fd, "/", &[("x-client-country", "US")]).await;
        assert_eq!(
            (r.status, r.header("x-origin-region")),
            (StatusCode::OK, Some("us-central1"))
        );
    }
    let metrics = Client::http1()
        .send(
            Request::get(format!("http://{}/metrics", fd.admin))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Full::default())
                .expect("req"),
        )
        .await
        .expect("metrics")
        .text();
    assert!(
        metrics.contains("frontdoor_residency_refusals_total{route=\"app\",jurisdiction=\"eu\"}"),
        "{metrics}"
    );

    // The EU comes back: served again once the health check sees it.
    w.eu.faults.set(FaultSpec::default());
    eventually("EU requests are served again", || async move {
        let r = get(fd_ref, "/", &de).await;
        r.status == StatusCode::OK && r.header("x-origin-region") == Some("europe-west1")
    })
    .await;
    fd.shutdown().await;
}

#[tokio::test]
async fn edge_headers_from_untrusted_peers_are_ignored_and_stripped() {
    let w = world().await;
    let fd = start(&config(&w, "", "", "")).await;
    let r = get(
        &fd,
        "/",
        &[("x-client-country", "DE"), ("x-client-jurisdiction", "eu")],
    )
    .await;
    assert_eq!(
        r.header("x-origin-region"),
        Some("us-central1"),
        "an untrusted country header must not steer routing"
    );
    let echo = r.echo().expect("echo");
    assert_eq!(echo.header("x-client-country"), None);
    assert_eq!(echo.header("x-client-jurisdiction"), None);
    fd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regional_weights_hold_over_ten_thousand_requests() {
    let w = world().await;
    let fd = start(&config(
        &w,
        "\"127.0.0.0/8\"",
        "regional_weights = { us-central1 = 70, europe-west1 = 30 }",
        "",
    ))
    .await;
    let counts = Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, u, counts) = (Client::http1(), url(&fd, "/"), Arc::clone(&counts));
        tasks.push(tokio::spawn(async move {
            for _ in 0..2500 {
                let r = client.get(&u).await.expect("resp");
                assert_eq!(r.status, StatusCode::OK);
                let region = r.header("x-served-region").unwrap_or("none").to_string();
                *counts.lock().expect("counts").entry(region).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let counts = counts.lock().expect("counts").clone();
    let share = |r: &str| f64::from(counts.get(r).copied().unwrap_or(0)) / 100.0;
    assert!((share("us-central1") - 70.0).abs() <= 2.0, "{counts:?}");
    assert!((share("europe-west1") - 30.0).abs() <= 2.0, "{counts:?}");
    assert_eq!(counts.get("asia-southeast1"), None, "{counts:?}");
    fd.shutdown().await;
}

#[tokio::test]
async fn geoip_and_tenants_classify_requests() {
    let w = world().await;
    let db = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/GeoLite2-Country-Test.mmdb"
    );
    let extra = format!(
        "[classify]\ngeoip_db = \"{db}\"\ncountries = {{ US = \"us\" }}\n[classify.tenants]\nheader = \"x-tenant-id\"\nids = {{ acme = \"eu\" }}\n"
    );
    let fd = start(&config(&w, "\"127.0.0.0/8\"", "", &extra)).await;
    let cases = [
        (vec![("x-forwarded-for", "89.160.20.115")], "europe-west1"), // SE by GeoIP
        (vec![("x-forwarded-for", "216.160.83.57")], "us-central1"),  // US by GeoIP
        (
            vec![
                ("x-forwarded-for", "216.160.83.57"),
                ("x-tenant-id", "acme"),
            ],
            "europe-west1",
        ), // tenant first
        (
            vec![
                ("x-forwarded-for", "89.160.20.115"),
                ("x-client-country", "US"),
            ],
            "us-central1",
        ), // header before GeoIP
    ];
    for (headers, want) in cases {
        let r = get(&fd, "/", &headers).await;
        assert_eq!(r.header("x-served-region"), Some(want), "{headers:?}");
    }
    // explain through the admin API.
    let req = Request::get(format!(
        "http://{}/explain?url=http%3A%2F%2Fshop.test%2Fx&client=89.160.20.115",
        fd.admin
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(Full::default())
    .expect("req");
    let text = Client::http1().send(req).await.expect("explain").text();
    assert!(text.contains("jurisdiction: eu (from geoip)"), "{text}");
    assert!(text.contains("restricted to [europe-west1]"), "{text}");
    assert!(text.contains("now:          europe-west1"), "{text}");
    fd.shutdown().await;
}

#[tokio::test]
async fn a_config_that_could_leak_is_rejected_by_check() {
    let w = world().await;
    let good = config(&w, "\"127.0.0.0/8\"", "", "");
    let fd = start(&good).await;
    // Pin the route to the EU while its cluster has US and APAC endpoints: rejected.
    let dir = std::env::temp_dir().join(format!("frontdoor-leak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        config(&w, "\"127.0.0.0/8\"", "residency = \"eu\"", ""),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_frontdoor"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes[0].residency: leak")
            && err.contains("\"app\"")
            && err.contains("asia-southeast1"),
        "{err}"
    );
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}
