//! Our HTTP/1.1 server loop, for the common case; hyper's serves everything else.
//!
//! A request head is parsed once with httparse; header values are slices of the head. When the
//! request has no body and asks for nothing special (origin-form target, no `Transfer-Encoding`,
//! no `Content-Length` but `0`, no `Upgrade`, no `Expect`, not `CONNECT`), this loop serves it:
//! the service runs in the connection's task, the response head is written as bytes together
//! with the first body bytes where they are at hand, and the connection waits for the next head
//! holding no buffer (reads go through a stack buffer, and an empty read buffer is released).
//!
//! Anything else, including heads that do not parse, are too large or have too many fields,
//! and the HTTP/2 preface, hands the connection to hyper's server with the bytes read so far
//! in front of its IO: hyper then reads the same head from the start and keeps the connection
//! (its request bodies, `100-continue`, upgrades, its 400/431 answers). Hand-over happens only
//! between requests, so nothing is half-answered by either side.
//!
//! An answer that ends its connection is written held (`ConnIo::last_write`), so its last
//! segment carries the FIN our shutdown sends right after. A connection hyper closes while the
//! client is still sending (an answer before the upload ended), or one this loop closes with
//! pipelined requests unanswered, lingers rather than being reset (`Prefixed`, `linger`).
//!
//! While the service works, the loop keeps reading: a client that closes its side gives up the
//! request (hyper's default, `half_close` off), and pipelined bytes wait in the buffer.
//! The request-head timer and the request count work as with hyper: [`HeadTimer`] sits under
//! this loop's IO and [`Counted`] wraps the service (the last answer says `Connection: close`,
//! which this loop honours).
//!
//! [`HeadTimer`]: crate::head_timer::HeadTimer
//! [`Counted`]: crate::head_timer::Counted

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::slots::Hold;
use super::{BoxError, HeadLimits};
use crate::forward::wire::{
    ConnectionOptions, connection_options, decimal, length_value, put_field,
};
use crate::head_timer::ConnIo;

/// The body of a request as the pipeline sees it: none (this loop's requests), or hyper's.
#[derive(Debug)]
pub enum RequestBody {
    Empty,
    Hyper(Incoming),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// A service over [`RequestBody`] as hyper's server wants it. Its future is boxed: HTTP/2
/// spawns each stream's future as a task, moving the request's whole state (over a KiB) several
/// times on the way; a box moves as a pointer.
#[derive(Debug)]
pub struct ToHyper<S>(pub S);

impl<S> Service<Request<Incoming>> for ToHyper<S>
where
    S: Service<Request<RequestBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        pin_boxed!(self.0.call(req.map(RequestBody::Hyper)))
    }
}

/// What a connection's service must be, for this loop and for hyper's server alike.
pub trait ConnService<B>:
    Service<
        Request<RequestBody>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
}

impl<S, B> ConnService<B> for S where
    S: Service<
            Request<RequestBody>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static
{
}

/// What a response body must be, for this loop and for hyper's server alike.
pub trait ConnBody: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<B> ConnBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// Header fields this loop parses in one head; more go to hyper (which answers 431 past the
/// listener's limit).
const SLOTS: usize = 64;
/// The stack buffer reads go through.
const READ_CHUNK: usize = 4096;
/// Body data up to this size is copied behind the head (one write); larger goes as its own
/// slice of a vectored write.
const COPY_MAX: usize = 4096;

/// Serves an HTTP/1.x connection until it ends, or hands it to hyper (see the module docs).
/// When the listener drains (`stop`), idle connections close, busy ones close after
/// their answer. `keeper` is held for the connection's life; an idle connection whose IO says
/// it is time to park is handed to it.
///
/// Not an `async fn`: those keep their arguments twice (as arguments and as locals), and this
/// future is most of what an idle connection costs.
#[allow(clippy::manual_async_fn)]
pub fn serve<I, S, B>(
    mut io: I,
    service: S,
    stop: Hold,
    keeper: impl Keep<I>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + ConnIo + Unpin + Send + 'static,
    S: ConnService<B>,
    B: ConnBody,
{
    async move {
        // Held by reference: moving it into a local would keep it in this future twice.
        let _keeper = &keeper;
        let mut buf = BytesMut::new();
        loop {
            // The parsed request goes straight into the exchange's box: held in a named local
            // here, it kept its room (272 bytes) in the connection's future, idle or not
            // (760 bytes against 488, release layout).
            let exchange = match poll_fn(|cx| poll_head(cx, &mut io, &mut buf, &stop)).await {
                Next::Request(req, info) => pin_boxed!(exchange(
                    &mut io,
                    pin_boxed!(service.call(req)),
                    info,
                    &mut buf,
                    &stop,
                )),
                Next::Closed => return,
                Next::Park => return keeper.park(io),
                Next::Hyper => break,
            };
            let keep = exchange.await;
            if !keep {
                let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
                // A pipelining client: more of its requests may be on their way, and a close
                // would answer them with a reset (see `Prefixed`). The drain need not wait.
                if !buf.is_empty() && may_linger() {
                    drop(stop);
                    Box::pin(linger(io)).await;
                }
                return;
            }
            if buf.is_empty() {
                // Nothing pipelined: hold no buffer while idle.
                buf = BytesMut::new();
            }
        }
        io.watch_heads(&buf);
        // Boxed: hyper's connection state is large, and most connections never need it.
        Box::pin(hand_over(io, buf.freeze(), service, stop)).await;
    }
}

/// What the loop holds for its connection's life, and where an idle connection goes when it is
/// parked.
pub trait Keep<I>: Send + 'static {
    fn park(self, io: I);
}

