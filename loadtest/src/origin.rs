//! In-process origins: small HTTP servers (HTTP/1.1 and h2c) that tests and the demo put behind
//! the proxy. Each answers with `x-origin-region` / `x-origin-version` headers and a JSON body
//! describing what it received, and takes fault injection at run time ([`Faults`]).
//!
//! Paths with special meaning:
//! - `/healthz`: 200 (or 503 while `down`).
//! - `/echo`: streams the request body back.
//! - `/bytes/N`: streams N bytes (zeros) in 64 KiB chunks.
//! - `/truncate`: announces 1 MiB, sends 64 KiB, then drops the connection.
//! - `/stall`: sends the head and one chunk, then never sends more.
//! - `/status/NNN`: answers with that status.
//! - `Upgrade` requests: answered 101, then the raw bytes are echoed on the upgraded stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Body type of origin responses.
pub type OriginBody = BoxBody<Bytes, std::io::Error>;

/// Fault injection settings; the JSON shape of `PUT /demo/origins/{region}/{version}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// Share of requests (0..=1) answered with 500.
    pub error_rate: f64,
    /// Added delay before every answer.
    pub latency_ms: u64,
    /// When true every connection is dropped without an answer and `/healthz` fails.
    pub down: bool,
}

/// Live fault settings and counters of one origin.
#[derive(Debug, Default)]
pub struct Faults {
    spec: Mutex<FaultSpec>,
    /// Error credit: errors are spread evenly, exactly `error_rate` of requests, no randomness.
    credit: Mutex<f64>,
    down: AtomicBool,
    requests: AtomicU64,
}

impl Faults {
    pub fn set(&self, spec: FaultSpec) {
        self.down.store(spec.down, Ordering::SeqCst);
        *lock(&self.spec) = spec;
    }

    pub fn get(&self) -> FaultSpec {
        *lock(&self.spec)
    }

    /// Requests answered (or dropped) since start, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    fn next_is_error(&self) -> bool {
        let rate = lock(&self.spec).error_rate.clamp(0.0, 1.0);
        let mut credit = lock(&self.credit);
        *credit += rate;
        if *credit >= 1.0 - 1e-9 {
            *credit -= 1.0;
            true
        } else {
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another test thread panicked; the data is plain values.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds an origin: `Origin::builder().region("eu").version("stable").start().await`.
#[derive(Debug, Clone, Default)]
pub struct OriginBuilder {
    region: String,
    version: String,
    addr: Option<SocketAddr>,
}

/// Entry point for building origins.
#[derive(Debug)]
pub struct Origin;

impl Origin {
    pub fn builder() -> OriginBuilder {
        OriginBuilder {
            region: "local".into(),
            version: "stable".into(),
            addr: None,
        }
    }
}

impl OriginBuilder {
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.into();
        self
    }

    pub fn version(mut self, version: &str) -> Self {
        self.version = version.into();
        self
    }

    /// Listen here instead of `127.0.0.1:0`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub async fn start(self) -> std::io::Result<OriginHandle> {
        let listener = TcpListener::bind(
            self.addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let identity = Arc::new(Identity {
            region: self.region.clone(),
            version: self.version.clone(),
        });
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&faults),
            identity,
            stop_rx,
        ));
        Ok(OriginHandle {
            addr,
            region: self.region,
            version: self.version,
            faults,
            stop: stop_tx,
        })
    }
}

/// A running origin. Dropping the handle stops it (the listener closes; connections end).
#[derive(Debug)]
pub struct OriginHandle {
    pub addr: SocketAddr,
    pub region: String,
    pub version: String,
    pub faults: Arc<Faults>,
    stop: watch::Sender<bool>,
}

impl OriginHandle {
    /// Stops accepting and closes every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for OriginHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Identity {
    region: String,
    version: String,
}

async fn accept_loop(
    listener: TcpListener,
    faults: Arc<Faults>,
    identity: Arc<Identity>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let faults = Arc::clone(&faults);
        let identity = Arc::clone(&identity);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, peer, Arc::clone(&faults), Arc::clone(&identity))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.changed() => {}
            }
        });
    }
}

