//! Upstream connections: one client per cluster transport (HTTP/1.1 or HTTP/2, plain or TLS),
//! pooling connections per endpoint address.
//!
//! HTTP/1.1 requests without an upgrade that are bodiless or carry a small body already read
//! whole (nearly all of them): the exchange is driven inline in the request's task
//! ([`super::wire`]), the body in the head's write. Requests streaming a larger body, or asking
//! for a WebSocket upgrade: hyper's client, which writes a body while reading an early answer and
//! hands over upgraded connections. Each kind keeps its own idle connections.
//!
//! Idle HTTP/1.1 connections per address, last in first out; a connection goes back to its
//! address's list when the response body it carried was read to the end, and is dropped when
//! the body was abandoned, the upstream closed it, or it sat idle past the cluster's
//! `idle_timeout` (a reaper sweeps quiet pools). A request that a reused connection could not
//! carry — the upstream closed it while it sat idle — is sent once more on a fresh connection
//! when it was not written, or when it is idempotent and the connection ended before a byte of
//! an answer came (the upstream closed it as idle while the request was on its way; RFC 9112
//! §9.3.1). Otherwise, once written, only the cluster's retry policy may send it again.
//! HTTP/2: multiplexed connections per address, each carrying up to
//! [`H2_STREAMS_PER_CONNECTION`] streams before the next request opens another; requests that
//! come while one is being opened wait for its handshake; spare connections are let go once
//! their streams end, closed ones replaced; a request a connection gives back unsent (the
//! upstream sent GOAWAY on it) goes once more on a new one.
//!
//! An upstream may answer an upload before it has read all of it (a 413, a 401) and close,
//! and a close with bytes unread is a reset. The answer reaches our socket before the reset,
//! but a write that meets the reset would fail the exchange (502) before hyper reads it. So
//! the write failure is held back ([`HoldWrites`]): hyper reads the answer, forwards it, and
//! the connection ends after it (the rest of the upload is not read).
//! A connection goes back to the pool only when the request's body was sent to its end.
//!
//! The request path takes an idle connection under one short mutex hold per checkout and
//! return. Idle lists are kept per runtime as well as per address ([`lane`]): with
//! `--workers`, a hyper connection's task lives on the worker that opened it, and a request
//! from another worker would drive it across threads (a wakeup each way per request); inline
//! connections are registered with the reactor of the worker that opened them. The threads of
//! one multi-thread runtime (the default layout) share a reactor and move tasks between them,
//! so they share their lists.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpSocket;
use tokio::time::Instant;

use super::body::CLIENT_BODY_ENDED;
use super::pool::{Slot, UpstreamBody};
pub use super::wire::Outgoing;
use super::wire::{Io, Return, WireBody, WireConn};

type Conn = TokioIo<Box<dyn Io>>;

/// Idle HTTP/1.1 connections kept per address at most.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, timed out, or the TLS handshake failed.
    Connect(String),
    /// The connection broke during the exchange, or the answer was malformed.
    Exchange(Box<dyn std::error::Error + Send + Sync>),
    /// No response head by the request's deadline.
    Timeout,
}

/// An inline exchange's times: `now`, the clock as the caller read it when sending, and
/// `deadline`, by when the response head must have come.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub now: Instant,
    pub deadline: Instant,
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// An HTTP/2 upstream said it did not process the request (RFC 9113 §8.7): it refused
    /// the stream (`REFUSED_STREAM`), or its GOAWAY's last stream came before it. Any
    /// request may then go again, as one never sent may.
    pub fn unprocessed(&self) -> bool {
        let UpstreamError::Exchange(e) = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
        while let Some(c) = cause {
            if let Some(h2) = c.downcast_ref::<h2::Error>() {
                return h2.is_remote()
                    && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
            }
            cause = c.source();
        }
        false
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
            UpstreamError::Timeout => f.write_str("no response head by the deadline"),
        }
    }
}

impl std::error::Error for UpstreamError {}

impl From<hyper::Error> for UpstreamError {
    fn from(e: hyper::Error) -> UpstreamError {
        UpstreamError::Exchange(e.into())
    }
}

impl From<super::wire::WireError> for UpstreamError {
    fn from(e: super::wire::WireError) -> UpstreamError {
        if e.timed_out {
            UpstreamError::Timeout
        } else {
            UpstreamError::Exchange(e.into())
        }
    }
}

