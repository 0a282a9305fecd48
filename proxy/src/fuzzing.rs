//! The checks behind the fuzz targets `request_head`, `client_response` and `upstream_response`
//! (`fuzz/`): each of our own HTTP/1 parsers and writers is held to hyper's reading of the same
//! bytes. hyper's server and client serve every request and answer our parsers do not take, so
//! the two must never disagree on what a message says; where ours refuses what hyper accepts,
//! hyper's path is the fallback (a request) or the upstream gets a 502 (an answer), and neither
//! is a finding.
//!
//! - [`request_head`]: a head the server loop (`listen::h1`) serves itself is one hyper's server
//!   accepts, with the same method, target, version and fields.
//! - [`client_response`]: an answer the server loop writes is one hyper's client reads back
//!   whole (status, fields, body), with nothing after it on a connection kept open; an answer
//!   cut short (its body failed, or its length was wrong) ends the connection.
//! - [`upstream_response`]: an answer the inline exchange (`forward::wire`) reads to its end is
//!   one hyper's client reads to its end, with the same status, fields, body and trailers; and
//!   its own framing holds: a length is the body's length, a bodiless answer has no body, and a
//!   connection goes back for reuse only after an answer framed by length or by chunks over
//!   HTTP/1.1 (RFC 9112 §6.1, §6.3).
//!
//! Compiled for tests (the committed corpus is replayed by this module's tests) and with the
//! `fuzzing` feature.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::forward::wire::{Outgoing, Return, WireConn};
use crate::listen::HeadLimits;
use crate::listen::h1::{self, Info, Parse};

/// The limits the server loop checks a head against by default (hyper's server gets the same).
static LIMITS: std::sync::LazyLock<HeadLimits> = std::sync::LazyLock::new(|| {
    let defaults = routes::load(
        "[clusters.c]\nendpoints = [{ address = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"c\"\n",
    )
    .expect("a config of defaults");
    HeadLimits::of(&defaults.server)
});

/// `data` as a client's first bytes on a connection: each head the server loop serves itself,
/// in turn (pipelined ones too, until one is not its own or ends the connection), is the head
/// hyper's server reads at that place, with the same method, target, version and fields. So
/// the two also agree on where each head ends and the next begins.
pub fn request_head(data: &[u8]) {
    let limits = &*LIMITS;
    let mut buf = BytesMut::from(data);
    let mut ours = Vec::new();
    while let Parse::Done(req, info) = h1::parse(&mut buf, limits) {
        ours.push(req);
        if !info.keep {
            break;
        }
    }
    if ours.is_empty() {
        return;
    }
    let shown = String::from_utf8_lossy(data);
    let theirs = hyper_reads_requests(data, limits, ours.len());
    // hyper's server keeps an HTTP/1.0 connection only for a `Connection` field that is all
    // visible ASCII (`keep-alive, \x9b` ends it there; ours reads the `keep-alive` token):
    // after such a head it reads no more, which says nothing of where heads end.
    let kept_less = theirs
        .last()
        .is_some_and(|last| last.version == Version::HTTP_10);
    assert!(
        theirs.len() >= ours.len() || (kept_less && !theirs.is_empty()),
        "the server loop serves {} heads where hyper's server reads {}: {shown:?}",
        ours.len(),
        theirs.len()
    );
    for (i, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            ours.method(),
            theirs.method,
            "method of head {i} in {shown:?}"
        );
        assert_eq!(ours.uri(), &theirs.uri, "target of head {i} in {shown:?}");
        assert_eq!(
            ours.version(),
            theirs.version,
            "version of head {i} in {shown:?}"
        );
        assert_eq!(
            ours.headers(),
            &theirs.headers,
            "fields of head {i} in {shown:?}"
        );
    }
}

