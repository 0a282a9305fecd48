//! listen: accept connections (TCP, then TLS where configured), serve HTTP/1.1 on our own loop
//! ([`h1`]) and HTTP/2 (ALPN on TLS; h2c prior knowledge on plain listeners), plus whatever the
//! loop hands over, with hyper-util's auto builder; park idle plain connections ([`park`]);
//! drain on shutdown: stop accepting, close idle and parked connections, let in-flight
//! requests finish up to a deadline.
//!
//! Servers take an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0`.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

use crate::classify::Peer;
use crate::head_timer::{Counted, Exchanges, HeadTimer};
use crate::telemetry;

pub(crate) mod h1;
pub(crate) mod park;
pub(crate) mod proxy_protocol;
pub(crate) mod slots;
pub(crate) mod streams;
pub use h1::{ConnBody, ConnService, RequestBody};
use slots::Slots;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// What an HTTP/1.1 client may send as a request head. Listener settings, read at start.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// To finish a head once started (408 after), and to send a first one.
    pub timeout: Duration,
    /// To sit idle after a request.
    pub idle: Duration,
    /// For a write to the client to make progress (the connection ends after).
    pub send: Duration,
    /// For a WebSocket tunnel to carry something either way (it is closed after).
    pub tunnel: Duration,
    /// Requests per connection; the last answer says `Connection: close`.
    pub max_requests: u32,
    /// Request line and header fields, bytes (431 over it); at least 8 KiB.
    pub max_bytes: usize,
    /// Header fields (431 over it).
    pub max_headers: usize,
    /// Idle this long after a request, a plain connection is parked (`listen::park`).
    pub park: Option<Duration>,
}

/// What every connection of one listener shares, behind one pointer in its task.
pub struct Shared {
    /// The listener's name, for metrics.
    pub name: &'static str,
    pub head: HeadLimits,
    /// Hyper's server, for what our loop hands over (`h1::hand_over`).
    pub hyper: auto::Builder<TokioExecutor>,
    /// Where idle plain connections are parked: plain listeners, unless `park_idle_after` is
    /// off.
    pub lot: Option<Arc<park::Lot>>,
    /// HTTP/2 answers in flight, watched for clients that take none of them.
    pub streams: Arc<streams::Streams>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("head", &self.head)
            .field("parks", &self.lot.is_some())
            .finish_non_exhaustive()
    }
}

impl HeadLimits {
    /// The server section's (both data-plane listeners and the admin API use them).
    pub fn of(server: &routes::Server) -> HeadLimits {
        HeadLimits {
            timeout: server.header_timeout,
            idle: server.keepalive_timeout,
            send: server.send_timeout,
            tunnel: server.tunnel_idle_timeout,
            max_requests: u32::try_from(server.max_requests_per_connection).unwrap_or(u32::MAX),
            max_bytes: server.max_request_head_bytes,
            max_headers: server.max_request_headers,
            park: server.park_idle_after,
        }
    }
}

/// Concurrent streams one HTTP/2 connection may open.
pub const H2_MAX_STREAMS: u32 = 256;
/// Largest HTTP/2 header list (decoded), bytes.
pub const H2_MAX_HEADER_LIST: u32 = 64 * 1024;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// Caps on open client connections, shared by the data-plane listeners.
#[derive(Debug)]
pub struct ConnLimits {
    max: usize,
    max_per_ip: usize,
    open: std::sync::atomic::AtomicUsize,
    /// Open connections per client address. Hashed with the route tables' seeded hasher: the
    /// standard library's SipHash cost ~400 instructions per connection (admit and release).
    per_ip: std::sync::Mutex<routes::LookupMap<std::net::IpAddr, usize>>,
}

/// Holds one connection's place in [`ConnLimits`]; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    /// The client address it counts against (none yet: a balancer's connection whose PROXY
    /// header has not named its client).
    ip: Option<std::net::IpAddr>,
    /// `ip` is the client a balancer's PROXY header named (the socket's peer is the balancer).
    /// Kept here, in the padding, for a parked connection taken back up.
    named: bool,
}