/// Error returned to hyper to drop the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("origin is down")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    faults: Arc<Faults>,
    identity: Arc<Identity>,
) -> Result<Response<OriginBody>, Dropped> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        let status = if faults.down.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(tag(
            Response::builder().status(status).body(full("ok\n")),
            &identity,
        ));
    }
    faults.requests.fetch_add(1, Ordering::SeqCst);
    if faults.down.load(Ordering::SeqCst) {
        return Err(Dropped);
    }
    let spec = faults.get();
    if spec.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(spec.latency_ms)).await;
    }
    if faults.next_is_error() {
        return Ok(tag(
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full("{\"error\":\"injected\"}\n")),
            &identity,
        ));
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        return Ok(upgrade(req, &identity));
    }
    let resp = match path.as_str() {
        "/echo" => Response::builder().body(req.into_body().map_err(std::io::Error::other).boxed()),
        "/truncate" => Response::builder()
            .header(http::header::CONTENT_LENGTH, 1 << 20)
            .body(truncated_body()),
        "/stall" => Response::builder().body(stalled_body()),
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
            Response::builder()
                .header(http::header::CONTENT_LENGTH, n)
                .body(zeros(n))
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            Response::builder()
                .status(code)
                .body(full(&describe(&req, peer, &identity)))
        }
        _ => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full(&describe(&req, peer, &identity))),
    };
    Ok(tag(resp, &identity))
}

fn tag(resp: http::Result<Response<OriginBody>>, id: &Identity) -> Response<OriginBody> {
    let mut resp = resp.unwrap_or_else(|_| Response::new(full("bad response\n")));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id.region) {
        h.insert("x-origin-region", v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.version) {
        h.insert("x-origin-version", v);
    }
    resp
}

/// The JSON an origin answers with: who it is and what it received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Echo {
    pub region: String,
    pub version: String,
    pub method: String,
    pub path: String,
    pub version_http: String,
    pub peer: String,
    pub headers: Vec<(String, String)>,
}

impl Echo {
    /// First value of a request header the origin saw.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn describe(req: &Request<Incoming>, peer: SocketAddr, id: &Identity) -> String {
    let echo = Echo {
        region: id.region.clone(),
        version: id.version.clone(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version_http: format!("{:?}", req.version()),
        peer: peer.to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    let mut s = serde_json::to_string(&echo).unwrap_or_default();
    s.push('\n');
    s
}

fn full(text: &str) -> OriginBody {
    Full::new(Bytes::copy_from_slice(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn zeros(n: u64) -> OriginBody {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![0u8; CHUNK as usize]);
    let stream = futures_lite_stream(n.div_ceil(CHUNK), move |i| {
        let len = CHUNK.min(n - i * CHUNK) as usize;
        Ok(Frame::data(chunk.slice(..len)))
    });
    StreamBody::new(stream).boxed()
}

fn truncated_body() -> OriginBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))))
            .await;
        // Let the head and first chunk reach the peer before dying.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tx
            .send(Err(std::io::Error::other(
                "origin dropped the connection mid-body",
            )))
            .await;
    });
    StreamBody::new(ReceiverStream(rx)).boxed()
}

fn stalled_body() -> OriginBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"first chunk\n"))))
            .await;
        // Hold the sender open for a long time without sending: the body never ends.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tx);
    });
    StreamBody::new(ReceiverStream(rx)).boxed()
}

fn upgrade(req: Request<Incoming>, id: &Identity) -> Response<OriginBody> {
    let proto = req
        .headers()
        .get(http::header::UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut io = TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    tag(
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::UPGRADE, proto)
            .header(http::header::CONNECTION, "upgrade")
            .body(full("")),
        id,
    )
}

/// A stream of `count` items made by `f(index)`.
fn futures_lite_stream<T>(
    count: u64,
    mut f: impl FnMut(u64) -> T + Send + Sync + Unpin + 'static,
) -> impl futures_core::Stream<Item = T> + Send + Sync + 'static {
    let mut i = 0;
    IterStream(std::iter::from_fn(move || {
        if i < count {
            i += 1;
            Some(f(i - 1))
        } else {
            None
        }
    }))
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// A channel's receiving end as a stream (for `StreamBody`): bodies fed as a test goes.
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