/// Nothing to hold, nowhere to park: the IO never says it is time.
impl<I> Keep<I> for () {
    fn park(self, _io: I) {}
}

/// Serves the rest of the connection with hyper's server, `prefix` (bytes already read) first.
/// Once `stop` has turned (before or during), hyper finishes the request in hand and closes.
pub async fn hand_over<I, S, B>(io: I, prefix: Bytes, service: S, stop: Hold)
where
    I: AsyncRead + AsyncWrite + ConnIo + Unpin + Send + 'static,
    S: ConnService<B>,
    B: ConnBody,
{
    let listener = Arc::clone(io.listener());
    let exchanges = io.exchanges().cloned();
    let io = Prefixed::new(prefix, io);
    let mut conn = pin!(
        listener
            .hyper
            .serve_connection_with_upgrades(TokioIo::new(io), ToHyper(service))
    );
    // One poll first: hyper takes in hand the request already read, so a stop answers it (with
    // `Connection: close`) rather than closing on a connection hyper still thinks idle.
    if poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx).is_ready())).await {
        return;
    }
    tokio::select! {
        // First: a stop that came before the hand-over is seen at once.
        biased;
        () = poll_fn(|cx| stop.poll(cx)) => conn.as_mut().graceful_shutdown(),
        _ = conn.as_mut() => return,
        // An HTTP/2 connection without a stream for `keepalive_timeout` (`head_timer`).
        () = poll_fn(|_| match &exchanges {
            Some(ex) if ex.idle_out() => Poll::Ready(()),
            _ => Poll::Pending,
        }) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// What the head read found. (Returned once per request and taken apart at once: boxing the
/// request would cost an allocation for nothing.)
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request<RequestBody>, Info),
    /// The client closed (or the listener drains and the connection is idle).
    Closed,
    /// Not ours: hyper takes the connection.
    Hyper,
    /// Idle long enough to be parked (`listen::park`).
    Park,
}

/// What the answer needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Info {
    pub(crate) head: bool,
    pub(crate) http10: bool,
    /// The client lets the connection stay open.
    pub(crate) keep: bool,
}

fn poll_head<I: AsyncRead + ConnIo + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    buf: &mut BytesMut,
    stop: &Hold,
) -> Poll<Next> {
    loop {
        if !buf.is_empty() {
            let limits = &io.listener().head;
            match parse(buf, limits) {
                Parse::Done(req, info) => return Poll::Ready(Next::Request(req, info)),
                Parse::Hyper => return Poll::Ready(Next::Hyper),
                Parse::Partial if buf.len() >= limits.max_bytes => {
                    return Poll::Ready(Next::Hyper);
                }
                Parse::Partial => {}
            }
        }
        match poll_read_some(cx, io, buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Next::Closed),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => {
                if buf.is_empty() && stop.poll(cx).is_ready() {
                    return Poll::Ready(Next::Closed);
                }
                if buf.is_empty() && io.park_due() {
                    return Poll::Ready(Next::Park);
                }
                return Poll::Pending;
            }
        }
    }
}

/// One read through a stack buffer, appended to `buf` (which holds no room while idle).
fn poll_read_some<I: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut room = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut room);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

#[allow(clippy::large_enum_variant)]
pub(crate) enum Parse {
    Done(Request<RequestBody>, Info),
    Partial,
    Hyper,
}

