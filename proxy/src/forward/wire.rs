//! HTTP/1.1 upstream exchanges driven inline, in the request's own task: the head is written
//! as bytes, the response head parsed with httparse, and the body read straight from the
//! socket as the client side polls it. No connection task and no channels between the
//! request and its upstream connection (hyper's client spends a task wakeup each way per
//! request, and one per body chunk).
//!
//! Used for bodiless requests that ask for no protocol upgrade — nearly all of an edge's
//! traffic; a request with a body or a WebSocket upgrade goes through hyper's client, which
//! writes a body while reading an early response and hands over upgraded connections.
//!
//! Response framing follows RFC 9112 §6.3: no body after HEAD, 1xx, 204 and 304;
//! `Transfer-Encoding: chunked` (its `Content-Length`, if any, is dropped and the connection
//! not reused); any other transfer coding, or one in an HTTP/1.0 answer, an error (the coding
//! could not be forwarded; §6.1); `Content-Length` otherwise, conflicting values an error; no
//! length at all: to the close. Chunk-size lines and trailers end in CRLF, strictly. Interim
//! 1xx answers are skipped; a 101 (never asked for here) is an error. The `upstream_response`
//! fuzz target (`fuzzing.rs`) holds this reading to hyper's client's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

/// A connection's IO: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Largest upstream response head (and trailer block) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in an upstream response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Room for the first read of a connection; reads are made with at least half of the room.
const READ_SIZE: usize = 8192;
/// The most room a read is given: a connection whose reads fill their room doubles it up to
/// here, and a body of known length is read with room for the rest of it (a 16 KiB answer
/// in one read, not three).
const MAX_READ: usize = 64 * 1024;

/// A request as it goes upstream inline: `target` in origin form, `headers` as they should go
/// (a body's `Content-Length` among them), and the whole body (empty for none).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why an exchange failed.
#[derive(Debug)]
pub struct WireError {
    pub error: io::Error,
    /// Writing the request failed: the upstream had closed the connection, and the request
    /// may go again on another one.
    pub not_sent: bool,
    /// The request went out and the connection ended (closed or reset) before a byte of an
    /// answer came: on a reused connection, the upstream closing it as idle while the request
    /// was on its way.
    pub unanswered: bool,
    /// No response head by the exchange's deadline.
    pub timed_out: bool,
}

impl WireError {
    fn failed(error: io::Error, not_sent: bool) -> WireError {
        WireError {
            error,
            not_sent,
            unanswered: false,
            timed_out: false,
        }
    }

