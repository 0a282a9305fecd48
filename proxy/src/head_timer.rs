//! The HTTP/1.1 request-head timer, under the connection loop (ours, `listen::h1`, or hyper's):
//! a client that has started a request head gets `server.header_timeout` to finish it and is
//! then answered `408 Request Timeout` (with `Connection: close`) — hyper's own header timeout
//! only drops the connection, which leaves a client (or the load balancer in front) unable to
//! tell a timeout from a crash. A new connection that sends nothing for as long, or one idle
//! after a request for `server.keepalive_timeout`, is closed silently. After
//! `server.max_requests_per_connection` requests the answer carries `Connection: close` and the
//! connection loop closes the connection.
//!
//! Two parts share one connection's [`Exchanges`]: [`Counted`] wraps the service and counts
//! requests started (the head was parsed) and finished (the response body was dropped: written
//! out or abandoned); [`HeadTimer`] wraps the connection's IO and, whenever a read would wait,
//! leaves a deadline with its listener (`listen::slots`), whose sweep wakes it once that has
//! passed; it ends the connection only if no request is in flight by then. So the request path
//! pays a clock read and a waker registration, not a timer insertion, and a timeout fires up to
//! `listen::slots::SWEEP_EVERY` late. HTTP/2 connections (client preface `PRI `) have no
//! head to time; one without a stream for `server.keepalive_timeout` (PINGs do not count) is
//! marked [`Exchanges::idle_out`], and `listen::h1::hand_over` closes it with a GOAWAY (it had
//! lived for as long as its client answered PINGs). On a plain listener, a connection on our
//! loop that is idle after a request for `server.park_idle_after` is first told to park
//! (`ConnIo::park_due`): our loop hands it to the listener's lot (`listen::park`), which keeps
//! the rest of its idle deadline.
//!
//! Writes to the client that cannot go on for `server.send_timeout` end the connection. After
//! a `101 Switching Protocols` the connection is a WebSocket tunnel: the head and idle waits
//! no longer apply (a client that sent a message and then listened was answered `408` inside
//! its tunnel), and the tunnel ends once nothing has gone either way for
//! `server.tunnel_idle_timeout`.
//!
//! Heads that hyper parses are watched for one smuggling shape hyper tolerates: a head with both
//! `Transfer-Encoding` and `Content-Length` (hyper drops the length, reads chunked and closes
//! afterwards; RFC 9112 §6.1 lets a server do that or refuse). [`HeadScan`] looks at the header
//! names and marks the request [`AmbiguousFraming`], which the pipeline answers 400. Our own
//! loop parses whole heads and hands hyper any head with either field, so the watch starts at
//! that hand-over ([`ConnIo`]): with the head hyper is handed, then with each head that
//! begins between requests as hyper reads it. A head pipelined behind that one (already in
//! hyper's buffer when it begins) is not scanned and keeps hyper's handling: it is still read
//! one way only and the connection still closes after it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::listen::slots::Deadline;
use crate::listen::streams::{Streams, Watched};
use crate::listen::{BoxError, RequestBody, Shared};

/// What a client that took too long over its request head reads before the connection ends.
pub const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 34\r\n\r\nrequest head not received in time\n";

/// Requests started and finished on one connection; equal counts: between requests.
#[derive(Debug, Default)]
pub struct Exchanges {
    started: AtomicU32,
    finished: AtomicU32,
    /// The head about to be dispatched carried both `Transfer-Encoding` and `Content-Length`.
    ambiguous: AtomicBool,
    /// A request was answered `101 Switching Protocols`: the connection is a tunnel now.
    upgraded: AtomicBool,
    /// HTTP/2: no stream for `keepalive_timeout`; the connection is to be closed (GOAWAY).
    idle_out: AtomicBool,
}

/// Request extension: the request's head carried both `Transfer-Encoding` and
/// `Content-Length` (hyper has dropped the latter from the header map).
#[derive(Debug, Clone, Copy)]
pub struct AmbiguousFraming;

impl Exchanges {
    /// A connection taken back up after `served` requests (`listen::park`).
    pub fn after(served: u32) -> Exchanges {
        Exchanges {
            started: AtomicU32::new(served),
            finished: AtomicU32::new(served),
            ambiguous: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            idle_out: AtomicBool::new(false),
        }
    }

    fn between_requests(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.finished.load(Ordering::Relaxed)
    }

    /// An HTTP/2 connection has had no stream for `keepalive_timeout` (see [`HeadTimer`]).
    pub fn idle_out(&self) -> bool {
        self.idle_out.load(Ordering::Relaxed)
    }
}