/// The first `wanted` requests hyper's server (configured as `listen::serve` configures it)
/// reads from `data`, or as many as it reads.
fn hyper_reads_requests(
    data: &[u8],
    limits: &HeadLimits,
    wanted: usize,
) -> Vec<http::request::Parts> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let service = {
        let seen = seen.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            seen.lock().expect("seen").push(req.into_parts().0);
            std::future::ready(Ok::<_, io::Error>(Response::new(Empty::<Bytes>::new())))
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None)
        .max_buf_size(limits.max_bytes.max(8 * 1024))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    // All of `data` at once, then nothing more (never the end: a head hyper still waits on
    // stays unread).
    let io = Script::client(data);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // The service is called within a poll once a head is in; a few polls per request cover
    // hyper's internal turns (its answer written, the next head read).
    for _ in 0..16 + 8 * wanted {
        let done = conn.as_mut().poll(&mut cx).is_ready();
        if done || seen.lock().expect("seen").len() >= wanted {
            break;
        }
    }
    std::mem::take(&mut *seen.lock().expect("seen"))
}

/// `data` as an answer the server loop writes to its client: the first byte chooses the
/// request and the body (bit 0: `HEAD`; 1: an HTTP/1.0 client; 2: the client lets the
/// connection stay open; 3: the body's length is known; 4: the body fails at its end; 5:
/// trailers), the next two the status (200 to 999), the rest is `name: value` lines, an empty
/// line, and the body, its frames split at each 0xff byte.
///
/// hyper's client, reading what was written, must find the status, the fields (but for the
/// framing ones and a `Date` added) and the whole body; a connection kept open must hold
/// nothing after the answer. When the body fails or its fields declare another length, the
/// connection must end, and what hyper reads of the body is a part of it.
pub fn client_response(data: &[u8]) {
    let Some((&[choice, high, low], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let status = 200 + u16::from_be_bytes([high, low]) % 800;
    let Ok(status) = StatusCode::from_u16(status) else {
        return;
    };
    let info = Info {
        head: choice & 1 != 0,
        http10: choice & 2 != 0,
        keep: choice & 4 != 0,
    };
    let exact = choice & 8 != 0;
    let fails = choice & 16 != 0;
    let trailers = choice & 32 != 0;
    let split = rest.windows(2).position(|w| w == b"\n\n");
    let (fields, body) = match split {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    // Up to 64 fields: what an upstream's answer may hold (100) less room for ours, and within
    // what hyper's client reads (100).
    for line in fields.split(|b| *b == b'\n').take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(&line[..colon]),
            header::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let frames: Vec<Bytes> = body
        .split(|b| *b == 0xff)
        .map(Bytes::copy_from_slice)
        .collect();
    let whole: Vec<u8> = frames.concat();
    let mut response = Response::new(Scripted {
        exact: exact.then_some(whole.len() as u64),
        frames: frames.into_iter().map(hyper::body::Frame::data).collect(),
        trailers: trailers.then(|| {
            let mut t = HeaderMap::new();
            t.insert("x-check", header::HeaderValue::from_static("1"));
            t
        }),
        fails,
    });
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();

    let mut client = Script::client(&[]);
    let kept = RUNTIME
        .with(|rt| rt.block_on(h1::write_response(&mut client, response, info, info.keep)))
        .expect("a write to memory");
    let out = client.written;
    let shown = String::from_utf8_lossy(&out);
    let method = if info.head { Method::HEAD } else { Method::GET };
    let bodiless = bodiless(&method, status);
    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    // One field of digits declares a length (RFC 9110 §8.6); anything else declares none.
    let declared = match lengths[..] {
        [one] => crate::forward::wire::length_value(one.as_bytes()),
        _ => None,
    };
    // (A bodiless answer's body is never read: it cannot fail, nor its length be wrong.)
    let short = !bodiless && (fails || declared.is_some_and(|n| n != whole.len() as u64));
    let theirs = RUNTIME.with(|rt| rt.block_on(hyper_reads_response(&method, &out, usize::MAX)));
    if short {
        assert!(!kept, "an answer cut short ends its connection: {shown:?}");
        if let Ok((theirs, _)) = theirs {
            assert!(
                whole.starts_with(&theirs.body),
                "what the client reads is the body's start: {shown:?}"
            );
        }
        return;
    }
    let (theirs, nothing_after) = match theirs {
        Ok(theirs) => theirs,
        Err(e) => panic!("hyper's client cannot read what the server loop wrote ({e}): {shown:?}"),
    };
    assert_eq!(theirs.status, status, "status in {shown:?}");
    assert!(
        !(theirs.headers.contains_key(header::TRANSFER_ENCODING)
            && theirs.headers.contains_key(header::CONTENT_LENGTH)),
        "never a length beside a transfer coding (RFC 9112 §6.2): {shown:?}"
    );
    let expected: &[u8] = if bodiless { &[] } else { &whole };
    assert_eq!(theirs.body, expected, "body in {shown:?}");
    let mut given = comparable(&headers);
    given.remove(header::TRANSFER_ENCODING);
    given.remove(header::CONTENT_LENGTH);
    let mut read = comparable(&theirs.headers);
    read.remove(header::TRANSFER_ENCODING);
    read.remove(header::CONTENT_LENGTH);
    if !headers.contains_key(header::DATE) {
        read.remove(header::DATE);
    }
    assert_eq!(given, read, "fields in {shown:?}");
    if kept {
        assert!(
            nothing_after,
            "a kept connection holds nothing after the answer: {shown:?}"
        );
    }
}

/// An answer's body as the pipeline hands it over: frames one at a time, a known length or
/// none, trailers, or a failure at its end.
struct Scripted {
    frames: std::collections::VecDeque<hyper::body::Frame<Bytes>>,
    exact: Option<u64>,
    trailers: Option<HeaderMap>,
    fails: bool,
}

impl hyper::body::Body for Scripted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if std::mem::take(&mut this.fails) {
            return Poll::Ready(Some(Err(io::Error::other("the upstream broke off"))));
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|t| Ok(hyper::body::Frame::trailers(t))),
        )
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.exact {
            Some(n) => hyper::body::SizeHint::with_exact(n),
            None => hyper::body::SizeHint::default(),
        }
    }
}