/// Where a field's name and value lie in the head.
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses a head at the front of `buf`; on success it is split off and becomes the request.
pub(crate) fn parse(buf: &mut BytesMut, limits: &HeadLimits) -> Parse {
    let mut slots = [const { MaybeUninit::uninit() }; SLOTS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Hyper,
    };
    if len > limits.max_bytes || parsed.headers.len() > limits.max_headers {
        return Parse::Hyper;
    }
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Parse::Hyper;
    };
    if !target.starts_with('/') {
        return Parse::Hyper;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Hyper;
    };
    if method == Method::CONNECT {
        return Parse::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = (s.as_ptr() as usize - base) as u32;
        (start, start + s.len() as u32)
    };
    let target = at(target.as_bytes());
    let http10 = minor == 0;
    let mut connection = ConnectionOptions::default();
    let mut fields = [Field::default(); SLOTS];
    let count = parsed.headers.len();
    let mut length = false;
    for (h, field) in parsed.headers.iter().zip(fields.iter_mut()) {
        let name = h.name.as_bytes();
        let special = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
        // A `Content-Length` other than one `0`: hyper's (a body; or repeated lengths, which
        // hyper folds into one field before the request goes on).
        let repeated_or_body = special(&header::CONTENT_LENGTH)
            && (std::mem::replace(&mut length, true) || h.value.trim_ascii() != b"0");
        if special(&header::TRANSFER_ENCODING)
            || special(&header::UPGRADE)
            || special(&header::EXPECT)
            || repeated_or_body
        {
            return Parse::Hyper;
        }
        if special(&header::CONNECTION) {
            connection |= connection_options(h.value);
        }
        *field = Field {
            name: at(name),
            value: at(h.value),
        };
    }
    let bytes = buf.split_to(len).freeze();
    let slice = |(start, end): (u32, u32)| bytes.slice(start as usize..end as usize);
    let Ok(uri) = Uri::from_maybe_shared(slice(target)) else {
        // Not ours to judge: hyper reads this head again from the start.
        return unsplit(buf, bytes);
    };
    // Room for the fields the pipeline adds (request id, `X-Forwarded-*`, `Via`): the map is
    // not grown (rehashed) on the way upstream. A kept map, as a rule (`forward` gives it
    // back once the request is sent).
    let mut headers = crate::spare::headers(count + 8);
    for f in &fields[..count] {
        let name = &bytes[f.name.0 as usize..f.name.1 as usize];
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(slice(f.value)),
        ) else {
            return unsplit(buf, bytes);
        };
        headers.append(name, value);
    }
    let info = Info {
        head: method == Method::HEAD,
        http10,
        keep: !connection.close && (!http10 || connection.keep_alive),
    };
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Parse::Done(req, info)
}

/// Puts a split-off head back in front of the buffer, for hyper.
fn unsplit(buf: &mut BytesMut, head: Bytes) -> Parse {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parse::Hyper
}

/// One request: the service's answer, written out. True when the connection may carry another.
///
/// The answer comes boxed: taken by value, it was kept twice in this future (the argument and
/// its pinned copy) and moved twice more on the way in, ~1 KiB each time.
async fn exchange<I, F, E, B>(
    io: &mut I,
    mut answer: Pin<Box<F>>,
    info: Info,
    buf: &mut BytesMut,
    draining: &Hold,
) -> bool
where
    I: AsyncRead + AsyncWrite + ConnIo + Unpin,
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    // The answer, or the client gone (then the request is given up).
    let answered = poll_fn(|cx| {
        if let Poll::Ready(r) = answer.as_mut().poll(cx) {
            return Poll::Ready(r.ok());
        }
        while buf.len() < io.listener().head.max_bytes {
            match poll_read_some(cx, io, buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await;
    let Some(resp) = answered else {
        return false;
    };
    let keep = info.keep && !draining.is_draining();
    write_response(io, resp, info, keep).await.unwrap_or(false)
}

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

pub(crate) async fn write_response<I, B>(
    io: &mut I,
    resp: Response<B>,
    info: Info,
    mut keep: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + ConnIo + Unpin,
    B: Body,
{
    let (parts, body) = resp.into_parts();
    let mut body = pin!(body);
    let status = parts.status;
    let headers = &parts.headers;
    let fields = HeadFields::of(headers);
    let close_field = fields.connection.close;
    keep &= !close_field;
    let never_body = status.is_informational() || status == StatusCode::NO_CONTENT;
    let declared = fields.length;
    let mut add_length = None;
    let framing = if never_body || info.head || status == StatusCode::NOT_MODIFIED {
        // A HEAD answer says the length a GET's would have, when it is known.
        if info.head && declared.is_none() {
            add_length = body.size_hint().exact().filter(|n| *n > 0);
        }
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        add_length = Some(n);
        Framing::Length(n)
    } else if !info.http10 {
        Framing::Chunked
    } else {
        keep = false;
        Framing::Close
    };

    // Room for a typical proxied head and a small body (~300 bytes with our own fields).
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && (never_body || declared.is_none()))
        {
            continue;
        }
        put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(n) = add_length {
        put_field(&mut out, b"content-length", decimal(n, &mut [0; 20]));
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !fields.date {
        with_date(|d| put_field(&mut out, b"date", d));
    }
    if !keep && !close_field {
        out.extend_from_slice(b"connection: close\r\n");
    } else if keep && info.http10 && !fields.connection.keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // The head is written out: its map is kept for the next one read.
    crate::spare::keep(parts.headers);

    if framing == Framing::None {
        write_end(io, &out, keep).await?;
        return Ok(keep);
    }
    let mut sent = 0u64;
    loop {
        // Whatever is at hand goes out with what is queued; wait only after a flush.
        // (A body error is only looked at, not kept: it need not be Send.)
        let mut next = |cx: &mut Context<'_>| match body.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(Result::ok)),
            Poll::Pending => Poll::Pending,
        };
        let frame = match poll_fn(|cx| Poll::Ready(next(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    write_all(io, &[&out]).await?;
                    out.clear();
                }
                flush(io).await?;
                poll_fn(&mut next).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Some(frame)) => frame,
            // The answer broke: end the connection so the client sees it incomplete.
            Some(None) => {
                if sent > 0 || framing == Framing::Chunked {
                    write_all(io, &[&out]).await?;
                }
                return Ok(false);
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), framing) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        put_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    write_end(io, &out, keep).await?;
                    return Ok(keep);
                }
                continue;
            }
        };
        let len = data.remaining();
        if len == 0 {
            continue;
        }
        sent += len as u64;
        if let Framing::Length(n) = framing
            && sent > n
        {
            // More than the length said: what is sent is all the client may read.
            write_all(io, &[&out]).await?;
            return Ok(false);
        }
        if framing == Framing::Chunked {
            let mut hex = [0u8; 16];
            out.extend_from_slice(hex_usize(len, &mut hex));
            out.extend_from_slice(b"\r\n");
        }
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            if n <= COPY_MAX {
                out.extend_from_slice(chunk);
            } else {
                write_all(io, &[&out, chunk]).await?;
                out.clear();
            }
            data.advance(n);
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(n) if sent < n => {
            // The body ended short of its length: the client must not wait for the rest.
            write_all(io, &[&out]).await?;
            return Ok(false);
        }
        _ => {}
    }
    // (`keep` is false for `Framing::Close`.)
    write_end(io, &out, keep).await?;
    Ok(keep && framing != Framing::Close)
}