/// A service whose requests are counted in [`Exchanges`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    exchanges: Arc<Exchanges>,
    /// HTTP/1.x requests the connection may carry; the last answer closes it.
    max_requests: u32,
    /// The listener's HTTP/2 answers, watched for clients that take none of them.
    streams: Arc<Streams>,
}

impl<S> Counted<S> {
    pub fn new(
        inner: S,
        exchanges: Arc<Exchanges>,
        max_requests: u32,
        streams: Arc<Streams>,
    ) -> Counted<S> {
        Counted {
            inner,
            exchanges,
            max_requests,
            streams,
        }
    }
}

impl<S, B> hyper::service::Service<Request<RequestBody>> for Counted<S>
where
    S: hyper::service::Service<Request<RequestBody>, Response = Response<B>>,
    B: Body<Error: Into<BoxError>> + Send + Unpin + 'static,
{
    type Response = Response<Finished<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, mut req: Request<RequestBody>) -> Self::Future {
        let n = self.exchanges.started.fetch_add(1, Ordering::Relaxed) + 1;
        let h2 = req.version() == http::Version::HTTP_2;
        let last = n >= self.max_requests && !h2;
        if self.exchanges.ambiguous.load(Ordering::Relaxed) {
            self.exchanges.ambiguous.store(false, Ordering::Relaxed);
            req.extensions_mut().insert(AmbiguousFraming);
        }
        CountedFuture {
            inner: self.inner.call(req),
            done: Done(Some(Arc::clone(&self.exchanges))),
            last,
            streams: h2.then(|| Arc::clone(&self.streams)),
        }
    }
}

/// Counts the exchange finished when dropped (with the response body, or with the future when
/// the request was abandoned).
#[derive(Debug)]
pub struct Done(Option<Arc<Exchanges>>);

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(ex) = self.0.take() {
            ex.finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; hands the exchange's [`Done`] on to the response body.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        done: Done,
        // The connection's last request: the answer says `Connection: close` (hyper closes).
        last: bool,
        // HTTP/2: the answer is watched (`listen::streams`).
        streams: Option<Arc<Streams>>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Error: Into<BoxError>> + Send + Unpin + 'static,
{
    type Output = Result<Response<Finished<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let done = Done(this.done.0.take());
        let last = *this.last;
        let streams = this.streams.take();
        Poll::Ready(out.map(|mut resp| {
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                && let Some(ex) = done.0.as_ref()
            {
                ex.upgraded.store(true, Ordering::Relaxed);
            }
            // Not on a 101: the connection becomes the upgraded protocol's.
            if last && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            resp.map(|body| Finished {
                inner: match &streams {
                    Some(streams) => Answer::Watched(streams.watch(body)),
                    None => Answer::Direct(body),
                },
                _done: done,
            })
        }))
    }
}

/// A response body that counts its exchange finished when dropped.
pub struct Finished<B> {
    inner: Answer<B>,
    _done: Done,
}

enum Answer<B> {
    Direct(B),
    Watched(Watched<B>),
}

impl<B> std::fmt::Debug for Finished<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("watched", &matches!(self.inner, Answer::Watched(_)))
            .finish()
    }
}

impl<B> Body for Finished<B>
where
    B: Body<Error: Into<BoxError>> + Unpin,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.inner {
            Answer::Direct(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            Answer::Watched(b) => Pin::new(b).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Answer::Direct(b) => b.is_end_stream(),
            Answer::Watched(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Answer::Direct(b) => b.size_hint(),
            Answer::Watched(b) => b.size_hint(),
        }
    }
}