/// For the server loop's writes ([`client_response`]).
impl crate::head_timer::ConnIo for Script {
    fn listener(&self) -> &Arc<crate::listen::Shared> {
        static LISTENER: std::sync::LazyLock<Arc<crate::listen::Shared>> =
            std::sync::LazyLock::new(|| {
                Arc::new(crate::listen::Shared {
                    name: "fuzz",
                    head: *LIMITS,
                    hyper: hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    ),
                    lot: None,
                    streams: crate::listen::streams::Streams::new("fuzz", LIMITS.send),
                })
            });
        &LISTENER
    }

    fn watch_heads(&mut self, _: &[u8]) {}
}

/// What one side read of an answer, whole.
#[derive(Debug)]
struct Read {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
    /// The connection went back for another exchange (ours only).
    reused: bool,
}

/// `data`: its first byte chooses the request (`HEAD` if its low bit is set, else `GET`) and
/// how many bytes each read of the connection gets (1 to 128), the rest is what the upstream
/// sends before it closes.
pub fn upstream_response(data: &[u8]) {
    let Some((&choice, answer)) = data.split_first() else {
        return;
    };
    let method = if choice & 1 == 1 {
        Method::HEAD
    } else {
        Method::GET
    };
    let step = usize::from(choice >> 1) + 1;
    let ours = RUNTIME.with(|rt| rt.block_on(wire_reads(&method, answer, step)));
    let Ok(ours) = ours else {
        return;
    };
    let shown = String::from_utf8_lossy(answer);
    framing_holds(&method, &ours, &shown);
    if !bodiless(&method, ours.status)
        && ours.headers.contains_key(header::TRANSFER_ENCODING)
        && !last_coding_is_chunked(&ours.headers)
    {
        // `chunked` followed by empty list elements (`chunked,`): a list may hold them
        // (RFC 9110 §5.6.1), and ours reads chunks; hyper's client looks only at the last
        // element and reads to the close. Not compared.
        return;
    }
    let theirs = RUNTIME.with(|rt| rt.block_on(hyper_reads_response(&method, answer, step)));
    let theirs = match theirs {
        Ok((theirs, _)) => theirs,
        Err(e) => {
            panic!("the inline exchange reads an answer hyper's client refuses ({e}): {shown:?}")
        }
    };
    assert_eq!(ours.status, theirs.status, "status of {shown:?}");
    assert_eq!(ours.version, theirs.version, "version of {shown:?}");
    assert_eq!(
        comparable(&ours.headers),
        comparable(&theirs.headers),
        "fields of {shown:?}"
    );
    assert_eq!(ours.body, theirs.body, "body of {shown:?}");
    let no_trailers = |t: &Option<HeaderMap>| t.clone().filter(|t| !t.is_empty());
    assert_eq!(
        no_trailers(&ours.trailers),
        no_trailers(&theirs.trailers),
        "trailers of {shown:?}"
    );
}