/// How to reach a cluster's endpoints.
pub struct Transport {
    pub http2: bool,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// TLS: the connector (its config carries the ALPN offer) and the name to verify, when
    /// not the endpoint's IP address.
    pub tls: Option<(tokio_rustls::TlsConnector, Option<ServerName<'static>>)>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("http2", &self.http2)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// An idle connection (a hyper sender or an inline connection) and when it went idle.
#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Idle connections by (address, [`lane`]).
type IdleLists<C> = Mutex<routes::LookupMap<(SocketAddr, usize), Vec<Idle<C>>>>;

/// Puts a finished connection on this thread's idle list for `addr`, unless the list is full.
fn park<C>(lists: &IdleLists<C>, addr: SocketAddr, conn: C) {
    let mut pools = lists.lock().unwrap_or_else(|p| p.into_inner());
    let list = pools.entry((addr, lane())).or_default();
    if list.len() < MAX_IDLE_PER_ADDRESS {
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

/// Drops the idle connections `keep` rejects, and the lists left empty.
fn sweep<C>(lists: &IdleLists<C>, keep: impl Fn(&Idle<C>) -> bool) {
    let mut pools = lists.lock().unwrap_or_else(|p| p.into_inner());
    pools.retain(|_, list| {
        list.retain(&keep);
        !list.is_empty()
    });
}

#[derive(Debug)]
struct Shared {
    transport: Transport,
    idle: IdleLists<H1>,
    wire: IdleLists<Box<WireConn>>,
    h2: Mutex<routes::LookupMap<SocketAddr, Vec<H2Conn>>>,
}

/// Streams one HTTP/2 connection to an upstream carries at once before the next request opens
/// another: the least a peer should allow (RFC 9113 §6.5.2 recommends at least 100), so a
/// request is not held in a connection's queue by a peer allowing fewer.
const H2_STREAMS_PER_CONNECTION: usize = 100;

type H2Send = http2::SendRequest<UpstreamBody>;

/// How often an HTTP/2 upstream connection is PINGed, idle or busy, and how long an answer
/// may take before the connection is given up.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/2 connection to an address: the outcome of its handshake, awaited by every request
/// that chose it while it was being opened (one connect for all of them), and its streams.
#[derive(Debug)]
struct H2Conn {
    ready: Arc<tokio::sync::OnceCell<Result<H2Send, Arc<str>>>>,
    streams: Arc<AtomicUsize>,
}

impl H2Conn {
    fn closed(&self) -> bool {
        match self.ready.get() {
            Some(Ok(send)) => send.is_closed(),
            Some(Err(_)) => true,
            None => false,
        }
    }
}

/// A request's stream on an HTTP/2 connection, counted until its response body is dropped.
#[derive(Debug)]
struct H2Stream(Arc<AtomicUsize>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Return for Shared {
    fn give_back(&self, conn: Box<WireConn>) {
        park(&self.wire, conn.addr, conn);
    }
}

/// A cluster's upstream client; cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    shared: Arc<Shared>,
}

impl UpstreamClient {
    pub fn new(transport: Transport) -> UpstreamClient {
        let shared = Arc::new(Shared {
            transport,
            idle: Mutex::default(),
            wire: Mutex::default(),
            h2: Mutex::default(),
        });
        if !shared.transport.http2 {
            reap(Arc::downgrade(&shared));
        }
        UpstreamClient { shared }
    }

    /// Sends `req` (its URI's path and query; headers as they should go) to the endpoint at
    /// `addr`, named `authority` (the Host when the request has none, and HTTP/2's
    /// `:authority`). `deadline` bounds an inline exchange (see [`Self::request_inline`]);
    /// callers bound the rest.
    pub async fn request(
        &self,
        addr: SocketAddr,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let t = &self.shared.transport;
        if t.http2 {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            // `:authority` is the host the client asked for (RFC 9113 §8.3.1: an intermediary
            // builds it from the original request's authority), the endpoint's only for a
            // request that named none; the `Host` field it came from does not go beside it.
            let asked = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok());
            *req.uri_mut() = Uri::builder()
                .scheme(if t.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                })
                .authority(asked.unwrap_or_else(|| authority.clone()))
                .path_and_query(path)
                .build()
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            *req.version_mut() = http::Version::HTTP_2;
            // Boxed, like every connect below: rare paths with large futures (TLS, handshakes)
            // stay out of the per-request future, which hyper moves around whole.
            return Box::pin(self.request_h2(addr, req, deadline)).await;
        }
        // HTTP/1.1 sends the URI as given: callers pass the origin form.
        debug_assert!(
            req.uri().authority().is_none(),
            "origin-form request target"
        );
        *req.version_mut() = http::Version::HTTP_11;
        if req.body().is_end_stream() && self.inline(req.headers()) {
            let outgoing = Outgoing {
                method: req.method(),
                target: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                headers: req.headers(),
                body: &[],
            };
            let times = Times {
                now: Instant::now(),
                deadline,
            };
            return self.request_inline(addr, authority, &outgoing, times).await;
        }
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let body = match req.body() {
            http_body_util::Either::Left(client) => Some(client.ended()),
            http_body_util::Either::Right(_) => None,
        };
        let (mut conn, reused) = match self.checkout(addr).await {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect_h1(addr)).await?, false),
        };
        conn.link.uploading.store(body.is_some(), Ordering::Relaxed);
        let sent = match conn.send.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never sent: the upstream closed the idle connection under us. Once more,
                // on a fresh one.
                Some(req) if reused => {
                    conn = Box::pin(self.connect_h1(addr)).await?;
                    conn.link.uploading.store(body.is_some(), Ordering::Relaxed);
                    conn.send.send_request(req).await
                }
                _ => Err(e.into_error()),
            },
        };
        let resp = sent?;
        // Switching protocols: the connection is the tunnel's now.
        let keep = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        Ok(resp.map(|inner| {
            UpstreamIncoming(
                Kind::Hyper {
                    inner,
                    done: false,
                    _stream: None,
                    back: keep.then(|| {
                        Box::new(Back {
                            conn,
                            addr,
                            pool: Arc::downgrade(&self.shared),
                            body,
                        })
                    }),
                },
                None,
            )
        }))
    }

    /// Whether a request with these headers may go inline ([`Self::request_inline`]):
    /// HTTP/1.1 and no upgrade asked for (and a body, if any, read whole first).
    pub fn inline(&self, headers: &http::HeaderMap) -> bool {
        !self.shared.transport.http2 && !headers.contains_key(header::UPGRADE)
    }

    /// Sends a request inline (see the module docs): its head as it should go (a `Host` of
    /// `authority` is added when there is none) and its whole body, if any, in one write.
    pub async fn request_inline(
        &self,
        addr: SocketAddr,
        authority: &Authority,
        req: &Outgoing<'_>,
        Times { now, deadline }: Times,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let (conn, reused) = match self.checkout_wire(addr, now) {
            Some(conn) => (conn, true),
            None => (self.connect_wire(addr, deadline).await?, false),
        };
        let resp = match conn.exchange(req, authority, deadline).await {
            Ok(resp) => resp,
            // The upstream closed the idle connection under us — before the request went, or
            // (an idempotent one) as it arrived, with no answer begun: once more, on a fresh
            // one. Closing an idle connection is the upstream's right, not its failure.
            Err(e) if reused && (e.not_sent || (e.unanswered && super::idempotent(req.method))) => {
                let conn = self.connect_wire(addr, deadline).await?;
                conn.exchange(req, authority, deadline).await?
            }
            Err(e) => return Err(e.into()),
        };
        let back: Arc<dyn Return> = self.shared.clone();
        Ok(resp.map(|mut body| {
            body.give_back_to(back);
            UpstreamIncoming(Kind::Wire(body), None)
        }))
    }

    /// An idle inline connection to `addr` the upstream has not closed, if there is one.
    /// `now`: the caller's reading of the clock.
    fn checkout_wire(&self, addr: SocketAddr, now: Instant) -> Option<Box<WireConn>> {
        let limit = self.shared.transport.idle_timeout;
        let mut pools = self.shared.wire.lock().unwrap_or_else(|p| p.into_inner());
        let list = pools.get_mut(&(addr, lane()))?;
        while let Some(mut idle) = list.pop() {
            if now.saturating_duration_since(idle.since) < limit && idle.conn.still_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// A new inline connection, made by `deadline` (and within the connect timeout).
    async fn connect_wire(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<Box<WireConn>, UpstreamError> {
        let io = tokio::time::timeout_at(deadline, Box::pin(self.connect(addr)))
            .await
            .map_err(|_| UpstreamError::Timeout)??
            .into_inner();
        Ok(WireConn::new(io, addr))
    }

    /// An idle connection to `addr` that is ready for a request, if there is one.
    async fn checkout(&self, addr: SocketAddr) -> Option<H1> {
        loop {
            let idle = {
                let mut pools = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner());
                pools.get_mut(&(addr, lane()))?.pop()?
            };
            if idle.conn.send.is_closed()
                || idle.since.elapsed() >= self.shared.transport.idle_timeout
            {
                continue;
            }
            let mut conn = idle.conn;
            // Handed back as its last response ended; hyper marks it ready a moment later.
            if conn.send.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let t = &self.shared.transport;
        let connect = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_keepalive(true)?;
            socket.set_nodelay(true)?;
            socket.connect(addr).await
        };
        let tcp = tokio::time::timeout(t.connect_timeout, connect)
            .await
            .map_err(|_| UpstreamError::Connect(format!("{addr}: timed out")))?
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        let Some((connector, name)) = &t.tls else {
            return Ok(TokioIo::new(Box::new(tcp)));
        };
        let name = name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = tokio::time::timeout(t.connect_timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::Connect(format!("{addr}: TLS handshake timed out")))?
            .map_err(|e| UpstreamError::Connect(format!("{addr}: TLS: {e}")))?;
        Ok(TokioIo::new(Box::new(tls)))
    }

    async fn connect_h1(&self, addr: SocketAddr) -> Result<H1, UpstreamError> {
        let link = Arc::new(Link::default());
        let io = HoldWrites {
            io: self.connect(addr).await?.into_inner(),
            link: Arc::clone(&link),
        };
        let (send, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        tokio::spawn(conn.with_upgrades());
        Ok(H1 { send, link })
    }

    /// Sends an HTTP/2 request on a connection to `addr` with a stream to spare
    /// ([`H2_STREAMS_PER_CONNECTION`]), opening one when none has: the requests that arrive
    /// while it is being opened wait for that one handshake rather than each opening its own.
    /// A connection that closed or failed to open is forgotten; one left with no stream, when
    /// its address has another, is let go (it closes once nothing holds it).
    ///
    /// A request the chosen connection gave back unsent goes once more, on a new connection:
    /// the upstream sent GOAWAY on it (going away gracefully, as for a deploy), which the
    /// connection's task finds only when the next request wakes it. Any request may go again
    /// then, a POST with its body too: no byte of it went out.
    async fn request_h2(
        &self,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let again = match self.request_h2_once(addr, req, deadline).await {
            Err(H2Failure::Unsent(req)) => *req,
            first => return first.map_err(|f| f.into_error(addr)),
        };
        self.request_h2_once(addr, again, deadline)
            .await
            .map_err(|f| f.into_error(addr))
    }

    /// One try of [`Self::request_h2`], on the connection the pool chooses.
    async fn request_h2_once(
        &self,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamIncoming>, H2Failure> {
        let (ready, stream) = {
            let mut conns = self.shared.h2.lock().unwrap_or_else(|p| p.into_inner());
            let list = conns.entry(addr).or_default();
            list.retain(|c| !c.closed());
            let mut first = true;
            list.retain(|c| std::mem::take(&mut first) || c.streams.load(Ordering::Relaxed) > 0);
            let chosen = match list
                .iter()
                .position(|c| c.streams.load(Ordering::Relaxed) < H2_STREAMS_PER_CONNECTION)
            {
                Some(i) => &list[i],
                None => {
                    list.push(H2Conn {
                        ready: Arc::default(),
                        streams: Arc::default(),
                    });
                    &list[list.len() - 1]
                }
            };
            chosen.streams.fetch_add(1, Ordering::Relaxed);
            (
                Arc::clone(&chosen.ready),
                H2Stream(Arc::clone(&chosen.streams)),
            )
        };
        let opened = ready
            .get_or_init(|| async {
                let io = self.connect(addr).await.map_err(|e| match e {
                    UpstreamError::Connect(why) => Arc::from(why),
                    other => Arc::from(other.to_string()),
                })?;
                // PINGs find a peer that went silent (gone without a reset): unanswered, the
                // connection closes, its streams fail, and it is chosen no more.
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_PING_INTERVAL)
                    .keep_alive_timeout(H2_PING_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .handshake(io)
                    .await
                    .map_err(|e| Arc::from(format!("{addr}: {e}")))?;
                tokio::spawn(conn);
                Ok(send)
            })
            .await;
        // Takes this connection out of the list: the next request opens another.
        let forget = || {
            let mut conns = self.shared.h2.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = conns.get_mut(&addr) {
                list.retain(|c| !Arc::ptr_eq(&c.ready, &ready));
            }
        };
        let mut send = match opened {
            Ok(send) => send.clone(),
            Err(e) => {
                // Every request that waited for this connection gets its error.
                forget();
                return Err(H2Failure::Failed(UpstreamError::Connect(e.to_string())));
            }
        };
        let exchange = async {
            if send.ready().await.is_err() {
                return Err(H2Failure::Unsent(Box::new(req)));
            }
            send.try_send_request(req)
                .await
                .map_err(|mut e| match e.take_message() {
                    Some(req) => H2Failure::Unsent(Box::new(req)),
                    None => H2Failure::Failed(e.into_error().into()),
                })
        };
        // No answer by the deadline: the peer may be gone without a word, and the PINGs take
        // seconds to tell; meanwhile the connection is not chosen again. Its other streams go
        // on, and it closes when they are done.
        let resp = match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(failure)) => {
                if matches!(failure, H2Failure::Unsent(_)) {
                    forget();
                }
                return Err(failure);
            }
            Err(_) => {
                forget();
                return Err(H2Failure::Failed(UpstreamError::Timeout));
            }
        };
        drop(ready);
        Ok(resp.map(|inner| {
            UpstreamIncoming(
                Kind::Hyper {
                    inner,
                    done: false,
                    back: None,
                    _stream: Some(stream),
                },
                None,
            )
        }))
    }
}

/// How one try of an HTTP/2 exchange failed: with the request given back unsent, or not.
enum H2Failure {
    /// Boxed: the rare case, kept out of every answer's size.
    Unsent(Box<Request<UpstreamBody>>),
    Failed(UpstreamError),
}

impl H2Failure {
    /// The error the exchange with `addr` ends with: one given back unsent again (after the
    /// try on a new connection) is the connection's failure.
    fn into_error(self, addr: SocketAddr) -> UpstreamError {
        match self {
            H2Failure::Unsent(_) => UpstreamError::Exchange(
                format!("{addr}: the connection closed before the request went").into(),
            ),
            H2Failure::Failed(e) => e,
        }
    }
}

/// This thread's idle lists (see the module docs): one number for every thread of a
/// multi-thread runtime, one of its own for each other thread (a `--workers` worker).
///
/// A multi-thread runtime has one reactor, and its tasks move between its threads: a request
/// may take its connection on one thread and give it back on another. With a list per thread
/// the lists filled where connections came back and stayed full while the other thread opened
/// new ones — 50 clients kept 1,500 upstream connections open on two threads (63 on one).
fn lane() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::runtime::{Handle, RuntimeFlavor};
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static LANE: usize = match Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => 0,
            _ => NEXT.fetch_add(1, Ordering::Relaxed),
        };
    }
    LANE.with(|l| *l)
}

