//! Hostile input, byte for byte on a socket: ambiguous framing, bad headers, smuggling
//! attempts. Each must get a 4xx and never reach the upstream.

mod common;

use common::{cluster, one_route, start};
use loadtest::{Origin, OriginHandle};

async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        loadtest::client::raw_exchange(addr, raw, 4096),
    )
    .await
    .expect("answered or closed in time")
    .unwrap_or_default();
    String::from_utf8_lossy(&out).into_owned()
}

/// An origin and a front door routing everything to it; `server` holds `[server]` settings,
/// one per line (may be empty).
async fn behind_one_route(server: &str) -> (OriginHandle, frontdoor::server::Running) {
    let origin = Origin::builder().start().await.expect("origin");
    let fd = start(&format!(
        "[server]\n{server}\n{}",
        one_route("", &[(origin.addr, "", "v")])
    ))
    .await;
    (origin, fd)
}

/// What a table case must get: any 4xx without reaching the upstream, or exactly this status
/// (reaching the upstream only when it is 200).
#[derive(Debug, Clone, Copy)]
enum Want {
    Refused,
    Status(u16),
}

/// Sends each case on a connection of its own; one line per case that did not get what it
/// wants.
async fn table_failures<'a>(
    addr: std::net::SocketAddr,
    origin: &OriginHandle,
    cases: impl IntoIterator<Item = (&'a str, &'a [u8], Want)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, raw, want) in cases {
        let before = origin.faults.requests();
        let out = exchange(addr, raw).await;
        let status: u16 = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let reached = origin.faults.requests() > before;
        let ok = match want {
            Want::Refused => (400..500).contains(&status) && !reached,
            Want::Status(s) => status == s && reached == (s == 200),
        };
        if !ok {
            failures.push(format!(
                "{name}: status {status}, reached upstream: {reached}, answer {:?}",
                out.lines().next()
            ));
        }
    }
    failures
}