/// Writes what is left of an answer (`out`, may be empty) and flushes; when the connection
/// ends after it (not `keep`), held for the FIN (`ConnIo::last_write`).
async fn write_end<I>(io: &mut I, out: &[u8], keep: bool) -> io::Result<()>
where
    I: AsyncWrite + ConnIo + Unpin,
{
    if !out.is_empty() {
        if !keep {
            io.last_write();
        }
        write_all(io, &[out]).await?;
    }
    flush(io).await
}

/// What a response head's fields say about how it is written.
struct HeadFields {
    /// Over every `Connection` field.
    connection: ConnectionOptions,
    /// The response's own `Content-Length`, when it has exactly one valid value.
    length: Option<u64>,
    /// A `Date` field is there.
    date: bool,
}

impl HeadFields {
    /// One pass over the fields, where a lookup per name hashed each name.
    fn of(headers: &HeaderMap) -> HeadFields {
        let mut fields = HeadFields {
            connection: ConnectionOptions::default(),
            length: None,
            date: false,
        };
        let mut lengths = 0;
        for (name, value) in headers {
            if name == header::CONNECTION {
                fields.connection |= connection_options(value.as_bytes());
            } else if name == header::CONTENT_LENGTH {
                lengths += 1;
                // Digits only: `+5` would go out as it came, a length the client cannot read.
                fields.length = length_value(value.as_bytes());
            } else if name == header::DATE {
                fields.date = true;
            }
        }
        if lengths != 1 {
            fields.length = None;
        }
        fields
    }
}

/// Writes every slice whole, vectored where the IO supports it.
async fn write_all<I: AsyncWrite + Unpin>(io: &mut I, parts: &[&[u8]]) -> io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        if parts[index].len() == offset {
            index += 1;
            offset = 0;
            continue;
        }
        let n = poll_fn(|cx| {
            let mut slices = [io::IoSlice::new(&[]); 2];
            let mut k = 0;
            for (i, part) in parts[index..].iter().enumerate().take(slices.len()) {
                let part = if i == 0 { &part[offset..] } else { part };
                slices[k] = io::IoSlice::new(part);
                k += 1;
            }
            Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && index < parts.len() {
            let here = parts[index].len() - offset;
            if left < here {
                offset += left;
                left = 0;
            } else {
                left -= here;
                index += 1;
                offset = 0;
            }
        }
    }
    Ok(())
}

async fn flush<I: AsyncWrite + Unpin>(io: &mut I) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

fn hex_usize(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// The `Date` field's value, formatted once a second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        f(text.as_bytes());
    });
}

