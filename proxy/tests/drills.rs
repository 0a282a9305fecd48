//! The load-test drills, run against an in-process front door on the demo config (origins on
//! free ports instead of the demo's fixed ones). Each drill asserts its own outcome.

mod common;

use std::sync::Arc;
use std::time::Duration;

use frontdoor::demo::{DEMO_CONFIG, DemoOrigins};
use frontdoor::server::{Running, StartOptions};
use frontdoor::state::ConfigSource;
use loadtest::Origin;
use loadtest::drill::{self, DrillOptions};

/// The demo, with each fixed origin address replaced by a fresh `:0` origin.
async fn demo() -> Running {
    let snapshot = routes::load(DEMO_CONFIG).expect("demo config");
    let mut config = DEMO_CONFIG.to_string();
    let mut origins = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in &snapshot.clusters {
        for e in &c.endpoints {
            let routes::Address::Ip(fixed) = e.address else {
                continue;
            };
            if !seen.insert(fixed) {
                continue;
            }
            let region = snapshot
                .region(e.region.expect("demo endpoints have regions"))
                .name
                .clone();
            let o = Origin::builder()
                .region(&region)
                .version(e.version.as_deref().unwrap_or("stable"))
                .start()
                .await
                .expect("origin");
            config = config.replace(&format!("\"{fixed}\""), &format!("\"{}\"", o.addr));
            origins.push(o);
        }
    }
    common::start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        demo: Some(Arc::new(DemoOrigins::from_origins(origins))),
        ..Default::default()
    })
    .await
}

fn options(fd: &Running, phase: Duration) -> DrillOptions {
    DrillOptions {
        proxy: common::url(fd, ""),
        admin: format!("http://{}", fd.admin),
        faults: None,
        token: common::TOKEN.into(),
        rate: 100.0,
        duration: phase,
        protocol: "http1".into(),
        rollback_within: Duration::from_secs(10),
        tls: None,
    }
}

async fn assert_drill(name: &str, phase: Duration) {
    let fd = demo().await;
    let report = drill::run(name, &options(&fd, phase))
        .await
        .expect("drill runs");
    assert!(report.passed(), "{}", report.text());
    assert!(report.summary.requests > 0);
    let html = report.html();
    assert!(
        html.contains("<svg") && html.contains("PASS"),
        "report renders"
    );
    fd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_region_weights() {
    assert_drill("region-weights", Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_residency_failover() {
    // The demo health-checks every 2 s and needs 2 failures: a phase must outlast that.
    assert_drill("residency-failover", Duration::from_secs(6)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_canary_rollback() {
    assert_drill("canary-rollback", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_reload_under_load() {
    assert_drill("reload-under-load", Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unknown_drill_is_a_clear_error() {
    let fd = demo().await;
    let err = drill::run("chaos-monkey", &options(&fd, Duration::from_secs(1)))
        .await
        .expect_err("unknown");
    assert!(err.contains("canary-rollback"), "{err}");
    fd.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_drives_https_with_http1_and_h2() {
    use loadtest::engine::{self, Mix, Recorder, Target};
    use loadtest::scenario::{Model, Scenario};
    let origin = Origin::builder()
        .region("us-central1")
        .start()
        .await
        .expect("origin");
    let ca = certs::dev::DevCa::new("loadtest CA").expect("ca");
    let leaf = ca.issue(&["localhost"]).expect("leaf");
    let store = certs::CertStore::from_keys(
        [(
            vec!["localhost".to_string()],
            Arc::new(leaf.certified_key().expect("key")),
        )],
        None,
        false,
    )
    .expect("store");
    let fd = common::start_with(StartOptions {
        config: Some(ConfigSource::Inline(common::one_route(
            "",
            &[(origin.addr, "", "v")],
        ))),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        fallback_certs: Some(store),
        ..Default::default()
    })
    .await;
    let base = format!("https://localhost:{}", fd.https.expect("https").port());
    for (protocol, alpn) in [("http1", &b"http/1.1"[..]), ("h2", &b"h2"[..])] {
        let s =
            Scenario::parse(&format!("protocol = \"{protocol}\"\nusers = 10\n")).expect("scenario");
        let tls = loadtest::tls::client_config(ca.cert_pem.as_bytes(), &[alpn]).expect("tls");
        let rec = Arc::new(Recorder::default());
        let model = Model::Open(vec![(100.0, Duration::from_secs(1))]);
        let elapsed = engine::run(
            &model,
            Arc::new(Mix::new(&s).expect("mix")),
            &Target {
                base: base.clone(),
                connections: None,
            },
            engine::client_with(protocol, Some(tls)),
            Arc::clone(&rec),
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )
        .await;
        let summary = rec.summary(elapsed);
        assert!(
            summary.requests >= 90,
            "{protocol}: {} requests",
            summary.requests
        );
        assert_eq!(summary.failed, 0, "{protocol}: {:?}", summary.statuses);
    }
    fd.shutdown().await;
}

/// The demo applies the reference cache policy: any non-API path is stored on first use and a
/// repeated GET is a HIT (the origin's echo of the first request comes back); `/api/**` and
/// the per-user surfaces are never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_caches_every_non_api_path_and_never_the_api() {
    let fd = demo().await;
    let client = loadtest::Client::http1();
    let get = |path: &str| {
        let url = common::url(&fd, path);
        let client = &client;
        async move { client.get(&url).await.expect("response") }
    };
    for path in ["/", "/products/42", "/static/app.js?v=3", "/canary/page"] {
        let first = get(path).await;
        assert_eq!(first.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(
            first.header("cdn-cache-control"),
            Some("public, max-age=3600"),
            "{path}"
        );
        let again = get(path).await;
        assert_eq!(again.header("x-cache"), Some("HIT"), "{path}");
        assert_eq!(again.body, first.body, "{path}: served from the store");
        assert_ne!(again.header("x-request-id"), first.header("x-request-id"));
    }
    for path in [
        "/api/orders",
        "/account/settings",
        "/ai/chat",
        "/gdpr/export",
    ] {
        let first = get(path).await;
        let again = get(path).await;
        assert_eq!(again.header("x-cache"), Some("BYPASS"), "{path}");
        assert_eq!(again.header("cache-control"), Some("no-store"), "{path}");
        assert_ne!(
            again.body, first.body,
            "{path}: the origin answered each time"
        );
    }
    fd.shutdown().await;
}