#[tokio::test]
async fn ambiguous_or_malformed_requests_are_refused_before_the_upstream() {
    let (origin, fd) = behind_one_route("").await;
    let addr = fd.http.expect("http");
    let cases: &[(&str, &[u8])] = &[
        ("two different Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ("Content-Length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde"),
        ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
        ("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd"),
        ("TE not ending in chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("TE identity", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"),
        ("TE with a space before the colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"),
        ("bare CR in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n"),
        ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n"),
        ("invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        // A Host must be `uri-host [":" port]` (RFC 9112 §3.2: 400 for an invalid one): an
        // upstream building URLs from it must not get a path, userinfo or a space in one.
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: evil@a\r\n\r\n"),
        ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        ("Host with a query", b"GET / HTTP/1.1\r\nHost: a?b\r\n\r\n"),
        ("Host with two ports", b"GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"),
        ("Host with a port not a number", b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n"),
        ("Host with an open bracket", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"),
        ("Host with a bad IPv6 literal", b"GET / HTTP/1.1\r\nHost: [a::b::c]\r\n\r\n"),
        ("Host with a bad percent escape", b"GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n"),
        ("Host of non-ASCII bytes", b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n"),
        ("absolute target with userinfo", b"GET http://evil@a/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("Transfer-Encoding and Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("Transfer-Encoding before content-length", b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n"),
        ("h2c upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"),
    ];
    // A transfer coding before chunked would be dropped on the way: 501 (RFC 9112 §6.1).
    let codings: &[(&str, &[u8], Want)] = &[
        ("TE gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", Want::Status(501)),
        ("TE gzip in a field of its own", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Want::Status(501)),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", Want::Refused),
        // Methods that reflect the request as the upstream got it, or open a tunnel: 405.
        ("TRACE", b"TRACE / HTTP/1.1\r\nHost: a\r\nCookie: session=1\r\nConnection: close\r\n\r\n", Want::Status(405)),
        ("TRACK", b"TRACK / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Want::Status(405)),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\nConnection: close\r\n\r\n", Want::Status(405)),
        ("OPTIONS passes", b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Want::Status(200)),
        // Hosts of every valid shape pass.
        ("Host name with a port", b"GET / HTTP/1.1\r\nHost: Shop-1.example_x.COM.:8443\r\nConnection: close\r\n\r\n", Want::Status(200)),
        ("Host IPv4 with a port", b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n", Want::Status(200)),
        ("Host IPv6 literal with a port", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n", Want::Status(200)),
        ("Host with an empty port", b"GET / HTTP/1.1\r\nHost: a:\r\nConnection: close\r\n\r\n", Want::Status(200)),
        ("Host percent-encoded and sub-delims", b"GET / HTTP/1.1\r\nHost: %61~b!c\r\nConnection: close\r\n\r\n", Want::Status(200)),
        ("absolute target", b"GET http://a:80/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", Want::Status(200)),
    ];
    let failures = table_failures(
        addr,
        &origin,
        cases
            .iter()
            .map(|(name, raw)| (*name, *raw, Want::Refused))
            .chain(codings.iter().copied()),
    )
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Behind a request in the same packet, a head with both fields is refused too: it is the
    // head hyper is handed, and that one is scanned. The connection closes after the 400, so
    // nothing rides behind it: the upstream sees the first request only.
    let smuggle = b"GET /first HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let before = origin.faults.requests();
    let out = exchange(addr, smuggle).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 2, "two answers: {out}");
    assert!(answers[1].starts_with("400"), "{out}");
    assert!(
        answers[1]
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{out}"
    );
    assert_eq!(
        origin.faults.requests() - before,
        1,
        "neither the ambiguous request nor the smuggled one reaches the upstream"
    );

    // On a connection hyper already parses (a chunked request came first), a later head with
    // both fields, read as it arrives, is refused the same way.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
        let first = read_response(&mut s).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let before = origin.faults.requests();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await
            .expect("write");
        let second = read_all(&mut s).await;
        assert!(second.starts_with("HTTP/1.1 400"), "{second}");
        assert_eq!(
            origin.faults.requests(),
            before,
            "refused before the upstream"
        );
    }
    fd.shutdown().await;
}

/// HTTP/1.0 may go without `Host` (RFC 9112 §3.2 asks it of HTTP/1.1 only): such a request is
/// routed among the routes for any host, and the upstream gets its endpoint's address as
/// `Host`, and no `X-Forwarded-Host`. Without a route for any host it finds none (404);
/// HTTP/1.1 without `Host` stays 400 (the table above).
#[tokio::test]
async fn http10_without_host_is_served_by_a_route_for_any_host() {
    let (origin, fd) = behind_one_route("").await;
    let addr = fd.http.expect("http");
    let out = exchange(
        addr,
        b"GET /x HTTP/1.0\r\nX-Forwarded-Host: spoofed\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: loadtest::Echo = serde_json::from_str(body).expect("the origin's echo");
    assert_eq!(echo.path, "/x");
    assert_eq!(echo.header("host"), Some(origin.addr.to_string().as_str()));
    // No host to forward, and the client's own is not passed on.
    assert_eq!(echo.header("x-forwarded-host"), None);
    fd.shutdown().await;

    let origin = Origin::builder().start().await.expect("origin");
    let fd = start(&format!(
        "{}\n[[routes]]\nhosts = [\"only.test\"]\ncluster = \"app\"\n",
        cluster("app", "", &[(origin.addr, "", "v")])
    ))
    .await;
    let addr = fd.http.expect("http");
    let out = exchange(addr, b"GET /x HTTP/1.0\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert_eq!(origin.faults.requests(), 0);
    fd.shutdown().await;
}

/// Request heads over the configured limits: 414 for a long target, 431 for too many or too
/// large header fields; nothing reaches the upstream. Just under each limit is served.
#[tokio::test]
async fn oversize_request_heads_get_414_or_431() {
    let (origin, fd) = behind_one_route(
        "max_uri_bytes = 1000\nmax_request_head_bytes = 8192\nmax_request_headers = 20",
    )
    .await;
    let addr = fd.http.expect("http");
    let head = |target: &str, fields: usize, field_bytes: usize| {
        let mut h = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
        for i in 2..fields {
            h.push_str(&format!("x-f{i}: {}\r\n", "v".repeat(field_bytes)));
        }
        h.push_str("\r\n");
        h.into_bytes()
    };
    let long = format!("/{}", "a".repeat(1000));
    let fits = format!("/{}", "a".repeat(998));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("target over max_uri_bytes", head(&long, 1, 0), 414),
        (
            "query takes the target over",
            head(&format!("/q?{}", "b".repeat(998)), 1, 0),
            414,
        ),
        ("target just under", head(&fits, 1, 0), 200),
        ("21 header fields", head("/", 21, 1), 431),
        ("20 header fields", head("/", 20, 1), 200),
        ("a head over 8 KiB", head("/", 4, 4200), 431),
        ("a head under 8 KiB", head("/", 4, 3900), 200),
    ];
    let failures = table_failures(
        addr,
        &origin,
        cases
            .iter()
            .map(|(name, raw, want)| (*name, raw.as_slice(), Want::Status(*want))),
    )
    .await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // HTTP/2 targets are held to the same limit.
    let before = origin.faults.requests();
    let r = loadtest::Client::h2c()
        .get(&common::url(&fd, &long))
        .await
        .expect("h2 answer");
    assert_eq!(r.status, http::StatusCode::URI_TOO_LONG);
    assert_eq!(origin.faults.requests(), before);
    fd.shutdown().await;
}

/// `max_requests_per_connection`: the last answer says `Connection: close` and the connection
/// ends; what was pipelined behind it is not served. HTTP/2 is not limited this way.
#[tokio::test]
async fn a_connection_carries_at_most_max_requests() {
    let (origin, fd) = behind_one_route("max_requests_per_connection = 3").await;
    let addr = fd.http.expect("http");
    let one = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let out = exchange(addr, one.repeat(5).as_bytes()).await;
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{out}");
    let closes = |a: &str| a.to_ascii_lowercase().contains("connection: close");
    assert!(!closes(answers[0]) && !closes(answers[1]), "{out}");
    assert!(closes(answers[2]), "{out}");
    assert_eq!(origin.faults.requests(), 3);
    let client = loadtest::Client::h2c();
    for _ in 0..5 {
        let r = client.get(&common::url(&fd, "/")).await.expect("h2");
        assert_eq!(r.status, http::StatusCode::OK);
    }
    fd.shutdown().await;
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let public = Origin::builder()
        .version("public")
        .start()
        .await
        .expect("origin");
    let admin = Origin::builder()
        .version("admin")
        .start()
        .await
        .expect("origin");
    let config = format!(
        "{}{}\n[[routes]]\npath_prefix = \"/api\"\ncluster = \"public\"\n[[routes]]\npath_prefix = \"/admin\"\ncluster = \"admin\"\n",
        cluster("public", "", &[(public.addr, "", "v")]),
        cluster("admin", "", &[(admin.addr, "", "v")]),
    );
    let fd = start(&config).await;
    let addr = fd.http.expect("http");
    let cases = [
        ("/api/../admin/users", "admin", "/admin/users"),
        ("/api/%2e%2e/admin", "admin", "/admin"),
        ("/%61pi/x?q=1", "public", "/api/x?q=1"),
        ("/api/./x", "public", "/api/x"),
    ];
    for (raw, version, forwarded) in cases {
        let out = exchange(
            addr,
            format!("GET {raw} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            out.contains(&format!("x-origin-version: {version}")),
            "{raw}: {out}"
        );
        assert!(
            out.contains(&format!("\"path\":\"{forwarded}\"")),
            "{raw} must reach the upstream as {forwarded}: {out}"
        );
    }
    let out = exchange(
        addr,
        b"GET /api/%zz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Our own headers from an untrusted client are not passed on.
    let out = exchange(
        addr,
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Frontdoor-Debug: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !out.to_ascii_lowercase().contains("x-frontdoor-debug"),
        "{out}"
    );
    fd.shutdown().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_key() {
    use http::Request;
    use http_body_util::Full;
    use loadtest::Client;
    let origin = Origin::builder().start().await.expect("origin");
    let config = format!(
        "{}\n[[routes]]\ncluster = \"app\"\nrate_limit = {{ rps = 0.5, burst = 2, key = \"header:x-api-key\" }}\n",
        cluster("app", "", &[(origin.addr, "", "v")])
    );
    let fd = start(&config).await;
    let get = |key: Option<&'static str>| {
        let mut req = Request::get(common::url(&fd, "/"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        let req = req.body(Full::default()).expect("req");
        async move { Client::http1().send(req).await.expect("resp") }
    };
    assert_eq!(get(Some("a")).await.status, 200);
    assert_eq!(get(Some("a")).await.status, 200);
    let before = origin.faults.requests();
    let limited = get(Some("a")).await;
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.header("retry-after"),
        Some("2"),
        "0.5 rps: the next token in 2 s"
    );
    assert!(
        limited.text().contains("rate_limited"),
        "{}",
        limited.text()
    );
    assert_eq!(
        origin.faults.requests(),
        before,
        "a limited request never reaches the upstream"
    );
    assert_eq!(
        get(Some("b")).await.status,
        200,
        "another key has its own bucket"
    );
    // Without the header the client address is the key.
    assert_eq!(get(None).await.status, 200);
    assert_eq!(get(None).await.status, 200);
    assert_eq!(get(None).await.status, 429);
    fd.shutdown().await;
}

#[tokio::test]
async fn connection_limits_refuse_clearly_and_free_slots_on_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_origin, fd) = behind_one_route("max_connections = 3\nmax_connections_per_ip = 2").await;
    let addr = fd.http.expect("http");
    // Two open keep-alive connections from 127.0.0.1, each served once.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"HTTP/1.1 200");
        open.push(s);
    }
    // The third from the same address is refused with a clear answer.
    let out = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 503") && out.contains("too many connections"),
        "{out}"
    );
    // Another client address (127.0.0.2) still gets in: the cap is per address.
    let other = tokio::net::TcpSocket::new_v4().expect("socket");
    other
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind 127.0.0.2");
    let mut s = other.connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.expect("read");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // Closing one frees its slot.
    drop(open.pop());
    let mut served = false;
    for _ in 0..50 {
        let out = exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        if out.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(served, "a closed connection's slot is released");
    fd.shutdown().await;
}

/// HTTP/2: a header list over the limit never reaches the upstream; the connection's other
/// clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_header_lists_over_the_limit_are_refused() {
    let (origin, fd) = behind_one_route("").await;
    let big = "x".repeat(frontdoor::listen::H2_MAX_HEADER_LIST as usize + 1024);
    let req = http::Request::get(common::url(&fd, "/big"))
        .header("x-big", big.as_str())
        .body(http_body_util::Full::default())
        .expect("req");
    // Either a 431 or a reset stream is a refusal.
    if let Ok(r) = loadtest::Client::h2c().send(req).await {
        assert_eq!(r.status, http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    assert_eq!(origin.faults.requests(), 0, "nothing reached the upstream");
    let ok = loadtest::Client::h2c()
        .get(&common::url(&fd, "/small"))
        .await
        .expect("a normal request");
    assert_eq!(ok.status, http::StatusCode::OK);
    assert_eq!(origin.faults.requests(), 1);
}

/// Slowloris: hundreds of connections trickling header bytes do not starve anyone else, and
/// none of them reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_starve_normal_requests() {
    use tokio::io::AsyncWriteExt;
    let (origin, fd) = behind_one_route("").await;
    let addr = fd.http.expect("http");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = Vec::new();
    for _ in 0..300 {
        let stop = std::sync::Arc::clone(&stop);
        slow.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind("127.0.0.3:0".parse().expect("addr"))
                .expect("bind");
            let Ok(mut s) = socket.connect(addr).await else {
                return;
            };
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if s.write_all(b"X").await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }));
    }
    let client = loadtest::Client::http1();
    let url = common::url(&fd, "/normal");
    let mut served = 0;
    for _ in 0..200 {
        let r = client.get(&url).await.expect("a normal request is served");
        assert_eq!(r.status, http::StatusCode::OK);
        served += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in slow {
        let _ = t.await;
    }
    assert_eq!(served, 200);
    assert_eq!(
        origin.faults.requests(),
        200,
        "no slow request reached the upstream"
    );
}

/// A client that stops inside its request body gets 408 and a closed connection after
/// `server.client_body_timeout`, not a 504 blamed on the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    // An upstream that reads the whole request before it would answer (and never does).
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    let upstream = common::raw_upstream(move |mut s| {
        let counted = Arc::clone(&counted);
        async move {
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                counted.fetch_add(n, Ordering::SeqCst);
            }
        }
    })
    .await;
    let fd = start(&format!(
        "[server]\nclient_body_timeout = \"1s\"\n{}",
        one_route("request_timeout = \"30s\"", &[(upstream, "", "v")])
    ))
    .await;
    let out = exchange(
        fd.http.expect("http"),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("client_timeout"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    // A small body is read whole before an upstream is chosen: none saw any of this one.
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

/// An upstream that refuses an upload before it has ended (a 413 after the head): the client
/// gets the answer and then a clean end of stream, and may go on sending for a moment (as an
/// uploader does until it reads the answer) without being reset — a reset would discard an
/// answer the client had not read yet.
#[tokio::test]
async fn an_answer_before_the_upload_ends_is_not_lost_to_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = common::raw_upstream(|mut s| async move {
        if common::read_head(&mut s).await.is_none() {
            return;
        }
        let _ = s.write_all(common::too_big(true).as_bytes()).await;
        // Closes with the body unread, as an upstream that refuses does.
    })
    .await;
    let fd = start(&one_route("", &[(upstream, "", "v")])).await;
    let mut client = common::upload_head(fd.http.expect("http")).await;
    let chunk = vec![b'x'; 64 * 1024];
    client.write_all(&chunk).await.expect("first part");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(15), client.read(&mut buf))
            .await
            .expect("answered in time")
        {
            Ok(0) => break Ok(()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("too big\n"), "{answer}");
    assert!(
        ended.is_ok(),
        "a clean end of stream after the answer: {ended:?}"
    );
    for i in 0..8 {
        let sent = client.write_all(&chunk).await;
        assert!(sent.is_ok(), "write {i} after the answer: {sent:?}");
    }
    client.shutdown().await.expect("shutdown");
    let last = client.read(&mut buf).await;
    assert!(matches!(last, Ok(0)), "{last:?}");
}

/// An upstream that refuses an upload part way through and resets the connection (a close
/// with the body unread) while the front door is still sending it: the answer reached the
/// front door's socket before the reset, so the client gets it — never a 502 because a write
/// met the reset before the answer was read — and then the end of its connection. Twenty
/// uploads, each a race a write used to win often (about 4 in 10 in the demo's uploads);
/// every other answer says `Connection: close` (after one hyper reads no more; after the
/// others it reads on, and meets the reset).
#[tokio::test]
async fn an_answer_before_a_reset_reaches_the_client() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = std::sync::Arc::new(AtomicUsize::new(0));
    let upstream = common::raw_upstream(move |mut s| {
        let close = served.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
        async move {
            if common::refuse_part_way(&mut s, close).await {
                // A reset at once, not a FIN after what is left to send.
                s.set_zero_linger().expect("SO_LINGER");
            }
        }
    })
    .await;
    let fd = start(&one_route("", &[(upstream, "", "v")])).await;
    common::every_upload_gets_the_413(fd.http.expect("http")).await;
}

/// An upstream that refuses an upload at once and resets the connection only after the
/// answer has gone to the client, which goes on sending: the upstream connection ends,
/// whether a read or a write of it meets the reset first, and so does the client's (a clean
/// end after the answer) instead of both being held for good. With and without
/// `Connection: close` on the answer (hyper reads no more after one, and reads on after the
/// other).
#[tokio::test]
async fn a_write_failing_after_the_answer_ends_the_exchange() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for close in [true, false] {
        let (answered_tx, answered_rx) = tokio::sync::watch::channel(false);
        let upstream = common::raw_upstream(move |mut s| {
            let mut answered = answered_rx.clone();
            async move {
                if common::read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.write_all(common::too_big(close).as_bytes()).await;
                // The client has the answer; then a reset.
                let _ = answered.wait_for(|a| *a).await;
                s.set_zero_linger().expect("SO_LINGER");
            }
        })
        .await;
        let fd = start(&one_route("", &[(upstream, "", "v")])).await;
        let mut client = common::upload_head(fd.http.expect("http")).await;
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        answered_tx.send(true).expect("upstream waits");
        let (mut read, mut write) = client.into_split();
        let uploader = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..16 {
                if write.write_all(&chunk).await.is_err() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            write
        });
        let mut buf = [0u8; 4096];
        let end = tokio::time::timeout(std::time::Duration::from_secs(15), read.read(&mut buf))
            .await
            .expect("the connection ends after the answer");
        assert!(matches!(end, Ok(0)), "close {close}: {end:?}");
        uploader.abort();
    }
}

/// An upstream that answers an upload at once and keeps the connection without reading the
/// rest: that connection is not the pool's while the upload is unfinished, so the next request
/// with a body (bodiless ones have their own connections) goes on another one instead of
/// waiting for an upload that may never end.
#[tokio::test]
async fn a_connection_still_taking_an_upload_is_not_reused() {
    use tokio::io::AsyncWriteExt;
    let upstream = common::raw_upstream(|mut s| async move {
        loop {
            let Some(head) = common::read_head(&mut s).await else {
                return;
            };
            let upload = head.starts_with(b"POST /upload ");
            let answer: &[u8] = if upload {
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nearly\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext"
            };
            if s.write_all(answer).await.is_err() {
                return;
            }
            if upload {
                // Holds the connection and reads no more.
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    let fd = start(&one_route(
        "request_timeout = \"120s\"",
        &[(upstream, "", "v")],
    ))
    .await;
    let mut uploader = common::upload_head(fd.http.expect("http")).await;
    uploader
        .write_all(&[b'x'; 1000])
        .await
        .expect("part of the body");
    let first = read_response(&mut uploader).await;
    assert!(first.ends_with("early\n"), "{first}");
    // The upload stays unfinished (the connection open) while the next request is served.
    let mut next = tokio::net::TcpStream::connect(fd.http.expect("http"))
        .await
        .expect("connect");
    next.write_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        .await
        .expect("request");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), read_response(&mut next))
        .await
        .expect("served without waiting for the upload (the upstream timeout is 120 s)");
    assert!(answer.ends_with("next"), "{answer}");
    drop(uploader);
}

/// Reads one HTTP/1.1 response with a `content-length` body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    common::read_message(s)
        .await
        .expect("a whole response before the close")
}

/// A keep-alive connection that has been served one `GET path`.
async fn served_once(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let first = read_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    s
}

/// Reads until the front door closes `s`: nothing written, closed within a second after `wait`
/// (on the test's paused clock).
async fn closed_silently_after(s: &mut tokio::net::TcpStream, wait: std::time::Duration) {
    let t0 = tokio::time::Instant::now();
    let out = read_all(s).await;
    assert_eq!(out, "");
    let took = t0.elapsed();
    assert!(
        took >= wait && took < wait + std::time::Duration::from_secs(1),
        "{took:?}"
    );
}

/// Everything `s` sends until it closes.
async fn read_all(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that starts a request head and does not finish it within `server.header_timeout`
/// gets 408 and a closed connection — trickling bytes does not extend the deadline, and the
/// same holds for the second request on a kept-alive connection. A new connection that sends
/// nothing is closed without an answer after the same time, one idle after a request after
/// `keepalive_timeout`; a slow request *body* is not the head timer's business.
/// (Paused clock: the timeouts elapse without waiting.)
#[tokio::test(start_paused = true)]
async fn an_unfinished_request_head_gets_408() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    let (origin, fd) =
        behind_one_route("header_timeout = \"5s\"\nkeepalive_timeout = \"20s\"").await;
    let addr = fd.http.expect("http");
    let timed_out = |out: &str| {
        out.starts_with("HTTP/1.1 408") && out.to_ascii_lowercase().contains("connection: close")
    };

    // A partial head, then nothing.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    s.write_all(b"GET /partial HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let out = read_all(&mut s).await;
    assert!(timed_out(&out), "{out}");
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());

    // Trickling one header byte a second: still 408, five seconds after the head began.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t0 = Instant::now();
    s.write_all(b"GET /trickle HTTP/1.1\r\n")
        .await
        .expect("write");
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr.write_all(b"X").await.is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut out).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(timed_out(&out), "{out}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(7),
        "{took:?}"
    );
    trickle.abort();

    // Keep-alive: the first request is served, the second head never finishes. (Idle for 2 s,
    // the connection is parked; its partial head takes it back up.)
    let mut s = served_once(addr, "/first").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.write_all(b"GET /second HTTP/1.1\r\nHo")
        .await
        .expect("write");
    until_taken_back_up();
    let out = read_all(&mut s).await;
    assert!(timed_out(&out), "{out}");

    // Nothing sent: closed after the head timeout, nothing written.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    closed_silently_after(&mut s, Duration::from_secs(5)).await;

    // Idle after a request: kept for keepalive_timeout, then closed, nothing written.
    let mut s = served_once(addr, "/kept").await;
    closed_silently_after(&mut s, Duration::from_secs(20)).await;

    // A body slower than the head timeout (but within client_body_timeout) is served.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_secs(8)).await;
    s.write_all(b"world").await.expect("write");
    let out = read_response(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    assert_eq!(
        origin.faults.requests(),
        3,
        "only the complete requests reached the upstream"
    );
}

/// Blocks the test's runtime until the plain listener's lot has no parked connection. The lot's
/// thread waits on real sockets, in real time: a paused clock left to run on meanwhile (the
/// runtime idle, waiting for the answer) jumps to the parked connection's keep-alive deadline
/// and closes it before the lot has handed it back. Blocking keeps the clock still.
fn until_taken_back_up() {
    let none = "frontdoor_connections_parked{listener=\"http\"} 0\n";
    for _ in 0..5000 {
        if frontdoor::telemetry::prometheus().render().contains(none) {
            // The gauge falls just before the lot spawns the connection's task again.
            std::thread::sleep(std::time::Duration::from_millis(20));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("the lot never handed the connection back");
}

/// Parked connections on the plain listener (`frontdoor_connections_parked`), polled until it
/// shows `n`.
async fn until_parked(fd: &frontdoor::server::Running, n: u32) {
    let want = format!("frontdoor_connections_parked{{listener=\"http\"}} {n}\n");
    for _ in 0..400 {
        let metrics = common::admin_call(fd, http::Method::GET, "/metrics", "")
            .await
            .text();
        if metrics.contains(&want) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("never {want}");
}

/// A connection idle for `server.park_idle_after` is parked (its task freed, its socket
/// watched by the listener's lot) and taken back up by its next request: the request count
/// carries over (the last allowed answer still says `Connection: close`), its place in the
/// per-address limit is kept while parked, and a parked connection still closes, silently,
/// after `keepalive_timeout`. (Real clock: the lot's thread waits on real sockets. Each wait
/// polls the metric until it shows the state; nothing is timed.)
#[tokio::test]
async fn idle_connections_are_parked_and_taken_back_up() {
    use tokio::io::AsyncWriteExt;
    let (origin, fd) = behind_one_route(
        "park_idle_after = \"100ms\"\nkeepalive_timeout = \"2s\"\nmax_requests_per_connection = 3\nmax_connections_per_ip = 1",
    )
    .await;
    let addr = fd.http.expect("http");
    let mut s = served_once(addr, "/one").await;
    until_parked(&fd, 1).await;
    // Parked, the connection still holds the address's one place.
    let refused = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    s.write_all(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let second = read_response(&mut s).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    until_parked(&fd, 1).await;
    s.write_all(b"GET /three HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let third = read_response(&mut s).await;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(
        third.to_ascii_lowercase().contains("connection: close"),
        "the third of three requests, across two parkings: {third}"
    );
    assert_eq!(read_all(&mut s).await, "", "closed after the last request");
    assert_eq!(origin.faults.requests(), 3);

    // Parked past keepalive_timeout: closed, nothing written.
    let mut s = served_once(addr, "/four").await;
    until_parked(&fd, 1).await;
    assert_eq!(read_all(&mut s).await, "");
    until_parked(&fd, 0).await;
}

/// A body trickled just often enough to beat the idle timeout, but averaging less than
/// `server.client_body_min_rate`, gets 408 once the grace is over; one above the rate is
/// served. (Paused clock.)
#[tokio::test(start_paused = true)]
async fn a_request_body_below_the_minimum_rate_gets_408() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::time::Instant;
    // An upstream that reads the whole body (by Content-Length) before it answers.
    let upstream = common::raw_upstream(|mut s| async move {
        if common::read_message(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
    })
    .await;
    let fd = start(&format!(
        "[server]\nclient_body_min_rate = 100\nclient_body_min_rate_grace = \"5s\"\n{}",
        one_route("request_timeout = \"60s\"", &[(upstream, "", "v")])
    ))
    .await;
    let addr = fd.http.expect("http");
    let upload = |per_second: usize| async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n")
            .await
            .expect("head");
        let t0 = Instant::now();
        let (mut rd, mut wr) = s.into_split();
        let sender = tokio::spawn(async move {
            let mut sent = 0;
            while sent < 1000 {
                if wr.write_all(&vec![b'x'; per_second]).await.is_err() {
                    return;
                }
                sent += per_second;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut out).await;
        sender.abort();
        (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
    };

    let (out, took) = upload(10).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("client_timeout"), "{out}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(8),
        "{took:?}"
    );

    let (out, _) = upload(200).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// Raw HTTP/2 frames, for floods a well-behaved client library will not send.
mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// HPACK: `:method GET`, `:scheme http`, `:path /`, `:authority a` (literal, not indexed).
    pub const GET: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    /// RFC 9113 §7.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const REFUSED_STREAM: u32 = 0x7;

    pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// The client preface and an empty SETTINGS frame.
    pub fn preface() -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame(&mut out, 0x4, 0, 0, &[]);
        out
    }

    /// Sends `bytes` on a new connection, then reads frames until `want(type, stream id,
    /// payload)` returns a value; `None` when the connection ends first. Panics when neither
    /// happens within 10 s.
    pub async fn send_until<T>(
        addr: std::net::SocketAddr,
        bytes: &[u8],
        want: impl Fn(u8, u32, &[u8]) -> Option<T>,
    ) -> Option<T> {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(bytes).await.expect("write");
        let read = async {
            loop {
                let mut head = [0u8; 9];
                s.read_exact(&mut head).await.ok()?;
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                let mut payload = vec![0u8; len];
                s.read_exact(&mut payload).await.ok()?;
                if let Some(found) = want(head[3], stream, &payload) {
                    return Some(found);
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the server answered or ended the connection")
    }

    pub const DATA: u8 = 0x0;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;

    /// One frame read: type, stream, payload, and when it came.
    pub type Seen = (u8, u32, Vec<u8>, tokio::time::Instant);

    /// A connection that keeps itself alive: every frame the server sends is recorded and its
    /// PINGs answered, until the connection ends (the reader's result: when).
    pub struct Live {
        pub wr: std::sync::Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
        pub seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
        pub reader: tokio::task::JoinHandle<tokio::time::Instant>,
    }

    impl Live {
        /// Connects and sends `bytes` (a preface first).
        pub async fn open(addr: std::net::SocketAddr, bytes: &[u8]) -> Live {
            let s = TcpStream::connect(addr).await.expect("connect");
            let (mut rd, wr) = s.into_split();
            let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
            wr.lock().await.write_all(bytes).await.expect("write");
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Seen>::new()));
            let reader = {
                let seen = std::sync::Arc::clone(&seen);
                let wr = std::sync::Arc::clone(&wr);
                tokio::spawn(async move {
                    loop {
                        let mut head = [0u8; 9];
                        if rd.read_exact(&mut head).await.is_err() {
                            return tokio::time::Instant::now();
                        }
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let stream =
                            u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                        let mut payload = vec![0u8; len];
                        if rd.read_exact(&mut payload).await.is_err() {
                            return tokio::time::Instant::now();
                        }
                        if head[3] == PING && head[4] & 1 == 0 {
                            let mut pong = Vec::new();
                            frame(&mut pong, PING, 1, 0, &payload);
                            let _ = wr.lock().await.write_all(&pong).await;
                        }
                        let at = tokio::time::Instant::now();
                        seen.lock()
                            .expect("lock")
                            .push((head[3], stream, payload, at));
                    }
                })
            };
            Live { wr, seen, reader }
        }

        pub async fn send(&self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            let mut out = Vec::new();
            frame(&mut out, kind, flags, stream, payload);
            self.wr.lock().await.write_all(&out).await.expect("write");
        }

        /// The frames of `kind` read so far.
        pub fn frames(&self, kind: u8) -> Vec<Seen> {
            let seen = self.seen.lock().expect("lock");
            seen.iter().filter(|f| f.0 == kind).cloned().collect()
        }
    }

    /// How the server ended the connection after `bytes`: `Some(code)` for a GOAWAY with that
    /// error code, `None` for a close without one.
    pub async fn ending(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u32> {
        send_until(addr, bytes, |kind, _, payload| {
            (kind == 0x7 && payload.len() >= 8)
                .then(|| u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
        })
        .await
    }
}

/// HTTP/2 floods end the flooding connection with GOAWAY (ENHANCE_YOUR_CALM) and never tie up
/// the upstream; a stream over the concurrency limit is refused; the next client is served. Rapid reset (CVE-2023-44487): streams opened and
/// reset at once, all in one packet. CONTINUATION flood: a header block that never ends,
/// in empty CONTINUATION frames that add nothing to the header list size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_floods_end_the_connection_and_excess_streams_are_refused() {
    use h2raw::*;
    let (origin, fd) = behind_one_route("").await;
    let addr = fd.http.expect("http");

    let mut rapid = preface();
    for i in 0..30u32 {
        let id = 2 * i + 1;
        frame(&mut rapid, HEADERS, END_HEADERS | END_STREAM, id, GET);
        frame(&mut rapid, RST_STREAM, 0, id, &8u32.to_be_bytes()); // CANCEL
    }
    assert_eq!(
        ending(addr, &rapid).await,
        Some(ENHANCE_YOUR_CALM),
        "rapid reset"
    );
    let reached = origin.faults.requests();
    assert!(
        reached < 30,
        "{reached} of 30 reset streams reached the upstream"
    );

    let mut flood = preface();
    frame(&mut flood, HEADERS, 0, 1, GET);
    for _ in 0..50 {
        frame(&mut flood, CONTINUATION, 0, 1, &[]);
    }
    assert_eq!(
        ending(addr, &flood).await,
        Some(ENHANCE_YOUR_CALM),
        "CONTINUATION flood"
    );
    assert_eq!(
        origin.faults.requests(),
        reached,
        "the unfinished head went nowhere"
    );

    // One stream over the concurrent-stream limit is refused (RST_STREAM REFUSED_STREAM) while
    // the others stay open: headers without END_STREAM keep each request waiting for a body.
    let mut many = preface();
    let over = 2 * frontdoor::listen::H2_MAX_STREAMS + 1;
    for id in (1..=over).step_by(2) {
        frame(&mut many, HEADERS, END_HEADERS, id, GET);
    }
    let refused = send_until(addr, &many, |kind, stream, payload| {
        (kind == RST_STREAM).then(|| {
            (
                stream,
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
            )
        })
    })
    .await;
    assert_eq!(
        refused,
        Some((over, REFUSED_STREAM)),
        "the stream over the limit"
    );

    // The control: a well-behaved client is served.
    let ok = loadtest::Client::h2c()
        .get(&common::url(&fd, "/after"))
        .await
        .expect("a normal request");
    assert_eq!(ok.status, http::StatusCode::OK);
    fd.shutdown().await;
}

/// A client that takes none of an answer for `server.send_timeout` is closed (its upstream
/// request goes with it); one that reads slowly but steadily gets every byte. (Paused clock:
/// the timeouts elapse without waiting.)
#[tokio::test(start_paused = true)]
async fn a_client_that_takes_none_of_an_answer_is_closed_after_send_timeout() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    // More than the socket buffers between the proxy and its client hold.
    const SIZE: usize = 32 << 20;
    let (_origin, fd) = behind_one_route("send_timeout = \"20s\"").await;
    let addr = fd.http.expect("http");
    let ask = format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: a\r\n\r\n");

    // Steady: 512 KiB every 2 s. (The proxy sees progress when the kernel has room in the
    // socket buffer again: a third of it taken, several MiB on loopback.)
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(ask.as_bytes()).await.expect("write");
    let mut got = 0usize;
    let mut buf = vec![0u8; 512 << 10];
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut this_turn = 0;
        while this_turn < buf.len() {
            match s.read(&mut buf[this_turn..]).await.expect("read") {
                0 => break,
                n => this_turn += n,
            }
        }
        got += this_turn;
        if this_turn < buf.len() {
            break;
        }
    }
    assert!(got > SIZE, "every byte and the head: {got}");

    // Stalled: after the send timeout the connection is closed with the answer unfinished.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(ask.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(600), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(out.len() < SIZE, "{} bytes", out.len());
    common::metrics_with(&fd, &["frontdoor_send_timeouts_total{listener=\"http\"} 1"]).await;
}

/// An HTTP/2 client that keeps its connection alive but gives one stream no flow-control
/// window has that stream's answer cut after `server.send_timeout` (the upstream let go; the
/// stream reset when the client next asks), while a stream it grants window to every few
/// seconds is served throughout. (Paused clock.)
#[tokio::test(start_paused = true)]
async fn an_h2_stream_given_no_window_is_cut_after_send_timeout() {
    use h2raw::*;
    use std::time::Duration;
    let (_origin, fd) = behind_one_route("send_timeout = \"20s\"").await;
    let addr = fd.http.expect("http");

    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may be sent data until granted.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut hello, 0x4, 0, 0, &[0, 4, 0, 0, 0, 0]);
    frame(
        &mut hello,
        WINDOW_UPDATE,
        0,
        0,
        &(64u32 << 20).to_be_bytes(),
    );
    // GET /bytes/8388608 (HPACK: :path as a literal), on streams 1 and 3.
    let mut get = vec![0x82, 0x86, 0x04, 14];
    get.extend_from_slice(b"/bytes/8388608");
    get.extend_from_slice(&[0x01, 0x01, b'a']);
    for id in [1, 3] {
        frame(&mut hello, HEADERS, END_HEADERS | END_STREAM, id, &get);
    }
    let live = Live::open(addr, &hello).await;

    // Stream 3 gets 64 KiB of window every 5 s for 60 s; stream 1 gets none.
    let grant = (64u32 << 10).to_be_bytes();
    for _ in 0..12 {
        live.send(WINDOW_UPDATE, 0, 3, &grant).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    // Now stream 1 asks: its answer was cut, so the stream is reset rather than served.
    live.send(WINDOW_UPDATE, 0, 1, &grant).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let data = |stream: u32| -> usize {
        live.frames(DATA)
            .iter()
            .filter(|f| f.1 == stream)
            .map(|f| f.2.len())
            .sum()
    };
    let reset = |stream: u32| live.frames(RST_STREAM).iter().any(|f| f.1 == stream);
    assert_eq!(data(3), (12 * 64) << 10, "stream 3 served as granted");
    assert!(!reset(3), "stream 3 kept");
    assert_eq!(data(1), 0, "stream 1 never sent data");
    assert!(reset(1), "stream 1 reset");
    common::metrics_with(&fd, &["frontdoor_send_timeouts_total{listener=\"http\"} 1"]).await;
    live.reader.abort();
}

/// An HTTP/2 connection is closed with a GOAWAY once it has had no stream for
/// `keepalive_timeout` (PINGs answered or not), never while a stream is open. (Paused clock.)
#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_gets_goaway_after_keepalive_timeout() {
    use h2raw::*;
    use std::time::Duration;
    use tokio::time::Instant;
    // The echo answers at once and streams back what comes: nothing times the open stream
    // out for the test's five minutes.
    let origin = Origin::builder().start().await.expect("origin");
    let fd = start(&format!(
        "[server]\nkeepalive_timeout = \"20s\"\nclient_body_timeout = \"300s\"\n{}",
        one_route("body_idle_timeout = \"300s\"", &[(origin.addr, "", "v")])
    ))
    .await;
    let addr = fd.http.expect("http");

    // POST /echo on stream 1, its body not ended: the stream stays open.
    let mut hello = preface();
    let mut post = vec![0x83, 0x86, 0x04, 5];
    post.extend_from_slice(b"/echo");
    post.extend_from_slice(&[0x01, 0x01, b'a']);
    frame(&mut hello, HEADERS, END_HEADERS, 1, &post);
    let live = Live::open(addr, &hello).await;

    // A minute with the stream open: PINGs, no GOAWAY.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!live.frames(PING).is_empty(), "PINGs answered meanwhile");
    assert!(
        live.frames(GOAWAY).is_empty(),
        "closed while a stream was open"
    );
    // The body ends; the answer comes; then the connection idles.
    live.send(DATA, END_STREAM, 1, b"x").await;
    let ended = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(300), live.reader)
        .await
        .expect("the connection was closed")
        .expect("reader");
    let echoed: Vec<u8> = live
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|f| f.0 == DATA && f.1 == 1)
        .flat_map(|f| f.2.clone())
        .collect();
    assert_eq!(echoed, b"x", "stream 1 answered");
    let goaways = live.seen.lock().expect("lock").clone();
    let at = goaways
        .iter()
        .find(|f| f.0 == GOAWAY)
        .map(|f| f.3)
        .expect("a GOAWAY before the close");
    let idle = at - ended;
    assert!(
        idle >= Duration::from_secs(20) && idle < Duration::from_secs(22),
        "GOAWAY {idle:?} after the stream ended"
    );
    assert!(closed >= at);
}

/// A body larger than its route takes gets 413: at once, unread, when its `Content-Length`
/// says so (nothing goes upstream); when it streams without one, as it passes the limit (the
/// upstream's copy is cut off). A route may take more than the server's limit.
#[tokio::test]
async fn a_body_over_its_routes_limit_gets_413() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Reads each request whole (to its length, or its last chunk) before answering, as an
    // application server reading a form does: a body cut off gets no answer.
    let bodies = Arc::new(AtomicUsize::new(0));
    let whole = Arc::clone(&bodies);
    let upstream = common::raw_upstream(move |mut s| {
        let whole = Arc::clone(&whole);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end].lines().find_map(|l| {
                        l.strip_prefix("content-length:")?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    });
                    let done = match length {
                        Some(n) => buf.len() >= end + 4 + n,
                        None => text[end..].contains("\r\n0\r\n\r\n"),
                    };
                    if done {
                        whole.fetch_add(1, Ordering::Relaxed);
                        let answer =
                            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                        let _ = s.write_all(answer.as_bytes()).await;
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
        }
    })
    .await;
    let fd = start(&format!(
        "[server]\nmax_request_body = \"1KiB\"\n{}\n[[routes]]\ncluster = \"app\"\n[[routes]]\npath_prefix = \"/big\"\ncluster = \"app\"\nmax_request_body = \"1MiB\"\n",
        cluster("app", "", &[(upstream, "", "v")])
    ))
    .await;
    let addr = fd.http.expect("http");
    // Declared too large: answered without the body being sent at all, the connection closed.
    let answer = exchange(
        addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // At the limit, and over it on a route that takes more: forwarded whole.
    for (path, size) in [("/x", 1024), ("/big", 4096)] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n{}",
            "a".repeat(size)
        );
        let answer = exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{path}: {answer}");
    }
    assert_eq!(bodies.load(Ordering::Relaxed), 2);
    // Chunked, no length: 413 once it passes the limit, and the upstream never got all of it.
    let mut chunked = String::from(
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..4 {
        chunked.push_str(&format!("200\r\n{}\r\n", "b".repeat(512)));
    }
    chunked.push_str("0\r\n\r\n");
    let answer = exchange(addr, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert_eq!(
        bodies.load(Ordering::Relaxed),
        2,
        "the cut body never arrived whole"
    );
    // The same under the route's larger limit passes.
    let answer = exchange(addr, chunked.replacen("/x", "/big/x", 1).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(bodies.load(Ordering::Relaxed), 3);
}