/// The answer's own framing, whatever hyper makes of it.
fn framing_holds(method: &Method, read: &Read, shown: &str) {
    assert!(
        !read.status.is_informational(),
        "an interim answer is never the answer: {shown:?}"
    );
    let chunked = read.headers.contains_key(header::TRANSFER_ENCODING);
    let length = read.headers.get(header::CONTENT_LENGTH);
    assert!(
        !(read.reused && read.version == Version::HTTP_10 && chunked),
        "an HTTP/1.0 answer with a transfer coding ends its connection: {shown:?}"
    );
    // A bodiless answer's fields say what a body would have been; they frame nothing.
    if bodiless(method, read.status) {
        assert!(
            read.body.is_empty(),
            "a bodiless answer has no body: {shown:?}"
        );
        return;
    }
    assert!(
        !(chunked && length.is_some()),
        "a chunked answer keeps no length: {shown:?}"
    );
    assert!(
        !read.reused || chunked || length.is_some(),
        "only a framed answer leaves its connection reusable: {shown:?}"
    );
    if let Some(length) = length {
        let first = length
            .as_bytes()
            .split(|b| *b == b',')
            .next()
            .unwrap_or_default();
        let declared: u64 = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("an accepted length is a number: {shown:?}"));
        assert_eq!(
            read.body.len() as u64,
            declared,
            "the length is the body's: {shown:?}"
        );
    }
}