/// How long a connection hyper has closed goes on reading (and dropping) what the client still
/// sends, at most, and how long it waits each time for more (see [`Prefixed`]). Shorter than
/// nginx's `lingering_time` and `lingering_timeout` (30 s, 5 s): enough for a client to see the
/// answer and stop.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_WAIT: Duration = Duration::from_secs(2);
/// Connections lingering at once, at most, in this process: past it, a close is a reset again.
const MAX_LINGERING: usize = 1024;
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// IO with bytes already read put back in front, as hyper's server gets it.
///
/// Hyper closes a connection whose request body it did not read to its end (an answer before
/// the upload ended: a 413, a 401, an upstream that answered early). The kernel answers a
/// close with bytes unread, and whatever the client sends after it, with a reset, and a reset
/// makes the client's kernel throw away what it has not read yet: the answer, or its end. So
/// when hyper has shut our side and dropped the IO while the client's side is still open, the
/// IO lingers in a task of its own: it reads and drops what comes until the client closes, a
/// wait of [`LINGER_WAIT`] passes without a byte, or [`LINGER`] is up. The answer and our FIN
/// have left; the client sees them, stops and closes.
struct Prefixed<I: AsyncRead + Unpin + Send + 'static> {
    prefix: Bytes,
    /// Taken by the lingering task.
    io: Option<I>,
    /// Hyper has shut our side down.
    shut: bool,
    /// The client's side has ended (or failed, or our IO ended it: the head timer's idle close).
    ended: bool,
}