impl ConnLimits {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max,
            max_per_ip,
            open: Default::default(),
            per_ip: Default::default(),
        })
    }

    /// A slot for a new connection from `ip`, or why not (`"global"` / `"per_ip"`). `None`:
    /// a balancer's connection, counted against its client once its PROXY header names one
    /// ([`ConnSlot::charge`]), not against the balancer, whose connections are all its
    /// clients'.
    pub fn admit(self: &Arc<Self>, ip: Option<std::net::IpAddr>) -> Result<ConnSlot, &'static str> {
        use std::sync::atomic::Ordering;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err("global");
        }
        if let Some(ip) = ip {
            let n = per_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                return Err("per_ip");
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnSlot {
            limits: Arc::clone(self),
            ip,
            named: false,
        })
    }
}

impl ConnSlot {
    /// Counts the connection against `ip`, the client a PROXY header named; `"per_ip"` when
    /// that client is at its cap.
    pub fn charge(&mut self, ip: std::net::IpAddr) -> Result<(), &'static str> {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_default();
        if *n >= self.limits.max_per_ip {
            return Err("per_ip");
        }
        *n += 1;
        self.ip = Some(ip);
        self.named = true;
        Ok(())
    }

    /// The client a balancer's PROXY header named, if one did.
    pub fn named_client(&self) -> Option<std::net::IpAddr> {
        self.ip.filter(|_| self.named)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = self.ip
            && let Some(n) = per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
        self.limits
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a refused plain-HTTP connection reads before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 21\r\n\r\ntoo many connections\n";

/// Serves connections from `listener` until `shutdown` resolves, then drains for up to `drain`.
/// Returns true when every connection finished within the deadline.
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, S, B>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<certs::ServerTls>>,
    limits: Option<Arc<ConnLimits>>,
    head: HeadLimits,
    make_service: F,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    balancers: Option<Arc<[routes::Cidr]>>,
) -> bool
where
    F: Fn(Peer) -> S + Send + Sync + 'static,
    S: ConnService<B>,
    B: ConnBody,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head timer is ours (crate::head_timer): it answers 408 where hyper's would close.
        .header_read_timeout(None)
        // A head over either limit is answered 431 by hyper's parser.
        .max_buf_size(head.max_bytes.max(8 * 1024))
        .max_headers(head.max_headers)
        .keep_alive(true);
    // HTTP/2 limits, explicit rather than inherited: streams per connection; a bounded header
    // list (a CONTINUATION flood cannot grow it); rapid reset (CVE-2023-44487): a client that
    // resets more than 20 streams before they are accepted, or provokes more than 256 resets
    // of ours, gets GOAWAY; flow-control windows that bound what one client may queue.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(256)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_send_buf_size(256 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // Every connection holds a slot: the drain is over when the last one is dropped. The
    // sweep wakes connections whose head or idle wait has run out.
    let open = Arc::new(Slots::default());
    tokio::spawn(slots::sweep(Arc::downgrade(&open)));
    let streams = streams::Streams::new(name, head.send);
    tokio::spawn(streams::sweep(Arc::downgrade(&streams)));
    let parks = tls.is_none() && head.park.is_some_and(|p| p < head.idle);
    let ctx = Arc::new_cyclic(|me: &std::sync::Weak<Listener<F>>| {
        let lot = if parks {
            let me = me.clone();
            let runtime = tokio::runtime::Handle::current();
            let resume: park::Resume = Box::new(move |stream, parked| {
                if let Some(me) = me.upgrade() {
                    let _in = runtime.enter();
                    me.resume(stream, parked);
                }
            });
            match park::Lot::start(name, resume) {
                Ok(lot) => Some(lot),
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "cannot park idle connections; each stays a task");
                    None
                }
            }
        } else {
            None
        };
        Listener {
            make_service,
            open: Arc::clone(&open),
            shared: Arc::new(Shared {
                name,
                head,
                hyper: builder,
                lot,
                streams,
            }),
        }
    });
    if let Some(lot) = &ctx.shared.lot {
        tokio::spawn(park::sweep(Arc::downgrade(lot)));
    }
    let accepted = metrics::counter!(telemetry::CONNECTIONS_TOTAL, telemetry::L_LISTENER => name);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        accepted.increment(1);
        // A balancer's connection names its client in a PROXY header (`proxy_protocol`).
        let balancer = balancers
            .as_ref()
            .is_some_and(|b| b.iter().any(|c| c.contains(addr.ip())));
        let slot = match limits
            .as_ref()
            .map(|l| l.admit((!balancer).then(|| addr.ip())))
        {
            None => None,
            Some(Ok(slot)) => Some(slot),
            Some(Err(reason)) => {
                metrics::counter!(telemetry::CONNECTIONS_REFUSED, telemetry::L_LISTENER => name, telemetry::L_REASON => reason).increment(1);
                let plain = tls.is_none();
                tokio::spawn(async move {
                    let mut stream = stream;
                    if plain {
                        use tokio::io::AsyncWriteExt;
                        // Answer, then drain what the client already sent before closing, so
                        // the close is not a reset that would discard the answer.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            stream.write_all(REFUSED).await?;
                            stream.shutdown().await?;
                            h1::drain(&mut stream).await;
                            Ok::<(), std::io::Error>(())
                        })
                        .await;
                    }
                });
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if balancer {
            // Its header first, in a task of its own: the accept loop never waits on a peer.
            let (this, tls) = (Arc::clone(&ctx), tls.clone());
            tokio::spawn(async move {
                let mut stream = stream;
                let mut slot = slot;
                let refused = |reason: &'static str| {
                    metrics::counter!(telemetry::CONNECTIONS_REFUSED, telemetry::L_LISTENER => name, telemetry::L_REASON => reason).increment(1);
                };
                let read = proxy_protocol::read(&mut stream);
                let client = match tokio::time::timeout(this.shared.head.timeout, read).await {
                    Ok(Ok(Some(proxy_protocol::Header::Client(client)))) => Some(client),
                    Ok(Ok(_)) => None,
                    // Malformed, or not there in time.
                    failed => {
                        if let Ok(Err(e)) = failed {
                            tracing::debug!(error = %e, %addr, "PROXY header refused");
                        }
                        refused("proxy_protocol");
                        return;
                    }
                };
                if let (Some(client), Some(slot)) = (client, slot.as_mut())
                    && let Err(reason) = slot.charge(client.ip())
                {
                    refused(reason);
                    return;
                }
                let addr = client.unwrap_or(addr);
                match tls {
                    None => this.plain(stream, addr, 0, slot),
                    Some(tls) => this.tls(stream, addr, slot, tls),
                }
            });
            continue;
        }
        // Two kinds of task, each as small as it can be: an idle connection's task is most of
        // what it costs.
        let Some(tls) = tls.clone() else {
            ctx.plain(stream, addr, 0, slot);
            continue;
        };
        ctx.tls(stream, addr, slot, tls);
    }
    drop(listener);
    open.start_drain();
    if let Some(lot) = &ctx.shared.lot {
        // Parked connections are idle ones: closed at once, as their tasks would be.
        lot.close();
    }
    tokio::time::timeout(drain, open.finished()).await.is_ok()
}