fn bodiless(method: &Method, status: StatusCode) -> bool {
    *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether the last element of the last `Transfer-Encoding` field is `chunked` (hyper's test).
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Fields as both sides keep them: ours leaves out a `Connection: keep-alive` (this hop's
/// alone) and a chunked answer's `Content-Length` (it describes nothing forwarded); hyper keeps
/// both.
fn comparable(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    kept.remove(header::CONNECTION);
    if kept.contains_key(header::TRANSFER_ENCODING) {
        kept.remove(header::CONTENT_LENGTH);
    }
    kept
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

/// Connections given back, counted.
#[derive(Default)]
struct Kept(Mutex<usize>);

impl Return for Kept {
    fn give_back(&self, _: Box<WireConn>) {
        *self.0.lock().expect("kept") += 1;
    }
}

async fn wire_reads(method: &Method, answer: &[u8], step: usize) -> io::Result<Read> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 80));
    let conn = WireConn::new(Box::new(Script::upstream(answer, step)), addr);
    let headers = HeaderMap::new();
    let outgoing = Outgoing {
        method,
        target: "/",
        headers: &headers,
        body: &[],
    };
    let authority = Authority::from_static("origin.test");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let response = conn
        .exchange(&outgoing, &authority, deadline)
        .await
        .map_err(|e| e.error)?;
    let (parts, mut body) = response.into_parts();
    let kept = Arc::new(Kept::default());
    body.give_back_to(kept.clone());
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    let reused = *kept.0.lock().expect("kept") == 1;
    Ok(Read {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes().to_vec(),
        trailers,
        reused,
    })
}

/// What hyper's client reads of `answer`, and whether nothing followed it.
async fn hyper_reads_response(
    method: &Method,
    answer: &[u8],
    step: usize,
) -> Result<(Read, bool), hyper::Error> {
    let io = TokioIo::new(Script::upstream(answer, step));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let request = Request::builder()
        .method(method.clone())
        .uri("/")
        .header(header::HOST, "origin.test")
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let read = async {
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await?;
        Ok(Read {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes().to_vec(),
            reused: false,
        })
    };
    // The connection driven alongside the exchange, until the exchange is over.
    let mut conn = pin!(conn);
    let mut read = pin!(read);
    let mut ended = None;
    let read = std::future::poll_fn(|cx| {
        if ended.is_none()
            && let Poll::Ready(result) = conn.as_mut().poll(cx)
        {
            ended = Some(result);
        }
        read.as_mut().poll(cx)
    })
    .await;
    match read {
        Ok(read) => {
            // What follows the answer: nothing, or the connection reports an unasked message.
            let ended = match ended {
                Some(ended) => ended,
                None => conn.await,
            };
            Ok((read, ended.is_ok()))
        }
        // The connection's own error says more than the exchange's "canceled".
        Err(e) => Err(match ended {
            Some(Err(ended)) => ended,
            _ => e,
        }),
    }
}

/// A connection whose peer sends `data`, `step` bytes a read, and then closes (`close`) or
/// falls silent; what is written to it is kept. An upstream's (`answers`) sends nothing
/// before something was written to it: hyper's client, idle, takes bytes that come before
/// its request for an unasked message.
struct Script {
    data: Vec<u8>,
    at: usize,
    step: usize,
    close: bool,
    /// Nothing to read yet: waiting for a write, and who to wake then.
    waiting: Option<Option<std::task::Waker>>,
    written: Vec<u8>,
}

impl Script {
    fn client(data: &[u8]) -> Script {
        Script {
            data: data.to_vec(),
            at: 0,
            step: usize::MAX,
            close: false,
            waiting: None,
            written: Vec::new(),
        }
    }

    fn upstream(data: &[u8], step: usize) -> Script {
        Script {
            data: data.to_vec(),
            at: 0,
            step: step.max(1),
            close: true,
            waiting: Some(None),
            written: Vec::new(),
        }
    }
}

impl AsyncRead for Script {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(waker) = &mut this.waiting {
            *waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let left = &this.data[this.at..];
        if left.is_empty() && !this.close {
            return Poll::Pending;
        }
        let n = left.len().min(this.step).min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(Some(waker)) = this.waiting.take() {
            waker.wake();
        }
        this.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of a committed corpus (`fuzz/corpus/NAME`), replayed through `check`.
    fn replay(name: &str, check: fn(&[u8])) -> usize {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        let mut seen = 0;
        let mut failed = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the corpus") {
            let path = entry.expect("an entry").path();
            let data = std::fs::read(&path).expect("an input");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                failed.push(path.display().to_string());
            }
            seen += 1;
        }
        assert!(failed.is_empty(), "failing their check: {failed:?}");
        seen
    }

    #[test]
    fn the_request_head_corpus_passes() {
        assert!(replay("request_head", request_head) >= 10);
    }

    #[test]
    fn the_client_response_corpus_passes() {
        assert!(replay("client_response", client_response) >= 10);
    }

    #[test]
    fn the_upstream_response_corpus_passes() {
        assert!(replay("upstream_response", upstream_response) >= 10);
    }
}