/// A connection's IO with the request-head timer (see the module docs).
#[derive(Debug)]
pub struct HeadTimer<T> {
    io: T,
    exchanges: Arc<Exchanges>,
    /// The listener's: its head limits (`timeout` for a head once started, and for the first
    /// one to start; `idle` for the next head after a request), its name and where its idle
    /// connections are parked. Shared, not copied: this struct is part of what every idle
    /// connection costs.
    listener: Arc<Shared>,
    /// `started` when last looked at: a change means a head was completed.
    seen: u32,
    /// Bytes of a new request head arrived while no request was in flight.
    partial: bool,
    /// When the current wait (idle or partial head) runs out; `None` while not waiting.
    deadline: Option<Instant>,
    /// The connection's slot in its listener's list: the wait's deadline is left there, and
    /// the listener's sweep wakes the connection once it has passed (no timer of its own).
    timer: Deadline,
    /// The first bytes, until four have come: `PRI ` means HTTP/2.
    prefix: [u8; 4],
    prefix_len: u8,
    /// HTTP/2: the timer does not apply.
    off: bool,
    /// Timed out: reads see the end, writes go nowhere.
    ended: bool,
    /// Hyper parses this connection's heads: they are scanned as they arrive.
    watching: bool,
    /// Idle after a request for `park` (the listener's), the connection is parked
    /// (`listen::park`): plain connections on our loop.
    parkable: bool,
    /// Parked: the idle wait has lasted `park`.
    park_due: bool,
    /// The header names of the head being received.
    scan: HeadScan,
    /// Armed when a write to the client has to wait; a write that makes no progress for the
    /// listener's `send` ends the connection. Dropped once a write goes through: a client
    /// that keeps up never has one.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// A WebSocket tunnel since its `101`: when it last carried something either way. The
    /// head and idle waits no longer apply; a tunnel silent for the listener's `tunnel` ends.
    tunnel: Option<Instant>,
}

/// What our HTTP/1.1 loop (`listen::h1`) asks of a connection's IO besides reads and writes.
pub trait ConnIo {
    /// The listener the connection came in on.
    fn listener(&self) -> &Arc<Shared>;

    /// The connection is handed to hyper: from now on, heads are watched for both framing
    /// fields (see the module docs); `head` is what hyper reads first, from the start of a
    /// head.
    fn watch_heads(&mut self, head: &[u8]);

    /// The connection has been idle long enough to be parked (`listen::park`).
    fn park_due(&self) -> bool {
        false
    }

    /// The next write is the connection's last before its FIN (our loop shuts the write side
    /// down right after it): hold it, so that the FIN leaves in the same segment.
    fn last_write(&mut self) {}

    /// The connection's request counts, where it keeps them (an HTTP/2 connection handed to
    /// hyper is closed once [`Exchanges::idle_out`]).
    fn exchanges(&self) -> Option<&Arc<Exchanges>> {
        None
    }
}

/// The TCP socket under a connection's IO (plain or TLS).
pub trait TcpIo {
    fn tcp(&self) -> &tokio::net::TcpStream;
}

impl TcpIo for tokio::net::TcpStream {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self
    }
}

impl TcpIo for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref().0
    }
}

impl<T: TcpIo> ConnIo for HeadTimer<T> {
    /// `TCP_CORK`: the answer's last partial segment waits in the socket until the shutdown,
    /// which sends it with the FIN (over TLS, with the `close_notify` alert too). A closed
    /// connection then takes one segment fewer from us (two over TLS), and one fewer from the
    /// client, whose FIN acknowledges the answer: 8 segments in all instead of 10. Full
    /// segments still go at once; the kernel sends a held one after 200 ms at most.
    fn last_write(&mut self) {
        // At worst (an error) the FIN goes on its own, as without the option.
        let _ = socket2::SockRef::from(self.io.tcp()).set_tcp_cork(true);
    }

    fn listener(&self) -> &Arc<Shared> {
        &self.listener
    }

    fn park_due(&self) -> bool {
        self.park_due
    }

    fn exchanges(&self) -> Option<&Arc<Exchanges>> {
        Some(&self.exchanges)
    }

    fn watch_heads(&mut self, head: &[u8]) {
        // Hyper holds the connection from now on: it cannot be parked.
        self.parkable = false;
        if self.off {
            return;
        }
        self.watching = true;
        self.scan.start();
        if self.scan.feed(head) {
            self.exchanges.ambiguous.store(true, Ordering::Relaxed);
        }
    }
}

/// Watches the header lines of one request head, as its bytes arrive, for both framing fields.
#[derive(Debug, Default)]
struct HeadScan {
    /// Inside a head that began between requests.
    active: bool,
    /// The current line's first bytes (enough to tell the two field names).
    line: [u8; 18],
    len: u8,
    te: bool,
    cl: bool,
}

impl HeadScan {
    const TE: &'static [u8] = b"transfer-encoding:";
    const CL: &'static [u8] = b"content-length:";

    fn start(&mut self) {
        *self = HeadScan {
            active: true,
            ..HeadScan::default()
        };
    }