impl<F> Listener<F> {
    /// Serves a TLS connection, after its handshake, in its own task.
    fn tls<S, B>(
        self: &Arc<Self>,
        stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        slot: Option<ConnSlot>,
        tls: Arc<certs::ServerTls>,
    ) where
        F: Fn(Peer) -> S + Send + Sync + 'static,
        S: ConnService<B>,
        B: ConnBody,
    {
        let stop = self.open.hold();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _slot = slot;
            // The config is chosen from the ClientHello (certs::ServerTls: the suite by the
            // client's first choice of family).
            let accept = async {
                let start =
                    LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
                let config = Arc::clone(tls.for_client(start.client_hello().cipher_suites()));
                start.into_stream(config).await
            };
            // Boxed: the handshake's state is not kept for the connection's life.
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept);
            let stream = match Box::pin(handshake).await {
                // A CA's TLS-ALPN-01 validation: the handshake was the answer.
                Ok(Ok(s)) if s.get_ref().1.alpn_protocol() == Some(certs::acme::ACME_TLS_ALPN) => {
                    return;
                }
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    let reason = handshake_failure_reason(&e);
                    metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES, crate::telemetry::L_REASON => reason).increment(1);
                    tracing::debug!(error = %e, %addr, reason, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!(crate::telemetry::TLS_HANDSHAKE_FAILURES, crate::telemetry::L_REASON => "timeout").increment(1);
                    return;
                }
            };
            let conn = stream.get_ref().1;
            let h2 = conn.alpn_protocol() == Some(b"h2");
            // The service is made once the handshake has said which name the client asked for.
            let peer = Peer::new(addr, true).with_sni(conn.server_name());
            let (service, exchanges) = this.counted(peer, 0);
            let io = HeadTimer::new(stream, exchanges, Arc::clone(&this.shared), stop.deadline());
            if h2 {
                let conn = h1::hand_over(io, bytes::Bytes::new(), service, stop);
                Box::pin(conn).await;
            } else {
                h1::serve(io, service, stop, ()).await;
            }
        });
    }
}

