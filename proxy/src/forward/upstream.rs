//! Upstream connections: one client per cluster transport (HTTP/1.1 or HTTP/2, plain or TLS),
//! pooling connections per endpoint address.
//!
//! HTTP/1.1: idle connections per address, last in first out; a connection goes back to its
//! address's list when the response body it carried was read to the end (the body hands it
//! back when dropped), and is dropped when the body was abandoned, the upstream closed it, or
//! it sat idle past the cluster's `idle_timeout` (a reaper sweeps quiet pools). A request that
//! a reused connection could not even send — the upstream closed it while it sat idle — is
//! sent once more on a fresh connection. HTTP/2: one multiplexed connection per address,
//! replaced when it closes.
//!
//! The request path takes an idle connection under one short mutex hold per checkout and
//! return, with no connection task hop beyond hyper's own. Idle lists are kept per thread as
//! well as per address: with `--workers`, a connection's hyper task lives on the worker that
//! opened it, and a request from another worker would drive it across threads (a wakeup each
//! way per request).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
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
use tokio::net::TcpSocket;
use tokio::time::Instant;

use super::pool::UpstreamBody;

/// Idle HTTP/1.1 connections kept per address at most.
const MAX_IDLE_PER_ADDRESS: usize = 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection: refused, unreachable, timed out, or the TLS handshake failed.
    Connect(String),
    /// The connection broke during the exchange.
    Exchange(hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {}

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

#[derive(Debug)]
struct Idle {
    send: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

#[derive(Debug)]
struct Shared {
    transport: Transport,
    idle: Mutex<HashMap<(SocketAddr, usize), Vec<Idle>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<UpstreamBody>>>,
}

/// A cluster's upstream client; cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    shared: Arc<Shared>,
}

/// A connection's IO: plain TCP or TLS over it (boxed once per connection, so one handshake
/// path serves both).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}
type Conn = TokioIo<Box<dyn Io>>;

impl UpstreamClient {
    pub fn new(transport: Transport) -> UpstreamClient {
        let shared = Arc::new(Shared {
            transport,
            idle: Mutex::new(HashMap::new()),
            h2: Mutex::new(HashMap::new()),
        });
        if !shared.transport.http2 {
            reap(Arc::downgrade(&shared));
        }
        UpstreamClient { shared }
    }

    /// Sends `req` (its URI's path and query; headers as they should go) to the endpoint at
    /// `addr`, named `authority` (the Host when the request has none, and HTTP/2's
    /// `:authority`).
    pub async fn request(
        &self,
        addr: SocketAddr,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let t = &self.shared.transport;
        if t.http2 {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::builder()
                .scheme(if t.tls.is_some() {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                })
                .authority(authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| UpstreamError::Connect(e.to_string()))?;
            *req.version_mut() = http::Version::HTTP_2;
            // Boxed, like every connect below: rare paths with large futures (TLS, handshakes)
            // stay out of the per-request future, which hyper moves around whole.
            return Box::pin(self.request_h2(addr, req)).await;
        }
        // HTTP/1.1 sends the URI as given: callers pass the origin form.
        debug_assert!(
            req.uri().authority().is_none(),
            "origin-form request target"
        );
        *req.version_mut() = http::Version::HTTP_11;
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        let (mut send, reused) = match self.checkout(addr).await {
            Some(send) => (send, true),
            None => (Box::pin(self.connect_h1(addr)).await?, false),
        };
        let sent = match send.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never sent: the upstream closed the idle connection under us. Once more,
                // on a fresh one.
                Some(req) if reused => {
                    send = Box::pin(self.connect_h1(addr)).await?;
                    send.send_request(req).await
                }
                _ => Err(e.into_error()),
            },
        };
        let resp = sent.map_err(UpstreamError::Exchange)?;
        let keep = resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        Ok(resp.map(|inner| UpstreamIncoming {
            inner,
            done: false,
            back: keep.then(|| Back {
                send,
                addr,
                pool: Arc::downgrade(&self.shared),
            }),
        }))
    }

    /// An idle connection to `addr` that is ready for a request, if there is one.
    async fn checkout(&self, addr: SocketAddr) -> Option<http1::SendRequest<UpstreamBody>> {
        loop {
            let idle = {
                let mut pools = self.shared.idle.lock().unwrap_or_else(|p| p.into_inner());
                pools.get_mut(&(addr, lane()))?.pop()?
            };
            if idle.send.is_closed() || idle.since.elapsed() >= self.shared.transport.idle_timeout {
                continue;
            }
            let mut send = idle.send;
            // Handed back as its last response ended; hyper marks it ready a moment later.
            if send.ready().await.is_ok() {
                return Some(send);
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

    async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let (send, conn) = http1::handshake(self.connect(addr).await?)
            .await
            .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
        tokio::spawn(conn.with_upgrades());
        Ok(send)
    }

    async fn request_h2(
        &self,
        addr: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<UpstreamIncoming>, UpstreamError> {
        let existing = {
            let conns = self.shared.h2.lock().unwrap_or_else(|p| p.into_inner());
            conns.get(&addr).filter(|s| !s.is_closed()).cloned()
        };
        let mut send = match existing {
            Some(send) => send,
            None => {
                let (send, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(self.connect(addr).await?)
                    .await
                    .map_err(|e| UpstreamError::Connect(format!("{addr}: {e}")))?;
                tokio::spawn(conn);
                let mut conns = self.shared.h2.lock().unwrap_or_else(|p| p.into_inner());
                conns.insert(addr, send.clone());
                send
            }
        };
        send.ready().await.map_err(UpstreamError::Exchange)?;
        let resp = send
            .send_request(req)
            .await
            .map_err(UpstreamError::Exchange)?;
        Ok(resp.map(|inner| UpstreamIncoming {
            inner,
            done: false,
            back: None,
        }))
    }
}

/// This thread's idle lists (see the module docs): a small number unique to the thread.
fn lane() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
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
            let mut pools = s.idle.lock().unwrap_or_else(|p| p.into_inner());
            pools.retain(|_, list| {
                list.retain(|i| !i.send.is_closed() && i.since.elapsed() < limit);
                !list.is_empty()
            });
        }
    });
}

/// Where a finished HTTP/1.1 connection goes back to.
#[derive(Debug)]
struct Back {
    send: http1::SendRequest<UpstreamBody>,
    addr: SocketAddr,
    pool: Weak<Shared>,
}

/// An upstream response body; returns its HTTP/1.1 connection to the pool when dropped after
/// its end.
#[derive(Debug)]
pub struct UpstreamIncoming {
    inner: Incoming,
    done: bool,
    back: Option<Back>,
}

impl Body for UpstreamIncoming {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamIncoming {
    fn drop(&mut self) {
        let Some(back) = self.back.take() else { return };
        if !(self.done || self.inner.is_end_stream()) || back.send.is_closed() {
            return;
        }
        let Some(pool) = back.pool.upgrade() else {
            return;
        };
        let mut pools = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = pools.entry((back.addr, lane())).or_default();
        if list.len() < MAX_IDLE_PER_ADDRESS {
            list.push(Idle {
                send: back.send,
                since: Instant::now(),
            });
        }
    }
}