    /// Takes the next bytes of the head; true when the head ended with both fields seen.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while self.active && !bytes.is_empty() {
            let (part, ended) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            let have = usize::from(self.len);
            let take = part.len().min(self.line.len() - have);
            self.line[have..have + take].copy_from_slice(&part[..take]);
            self.len += take as u8;
            let Some(rest) = ended else { break };
            bytes = &bytes[rest..];
            let line = &self.line[..usize::from(self.len)];
            if line.is_empty() || line == b"\r" {
                self.active = false;
                return self.te && self.cl;
            }
            let named = |name: &[u8]| {
                line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
            };
            self.te |= named(Self::TE);
            self.cl |= named(Self::CL);
            self.len = 0;
        }
        false
    }
}

impl<T> HeadTimer<T> {
    pub fn new(
        io: T,
        exchanges: Arc<Exchanges>,
        listener: Arc<Shared>,
        timer: Deadline,
    ) -> HeadTimer<T> {
        // A connection taken back up from the lot is idle after its last request, as it was
        // when parked; a new one has seen none.
        let seen = exchanges.started.load(Ordering::Relaxed);
        // Parked when its listener has a lot (plain listeners, unless `park_idle_after` is off).
        let parkable = listener.lot.is_some();
        HeadTimer {
            io,
            exchanges,
            listener,
            timer,
            seen,
            partial: false,
            deadline: None,
            prefix: [0; 4],
            prefix_len: 0,
            off: false,
            ended: false,
            watching: false,
            parkable,
            park_due: false,
            scan: HeadScan::default(),
            send_timer: None,
            tunnel: None,
        }
    }