/// What a listener's connections are served with, shared by its accept loop and its lot of
/// parked connections (which takes them back up).
struct Listener<F> {
    make_service: F,
    open: Arc<Slots>,
    shared: Arc<Shared>,
}

/// A listener dropped without its drain (its task aborted) stops its lot too: the thread
/// would otherwise wait on the parked sockets for good.
impl<F> Drop for Listener<F> {
    fn drop(&mut self) {
        if let Some(lot) = &self.shared.lot {
            lot.close();
        }
    }
}

impl<F> Listener<F> {
    /// Serves a plain connection on our HTTP/1.1 loop (hyper's, when it hands over), in its
    /// own task: a new one (`served` 0) or one taken back up from the lot.
    fn plain<S, B>(
        &self,
        stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        served: u32,
        slot: Option<ConnSlot>,
    ) where
        F: Fn(Peer) -> S,
        S: ConnService<B>,
        B: ConnBody,
    {
        let (service, exchanges) = self.counted(Peer::new(addr, false), served);
        let stop = self.open.hold();
        let io = HeadTimer::new(stream, exchanges, Arc::clone(&self.shared), stop.deadline());
        tokio::spawn(h1::serve(io, service, stop, park::Keeper::new(slot)));
    }

    /// A connection's service, counting its requests from `served` on.
    fn counted<S>(&self, peer: Peer, served: u32) -> (Counted<S>, Arc<Exchanges>)
    where
        F: Fn(Peer) -> S,
    {
        let exchanges = Arc::new(Exchanges::after(served));
        let service = Counted::new(
            (self.make_service)(peer),
            Arc::clone(&exchanges),
            self.shared.head.max_requests,
            Arc::clone(&self.shared.streams),
        );
        (service, exchanges)
    }

    /// Takes a parked connection back up (on the lot's thread, inside the runtime's context).
    fn resume<S, B>(&self, stream: std::net::TcpStream, parked: park::Parked)
    where
        F: Fn(Peer) -> S,
        S: ConnService<B>,
        B: ConnBody,
    {
        // A balancer's connection carries the client its PROXY header named (only its address
        // is ever read, not its port).
        let named = parked.slot.as_ref().and_then(ConnSlot::named_client);
        let addr = match named {
            Some(client) => std::net::SocketAddr::new(client, 0),
            None => match stream.peer_addr() {
                Ok(addr) => addr,
                Err(_) => return,
            },
        };
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        self.plain(stream, addr, parked.served, parked.slot);
    }
}

/// A short label for why a TLS handshake failed, for the metric.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as T;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<T>()) {
        Some(T::PeerIncompatible(_)) => "incompatible",
        Some(T::AlertReceived(_)) => "client_alert",
        Some(T::InvalidMessage(_))
        | Some(T::InappropriateMessage { .. })
        | Some(T::InappropriateHandshakeMessage { .. }) => "invalid_message",
        Some(T::General(m)) if m.contains("certificate") => "no_certificate",
        Some(_) => "other",
        None => "io",
    }
}