    fn timed_out() -> WireError {
        WireError {
            error: io::Error::new(io::ErrorKind::TimedOut, "no response head by the deadline"),
            not_sent: false,
            unanswered: false,
            timed_out: true,
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for WireError {}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// `work`'s output, or `None` once `timer` fires first.
async fn by<F: Future>(timer: &mut Pin<Box<Sleep>>, work: F) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// One upstream HTTP/1.1 connection and its unread bytes.
pub struct WireConn {
    /// The upstream's address (the pool's key).
    pub addr: SocketAddr,
    io: Box<dyn Io>,
    buf: BytesMut,
    out: Vec<u8>,
    /// Room for the next read when nothing better is known.
    read_size: usize,
    /// Scratch for [`parse_head`], and the names it parsed last.
    scratch: HeadScratch,
    /// The exchange's deadline, kept with the connection and moved for each request: moving a
    /// registered timer later is an update of its expiry, where a new one per request was a
    /// timer-wheel insertion and removal (~500 instructions a request). While the connection
    /// is idle its last deadline may fire, waking the task that last used it once.
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for WireConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireConn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl WireConn {
    /// Boxed for its whole life: it moves in and out of the idle lists and through every
    /// layer a response passes, and a pointer is cheaper to move than its 136 bytes.
    pub fn new(io: Box<dyn Io>, addr: SocketAddr) -> Box<WireConn> {
        Box::new(WireConn {
            addr,
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            out: Vec::with_capacity(512),
            read_size: READ_SIZE,
            scratch: HeadScratch::default(),
            timer: None,
        })
    }

    /// Reads what the socket has into the buffer, with room for `expected` bytes if more
    /// than usual are known to follow; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, expected: u64) -> Poll<io::Result<usize>> {
        let want = usize::try_from(expected)
            .unwrap_or(MAX_READ)
            .clamp(self.read_size, MAX_READ);
        // Room for all of a known larger rest; otherwise at least half the usual room.
        let need = if expected > self.read_size as u64 {
            want
        } else {
            want / 2
        };
        if self.buf.capacity() - self.buf.len() < need {
            self.buf.reserve(want);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ));
        if read.as_ref().is_ok_and(|n| *n == room) {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(read)
    }

    /// Whether the idle connection can carry another request: the upstream has neither
    /// closed it nor sent anything unasked. Never waits (the socket's readiness is known).
    pub fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.buf.is_empty() && matches!(self.poll_fill(&mut cx, 0), Poll::Pending)
    }

    /// Sends a request — its head, a `Host` of `authority` added when there is none, and its
    /// body (whole, in the same write) — and reads the response head, which must come by
    /// `deadline`. The connection moves into the returned body, which reads the rest.
    pub async fn exchange(
        mut self: Box<Self>,
        req: &Outgoing<'_>,
        authority: &Authority,
        deadline: Instant,
    ) -> Result<Response<WireBody>, WireError> {
        let Outgoing {
            method,
            target,
            headers,
            body,
        } = *req;
        let mut timer = match self.timer.take() {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        self.encode(method, target, headers, authority);
        self.out.extend_from_slice(body);
        let sent = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        match by(&mut timer, sent).await {
            None => return Err(WireError::timed_out()),
            Some(Err(error)) => return Err(WireError::failed(error, true)),
            Some(Ok(())) => {}
        }
        // Whether any byte of an answer came (an interim response's, say).
        let mut heard = false;
        loop {
            // Nothing read yet (as a rule, right after the request went out): wait for bytes.
            let parsed = if self.buf.is_empty() {
                Ok(None)
            } else {
                parse_head(&mut self.buf, &mut self.scratch, *method == Method::HEAD)
            };
            match parsed {
                Ok(Some(Parsed::Interim)) => {}
                Ok(Some(Parsed::Final(response, framing, keep))) => {
                    self.timer = Some(timer);
                    return Ok(response.map(|()| WireBody {
                        conn: Some(self),
                        state: framing,
                        keep,
                        back: None,
                    }));
                }
                Ok(None) => {
                    let read = std::future::poll_fn(|cx| self.poll_fill(cx, 0));
                    let Some(read) = by(&mut timer, read).await else {
                        return Err(WireError::timed_out());
                    };
                    let error = match read {
                        Ok(0) => io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream closed the connection before a complete response head",
                        ),
                        Ok(_) => {
                            heard = true;
                            continue;
                        }
                        Err(e) => e,
                    };
                    let mut failed = WireError::failed(error, false);
                    failed.unanswered = !heard;
                    return Err(failed);
                }
                Err(error) => return Err(WireError::failed(error, false)),
            }
        }
    }

    fn encode(&mut self, method: &Method, target: &str, headers: &HeaderMap, host: &Authority) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // The request's own `Host` goes where it is. Whether it has one is seen while its fields
        // are written (a lookup would hash the name); one it lacks (an HTTP/2 request, whose
        // authority is a pseudo-header, or an HTTP/1.0 client's) is written after them and
        // rotated to their front, in place (RFC 9112 §3.2: first after the request line).
        let fields_at = out.len();
        let mut has_host = false;
        for (name, value) in headers {
            has_host |= name == header::HOST;
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !has_host {
            let written = out.len();
            put_field(out, b"host", host.as_str().as_bytes());
            let line = out.len() - written;
            out[fields_at..].rotate_right(line);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends one header field line, `name: value` and CRLF (request and response heads alike).
pub(crate) fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written at the end of `out`.
pub(crate) fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// A `Content-Length` value (RFC 9110 §8.6): digits only, surrounding whitespace aside (Rust's
/// `parse` would also take a sign).
pub(crate) fn length_value(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    // Digit by digit: no UTF-8 check and no `parse` (a value past `u64` is none either way).
    digits.iter().try_fold(0u64, |n, b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// The items of a comma-separated field value, trimmed (empty ones included).
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// What one `Connection` field value says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ConnectionOptions {
    /// It names `close`.
    pub close: bool,
    /// It names `keep-alive`.
    pub keep_alive: bool,
    /// It names something else too (a field to strip), or an empty item.
    pub other: bool,
}

/// What several `Connection` fields say together.
impl std::ops::BitOrAssign for ConnectionOptions {
    fn bitor_assign(&mut self, other: ConnectionOptions) {
        self.close |= other.close;
        self.keep_alive |= other.keep_alive;
        self.other |= other.other;
    }
}

/// What one `Connection` field value says about the connection, in one pass over its items.
pub(crate) fn connection_options(value: &[u8]) -> ConnectionOptions {
    let mut options = ConnectionOptions::default();
    for token in list_items(value) {
        if token.eq_ignore_ascii_case(b"close") {
            options.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
        } else {
            options.other = true;
        }
    }
    options
}

/// The transfer codings one `Transfer-Encoding` field value names: (`chunked` how many times,
/// any other coding). Only `chunked`, once over all the fields, is a framing we forward: a
/// body in any other transfer coding (`gzip, chunked`) would reach the other side without it.
pub(crate) fn transfer_codings(value: &[u8]) -> (u32, bool) {
    let mut codings = (0, false);
    let mut named = false;
    for token in list_items(value) {
        if token.is_empty() {
            continue;
        }
        named = true;
        if token.eq_ignore_ascii_case(b"chunked") {
            codings.0 += 1;
        } else {
            codings.1 = true;
        }
    }
    // A field naming nothing says nothing we could frame by.
    codings.1 |= !named;
    codings
}

enum Parsed {
    /// A 1xx other than 101, consumed.
    Interim,
    /// The response head (consumed), how its body is framed, and whether the connection may
    /// carry another exchange after it.
    Final(Response<()>, State, bool),
}

/// Field names an upstream sent at the front of its last response head, kept.
const KEPT_NAMES: usize = 32;

/// What [`parse_head`] keeps with the connection from one head to the next.
#[derive(Default)]
struct HeadScratch {
    /// Each field's name and where its value lies in the head, so that values become slices
    /// of the head once it is split off (parsed once, no copies).
    fields: Vec<(HeaderName, usize, usize)>,
    /// The last head's field names, as sent and as parsed, by position. An upstream sends the
    /// same names in the same order from one response to the next, as a rule: a name sent at
    /// the same place as before is compared, not parsed again (nor, if it is not a standard
    /// name, copied into a new allocation).
    names: Vec<(Box<[u8]>, HeaderName)>,
}

impl HeadScratch {
    /// The field name `sent` as the `at`-th field of a head.
    fn name(&mut self, at: usize, sent: &[u8]) -> io::Result<HeaderName> {
        if let Some((before, name)) = self.names.get(at)
            && **before == *sent
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(sent).map_err(|_| invalid("bad upstream header name"))?;
        let kept = (Box::from(sent), name.clone());
        if let Some(slot) = self.names.get_mut(at) {
            *slot = kept;
        } else if at == self.names.len() && at < KEPT_NAMES {
            self.names.push(kept);
        }
        Ok(name)
    }
}

/// Parses a complete response head at the front of `buf`, if there is one, and consumes it.
fn parse_head(
    buf: &mut BytesMut,
    scratch: &mut HeadScratch,
    head_request: bool,
) -> io::Result<Option<Parsed>> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(invalid("upstream response head too large")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(invalid("too many upstream response headers"));
        }
        Err(_) => return Err(invalid("malformed upstream response head")),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| invalid("bad upstream status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid("upstream switched protocols unasked"));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let http10 = parsed.version == Some(0);
    let base = buf.as_ptr() as usize;
    scratch.fields.clear();
    let mut length: Option<u64> = None;
    // `Transfer-Encoding` over all its fields: `chunked` how many times, any other coding.
    let mut codings: Option<(u32, bool)> = None;
    let mut connection = ConnectionOptions::default();
    for (at, h) in parsed.headers.iter().enumerate() {
        let name = scratch.name(at, h.name.as_bytes())?;
        let start = h.value.as_ptr() as usize - base;
        if name == header::CONTENT_LENGTH {
            // ASCII whitespace only around each: `str::trim` would also take Unicode spaces
            // (a no-break space before the digits), which hyper's client refuses.
            for part in h.value.split(|b| *b == b',') {
                let n = length_value(part).ok_or_else(|| invalid("bad upstream content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting upstream content-length"));
                }
                length = Some(n);
            }
        } else if name == header::TRANSFER_ENCODING {
            let (n, other) = transfer_codings(h.value);
            let seen = codings.get_or_insert((0, false));
            seen.0 += n;
            seen.1 |= other;
        } else if name == header::CONNECTION {
            let options = connection_options(h.value);
            connection |= options;
            // `Connection: keep-alive`, the usual answer's, is this hop's alone and names no
            // field but `Keep-Alive` (itself hop-by-hop): it is not put in the map only for the
            // pipeline to look it up and take it out again. Any other is kept for the pipeline,
            // which removes it and every field it names.
            if options.keep_alive && !options.close && !options.other {
                continue;
            }
        }
        scratch.fields.push((name, start, start + h.value.len()));
    }
    let bytes = buf.split_to(len).freeze();
    // Room for the fields the proxy adds on the way back (`Via`, request id, region, cookie).
    let mut headers = crate::spare::headers(scratch.fields.len() + 6);
    for (name, start, end) in scratch.fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
            .map_err(|_| invalid("bad upstream header value"))?;
        headers.append(name, value);
    }
    // RFC 9112 §6.1: an HTTP/1.0 message with a transfer coding has faulty framing (it may
    // have passed a hop that did not decode it): its connection ends after it. With a body to
    // frame, it is refused (below), as hyper's client refuses it: the answer fares the same
    // on either path.
    let mut keep = !connection.close && (!http10 || (connection.keep_alive && codings.is_none()));
    let bodiless =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let state = if bodiless {
        State::Length(0)
    } else if let Some(codings) = codings {
        if http10 {
            return Err(invalid("upstream HTTP/1.0 answer with a transfer coding"));
        }
        if codings != (1, false) {
            // Not a framing we can forward (the coding would be lost on the way), or chunked
            // twice: refused, as nginx refuses an unknown transfer coding.
            return Err(invalid("upstream transfer coding other than chunked"));
        }
        if length.is_some() {
            // Both: the transfer coding wins; the length describes nothing we forward.
            headers.remove(header::CONTENT_LENGTH);
            keep = false;
        }
        State::Chunk(Chunk::Size)
    } else if let Some(n) = length {
        State::Length(n)
    } else {
        keep = false;
        State::UntilClose
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *response.headers_mut() = headers;
    Ok(Some(Parsed::Final(response, state, keep)))
}

/// Where a body's read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes still to come.
    Length(u64),
    Chunk(Chunk),
    /// Everything until the upstream closes.
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line next.
    Size,
    /// This many bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// Where a finished connection goes.
pub trait Return: Send + Sync + 'static {
    fn give_back(&self, conn: Box<WireConn>);
}

/// A response body read from its connection as it is polled; the connection goes back (to
/// `back`) the moment the body has been read to its end, when it may carry another exchange.
pub struct WireBody {
    conn: Option<Box<WireConn>>,
    state: State,
    keep: bool,
    back: Option<std::sync::Arc<dyn Return>>,
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBody")
            .field("state", &self.state)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl WireBody {
    /// Sets where the connection goes once the body is read.
    pub fn give_back_to(&mut self, back: std::sync::Arc<dyn Return>) {
        self.back = Some(back);
        if self.state == State::Length(0) {
            self.finish();
        }
    }

    /// The body is complete: hand the connection back if it can be reused.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.keep
            && conn.buf.is_empty()
            && let Some(back) = &self.back
        {
            back.give_back(conn);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(error)))
    }

    /// Whether the connection would be reused after this body (tests).
    #[cfg(test)]
    fn reusable(&self) -> bool {
        self.keep && self.conn.as_ref().is_some_and(|c| c.buf.is_empty())
    }
}

impl Body for WireBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    this.state = State::Length(left - n);
                    if left == n {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunk(Chunk::Data(0)) => {
                    this.state = State::Chunk(Chunk::DataEnd);
                    continue;
                }
                State::Chunk(Chunk::Data(left)) if !buf.is_empty() => {
                    let n = left.min(buf.len() as u64);
                    this.state = State::Chunk(Chunk::Data(left - n));
                    return Poll::Ready(Some(Ok(Frame::data(buf.split_to(n as usize).freeze()))));
                }
                State::Chunk(Chunk::DataEnd) if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.fail(invalid("upstream chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    this.state = State::Chunk(Chunk::Size);
                    continue;
                }
                State::Chunk(Chunk::Size) => match chunk_size(buf) {
                    Ok(Some(0)) => {
                        this.state = State::Chunk(Chunk::Trailers);
                        continue;
                    }
                    Ok(Some(n)) => {
                        this.state = State::Chunk(Chunk::Data(n));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                State::Chunk(Chunk::Trailers) => match trailers(buf) {
                    Ok(Some(map)) => {
                        this.finish();
                        if map.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(map))));
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(e),
                },
                State::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) | State::Chunk(_) | State::UntilClose => {}
            }
            let expected = match this.state {
                State::Length(left) | State::Chunk(Chunk::Data(left)) => left,
                _ => 0,
            };
            match ready!(conn.poll_fill(cx, expected)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.keep = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection inside the body",
                    ));
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// A complete chunk-size line at the front of `buf`, consumed: the size (extensions ignored).
/// The line is strict (RFC 9112 §7.1): hex digits first, and it ends at its first CR, which a
/// LF follows; a bare CR or LF anywhere in it is an error, as in hyper's client. A peer and
/// a hop that end such a line at different places read different bodies.
fn chunk_size(buf: &mut BytesMut) -> io::Result<Option<u64>> {
    let Some(end) = buf.iter().position(|b| matches!(b, b'\r' | b'\n')) else {
        if buf.len() > MAX_CHUNK_LINE {
            return Err(invalid("upstream chunk-size line too long"));
        }
        return Ok(None);
    };
    match buf.get(end..end + 2) {
        Some(b"\r\n") => {}
        None if buf[end] == b'\r' => return Ok(None),
        _ => return Err(invalid("upstream chunk-size line not ended by CRLF")),
    }
    let line = &buf[..end];
    // Whitespace after the size is BWS (RFC 9112 §7.1.1): spaces and tabs only. A form feed,
    // which `trim_ascii_end` takes too, ends the line for no one else.
    let mut digits = line.split(|b| *b == b';').next().unwrap_or_default();
    while let [rest @ .., b' ' | b'\t'] = digits {
        digits = rest;
    }
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(invalid("bad upstream chunk size"));
    }
    let size = digits.iter().fold(0u64, |n, d| {
        n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
    });
    buf.advance(end + 2);
    Ok(Some(size))
}

/// A complete trailer section at the front of `buf` (up to and including its empty line),
/// consumed. Its lines end in CRLF, as hyper's client requires (httparse alone would take a
/// bare LF).
fn trailers(buf: &mut BytesMut) -> io::Result<Option<HeaderMap>> {
    if buf.starts_with(b"\r\n") {
        buf.advance(2);
        return Ok(Some(HeaderMap::new()));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, _)))
            if buf[..len]
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || buf[i - 1] != b'\r')) =>
        {
            Err(invalid("upstream trailer line not ended by CRLF"))
        }
        Ok(httparse::Status::Complete((len, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| invalid("bad upstream trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| invalid("bad upstream trailer value"))?;
                map.append(name, value);
            }
            buf.advance(len);
            Ok(Some(map))
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Ok(None),
        _ => Err(invalid("malformed upstream trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    const ADDR: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 80);

    /// A bodiless request.
    fn outgoing<'a>(method: &'a Method, target: &'a str, headers: &'a HeaderMap) -> Outgoing<'a> {
        Outgoing {
            method,
            target,
            headers,
            body: &[],
        }
    }

    /// Pooled connections, counted.
    #[derive(Default)]
    struct Kept(Mutex<usize>);

    impl Return for Kept {
        fn give_back(&self, _: Box<WireConn>) {
            *self.0.lock().expect("count") += 1;
        }
    }

    /// Runs one GET (or `method`) against a scripted upstream that answers with `pieces`,
    /// written one at a time (then closes when `close`). Returns what the upstream read, the
    /// response head, the body's frames (or its error), and whether the connection went back.
    async fn run(
        method: Method,
        pieces: &[&'static [u8]],
        close: bool,
    ) -> (
        String,
        Result<Response<()>, WireError>,
        Result<(Bytes, Option<HeaderMap>), io::Error>,
        bool,
    ) {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let conn = WireConn::new(Box::new(ours), ADDR);
        let pieces: Vec<&'static [u8]> = pieces.to_vec();
        let upstream = tokio::spawn(async move {
            let mut got = vec![0u8; 4096];
            let n = theirs.read(&mut got).await.expect("request");
            for p in pieces {
                theirs.write_all(p).await.expect("answer");
                theirs.flush().await.expect("answer");
                tokio::task::yield_now().await;
            }
            if !close {
                // Keep the connection open until the test is done with it.
                let _ = theirs.read(&mut [0u8; 1]).await;
            }
            String::from_utf8(got[..n].to_vec()).expect("text")
        });
        let mut headers = HeaderMap::new();
        headers.insert("x-test", HeaderValue::from_static("1"));
        let authority = Authority::from_static("origin.test:80");
        let kept = Arc::new(Kept::default());
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let exchanged = conn
            .exchange(&outgoing(&method, "/p?q=1", &headers), &authority, deadline)
            .await;
        let (head, body) = match exchanged {
            Ok(resp) => {
                let (parts, mut body) = resp.into_parts();
                body.give_back_to(kept.clone());
                let collected = body.collect().await.map(|c| {
                    let trailers = c.trailers().cloned();
                    (c.to_bytes(), trailers)
                });
                (Ok(Response::from_parts(parts, ())), collected)
            }
            Err(e) => (Err(e), Ok((Bytes::new(), None))),
        };
        let back = *kept.0.lock().expect("count") == 1;
        drop(kept);
        let sent = if close {
            upstream.await.expect("upstream")
        } else {
            upstream.abort();
            String::new()
        };
        (sent, head, body, back)
    }

    #[tokio::test]
    async fn the_request_goes_out_as_bytes_with_a_host() {
        let (sent, head, _, _) = run(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"],
            true,
        )
        .await;
        assert_eq!(
            sent,
            "GET /p?q=1 HTTP/1.1\r\nhost: origin.test:80\r\nx-test: 1\r\n\r\n"
        );
        assert_eq!(head.expect("head").status(), StatusCode::OK);
    }

    /// The request's own `Host` goes as it is, wherever it is among the fields; none is added.
    #[test]
    fn a_request_with_a_host_keeps_it() {
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut conn = WireConn::new(Box::new(ours), ADDR);
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(header::HOST, HeaderValue::from_static("client.example"));
        conn.encode(
            &Method::GET,
            "/",
            &headers,
            &Authority::from_static("origin.test:80"),
        );
        assert_eq!(
            String::from_utf8_lossy(&conn.out),
            "GET / HTTP/1.1\r\nx-a: 1\r\nhost: client.example\r\n\r\n"
        );
    }

    /// An answer in pieces, the body and trailer it carries, and whether the connection may
    /// carry another exchange after it.
    struct Case {
        pieces: &'static [&'static [u8]],
        body: &'static [u8],
        trailer: Option<(&'static str, &'static str)>,
        kept: bool,
    }

    #[tokio::test]
    async fn each_framing_is_read_to_its_end() {
        let cases = [
            Case {
                pieces: &[b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo"],
                body: b"hello",
                trailer: None,
                kept: true,
            },
            Case {
                pieces: &[
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n",
                    b"3;ext=1\r\nhel\r",
                    b"\n2\r\nlo\r\n0\r\nx-sum: 9\r\n\r\n",
                ],
                body: b"hello",
                trailer: Some(("x-sum", "9")),
                kept: true,
            },
            // Spaces and tabs after a size (BWS), before an extension or the line's end.
            Case {
                pieces: &[
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                    b"3 \t;a=b\r\nhel\r\n2\t\r\nlo\r\n0 \r\n\r\n",
                ],
                body: b"hello",
                trailer: None,
                kept: true,
            },
            Case {
                pieces: &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"],
                body: b"",
                trailer: None,
                kept: true,
            },
            Case {
                pieces: &[
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                ],
                body: b"ok",
                trailer: None,
                kept: true,
            },
            Case {
                pieces: &[b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n"],
                body: b"",
                trailer: None,
                kept: true,
            },
            Case {
                pieces: &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
                body: b"ok",
                trailer: None,
                kept: false,
            },
            Case {
                pieces: &[b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok"],
                body: b"ok",
                trailer: None,
                kept: false,
            },
            Case {
                pieces: &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"],
                body: b"ok",
                trailer: None,
                kept: false,
            },
        ];
        for (i, case) in cases.into_iter().enumerate() {
            let (_, head, got, back) = run(Method::GET, case.pieces, false).await;
            head.unwrap_or_else(|e| panic!("case {i}: {e}"));
            let (bytes, trailers) = got.unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(&bytes[..], case.body, "case {i}");
            match case.trailer {
                Some((k, v)) => assert_eq!(trailers.expect("trailers")[k], v, "case {i}"),
                None => assert!(trailers.is_none(), "case {i}"),
            }
            assert_eq!(back, case.kept, "case {i}: connection kept");
        }
    }

    #[tokio::test]
    async fn a_body_to_the_close_and_a_head_request() {
        let (_, head, got, back) = run(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\n\r\nstream", b"ed"],
            true,
        )
        .await;
        assert!(head.is_ok());
        assert_eq!(&got.expect("body").0[..], b"streamed");
        assert!(!back, "a body delimited by the close ends the connection");

        let (sent, head, got, back) = run(
            Method::HEAD,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"],
            true,
        )
        .await;
        assert!(sent.starts_with("HEAD /p?q=1 HTTP/1.1\r\n"));
        assert_eq!(head.expect("head").headers()["content-length"], "1000");
        assert_eq!(&got.expect("body").0[..], b"");
        assert!(back);
    }

    #[tokio::test]
    async fn large_bodies_arrive_whole_in_either_framing() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let body: &'static [u8] = Box::leak(body.into_boxed_slice());
        let length_head: &'static [u8] = Box::leak(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len())
                .into_bytes()
                .into_boxed_slice(),
        );
        let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(70_000) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let chunked: &'static [u8] = Box::leak(chunked.into_boxed_slice());
        for pieces in [&[length_head, body][..], &[chunked][..]] {
            let (_, head, got, back) = run(Method::GET, pieces, false).await;
            assert!(head.is_ok());
            assert!(
                got.expect("body").0 == body,
                "the body arrives whole and in order"
            );
            assert!(back);
        }
    }

    #[tokio::test]
    async fn both_framings_drop_the_length_and_the_connection() {
        let (_, head, got, back) = run(
            Method::GET,
            &[b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
            false,
        )
        .await;
        assert!(!head.expect("head").headers().contains_key("content-length"));
        assert_eq!(&got.expect("body").0[..], b"ok");
        assert!(!back);
    }

    #[test]
    fn lengths_are_digits_only() {
        for (value, want) in [
            (&b"0"[..], Some(0)),
            (b" 12\t", Some(12)),
            (b"007", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"+5", None),
            (b"-1", None),
            (b"", None),
            (b" ", None),
            (b"1 2", None),
            (b"0x10", None),
            ("\u{a0}5".as_bytes(), None),
            ("\u{663}".as_bytes(), None),
        ] {
            assert_eq!(
                length_value(value),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for (i, (pieces, at_head)) in [
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..]][..],
                true,
            ),
            // Digits only, ASCII whitespace around them: a sign, or a no-break space before
            // them (which `str::trim` took), is refused, as hyper's client refuses it.
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: \xc2\xa02\r\n\r\nok"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"[..]][..],
                true,
            ),
            (&[&b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n"[..]][..], true),
            // Transfer codings other than chunked alone: the client would get the coded
            // bytes with nothing to say so.
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nzzz"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n0\r\n\r\n"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: ,\r\n\r\n0\r\n\r\n"[..]][..],
                true,
            ),
            // RFC 9112 §6.1: faulty framing (hyper's client refuses it too).
            (
                &[&b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..]][..],
                true,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..]][..],
                false,
            ),
            // Chunk-size lines and trailers read strictly: no space before the size, no bare
            // LF in an extension, CRLF after each trailer line (found by the
            // `upstream_response` fuzz target: hyper's client refuses each).
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n 2\r\nok\r\n0\r\n\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\rb\r\nok\r\n0\r\n\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\n\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\x0c\r\nok\r\n0\r\n\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokX\r\n"[..]][..],
                false,
            ),
            (
                &[&b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"[..]][..],
                false,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let (_, head, body, back) = run(Method::GET, pieces, true).await;
            if at_head {
                let e = head
                    .err()
                    .unwrap_or_else(|| panic!("case {i}: head accepted"));
                assert!(!e.not_sent, "case {i}");
            } else {
                assert!(head.is_ok(), "case {i}");
                assert!(body.is_err(), "case {i}: body must fail, not look complete");
            }
            assert!(!back, "case {i}");
        }
    }

    #[tokio::test]
    async fn a_close_before_the_answer_is_an_error() {
        // Nothing back at all (the request may go again on a fresh connection), or part of a
        // head (it may not).
        for (pieces, unanswered) in [(&[][..], true), (&[&b"HTTP/1.1 200"[..]][..], false)] {
            let (sent, head, _, back) = run(Method::GET, pieces, true).await;
            assert!(sent.starts_with("GET /p?q=1 HTTP/1.1\r\n"));
            let e = head.expect_err("no response");
            assert_eq!(e.error.kind(), io::ErrorKind::UnexpectedEof);
            assert!(!e.not_sent, "it was sent");
            assert_eq!(e.unanswered, unanswered);
            assert!(!back);
        }
    }

    /// Holds the connection its body gives back, for the next exchange.
    #[derive(Default)]
    struct Held(Mutex<Option<Box<WireConn>>>);

    impl Return for Held {
        fn give_back(&self, conn: Box<WireConn>) {
            *self.0.lock().expect("held") = Some(conn);
        }
    }

    /// The deadline moves with each exchange on a kept connection: a later exchange is not cut
    /// off by an earlier one's deadline (passed during it, or while the connection was idle),
    /// and an answer that does not come ends the exchange at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn each_exchange_on_a_kept_connection_has_its_own_deadline() {
        const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
        const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let held = Arc::new(Held::default());
        let mut conn = WireConn::new(Box::new(ours), ADDR);
        let headers = HeaderMap::new();
        let authority = Authority::from_static("origin.test:80");
        // The upstream answers each request after the delay given for it; none for the last.
        let delays = [0u64, 7, 0, 9];
        let upstream = tokio::spawn(async move {
            let mut got = [0u8; 4096];
            for delay in delays {
                let _ = theirs.read(&mut got).await.expect("request");
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                theirs.write_all(ANSWER).await.expect("answer");
            }
            let _ = theirs.read(&mut got).await;
            theirs
        });
        // Exchange, then idle for `idle` seconds: answered in time each time, though the
        // second and the fourth end after the deadline of the exchange before them, and the
        // third comes after an idle spell longer than the timeout.
        for (i, idle) in [5u64, 15, 3, 0].into_iter().enumerate() {
            let deadline = Instant::now() + TIMEOUT;
            let resp = conn
                .exchange(&outgoing(&Method::GET, "/", &headers), &authority, deadline)
                .await
                .unwrap_or_else(|e| panic!("exchange {i}: {e}"));
            let mut body = resp.into_body();
            body.give_back_to(held.clone());
            let got = body.collect().await.expect("body").to_bytes();
            assert_eq!(&got[..], b"ok", "exchange {i}");
            conn = held.0.lock().expect("held").take().expect("kept");
            tokio::time::sleep(std::time::Duration::from_secs(idle)).await;
        }
        // No answer: the exchange ends at its deadline, as a timeout.
        let started = Instant::now();
        let e = conn
            .exchange(
                &outgoing(&Method::GET, "/", &headers),
                &authority,
                started + TIMEOUT,
            )
            .await
            .expect_err("no answer");
        assert!(e.timed_out, "{e}");
        assert!(!e.not_sent);
        assert_eq!(Instant::now() - started, TIMEOUT);
        drop(upstream);
    }

    #[tokio::test]
    async fn an_idle_connection_knows_when_the_upstream_closed_it() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let mut conn = WireConn::new(Box::new(ours), ADDR);
        assert!(conn.still_open());
        drop(theirs);
        assert!(!conn.still_open());

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = WireConn::new(Box::new(ours), ADDR);
        theirs
            .write_all(b"HTTP/1.1 408 x\r\n\r\n")
            .await
            .expect("write");
        assert!(!conn.still_open(), "bytes nobody asked for");
    }

    /// Names remembered from one head to the next are used only where the same bytes come at
    /// the same place: another name, another spelling or more fields are parsed as sent.
    #[test]
    fn remembered_field_names_never_stand_in_for_other_names() {
        let mut scratch = HeadScratch::default();
        let mut names = |head: &[u8]| -> Vec<String> {
            let mut buf = BytesMut::from(head);
            let Ok(Some(Parsed::Final(resp, ..))) = parse_head(&mut buf, &mut scratch, false)
            else {
                panic!("parsed: {}", String::from_utf8_lossy(head));
            };
            resp.headers()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().expect("text")))
                .collect()
        };
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"),
            ["content-length=0", "x-a=1"]
        );
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 2\r\n\r\n"),
            ["content-length=0", "x-a=2"]
        );
        // Another name of the same length at the same place.
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Z: 3\r\n\r\n"),
            ["content-length=0", "x-z=3"]
        );
        // Another order, and more fields than before.
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nX-B: 4\r\ncontent-length: 0\r\nX-Zb: 5\r\nX-C: 6\r\n\r\n"),
            ["x-b=4", "content-length=0", "x-zb=5", "x-c=6"]
        );
        // Another spelling of the same names.
        assert_eq!(
            names(b"HTTP/1.1 200 OK\r\nx-b: 7\r\nContent-Length: 0\r\n\r\n"),
            ["x-b=7", "content-length=0"]
        );
    }

    /// The answer's `Connection` is left out of its head when it says only `keep-alive` (the
    /// same as the pipeline's stripping it); one naming anything else stays for the pipeline.
    #[test]
    fn a_connection_field_of_only_keep_alive_is_left_out() {
        let head = |connection: &str| {
            let text = format!(
                "HTTP/1.1 200 OK\r\nConnection: {connection}\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"
            );
            let mut buf = BytesMut::from(text.as_bytes());
            let Ok(Some(Parsed::Final(resp, _, keep))) =
                parse_head(&mut buf, &mut HeadScratch::default(), false)
            else {
                panic!("parsed: {text}");
            };
            let names: Vec<String> = resp.headers().keys().map(|k| k.to_string()).collect();
            (names, keep)
        };
        for alone in ["keep-alive", "Keep-Alive", "keep-alive, KEEP-ALIVE"] {
            assert_eq!(
                head(alone),
                (vec!["keep-alive".into(), "content-length".into()], true),
                "{alone}"
            );
        }
        for named in [
            "keep-alive, x-secret",
            "close",
            "keep-alive, close",
            "keep-alive,",
        ] {
            let (names, keep) = head(named);
            assert_eq!(names[0], "connection", "{named}");
            assert_eq!(keep, !named.contains("close"), "{named}");
        }
    }

    #[test]
    fn reusable_reflects_the_answer() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]);
        let Ok(Some(Parsed::Final(_, state, keep))) =
            parse_head(&mut buf, &mut HeadScratch::default(), false)
        else {
            panic!("parsed");
        };
        let (ours, _theirs) = tokio::io::duplex(16);
        let body = WireBody {
            conn: Some(WireConn::new(Box::new(ours), ADDR)),
            state,
            keep,
            back: None,
        };
        assert!(body.reusable() && body.is_end_stream());
    }

    /// RFC 9112 §6.1: an HTTP/1.0 answer with a transfer coding ends its connection, even one
    /// with no body to frame (a `HEAD`'s), however it asks to be kept.
    #[test]
    fn an_http10_answer_with_a_transfer_coding_is_never_kept() {
        let head =
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut buf = BytesMut::from(&head[..]);
        let Ok(Some(Parsed::Final(_, state, keep))) =
            parse_head(&mut buf, &mut HeadScratch::default(), true)
        else {
            panic!("a HEAD's answer is parsed");
        };
        assert_eq!(state, State::Length(0));
        assert!(!keep);
        let mut buf = BytesMut::from(&head[..]);
        assert!(parse_head(&mut buf, &mut HeadScratch::default(), false).is_err());
        let kept = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        let mut buf = BytesMut::from(&kept[..]);
        let Ok(Some(Parsed::Final(_, _, keep))) =
            parse_head(&mut buf, &mut HeadScratch::default(), true)
        else {
            panic!("parsed");
        };
        assert!(keep, "HTTP/1.0 keep-alive with a length is kept");
    }
}