    /// The IO, the requests served, and when the idle wait ends: what a parked connection
    /// keeps.
    pub fn into_idle(self) -> (T, u32, Instant) {
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + self.listener.head.idle);
        (
            self.io,
            self.exchanges.started.load(Ordering::Relaxed),
            deadline,
        )
    }

    fn note_prefix(&mut self, got: &[u8]) {
        let have = usize::from(self.prefix_len);
        let take = got.len().min(4 - have);
        self.prefix[have..have + take].copy_from_slice(&got[..take]);
        self.prefix_len += take as u8;
        if self.prefix_len == 4 && &self.prefix == b"PRI " {
            self.off = true;
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.off {
            if read.is_pending() {
                this.h2_idle(cx);
            }
            return read;
        }
        if this.tunnel.is_none() && this.exchanges.upgraded.load(Ordering::Relaxed) {
            this.tunnel = Some(Instant::now());
        }
        if let Some(last) = this.tunnel.as_mut() {
            return match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    *last = Instant::now();
                    Poll::Ready(Ok(()))
                }
                // Silent both ways for `tunnel` (writes move `last` on too): the end.
                Poll::Pending => {
                    let at = *last + this.listener.head.tunnel;
                    ready!(this.timer.poll_until(cx, at, None));
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tunnel idle for server.tunnel_idle_timeout",
                    )))
                }
                other => other,
            };
        }
        let started = this.exchanges.started.load(Ordering::Relaxed);
        if started != this.seen {
            // A head was completed since: whatever comes next is a new wait.
            this.seen = started;
            this.partial = false;
            this.deadline = None;
            this.park_due = false;
        }
        let between = this.exchanges.between_requests();
        match read {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if !got.is_empty() {
                    this.park_due = false;
                    if this.prefix_len < 4 {
                        this.note_prefix(got);
                    }
                    if between && !this.partial {
                        // A new head has begun: its own deadline from the next wait.
                        this.partial = true;
                        this.deadline = None;
                        if this.watching {
                            this.scan.start();
                        }
                    }
                    if between && this.scan.active && this.scan.feed(got) {
                        this.exchanges.ambiguous.store(true, Ordering::Relaxed);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Armed inside an exchange too: hyper does not read again when the response
                // ends, so this timer is what wakes an idle connection to be closed.
                let idle = !(this.partial || this.seen == 0);
                let wait = if idle {
                    this.listener.head.idle
                } else {
                    this.listener.head.timeout
                };
                // The time, when this poll has read it: a deadline just set is not checked
                // against a second reading.
                let mut now = None;
                let mut deadline = match this.deadline {
                    Some(deadline) => deadline,
                    None => {
                        let at = *now.insert(Instant::now()) + wait;
                        *this.deadline.insert(at)
                    }
                };
                loop {
                    // Idle after a request: the wake to park comes first, `park` into the
                    // wait (the listener starts a lot only when `park` < `idle`).
                    let park_at = match this.listener.head.park {
                        Some(park) if idle && this.parkable && !this.park_due => {
                            deadline.checked_sub(this.listener.head.idle.saturating_sub(park))
                        }
                        _ => None,
                    };
                    ready!(
                        this.timer
                            .poll_until(cx, park_at.unwrap_or(deadline), now.take())
                    );
                    if this.exchanges.between_requests() {
                        if park_at.is_some() {
                            // Our loop parks the connection when it sees this; the idle
                            // deadline stays armed until then.
                            this.park_due = true;
                            continue;
                        }
                        break;
                    }
                    // Inside an exchange (the body has its own timeout): the idle wait
                    // starts over.
                    deadline = *now.insert(Instant::now()) + this.listener.head.idle;
                    this.deadline = Some(deadline);
                }
                this.ended = true;
                if this.partial {
                    metrics::counter!(crate::telemetry::HEADER_TIMEOUTS, crate::telemetry::L_LISTENER => this.listener.name).increment(1);
                    // Best effort: a small write to a socket with room; then FIN.
                    let io = Pin::new(&mut this.io);
                    let _ = io.poll_write(cx, TIMED_OUT);
                    let _ = Pin::new(&mut this.io).poll_flush(cx);
                    let _ = Pin::new(&mut this.io).poll_shutdown(cx);
                }
                // The end of the stream: hyper closes the connection.
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T> HeadTimer<T> {
    /// HTTP/2, a read waits: with no stream in flight, the idle wait (`keepalive_timeout`,
    /// from the last stream's end, PINGs or not) runs; once it is over, the connection is
    /// marked [`Exchanges::idle_out`] and its task woken, to close it with a GOAWAY.
    fn h2_idle(&mut self, cx: &mut Context<'_>) {
        let ex = &self.exchanges;
        let started = ex.started.load(Ordering::Relaxed);
        if started != ex.finished.load(Ordering::Relaxed) || ex.idle_out() {
            self.deadline = None;
            return;
        }
        if started != self.seen {
            self.seen = started;
            self.deadline = None;
        }
        let at = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.listener.head.idle);
        if self.timer.poll_until(cx, at, None).is_ready() {
            ex.idle_out.store(true, Ordering::Relaxed);
            cx.waker().wake_by_ref();
        }
    }

    /// A write's outcome, with the send timeout: a wait arms it (or fails once it has run out),
    /// progress disarms it.
    #[inline]
    fn sent<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => {
                let send = self.listener.head.send;
                let timer = self
                    .send_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
                ready!(timer.as_mut().poll(cx));
                self.send_timer = None;
                metrics::counter!(crate::telemetry::SEND_TIMEOUTS, crate::telemetry::L_LISTENER => self.listener.name).increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took none of the answer within server.send_timeout",
                )))
            }
            done => {
                self.send_timer = None;
                done
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HeadTimer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            // Our 408 was the answer; nothing after it.
            return Poll::Ready(Ok(data.len()));
        }
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, data);
        let sent = this.sent(cx, polled);
        if let (Some(last), Poll::Ready(Ok(1..))) = (this.tunnel.as_mut(), &sent) {
            *last = Instant::now();
        }
        sent
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        let sent = this.sent(cx, polled);
        if let (Some(last), Poll::Ready(Ok(1..))) = (this.tunnel.as_mut(), &sent) {
            *last = Instant::now();
        }
        sent
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.sent(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Over TLS the close_notify is a write too.
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.sent(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    /// Feeds `head` split at `at`; what the scan concludes.
    fn scan(head: &[u8], at: usize) -> bool {
        let mut s = HeadScan::default();
        s.start();
        let first = s.feed(&head[..at]);
        first || s.feed(&head[at..])
    }

    #[test]
    fn both_framing_fields_are_seen_however_the_head_is_split() {
        let both = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for at in 0..=both.len() {
            assert!(scan(both, at), "split at {at}");
        }
        let te_only = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cl_only = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd";
        let lookalike =
            b"POST / HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding-X: chunked\r\n\r\n";
        for head in [&te_only[..], &cl_only[..], &lookalike[..]] {
            for at in 0..=head.len() {
                assert!(
                    !scan(head, at),
                    "{:?} split at {at}",
                    String::from_utf8_lossy(head)
                );
            }
        }
    }

    #[test]
    fn the_scan_ends_with_the_head() {
        // A body that looks like a header line is not the head's.
        let head =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nContent-Length: 4\r\n\r\n";
        assert!(!scan(head, head.len()));
        let mut s = HeadScan::default();
        s.start();
        assert!(
            !s.feed(b"GET / HTTP/1.1\n\n"),
            "bare LF lines end the head too"
        );
        assert!(!s.active);
    }
}