/// Drops idle HTTP/1.1 connections past the idle timeout, so a quiet pool closes them.
fn reap(shared: Weak<Shared>) {
    tokio::spawn(async move {
        loop {
            let every = match shared.upgrade() {
                Some(s) => (s.transport.idle_timeout / 2).max(Duration::from_secs(1)),
                None => return,
            };
            tokio::time::sleep(every).await;
            let Some(s) = shared.upgrade() else { return };
            let limit = s.transport.idle_timeout;
            sweep(&s.idle, |i| {
                !i.conn.send.is_closed() && i.since.elapsed() < limit
            });
            sweep(&s.wire, |i| i.since.elapsed() < limit);
        }
    });
}

/// A hyper HTTP/1.1 connection: its sender, and what its IO shares with the exchange.
#[derive(Debug)]
struct H1 {
    send: http1::SendRequest<UpstreamBody>,
    link: Arc<Link>,
}

/// What a hyper HTTP/1.1 connection's IO ([`HoldWrites`]) and its exchange share.
#[derive(Debug, Default)]
struct Link {
    /// The exchange sends a body: write failures are held back. Not for upgrades, whose
    /// tunnels must see them.
    uploading: AtomicBool,
    /// A write failed and was held back: the upstream stopped taking the request.
    write_failed: AtomicBool,
}

