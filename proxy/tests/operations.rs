//! Operating a front door: reloads (good, bad, under load, on file change), the admin API,
//! health checks, TLS with SNI and certificate rotation, draining on shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TOKEN, cluster, eventually, one_route, start, start_with, url};
use frontdoor::server::{Running, StartOptions};
use frontdoor::state::ConfigSource;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use loadtest::{Client, FaultSpec, Origin};
use serde_json::Value;

async fn admin(
    fd: &Running,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{}", fd.admin, path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = Client::http1()
        .send(req.body(Full::default()).expect("req"))
        .await
        .expect("admin answers");
    let text = resp.text();
    (
        resp.status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

/// Writes `config` to `path` and starts a front door from that file (so the test can rewrite
/// it) with an HTTPS listener on a free port; returns it and that port's address.
async fn start_https_from_file(
    path: &std::path::Path,
    config: &str,
) -> (Running, std::net::SocketAddr) {
    std::fs::write(path, config).expect("write");
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::File(path.to_path_buf())),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let https = fd.https.expect("https");
    (fd, https)
}

/// One `GET /` with `Connection: close` over TLS: the suite, whether the handshake resumed, and
/// everything the server sent until it closed.
async fn tls_close_get(
    https: std::net::SocketAddr,
    name: &str,
    config: &Arc<rustls::ClientConfig>,
) -> (rustls::CipherSuite, rustls::HandshakeKind, String) {
    tls_close_get_host(https, name, name, config).await
}

/// [`tls_close_get`] with a `Host` of its own, not the name the handshake asked for.
async fn tls_close_get_host(
    https: std::net::SocketAddr,
    name: &str,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
) -> (rustls::CipherSuite, rustls::HandshakeKind, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(https)
        .await
        .expect("connect");
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
        .connect(server_name, tcp)
        .await
        .expect("handshake");
    let (_, conn) = tls.get_ref();
    let suite = conn.negotiated_cipher_suite().expect("suite").suite();
    let kind = conn.handshake_kind().expect("kind");
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.expect("answer");
    (suite, kind, String::from_utf8_lossy(&answer).into_owned())
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("frontdoor-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test]
async fn admin_api_requires_the_token_and_reports_state() {
    let origin = Origin::builder()
        .region("us-central1")
        .start()
        .await
        .expect("origin");
    let config = format!(
        "[regions]\nus-central1 = {{ jurisdiction = \"us\" }}\n[server]\nregion = \"us-central1\"\n{}\n[[routes]]\nname = \"main\"\ncluster = \"app\"\n",
        cluster("app", "", &[(origin.addr, "us-central1", "stable")])
    );
    let fd = start(&config).await;
    let (s, _, body) = admin(&fd, Method::GET, "/healthz", None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "ok\n"));
    for path in ["/status", "/metrics"] {
        assert_eq!(
            admin(&fd, Method::GET, path, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            admin(&fd, Method::GET, path, Some("wrong")).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    assert_eq!(
        admin(&fd, Method::POST, "/reload", Some("test-toke"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    assert_eq!(
        Client::http1()
            .get(&url(&fd, "/"))
            .await
            .expect("proxied")
            .status,
        StatusCode::OK
    );
    let (s, status, _) = admin(&fd, Method::GET, "/status", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status["region"], "us-central1");
    assert_eq!(status["config"]["hash"].as_str().map(str::len), Some(16));
    assert_eq!(status["routes"][0]["name"], "main");
    let member = &status["clusters"][0]["members"][0];
    assert_eq!(member["address"], origin.addr.to_string());
    assert_eq!(member["healthy"], true);

    let (s, _, metrics) = admin(&fd, Method::GET, "/metrics", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        metrics.contains("frontdoor_requests_total{route=\"main\",cluster=\"app\",class=\"2xx\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("frontdoor_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("frontdoor_upstream_healthy"), "{metrics}");
    assert_eq!(
        admin(&fd, Method::GET, "/nope", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        admin(&fd, Method::DELETE, "/status", Some(TOKEN)).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    fd.shutdown().await;
}

#[tokio::test]
async fn bad_config_is_rejected_with_every_error_and_the_old_one_keeps_serving() {
    let origin = Origin::builder().start().await.expect("origin");
    let dir = temp_dir("reload-bad");
    let path = dir.join("config.toml");
    let good = one_route("", &[(origin.addr, "", "v")]);
    std::fs::write(&path, &good).expect("write");
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::File(path.clone())),
        ..Default::default()
    })
    .await;
    let hash = fd.proxy.active().snapshot.hash.clone();

    let bad = format!("{good}\n[[routes]]\npath_prefix = \"api\"\ncluster = \"missing\"\n");
    std::fs::write(&path, bad).expect("write");
    let (s, body, _) = admin(&fd, Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let errors: Vec<String> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e.as_str().map(String::from))
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("routes[1].cluster:")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("routes[1].path_prefix:")),
        "{errors:?}"
    );
    assert_eq!(body["serving"], hash.as_str());
    assert_eq!(fd.proxy.active().snapshot.hash, hash);
    assert_eq!(
        Client::http1()
            .get(&url(&fd, "/"))
            .await
            .expect("resp")
            .status,
        StatusCode::OK
    );
    let (_, status, _) = admin(&fd, Method::GET, "/status", Some(TOKEN)).await;
    assert_eq!(status["config"]["reloads_rejected"], 1);
    assert_eq!(
        status["config"]["last_errors"].as_array().map(Vec::len),
        Some(errors.len())
    );

    // Fix it: the next reload is accepted and clears the errors.
    let fixed = format!("{good}\n[[routes]]\npath_prefix = \"/api\"\ncluster = \"app\"\n");
    std::fs::write(&path, fixed).expect("write");
    let (s, body, _) = admin(&fd, Method::POST, "/reload", Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_ne!(fd.proxy.active().snapshot.hash, hash);
    assert_eq!(fd.proxy.active().snapshot.routes.len(), 2);
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_changed_file_is_picked_up() {
    let a = Origin::builder().version("a").start().await.expect("a");
    let b = Origin::builder().version("b").start().await.expect("b");
    let dir = temp_dir("reload-watch");
    let path = dir.join("config.toml");
    let config = |o: &loadtest::OriginHandle| one_route("", &[(o.addr, "", "v")]);
    std::fs::write(&path, config(&a)).expect("write");
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::File(path.clone())),
        watch_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .await;
    let client = Client::http1();
    assert_eq!(
        client
            .get(&url(&fd, "/"))
            .await
            .expect("resp")
            .header("x-origin-version"),
        Some("a")
    );
    std::fs::write(&path, config(&b)).expect("write");
    let u = url(&fd, "/");
    eventually("traffic moves to b after the file changed", || {
        let client = client.clone();
        let u = u.clone();
        async move {
            client
                .get(&u)
                .await
                .ok()
                .and_then(|r| r.header("x-origin-version").map(String::from))
                == Some("b".into())
        }
    })
    .await;
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_request() {
    let a = Origin::builder().version("a").start().await.expect("a");
    let b = Origin::builder().version("b").start().await.expect("b");
    let dir = temp_dir("reload-load");
    let path = dir.join("config.toml");
    let configs = [
        one_route("", &[(a.addr, "", "v")]),
        format!(
            "{}\n[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/x\"\ncluster = \"app\"\n",
            cluster("app", "", &[(a.addr, "", "v"), (b.addr, "", "v")])
        ),
    ];
    std::fs::write(&path, &configs[0]).expect("write");
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::File(path.clone())),
        ..Default::default()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let client = if i % 2 == 0 {
            Client::http1()
        } else {
            Client::h2c()
        };
        let u = url(&fd, "/");
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&u).await {
                    Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for i in 0..100 {
        std::fs::write(&path, &configs[(i + 1) % 2]).expect("write");
        fd.proxy.reload().await.expect("reload accepted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 100 reloads",
        ok + failed
    );
    assert!(ok > 100, "load too thin to mean anything: {ok} requests");
    assert_eq!(fd.proxy.status.lock().expect("status").reloads_ok, 100);
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let a = Origin::builder().version("a").start().await.expect("a");
    let b = Origin::builder().version("b").start().await.expect("b");
    let extra = "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }";
    let config = one_route(extra, &[(a.addr, "", "v"), (b.addr, "", "v")]);
    let fd = start(&config).await;
    let client = Client::http1();
    // Down: health checks fail (503) and live requests are dropped.
    a.faults.set(FaultSpec {
        down: true,
        ..Default::default()
    });
    let fd_ref = &fd;
    eventually("a is marked unhealthy", || async move {
        let (_, st, _) = admin(fd_ref, Method::GET, "/status", Some(TOKEN)).await;
        st["clusters"][0]["members"][0]["active_check_ok"] == false
    })
    .await;
    for _ in 0..10 {
        let r = client.get(&url(&fd, "/")).await.expect("resp");
        assert_eq!(r.header("x-origin-version"), Some("b"));
    }
    a.faults.set(FaultSpec::default());
    eventually("a is healthy again", || async move {
        let (_, st, _) = admin(fd_ref, Method::GET, "/status", Some(TOKEN)).await;
        st["clusters"][0]["members"][0]["healthy"] == true
    })
    .await;
    let mut seen_a = false;
    for _ in 0..10 {
        seen_a |= client
            .get(&url(&fd, "/"))
            .await
            .expect("resp")
            .header("x-origin-version")
            == Some("a");
    }
    assert!(seen_a, "recovered endpoint takes traffic again");
    fd.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let slow = Origin::builder().start().await.expect("origin");
    slow.faults.set(FaultSpec {
        latency_ms: 400,
        ..Default::default()
    });
    let config = one_route("", &[(slow.addr, "", "v")]);
    let fd = start(&config).await;
    let u = url(&fd, "/");
    let http = fd.http.expect("http");
    let in_flight = tokio::spawn(async move { Client::http1().get(&u).await });
    // Wait until the origin has the request, then stop the front door.
    let faults = Arc::clone(&slow.faults);
    eventually("request reached the origin", || {
        let faults = Arc::clone(&faults);
        async move { faults.requests() == 1 }
    })
    .await;
    let clean = fd.shutdown().await;
    assert!(clean, "drain finished within the deadline");
    let resp = in_flight
        .await
        .expect("task")
        .expect("in-flight request completed");
    assert_eq!(resp.status, StatusCode::OK);
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "listener closed after shutdown"
    );
}

#[tokio::test]
async fn tls_sni_alpn_and_certificate_rotation() {
    let origin = Origin::builder().start().await.expect("origin");
    let dir = temp_dir("tls");
    let ca = certs::dev::DevCa::new("test CA").expect("ca");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_string_lossy().into_owned()
    };
    let a = ca.issue(&["a.test"]).expect("a");
    let b = ca.issue(&["*.b.test"]).expect("b");
    let (a_cert, a_key) = (write("a.pem", &a.cert_pem), write("a.key", &a.key_pem));
    let (b_cert, b_key) = (write("b.pem", &b.cert_pem), write("b.key", &b.key_pem));
    let config = format!(
        "[[tls.certificates]]\nhosts = [\"a.test\"]\ncert = \"{a_cert}\"\nkey = \"{a_key}\"\n[[tls.certificates]]\nhosts = [\"*.b.test\"]\ncert = \"{b_cert}\"\nkey = \"{b_key}\"\n{}\n[[routes]]\ncluster = \"app\"\n",
        cluster("app", "", &[(origin.addr, "", "v")])
    );
    let path = dir.join("config.toml");
    let (fd, https) = start_https_from_file(&path, &config).await;
    for (name, alpn, want) in [
        ("a.test", &[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        ("x.b.test", &[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
        // A client that offers only HTTP/1.0 (`curl --http1.0`) is not refused the handshake.
        ("a.test", &[&b"http/1.0"[..]][..], &b"http/1.0"[..]),
    ] {
        let (proto, resp) = loadtest::client::tls_get(https, name, &ca.cert_pem, alpn, "/")
            .await
            .expect("TLS request verifies");
        assert_eq!(proto.as_deref(), Some(want), "{name}");
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.echo().expect("echo").header("x-forwarded-proto"),
            Some("https")
        );
    }
    // The suite: AES-128-GCM for a client that lists AES-GCM first (OpenSSL's order: AES-256
    // first), ChaCha20-Poly1305 for one that lists it first. Each client's second connection
    // resumes, under the same suite.
    use rustls::CipherSuite as C;
    for (offered, want) in [
        (
            [
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256,
            ],
            C::TLS13_AES_128_GCM_SHA256,
        ),
        (
            [
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_AES_128_GCM_SHA256,
            ],
            C::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ] {
        let mut client = ca
            .client_config(rustls::DEFAULT_VERSIONS, Some(&offered))
            .expect("client");
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = Arc::new(client);
        for kind in [rustls::HandshakeKind::Full, rustls::HandshakeKind::Resumed] {
            let (suite, got, answer) = tls_close_get(https, "a.test", &client).await;
            assert_eq!(suite, want, "offered {offered:?}");
            assert_eq!(got, kind, "offered {offered:?}");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        }
    }
    // A request for a host the connection's certificate is not for: 421, and nothing reaches
    // the upstream. The names one certificate serves (a wildcard's) share its connections.
    let mut client = ca
        .client_config(rustls::DEFAULT_VERSIONS, None)
        .expect("client");
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let client = Arc::new(client);
    let before = origin.faults.requests();
    for (name, host, status) in [
        ("a.test", "x.b.test", 421),
        ("x.b.test", "a.test", 421),
        ("a.test", "c.test", 421),
        ("x.b.test", "y.b.test", 200),
        ("a.test", "A.TEST:443", 200),
    ] {
        let (_, _, answer) = tls_close_get_host(https, name, host, &client).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{name} asking for {host}: {answer}"
        );
    }
    assert_eq!(origin.faults.requests() - before, 2);
    // A name no certificate covers gets the default (the first): verification fails.
    assert!(
        loadtest::client::tls_get(https, "c.test", &ca.cert_pem, &[b"http/1.1"], "/")
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port: an alert and the connection closed, counted.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(https)
            .await
            .expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("closed");
        assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
    }

    // Rotation: a.test gets a certificate from a new CA; after reload only the new CA verifies.
    let ca2 = certs::dev::DevCa::new("rotated CA").expect("ca2");
    let a2 = ca2.issue(&["a.test"]).expect("a2");
    // A broken pair first (new cert, old key): rejected, the old certificate keeps serving.
    std::fs::write(&a_cert, &a2.cert_pem).expect("write");
    let errors = fd
        .proxy
        .reload()
        .await
        .expect_err("mismatched key rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("a.pem") && e.contains("does not match")),
        "{errors:?}"
    );
    assert!(
        loadtest::client::tls_get(https, "a.test", &ca.cert_pem, &[b"h2"], "/")
            .await
            .is_ok()
    );
    std::fs::write(&a_key, &a2.key_pem).expect("write");
    fd.proxy.reload().await.expect("rotation accepted");
    let req = Request::get(format!("http://{}/metrics", fd.admin))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .expect("req");
    let metrics = Client::http1().send(req).await.expect("metrics").text();
    assert!(
        metrics.contains("frontdoor_certificate_not_after_timestamp_seconds{name=\"a.test\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("frontdoor_certificate_not_after_timestamp_seconds{name=\"*.b.test\"}"),
        "{metrics}"
    );
    // The client that could not verify c.test's certificate hung up with an alert.
    assert!(
        metrics.contains("frontdoor_tls_handshake_failures_total{reason=\"client_alert\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("frontdoor_tls_handshake_failures_total{reason=\"invalid_message\"}"),
        "{metrics}"
    );
    assert!(
        loadtest::client::tls_get(https, "a.test", &ca2.cert_pem, &[b"h2"], "/")
            .await
            .is_ok()
    );
    assert!(
        loadtest::client::tls_get(https, "a.test", &ca.cert_pem, &[b"h2"], "/")
            .await
            .is_err()
    );
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn demo_fault_injection_through_the_admin_api() {
    let us = Origin::builder()
        .region("us-central1")
        .version("stable")
        .start()
        .await
        .expect("origin");
    let config = format!(
        "[regions]\nus-central1 = {{ jurisdiction = \"us\" }}\n{}\n[[routes]]\ncluster = \"app\"\n",
        cluster(
            "app",
            "retries = { attempts = 0 }\noutlier = { consecutive_failures = 0 }",
            &[(us.addr, "us-central1", "stable")]
        )
    );
    let demo = Arc::new(frontdoor::demo::DemoOrigins::from_origins(vec![us]));
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        demo: Some(Arc::clone(&demo)),
        ..Default::default()
    })
    .await;
    let put = |path: &str, body: &str| {
        let req = Request::put(format!("http://{}{}", fd.admin, path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(bytes::Bytes::from(body.to_string())))
            .expect("req");
        async move { Client::http1().send(req).await.expect("admin") }
    };
    let r = put("/demo/origins/us-central1/stable", r#"{"error_rate":1.0}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let resp = Client::http1().get(&url(&fd, "/")).await.expect("resp");
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.header("x-origin-region"), Some("us-central1"));

    let r = put("/demo/origins/us-central1/stable", r#"{"down":true}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        Client::http1()
            .get(&url(&fd, "/"))
            .await
            .expect("resp")
            .status,
        StatusCode::BAD_GATEWAY
    );
    put("/demo/origins/us-central1/stable", "{}").await;
    assert_eq!(
        Client::http1()
            .get(&url(&fd, "/"))
            .await
            .expect("resp")
            .status,
        StatusCode::OK
    );

    // Region only: every version there.
    let r = put("/demo/origins/us-central1", r#"{"latency_ms":1}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.text().contains("\"updated\": 1"), "{}", r.text());
    put("/demo/origins/us-central1", "{}").await;
    // Every region, one version (`proxyctl demo fault --version stable` sends `*`).
    let r = put("/demo/origins/%2A/stable", r#"{"latency_ms":1}"#).await;
    assert!(r.text().contains("\"updated\": 1"), "{}", r.text());
    put("/demo/origins/%2A/stable", "{}").await;
    assert_eq!(
        put("/demo/origins/mars/stable", "{}").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        put("/demo/origins/us-central1/stable", r#"{"error_rate":2}"#)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        put("/demo/origins/us-central1/stable", r#"{"eror_rate":0.1}"#)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Four: the GET that met the origin "down" (which drops the connection unanswered) went
    // on a pooled connection, so it went once more on a fresh one (an upstream closing an idle
    // connection as a request arrives looks the same).
    let (_, list, _) = admin(&fd, Method::GET, "/demo/origins", Some(TOKEN)).await;
    assert_eq!(list["us-central1/stable"]["requests"], 4);
    fd.shutdown().await;
}

/// Rotations while handshakes run: every handshake succeeds, before, during and after 20
/// rotations and a rejected expired certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load_fails_no_handshake() {
    let origin = Origin::builder().start().await.expect("origin");
    let dir = temp_dir("rotation");
    let ca = certs::dev::DevCa::new("rotation CA").expect("ca");
    let pairs: Vec<certs::dev::DevCert> = (0..2)
        .map(|_| ca.issue(&["a.test"]).expect("leaf"))
        .collect();
    let expired = ca
        .issue_valid(&["a.test"], Some(((2020, 1, 1), (2021, 1, 1))))
        .expect("expired leaf");
    let cert = dir.join("a.pem");
    let key = dir.join("a.key");
    let put = |pair: &certs::dev::DevCert| {
        std::fs::write(&cert, &pair.cert_pem).expect("write");
        std::fs::write(&key, &pair.key_pem).expect("write");
    };
    put(&pairs[0]);
    let config = format!(
        "[[tls.certificates]]\nhosts = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n{}\n[[routes]]\ncluster = \"app\"\n",
        cert.display(),
        key.display(),
        cluster("app", "", &[(origin.addr, "", "v")])
    );
    let path = dir.join("config.toml");
    let (fd, https) = start_https_from_file(&path, &config).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, ca_pem) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            ca.cert_pem.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match loadtest::client::tls_get(https, "a.test", &ca_pem, &[b"http/1.1"], "/").await
                {
                    Ok((_, r)) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for i in 0..20 {
        put(&pairs[i % 2]);
        fd.proxy.reload().await.expect("rotation accepted");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    put(&expired);
    let errors = fd
        .proxy
        .reload()
        .await
        .expect_err("expired certificate rejected");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("a.pem") && e.contains("expired")),
        "{errors:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} failed handshakes of {}", ok + failed);
    assert!(ok >= 20, "only {ok} handshakes ran");
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

/// A certificate directory: each `NAME.crt`/`NAME.pem` with its `NAME.key` serves the DNS
/// names it carries (ECDSA and RSA); a certificate without its key is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_directory_serves_ecdsa_and_rsa_by_their_names() {
    let origin = Origin::builder().start().await.expect("origin");
    let dir = temp_dir("certdir");
    let certs_dir = dir.join("certs");
    std::fs::create_dir_all(&certs_dir).expect("dir");
    let ca = certs::dev::DevCa::new("directory CA").expect("ca");
    let ecdsa = ca.issue(&["shop.test", "www.shop.test"]).expect("ecdsa");
    let rsa = ca.issue_rsa(&["*.api.test"]).expect("rsa");
    let put = |name: &str, text: &str| std::fs::write(certs_dir.join(name), text).expect("write");
    put("shop.crt", &ecdsa.cert_pem);
    put("shop.key", &ecdsa.key_pem);
    put("api.pem", &rsa.cert_pem);
    put("api.key", &rsa.key_pem);
    put("orphan.crt", &ecdsa.cert_pem);
    let config = format!(
        "[tls]\ndirectories = [\"{}\"]\n{}\n[[routes]]\ncluster = \"app\"\n",
        certs_dir.display(),
        cluster("app", "", &[(origin.addr, "", "v")])
    );
    let errors = frontdoor::state::Proxy::start(
        ConfigSource::Inline(config.clone()),
        frontdoor::state::ProxyOptions::default(),
    )
    .await
    .expect_err("a certificate without its key is refused");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("orphan.crt") && e.contains("no key file")),
        "{errors:?}"
    );
    std::fs::remove_file(certs_dir.join("orphan.crt")).expect("rm");
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let https = fd.https.expect("https");
    for name in ["shop.test", "www.shop.test", "v1.api.test"] {
        let (_, r) = loadtest::client::tls_get(https, name, &ca.cert_pem, &[b"http/1.1"], "/")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status, StatusCode::OK, "{name}");
    }
    fd.shutdown().await;
    std::fs::remove_dir_all(dir).ok();
}

/// With `workers = 3`, the proxy listener is bound three times with SO_REUSEPORT, each served
/// by its own thread: every one of 60 fresh connections (spread by the kernel) is answered,
/// and shutdown drains all of them and closes the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuseport_workers_all_serve_and_drain() {
    let origin = Origin::builder().start().await.expect("origin");
    let config = one_route("", &[(origin.addr, "", "v")]);
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        workers: 3,
        ..Default::default()
    })
    .await;
    let http = fd.http.expect("http");
    let mut served = 0;
    for i in 0..60 {
        // A fresh connection each time, so the kernel picks a listener each time.
        let raw = format!("GET /w/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            loadtest::client::raw_exchange(http, raw.as_bytes(), 1 << 16),
        )
        .await
        .expect("answered in time")
        .expect("exchange");
        if out.starts_with(b"HTTP/1.1 200") {
            served += 1;
        }
    }
    assert_eq!(served, 60);
    assert_eq!(origin.faults.requests(), 60);
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("proc")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .collect();
    for name in ["http-worker-1", "http-worker-2"] {
        assert!(threads.iter().any(|t| t == name), "{name} in {threads:?}");
    }
    assert!(fd.shutdown().await, "every worker drained");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "all listeners closed after shutdown"
    );
}

/// Sends `request` from `from` (a loopback address) to `to` and reads the one answer.
async fn exchange_from(from: &str, to: std::net::SocketAddr, request: &str) -> String {
    let mut s = connect_from(from, to, request.as_bytes()).await;
    common::read_message(&mut s).await.expect("an answer")
}

fn field<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_whose_answers_carry_hsts() {
    let origin = Origin::builder().start().await.expect("origin");
    // An upstream with an HSTS policy of its own for its host.
    let own = common::raw_upstream(|mut s| async move {
        use tokio::io::AsyncWriteExt;
        while common::read_message(&mut s).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\nstrict-transport-security: max-age=5\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let dead = common::dead_addr().await;
    let dir = temp_dir("https-redirect");
    let ca = certs::dev::DevCa::new("test CA").expect("ca");
    let leaf = ca.issue(&["a.test"]).expect("leaf");
    let (cert, key) = (dir.join("a.pem"), dir.join("a.key"));
    std::fs::write(&cert, &leaf.cert_pem).expect("write");
    std::fs::write(&key, &leaf.key_pem).expect("write");
    let config = format!(
        "[server]\nhttps_redirect = true\ntrusted_proxies = [\"127.0.0.2\"]\nhsts = {{ max_age = 31536000, include_subdomains = true }}\n[[tls.certificates]]\nhosts = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n{}{}{}\n[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/hook\"\ncluster = \"app\"\nhttps_redirect = false\n[[routes]]\npath_prefix = \"/own\"\ncluster = \"own\"\n[[routes]]\npath_prefix = \"/gone\"\ncluster = \"gone\"\n",
        cert.display(),
        key.display(),
        cluster("app", "", &[(origin.addr, "", "v")]),
        cluster("own", "", &[(own, "", "v")]),
        cluster("gone", "", &[(dead, "", "v")]),
    );
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let (http, https) = (fd.http.expect("http"), fd.https.expect("https"));
    let port = https.port();

    // GET and HEAD: 301 to the same URL over HTTPS, the host in routing's form, at the
    // HTTPS listener's port; nothing reaches the upstream, and no HSTS over plain HTTP.
    for method in ["GET", "HEAD"] {
        let answer = exchange_from(
            "127.0.0.1",
            http,
            &format!("{method} /a/b?x=1&y=%20 HTTP/1.1\r\nHost: Shop.Example:8080\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 301 "), "{answer}");
        assert_eq!(
            field(&answer, "location"),
            Some(format!("https://shop.example:{port}/a/b?x=1&y=%20").as_str()),
            "{answer}"
        );
        assert!(field(&answer, "x-request-id").is_some(), "{answer}");
        assert_eq!(field(&answer, "strict-transport-security"), None);
    }
    // Other methods: 308, which a client repeats with its method and body.
    let answer = exchange_from(
        "127.0.0.1",
        http,
        "POST /form HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 3\r\n\r\na=1",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308 "), "{answer}");
    assert_eq!(
        field(&answer, "location"),
        Some(format!("https://shop.example:{port}/form").as_str())
    );
    // An IPv6 literal keeps its brackets.
    let answer = exchange_from(
        "127.0.0.1",
        http,
        "GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    )
    .await;
    assert_eq!(
        field(&answer, "location"),
        Some(format!("https://[::1]:{port}/").as_str()),
        "{answer}"
    );
    // A client's own `X-Forwarded-Proto` is no proof of HTTPS.
    let answer = exchange_from(
        "127.0.0.1",
        http,
        "GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 301 "), "{answer}");
    // HTTP/1.0 without `Host` has no name to be sent to.
    let answer = exchange_from("127.0.0.1", http, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(origin.faults.requests(), 0, "nothing was forwarded");

    // A route that says otherwise is served over plain HTTP (without HSTS).
    let answer = exchange_from(
        "127.0.0.1",
        http,
        "GET /hook/x HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(field(&answer, "strict-transport-security"), None);
    // A trusted proxy that took the request over HTTPS is believed: served, with HSTS, and no
    // redirect loop behind a TLS-terminating balancer.
    let answer = exchange_from(
        "127.0.0.2",
        http,
        "GET / HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-Proto: https\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(
        field(&answer, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(origin.faults.requests(), 2);

    // Over HTTPS: served, with the policy on the proxy's own answers too; an upstream's own
    // policy stands.
    for (path, status, hsts) in [
        ("/", StatusCode::OK, "max-age=31536000; includeSubDomains"),
        ("/own", StatusCode::OK, "max-age=5"),
        (
            "/gone",
            StatusCode::BAD_GATEWAY,
            "max-age=31536000; includeSubDomains",
        ),
    ] {
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let (_, resp) = loadtest::client::tls_get(https, "a.test", &ca.cert_pem, &[alpn], path)
                .await
                .expect("TLS request");
            assert_eq!(resp.status, status, "{path}");
            assert_eq!(
                resp.header("strict-transport-security"),
                Some(hsts),
                "{path}"
            );
        }
    }

    // `proxyctl explain` says what a plain-HTTP URL gets.
    let fd = &fd;
    let explain = |url: &str| {
        let path = format!("/explain?url={url}");
        async move { admin(fd, Method::GET, &path, Some(TOKEN)).await.2 }
    };
    let plain = explain("http://shop.example/a?x=1").await;
    assert!(
        plain.contains(&format!(
            "plain HTTP:   redirected to https://shop.example:{port}/a?x=1"
        )),
        "{plain}"
    );
    let secure = explain("https://shop.example/a").await;
    assert!(!secure.contains("plain HTTP"), "{secure}");
    let hook = explain("http://shop.example/hook").await;
    assert!(!hook.contains("plain HTTP"), "{hook}");
}

/// A connection from `from` to `to`, its first bytes `preamble`.
async fn connect_from(
    from: &str,
    to: std::net::SocketAddr,
    preamble: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    let mut s = socket.connect(to).await.expect("connect");
    s.write_all(preamble).await.expect("preamble");
    s
}

/// A TCP balancer's connections (from `trusted_proxies`) name their clients in PROXY headers
/// (v1 text, v2 binary, before TLS too): the client is the connection's, in
/// `X-Forwarded-For`, in the per-address connection cap, and after the connection was parked.
/// Anyone else's PROXY line is no header but a bad request.
#[tokio::test]
async fn a_balancers_proxy_header_names_the_client() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::builder().start().await.expect("origin");
    let dir = temp_dir("proxy-protocol");
    let ca = certs::dev::DevCa::new("test CA").expect("ca");
    let leaf = ca.issue(&["a.test"]).expect("leaf");
    let (cert, key) = (dir.join("a.pem"), dir.join("a.key"));
    std::fs::write(&cert, &leaf.cert_pem).expect("write");
    std::fs::write(&key, &leaf.key_pem).expect("write");
    let config = format!(
        "[server]\ntrusted_proxies = [\"127.0.0.2\"]\nproxy_protocol = true\nmax_connections_per_ip = 1\npark_idle_after = \"100ms\"\n[[tls.certificates]]\nhosts = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        one_route("", &[(origin.addr, "", "v")])
    );
    let fd = start_with(StartOptions {
        config: Some(ConfigSource::Inline(config)),
        https: Some("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    })
    .await;
    let (http, https) = (fd.http.expect("http"), fd.https.expect("https"));
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let forwarded_for = |answer: &str| {
        answer
            .split("\"x-forwarded-for\",\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string)
    };

    // Version 1, and the same connection again once it was parked and taken back up.
    let mut v1 = connect_from(
        "127.0.0.2",
        http,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n",
    )
    .await;
    for round in 0..2 {
        v1.write_all(request).await.expect("request");
        let answer = common::read_message(&mut v1).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        assert_eq!(
            forwarded_for(&answer).as_deref(),
            Some("203.0.113.7"),
            "round {round}"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    common::metrics_with(&fd, &["frontdoor_connections_parked"]).await;
    // The per-address cap counts the client, not the balancer: the same client is at its
    // cap, another one gets in over the same balancer.
    let mut same = connect_from(
        "127.0.0.2",
        http,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51001 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(common::read_message(&mut same).await, None, "refused");
    let mut other = connect_from(
        "127.0.0.2",
        http,
        b"PROXY TCP4 198.51.100.9 10.0.0.1 51002 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let answer = common::read_message(&mut other).await.expect("answer");
    assert_eq!(forwarded_for(&answer).as_deref(), Some("198.51.100.9"));
    drop((v1, other));
    // Version 2 (a LOCAL health check keeps the balancer as the peer), and before TLS.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 192, 0, 2, 44, 10, 0, 0, 1, 0xC7, 0x38, 1, 187,
    ]);
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    local.extend_from_slice(request);
    let mut check = connect_from("127.0.0.2", http, &local).await;
    let answer = common::read_message(&mut check).await.expect("answer");
    assert_eq!(forwarded_for(&answer).as_deref(), Some("127.0.0.2"));
    drop(check);
    let tcp = connect_from("127.0.0.2", https, &v2).await;
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
            roots.add(c.expect("pem")).expect("root");
        }
        roots
    };
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .expect("handshake after the header");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("request");
    let answer = common::read_message(&mut tls).await.expect("answer");
    assert_eq!(forwarded_for(&answer).as_deref(), Some("192.0.2.44"));
    // From a peer that is not a balancer, a PROXY line is a malformed request.
    let mut forged = connect_from(
        "127.0.0.1",
        http,
        b"PROXY TCP4 203.0.113.99 10.0.0.1 51000 80\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    let answer = common::read_message(&mut forged).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}
