//! A lean HTTP/1.1 client connection for the closed model: the request is written as bytes and
//! the response parsed (httparse) in the worker's own task — no connection task, no channels,
//! no pool — the way wrk drives its connections. Bodies are read to their end
//! (`Content-Length`, chunked, or until the server closes) and dropped; what the verdicts need
//! (status, served region, origin version, residency refusal) comes from the head.

use std::io;

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// What a response's head said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// `x-served-region`, else `x-origin-region`.
    pub region: Option<String>,
    pub version: Option<String>,
    /// `x-frontdoor-refused` was present.
    pub refused: bool,
}

/// How the body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct WireConn {
    stream: TcpStream,
    /// Bytes read and not yet consumed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    /// The server said `Connection: close` (or the body runs to the close).
    closing: bool,
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl WireConn {
    pub async fn connect(authority: &str) -> io::Result<WireConn> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        Ok(WireConn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            out: Vec::with_capacity(1024),
            closing: false,
        })
    }

    /// False once the server has said it will close the connection.
    pub fn reusable(&self) -> bool {
        !self.closing
    }

    /// Sends one request (`target` is the origin-form path and query) and reads the whole
    /// response.
    pub async fn exchange(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> io::Result<Head> {
        self.out.clear();
        self.out.extend_from_slice(method.as_str().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(target.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            self.out
                .extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await?;
        let (head, framing) = loop {
            let (head, framing) = self.read_head(method == Method::HEAD).await?;
            // Interim responses (100 Continue...) precede the real one.
            if !(100..200).contains(&head.status) {
                break (head, framing);
            }
        };
        self.skip_body(framing).await?;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        Ok(head)
    }

    /// Reads more bytes into the buffer; the end of the stream is an error.
    async fn fill(&mut self) -> io::Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.reserve(8192);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn read_head(&mut self, head_request: bool) -> io::Result<(Head, Framing)> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut slots);
            match resp.parse(&self.buf[self.pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let parsed = parse_head(&resp, head_request)?;
                    self.pos += n;
                    if parsed.2 {
                        self.closing = true;
                    }
                    return Ok((parsed.0, parsed.1));
                }
                Ok(httparse::Status::Partial) if self.buf.len() - self.pos < MAX_HEAD => {
                    self.fill().await?;
                }
                Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
                Err(e) => return Err(invalid(&e.to_string())),
            }
        }
    }

    async fn skip_body(&mut self, framing: Framing) -> io::Result<()> {
        match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => self.skip(n).await,
            Framing::UntilClose => {
                self.closing = true;
                loop {
                    self.pos = self.buf.len();
                    match self.fill().await {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
            Framing::Chunked => loop {
                let line = self.line().await?;
                let size = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                    .ok_or_else(|| invalid("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.line().await?.is_empty() {}
                    return Ok(());
                }
                self.skip(size).await?;
                if !self.line().await?.is_empty() {
                    return Err(invalid("chunk not followed by CRLF"));
                }
            },
        }
    }

    /// Consumes `n` body bytes.
    async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let have = (self.buf.len() - self.pos) as u64;
            if have >= n {
                self.pos += n as usize;
                return Ok(());
            }
            n -= have;
            self.pos = self.buf.len();
            self.fill().await?;
        }
    }

    /// Consumes one CRLF-terminated line and returns it without the CRLF.
    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf[self.pos..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 2;
                return Ok(line);
            }
            if self.buf.len() - self.pos > MAX_HEAD {
                return Err(invalid("chunk line too long"));
            }
            self.fill().await?;
        }
    }
}

/// The head's verdict fields, its body framing (RFC 9112 §6.3) and whether the server will
/// close the connection.
fn parse_head(
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> io::Result<(Head, Framing, bool)> {
    let status = resp.code.ok_or_else(|| invalid("no status"))?;
    let mut head = Head {
        status,
        region: None,
        version: None,
        refused: false,
    };
    let mut origin_region = None;
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        let text = || std::str::from_utf8(h.value).ok().map(str::to_owned);
        let name = h.name;
        if name.eq_ignore_ascii_case("x-served-region") {
            head.region = text();
        } else if name.eq_ignore_ascii_case("x-origin-region") {
            origin_region = text();
        } else if name.eq_ignore_ascii_case("x-origin-version") {
            head.version = text();
        } else if name.eq_ignore_ascii_case("x-frontdoor-refused") {
            head.refused = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("conflicting content-length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if head.region.is_none() {
        head.region = origin_region;
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((head, framing, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each request on one connection with the next canned response.
    async fn serve(responses: Vec<&'static [u8]>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            for r in responses {
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.expect("read");
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                s.write_all(r).await.expect("write");
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_each_framing_and_keeps_the_connection() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nx-served-region: eu\r\nx-origin-version: canary\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nx-frontdoor-refused: residency\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nt: v\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nx-origin-region: us\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end",
        ])
        .await;
        let mut c = WireConn::connect(&addr).await.expect("connect");
        let h = HeaderMap::new();
        async fn get(c: &mut WireConn) -> io::Result<Head> {
            c.exchange(&Method::GET, "/", &HeaderMap::new(), &Bytes::new())
                .await
        }
        let a = get(&mut c).await.expect("first");
        assert_eq!(
            a,
            Head {
                status: 200,
                region: Some("eu".into()),
                version: Some("canary".into()),
                refused: false
            }
        );
        let b = c
            .exchange(&Method::POST, "/x", &h, &Bytes::from_static(b"body"))
            .await
            .expect("second");
        assert_eq!((b.status, b.refused), (503, true));
        let n = get(&mut c).await.expect("third");
        assert_eq!((n.status, n.region.as_deref()), (204, Some("us")));
        assert!(c.reusable());
        let last = get(&mut c).await.expect("fourth");
        assert_eq!(last.status, 200);
        assert!(!c.reusable(), "the server closes after an unframed body");
        assert!(
            get(&mut c).await.is_err(),
            "nothing more on a closed connection"
        );
    }

    #[tokio::test]
    async fn malformed_framing_is_an_error() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        ])
        .await;
        let mut c = WireConn::connect(&addr).await.expect("connect");
        let e = c
            .exchange(&Method::GET, "/", &HeaderMap::new(), &Bytes::new())
            .await
            .expect_err("conflicting lengths");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
