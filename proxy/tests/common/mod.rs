//! Shared test helpers: start a front door on loopback `:0` ports in front of in-process origins.
#![allow(dead_code)]

pub mod etcd;

use std::net::SocketAddr;
use std::time::Duration;

use frontdoor::server::{self, Running, StartOptions};
use frontdoor::state::ConfigSource;

pub const TOKEN: &str = "test-token";

/// The first port of the kernel's ephemeral range, where `:0` binds and outgoing connections
/// take their local ports.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A loopback port that was free a moment ago, for a process that must be told its port before
/// it binds (pebble, etcd, a front door's own config). It is picked below the ephemeral range:
/// a port from `:0` comes from that range, where any outgoing connection on the machine, or
/// another test's `:0` bind, may take it before its user binds it (seen in CI: a front door's
/// HTTPS port taken between the pick and the bind). Each process starts at its own place in the
/// range and steps on, so concurrent tests seldom meet and one test never gets a port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let low = u32::from(ephemeral_low());
    let fits = |port: u32| {
        u16::try_from(port)
            .ok()
            .filter(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
    };
    if low > FIRST + 1_000 {
        let span = low - FIRST;
        if NEXT.load(Ordering::Relaxed) == u32::MAX {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let start = std::process::id().wrapping_mul(7_919) ^ nanos;
            let _ =
                NEXT.compare_exchange(u32::MAX, start % span, Ordering::Relaxed, Ordering::Relaxed);
        }
        for _ in 0..span {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            if let Some(port) = fits(FIRST + step % span) {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

pub async fn start(config: &str) -> Running {
    start_with(StartOptions {
        config: Some(ConfigSource::Inline(config.to_string())),
        ..Default::default()
    })
    .await
}

pub async fn start_with(mut opts: StartOptions) -> Running {
    certs::install_crypto_provider();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    opts.http.get_or_insert(any);
    opts.admin.get_or_insert(any);
    if opts.admin_token.is_empty() {
        opts.admin_token = TOKEN.to_string();
    }
    server::start(opts).await.expect("front door starts")
}

/// An admin API call on `running` with the test token.
pub async fn admin_call(
    running: &Running,
    method: http::Method,
    path: &str,
    body: &str,
) -> loadtest::Collected {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{}", running.admin, path))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("admin request");
    loadtest::Client::http1()
        .send(req)
        .await
        .expect("admin answers")
}

/// The front door's `/metrics` text, after asserting it holds each of `wants`.
pub async fn metrics_with(running: &Running, wants: &[&str]) -> String {
    let metrics = admin_call(running, http::Method::GET, "/metrics", "")
        .await
        .text();
    for want in wants {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    metrics
}

pub fn url(running: &Running, path: &str) -> String {
    format!("http://{}{}", running.http.expect("http listener"), path)
}

/// A cluster section with the given endpoints (`(address, region, version)`).
pub fn cluster(name: &str, extra: &str, endpoints: &[(SocketAddr, &str, &str)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, r, v)| {
            let region = if r.is_empty() {
                String::new()
            } else {
                format!(", region = \"{r}\"")
            };
            format!("{{ address = \"{a}\"{region}, version = \"{v}\" }}")
        })
        .collect();
    format!(
        "[clusters.{name}]\n{extra}\nendpoints = [{}]\n",
        eps.join(", ")
    )
}

/// A config of one cluster, `app` (with `extra` options and these endpoints), and one route
/// sending every request to it.
pub fn one_route(extra: &str, endpoints: &[(SocketAddr, &str, &str)]) -> String {
    format!(
        "{}\n[[routes]]\ncluster = \"app\"\n",
        cluster("app", extra, endpoints)
    )
}

/// Waits (polling every 20 ms, up to 10 s) until `check` holds. For conditions driven by real
/// network I/O, where a paused clock cannot be used; nothing asserts on how long it took.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(10), check).await;
}

/// [`eventually`] with a longer limit, for flows with a designed retry after a backoff.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..limit.as_millis() / 20 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition never held: {what}");
}

/// A loopback address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    // Bound but never listening: connects are refused. The socket is kept for the test's life
    // so no other test's ephemeral bind takes the port (a dropped listener's port can be
    // handed out again while the suite runs in parallel, and then the "dead" address answers).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let a = socket.local_addr().expect("addr");
    std::mem::forget(socket);
    a
}

/// Reads one HTTP/1.1 message — head and `Content-Length` body — from `s`, as text; `None` when
/// the peer closes first. Bytes past the message are dropped (callers do not pipeline).
pub async fn read_message(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A raw TCP upstream on a free loopback port: `serve` runs, in its own task, for each
/// connection accepted.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A gRPC server over h2c that ends every call with `grpc-status: {status}` and an
/// `x-origin-version: {version}` header: after one message, in its trailers; or, when
/// `trailers_only`, in the head of a bodiless answer (as gRPC answers a call that fails at
/// once). Every answer's HTTP status is 200.
pub async fn grpc_upstream(
    status: &'static str,
    version: &'static str,
    trailers_only: bool,
) -> SocketAddr {
    use bytes::Bytes;
    use hyper::body::Frame;
    type Frames = Result<Frame<Bytes>, std::io::Error>;
    raw_upstream(move |s| {
        let service = hyper::service::service_fn(move |_req| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Frames>(2);
            let mut answer = http::Response::builder()
                .header("content-type", "application/grpc")
                .header("x-origin-version", version);
            if trailers_only {
                answer = answer.header("grpc-status", status);
            } else {
                // A message: not compressed, its length, its bytes.
                let message = Bytes::from_static(b"\0\0\0\0\x02hi");
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static(status));
                let _ = tx.try_send(Ok(Frame::data(message)));
                let _ = tx.try_send(Ok(Frame::trailers(trailers)));
            }
            drop(tx);
            let body = http_body_util::StreamBody::new(loadtest::origin::ReceiverStream(rx));
            std::future::ready(Ok::<_, std::convert::Infallible>(
                answer.body(body).expect("answer"),
            ))
        });
        let serve = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(hyper_util::rt::TokioIo::new(s), service);
        async move {
            let _ = serve.await;
        }
    })
    .await
}