/// An HTTP/1.1 upstream connection's IO as hyper's client drives it. A write of an upload
/// that fails because the upstream has gone (reset, broken pipe, aborted) is held back: that write and
/// every later one wait for good, so hyper goes on reading — the answer the upstream sent
/// before it stopped reading (a reset leaves the bytes that came before it readable), then
/// the end of the connection (the reset's error went to the write that met it; the reads
/// after the answer find the connection closed, or fail). The connection still ends: a reset
/// makes the socket readable (hyper's task is woken to read), and after the answer hyper
/// either reads on to see whether the upstream closed mid-exchange, and it did, or — the
/// answer said `Connection: close` — is done with a connection it may no longer read from.
struct HoldWrites<I> {
    io: I,
    link: Arc<Link>,
}

/// Whether a write failed because the upstream is no longer there to take it.
fn upstream_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
}

impl<I: AsyncWrite + Unpin> HoldWrites<I> {
    /// One write-side call on the IO (`op`): none while a failure is held back (it waits);
    /// otherwise its outcome, with a failure that says the upstream has gone held back.
    fn write_side<T>(
        &mut self,
        op: impl FnOnce(Pin<&mut I>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.held() {
            return Poll::Pending;
        }
        match op(Pin::new(&mut self.io)) {
            Poll::Ready(Err(e))
                if upstream_gone(&e) && self.link.uploading.load(Ordering::Relaxed) =>
            {
                self.link.write_failed.store(true, Ordering::Relaxed);
                Poll::Pending
            }
            other => other,
        }
    }

    fn held(&self) -> bool {
        self.link.write_failed.load(Ordering::Relaxed)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HoldWrites<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HoldWrites<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_side(|io| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.write_side(|io| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.write_side(|io| io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.held() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Where a finished HTTP/1.1 connection goes back to.
#[derive(Debug)]
struct Back {
    conn: H1,
    addr: SocketAddr,
    pool: Weak<Shared>,
    /// How the request's body ended (`None`: it had none).
    body: Option<Arc<AtomicU8>>,
}

impl Back {
    /// The response is over (`read_to_end`: all of its body was read): back to the pool if the
    /// connection can carry another request, else let it end.
    fn finish(self, read_to_end: bool) {
        let sent = self
            .body
            .as_ref()
            .is_none_or(|b| b.load(Ordering::Relaxed) == CLIENT_BODY_ENDED);
        if !read_to_end
            || !sent
            || self.conn.link.write_failed.load(Ordering::Relaxed)
            || self.conn.send.is_closed()
        {
            return;
        }
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        park(&pool.idle, self.addr, self.conn);
    }
}

/// An upstream response body: read inline from its connection, or hyper's, which returns its
/// HTTP/1.1 connection to the pool when dropped after its end; and the request's slot under
/// the endpoint's cap, if any, given back when the body is dropped.
#[derive(Debug)]
pub struct UpstreamIncoming(Kind, Option<Slot>);

impl UpstreamIncoming {
    /// Keeps the request's slot at its endpoint until this body is dropped.
    pub fn hold(&mut self, slot: Slot) {
        self.1 = Some(slot);
    }
}

#[derive(Debug)]
enum Kind {
    Wire(WireBody),
    Hyper {
        inner: Incoming,
        done: bool,
        /// Boxed: it would make every response twice the size, inline ones too.
        back: Option<Box<Back>>,
        /// HTTP/2: the stream, counted against its connection until the body is dropped.
        _stream: Option<H2Stream>,
    },
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut polled = match &mut self.0 {
            Kind::Wire(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Hyper {
                inner, done, back, ..
            } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => *done = true,
                    Poll::Ready(Some(Err(_))) => *back = None,
                    _ => {}
                }
                polled.map_err(Into::into)
            }
        };
        // The upstream's trailers, without what must not go on (either protocol's).
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            crate::classify::strip_trailers(trailers);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Wire(body) => body.is_end_stream(),
            Kind::Hyper { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Wire(body) => body.size_hint(),
            Kind::Hyper { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        let Kind::Hyper {
            inner, done, back, ..
        } = &mut self.0
        else {
            return;
        };
        if let Some(back) = back.take() {
            (*back).finish(*done || inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lane;

    /// Every thread of a multi-thread runtime — the thread that blocks on it and its workers —
    /// takes and gives back connections on one list; each single-threaded runtime (a
    /// `--workers` worker) on a list of its own.
    #[test]
    fn a_runtime_shares_one_idle_list_and_workers_keep_their_own() {
        let shared = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let (here, worker, worker_thread) = shared.block_on(async {
            let on_worker = tokio::spawn(async { (lane(), std::thread::current().id()) })
                .await
                .expect("task");
            (lane(), on_worker.0, on_worker.1)
        });
        assert_ne!(worker_thread, std::thread::current().id());
        assert_eq!(here, worker, "two threads of one runtime, two lists");

        let own = || {
            std::thread::spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime")
                    .block_on(async { lane() })
            })
            .join()
            .expect("worker thread")
        };
        let (first, second) = (own(), own());
        assert_ne!(first, second);
        assert_ne!(first, here);
        assert_ne!(second, here);
    }
}