impl<I: AsyncRead + Unpin + Send + 'static> Prefixed<I> {
    fn new(prefix: Bytes, io: I) -> Self {
        Prefixed {
            prefix,
            io: Some(io),
            shut: false,
            ended: false,
        }
    }

    fn io(&mut self) -> io::Result<Pin<&mut I>> {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<I: AsyncRead + Unpin + Send + 'static> Drop for Prefixed<I> {
    fn drop(&mut self) {
        if !self.shut || self.ended {
            return;
        }
        let (Some(io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if may_linger() {
            runtime.spawn(linger(io));
        }
    }
}

/// Counts a connection in as lingering ([`linger`] counts it out), unless too many are.
fn may_linger() -> bool {
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

/// Reads and drops what the client sends until it closes, goes quiet or time is up; counted
/// in by [`may_linger`].
async fn linger<I: AsyncRead + Unpin>(mut io: I) {
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            LINGERING.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _counted = Counted;
    let _ = tokio::time::timeout(LINGER, drain(&mut io)).await;
}

/// Reads and drops what the client sends until it closes (or the read fails), or
/// [`LINGER_WAIT`] passes without a byte: what is left of a close that must not be a reset.
pub(super) async fn drain<I: AsyncRead + Unpin>(io: &mut I) {
    let mut sink = vec![0u8; 8 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(LINGER_WAIT, io.read(&mut sink)).await
        && n > 0
    {}
}

impl<I: AsyncRead + Unpin + Send + 'static> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = ready!(self.io()?.poll_read(cx, buf));
        if read.is_err() || (buf.filled().len() == before && buf.remaining() > 0) {
            self.ended = true;
        }
        Poll::Ready(read)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(I::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        self.io()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::os::fd::AsFd;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::Shared;
    use super::super::slots::Slots;
    use super::*;
    use crate::head_timer::{Counted, Exchanges, HeadTimer};

    /// The listener these tests' connections belong to.
    fn shared() -> &'static Arc<Shared> {
        static LISTENER: LazyLock<Arc<Shared>> = LazyLock::new(|| {
            let mut hyper = auto::Builder::new(TokioExecutor::new());
            // As listen::serve sets it: the head limit is hyper's too once it has the
            // connection.
            hyper.http1().max_buf_size(limits().max_bytes);
            Arc::new(Shared {
                name: "test",
                head: limits(),
                hyper,
                lot: None,
                streams: crate::listen::streams::Streams::new("test", limits().send),
            })
        });
        &LISTENER
    }

    /// These tests serve a bare stream: nothing to watch.
    impl ConnIo for DuplexStream {
        fn listener(&self) -> &Arc<Shared> {
            shared()
        }

        fn watch_heads(&mut self, _head: &[u8]) {}
    }

    /// Frames handed out one by one, length unknown (chunked on the wire).
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    type TestBody = http_body_util::Either<Full<Bytes>, Frames>;

    fn limits() -> HeadLimits {
        HeadLimits {
            timeout: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            send: Duration::from_secs(10),
            tunnel: Duration::from_secs(10),
            max_requests: 1000,
            max_bytes: 8 * 1024,
            max_headers: 32,
            park: None,
        }
    }

    /// Answers by path; a request with a body gets its length back; `/hang` never answers
    /// (and sets the flag when given up).
    async fn answer(
        req: Request<RequestBody>,
        given_up: Arc<AtomicBool>,
    ) -> Result<Response<TestBody>, Infallible> {
        let path = req.uri().path().to_owned();
        let ours = matches!(req.body(), RequestBody::Empty);
        let full = |s: String| http_body_util::Either::Left(Full::new(Bytes::from(s)));
        let resp = match path.as_str() {
            "/chunked" => {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", HeaderValue::from_static("7"));
                Response::new(http_body_util::Either::Right(Frames(VecDeque::from([
                    Frame::data(Bytes::from_static(b"hello ")),
                    Frame::data(Bytes::from(vec![b'x'; 5000])),
                    Frame::trailers(trailers),
                ]))))
            }
            "/short" => Response::new(http_body_util::Either::Right(Frames(VecDeque::from([
                Frame::data(Bytes::from_static(b"short, length unknown")),
            ])))),
            "/empty" => {
                let mut r = Response::new(full(String::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            "/hang" => {
                struct Flag(Arc<AtomicBool>);
                impl Drop for Flag {
                    fn drop(&mut self) {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
                let _flag = Flag(given_up);
                std::future::pending::<()>().await;
                unreachable!()
            }
            _ => {
                let (parts, body) = req.into_parts();
                let got = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                let text = format!(
                    "{} {} {:?} ours={ours} body={got}",
                    parts.method, parts.uri, parts.version
                );
                Response::new(full(text))
            }
        };
        Ok(resp)
    }

    /// A served connection; the client's end, the drain switch and the given-up flag.
    fn start() -> (
        DuplexStream,
        Arc<Slots>,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let drain = Arc::new(Slots::default());
        let given_up = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&given_up);
        let service = hyper::service::service_fn(move |req| answer(req, Arc::clone(&flag)));
        let task = tokio::spawn(serve(server, service, drain.hold(), ()));
        (client, drain, given_up, task)
    }

    /// A real TCP connection served by our loop through its request-head timer, as a listener
    /// serves it: the client's end, and a second handle on the server's socket (its options
    /// stay readable after the loop has closed its own).
    async fn tcp_served() -> (TcpStream, socket2::Socket, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        server.set_nodelay(true).expect("nodelay");
        let probe = socket2::Socket::from(server.as_fd().try_clone_to_owned().expect("dup"));
        let slots = Arc::new(Slots::default());
        let hold = slots.hold();
        let exchanges = Arc::new(Exchanges::default());
        let io = HeadTimer::new(
            server,
            Arc::clone(&exchanges),
            Arc::clone(shared()),
            hold.deadline(),
        );
        let flag = Arc::new(AtomicBool::new(false));
        let service = Counted::new(
            hyper::service::service_fn(move |req| answer(req, Arc::clone(&flag))),
            exchanges,
            limits().max_requests,
            Arc::clone(&shared().streams),
        );
        (client, probe, tokio::spawn(serve(io, service, hold, ())))
    }

    /// What a client reads, to the close, from a fresh connection after sending `send`.
    async fn served(send: &[u8]) -> String {
        let (mut client, _stop, _, task) = start();
        let text = transcript(&mut client, send).await;
        task.await.expect("served");
        text
    }

    async fn transcript<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, send: &[u8]) -> String {
        client.write_all(send).await.expect("write");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn bodiless_requests_are_answered_in_order_with_each_framing() {
        let text = served(
            b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /chunked HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\
              HEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /empty HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
              GET /never HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        // (Bodies quote the request line: split on the status lines' "HTTP/1.1 2".)
        let answers: Vec<&str> = text.split("HTTP/1.1 2").skip(1).collect();
        assert_eq!(answers.len(), 5, "{text}");
        assert!(answers[0].starts_with("00 OK\r\n"), "{text}");
        assert!(answers[0].contains("\r\ncontent-length: 36\r\n"), "{text}");
        assert!(answers[0].contains("\r\ndate: "), "{text}");
        assert!(answers[0].ends_with("\r\n\r\nGET /a?q=1 HTTP/1.1 ours=true body=0"));
        assert!(
            answers[1].contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        let body = format!(
            "6\r\nhello \r\n1388\r\n{}\r\n0\r\nx-sum: 7\r\n\r\n",
            "x".repeat(5000)
        );
        assert!(answers[1].ends_with(&body), "{text}");
        // HEAD: the length a GET would have, no body.
        assert!(answers[2].contains("\r\ncontent-length: 33\r\n"), "{text}");
        assert!(answers[2].ends_with("\r\n\r\n"), "{text}");
        assert!(answers[3].starts_with("04 No Content\r\n"), "{text}");
        assert!(!answers[3].contains("content-length"), "{text}");
        assert!(answers[4].contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            answers[4].ends_with("GET /last HTTP/1.1 ours=true body=0"),
            "{text}"
        );
    }

    /// A pipelining client whose first request ends the connection: the requests it sent
    /// after that one are not answered, and the close lingers (as after an early answer, below)
    /// rather than resetting what the client sends next.
    #[tokio::test]
    async fn a_close_with_pipelined_requests_unanswered_lingers() {
        let (mut client, probe, task) = tcp_served().await;
        drop(probe);
        client
            .write_all(b"GET /a HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\nGET /b HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("requests");
        let answer = read_to_the_end(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 200").count(), 1, "{answer}");
        sending_on_is_not_reset(
            &mut client,
            &b"GET /c HTTP/1.1\r\nhost: a\r\n\r\n".repeat(1000),
        )
        .await;
        task.await.expect("served");
    }

    /// An answer before the upload it answers has ended (`/empty` does not read the body):
    /// hyper closes the connection with the body unread. A close with bytes unread is a reset,
    /// which would make the client's kernel throw away an answer it had not read yet; the
    /// connection lingers instead, reading and dropping what the client still sends.
    #[tokio::test]
    async fn an_answer_before_the_upload_ends_is_closed_with_a_fin_not_a_reset() {
        let (mut client, probe, task) = tcp_served().await;
        // The second handle would keep the socket open after the server's close.
        drop(probe);
        // A first upload, read and answered: hyper has the connection, and reads the body
        // from the socket (sent only once hyper asks for it), a read shorter than its buffer.
        client
            .write_all(
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
            )
            .await
            .expect("first request");
        read_until(&mut client, b"100 Continue\r\n\r\n").await;
        client.write_all(b"hello").await.expect("first body");
        read_until(&mut client, b"body=5").await;
        client
            .write_all(b"POST /empty HTTP/1.1\r\nhost: a\r\ncontent-length: 100000000\r\n\r\n")
            .await
            .expect("head");
        let chunk = vec![b'x'; 64 * 1024];
        client
            .write_all(&chunk)
            .await
            .expect("first part of the body");
        let answer = read_to_the_end(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
        task.await.expect("served");
        // An uploader that has not looked at the answer yet goes on sending.
        sending_on_is_not_reset(&mut client, &chunk).await;
    }

    /// Reads until what has come ends with `end` (the connection must stay open till then).
    async fn read_until(client: &mut TcpStream, end: &[u8]) {
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        while !got.ends_with(end) {
            let n = client.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    }

    /// What the client reads up to the end of the stream, which must be a FIN (not a reset).
    async fn read_to_the_end(client: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let ended = client.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(ended.is_ok(), "a clean end after {answer:?}: {ended:?}");
        answer
    }

    /// A client that goes on sending after the server's close: every write lands (a closed
    /// socket would answer the first with a reset, failing the next), and once the client
    /// stops it sees the end of the stream again.
    async fn sending_on_is_not_reset(client: &mut TcpStream, more: &[u8]) {
        for i in 0..8 {
            let sent = client.write_all(more).await;
            assert!(sent.is_ok(), "write {i} after the close: {sent:?}");
        }
        client.shutdown().await.expect("shutdown");
        let mut read = [0u8; 64];
        let last = client.read(&mut read).await;
        assert!(matches!(last, Ok(0)), "{last:?}");
    }

    /// An answer that ends its connection is held in the corked socket for the FIN, and
    /// arrives whole; a kept connection's answers are not held (the kernel would send them
    /// after 200 ms). Each way an answer can end: a length, no body (204), chunks and
    /// trailers, an HTTP/1.0 body that runs to the close.
    #[tokio::test]
    async fn only_an_answer_that_ends_its_connection_is_held_for_the_fin() {
        let cases: [(&[u8], &str, &[u8], &str); 3] = [
            (
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /a HTTP/1.1 ours=true body=0",
                b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "GET /last HTTP/1.1 ours=true body=0",
            ),
            (
                b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n",
                "\r\n\r\n",
                b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "\r\n0\r\nx-sum: 7\r\n\r\n",
            ),
            (
                b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                "GET /a HTTP/1.0 ours=true body=0",
                b"GET /short HTTP/1.0\r\n\r\n",
                "\r\n\r\nshort, length unknown",
            ),
        ];
        for (kept, kept_end, last, last_end) in cases {
            let (mut client, probe, task) = tcp_served().await;
            client.write_all(kept).await.expect("write");
            read_until(&mut client, kept_end.as_bytes()).await;
            assert!(!probe.tcp_cork().expect("TCP_CORK"), "a kept answer held");
            let text = transcript(&mut client, last).await;
            task.await.expect("served");
            assert!(text.starts_with("HTTP/1.1 2"), "{text}");
            assert!(text.ends_with(last_end), "{text}");
            assert!(
                probe.tcp_cork().expect("TCP_CORK"),
                "the last answer not held: {text}"
            );
        }
    }

    #[tokio::test]
    async fn http10_clients_get_keep_alive_only_when_asked_and_no_chunks() {
        let text = served(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
        let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 2, "{text}");
        assert!(
            answers[0].contains("\r\nconnection: keep-alive\r\n"),
            "{text}"
        );
        assert!(
            answers[0].ends_with("GET /a HTTP/1.0 ours=true body=0"),
            "{text}"
        );
        // Length unknown: the body runs to the close, unframed.
        assert!(!answers[1].contains("transfer-encoding"), "{text}");
        assert!(answers[1].contains("\r\nconnection: close\r\n"), "{text}");
        assert!(answers[1].ends_with(&format!("\r\n\r\nhello {}", "x".repeat(5000))));

        let text = served(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n").await;
        assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    }

    #[tokio::test]
    async fn anything_else_goes_to_hyper_with_the_bytes_read_so_far() {
        // A body after a bodiless request: hyper reads the POST from its first byte.
        let text = served(
            b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
              GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            text.contains("GET /first HTTP/1.1 ours=true body=0"),
            "{text}"
        );
        assert!(
            text.contains("POST /upload HTTP/1.1 ours=false body=5"),
            "{text}"
        );
        assert!(
            text.contains("GET /after HTTP/1.1 ours=false body=0"),
            "{text}"
        );

        // Chunked, Upgrade and Expect are hyper's too, and so are heads we cannot parse.
        for (send, want) in [
            (
                &b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
                "POST /c HTTP/1.1 ours=false body=3",
            ),
            (
                b"GET /u HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: close\r\n\r\n",
                "GET /u HTTP/1.1 ours=false",
            ),
            (b"GET /bad path HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"),
            (
                b"GET http://x/abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "GET http://x/abs HTTP/1.1 ours=false",
            ),
        ] {
            let text = served(send).await;
            assert!(text.contains(want), "{want}: {text}");
        }

        // A head over the limit: hyper's 431.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "y".repeat(9000)
        );
        let text = served(big.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    }

    #[tokio::test]
    async fn a_client_that_closes_gives_up_its_request() {
        let (mut client, _stop, given_up, task) = start();
        client
            .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::task::yield_now().await;
        assert!(!given_up.load(Ordering::SeqCst));
        drop(client);
        task.await.expect("served");
        assert!(given_up.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_drain_closes_idle_connections_and_busy_ones_after_their_answer() {
        let (mut client, stop, _, task) = start();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = vec![0u8; 4096];
        let n = client.read(&mut got).await.expect("read");
        assert!(got[..n].starts_with(b"HTTP/1.1 200"));
        // Idle now: the drain ends it.
        stop.start_drain();
        task.await.expect("served");
        assert_eq!(client.read(&mut got).await.expect("read"), 0);

        // Drain signalled while a request waits in the buffer: it is answered, with close.
        let (mut client, stop, _, task) = start();
        stop.start_drain();
        let text = transcript(&mut client, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        task.await.expect("served");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        // The same for a request hyper takes over: it is answered, then the connection ends
        // (the transcript reads to the end; hyper's answer says nothing of the close).
        let (mut client, stop, _, task) = start();
        stop.start_drain();
        let text = transcript(
            &mut client,
            b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        task.await.expect("served");
        assert!(
            text.contains("POST /p HTTP/1.1 ours=false body=2"),
            "{text}"
        );
    }

    #[test]
    fn a_heads_own_fields_decide_how_it_is_written() {
        /// (fields, `Connection` (close, keep-alive), the declared length, `Date` there)
        type Case = (
            &'static [(&'static str, &'static str)],
            (bool, bool),
            Option<u64>,
            bool,
        );
        let cases: &[Case] = &[
            (
                &[("content-length", " 13 ")],
                (false, false),
                Some(13),
                false,
            ),
            // Two lengths (even equal ones) or a bad one: none declared, the body decides.
            (
                &[("content-length", "5"), ("content-length", "5")],
                (false, false),
                None,
                false,
            ),
            (&[("content-length", "5x")], (false, false), None, false),
            (&[("content-length", "+5")], (false, false), None, false),
            (
                &[
                    ("connection", "keep-alive"),
                    ("date", "x"),
                    ("connection", "Close"),
                ],
                (true, true),
                None,
                true,
            ),
            (
                &[("x-other", "close"), ("content-type", "text/plain")],
                (false, false),
                None,
                false,
            ),
        ];
        for (i, (fields, connection, length, date)) in cases.iter().enumerate() {
            let mut headers = HeaderMap::new();
            for (name, value) in *fields {
                headers.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            let got = HeadFields::of(&headers);
            assert_eq!(
                (got.connection.close, got.connection.keep_alive),
                *connection,
                "case {i}"
            );
            assert_eq!(got.length, *length, "case {i}");
            assert_eq!(got.date, *date, "case {i}");
        }
    }
}