/// Reads from `s` until a request head has ended; what was read (the head and any bytes after
/// it), or `None` when the peer closes first.
pub async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(head)
}

/// A new connection to `addr` that has sent the head of a 100 MB `POST /upload`.
pub async fn upload_head(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .expect("head");
    client
}

/// An origin's side of an upload it refuses part way through: reads the head and 256 KiB of
/// the body (so the front door is sending when the origin closes), then answers `413` with the
/// body `too big\n` (with `Connection: close` when `close`). False when the peer closed first.
/// The caller then closes with the rest unread: a reset.
pub async fn refuse_part_way(
    s: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    close: bool,
) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while seen < 256 * 1024 {
        match s.read(&mut buf).await {
            Ok(n) if n > 0 => seen += n,
            _ => return false,
        }
    }
    let _ = s.write_all(too_big(close).as_bytes()).await;
    let _ = s.flush().await;
    true
}

/// An origin's refusal of an upload: `413` with the body `too big\n`, with `Connection:
/// close` when `close`.
pub fn too_big(close: bool) -> String {
    format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n{}\r\ntoo big\n",
        if close { "connection: close\r\n" } else { "" }
    )
}

/// Twenty uploads ([`upload_until_answered`]) to a front door in front of an origin that
/// answers `413` with the body `too big\n` part way through ([`refuse_part_way`]): every one
/// gets that answer, and then a clean end of its connection.
pub async fn every_upload_gets_the_413(addr: SocketAddr) {
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (answer, ended) = upload_until_answered(addr).await;
        statuses.push(answer.get(9..12).unwrap_or("none").to_string());
        if answer.starts_with("HTTP/1.1 413") {
            assert!(answer.ends_with("too big\n"), "{answer}");
            assert!(ended.is_ok(), "a clean end after the answer: {ended:?}");
        }
    }
    assert!(statuses.iter().all(|s| s == "413"), "{statuses:?}");
}

/// Uploads (a 100 MB `POST /upload`, 64 KiB at a time) on a new connection to `addr` until an
/// answer comes; returns everything read until the connection ended, and how it ended (a clean
/// end of stream, or the read's error).
pub async fn upload_until_answered(addr: SocketAddr) -> (String, std::io::Result<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut read, mut write) = upload_head(addr).await.into_split();
    let uploader = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1500 {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let (answer, ended) = tokio::time::timeout(Duration::from_secs(15), async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return (answer, Ok(())),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return (answer, Err(e)),
            }
        }
    })
    .await
    .expect("answered and ended in time");
    uploader.abort();
    (String::from_utf8_lossy(&answer).into_owned(), ended)
}
