//! The PROXY protocol (HAProxy's, versions 1 and 2): a TCP balancer in front of the front door
//! opens each connection with a header naming the client it carries, so the client's address
//! — not the balancer's — is what classification, GeoIP, rate limits, connection caps,
//! `X-Forwarded-For` and the access log see.
//!
//! Read only from peers in `server.trusted_proxies` (a header from anyone else would let a
//! client name any address), and only when it is there: a connection from such a peer that
//! starts with anything else (an HTTP request, a TLS ClientHello) is served as it is, which
//! neither can be mistaken for. A malformed header closes the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, its CRLF included.
const V1_MAX: usize = 107;

/// What a connection's PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The connection carries this client.
    Client(SocketAddr),
    /// The balancer's own connection (a health check: v2 `LOCAL`, v1 `UNKNOWN`, or an address
    /// family other than TCP over IPv4 or IPv6): the peer is who it is.
    Local,
}

/// The header a connection's first bytes hold: `Ok(None)` when they hold none (they are left
/// to be read as HTTP or TLS), the header once it has been read off the stream, or an error
/// for a malformed one.
pub async fn read(stream: &mut TcpStream) -> std::io::Result<Option<Header>> {
    let mut buf = [0u8; V1_MAX];
    // Enough bytes to tell: a v2 header's fixed part, or a v1 header's line.
    let seen = loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(malformed("the connection closed"));
        }
        let bytes = &buf[..n];
        if !bytes.starts_with(&V2_SIGNATURE[..n.min(12)])
            && !b"PROXY ".starts_with(&bytes[..n.min(6)])
        {
            return Ok(None);
        }
        let v2 = n >= 16 && bytes.starts_with(&V2_SIGNATURE);
        let v1 = n >= 6 && bytes.starts_with(b"PROXY ") && bytes.contains(&b'\n');
        if v2 || v1 || n == V1_MAX {
            break n;
        }
        // A header arriving in pieces (rare: a balancer sends it in one write). Peeked bytes
        // leave the socket readable, so wait a moment rather than for readiness.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    if buf[..seen].starts_with(&V2_SIGNATURE) {
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        let mut header = vec![0u8; 16 + len];
        stream.read_exact(&mut header).await?;
        return parse_v2(&header).map(Some);
    }
    let end = buf[..seen]
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| malformed("a version 1 header longer than 107 bytes"))?;
    let mut line = vec![0u8; end + 1];
    stream.read_exact(&mut line).await?;
    parse_v1(&line).map(Some)
}

fn malformed(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("PROXY header: {why}"),
    )
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n` (or `TCP6`, or `UNKNOWN ...`).
fn parse_v1(line: &[u8]) -> std::io::Result<Header> {
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or_else(|| malformed("a version 1 line must be ASCII and end in CRLF"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Header::Local),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            source,
            _destination,
            port,
            _destination_port,
        ] => {
            let ip: IpAddr = source
                .parse()
                .map_err(|_| malformed("the source address does not parse"))?;
            if ip.is_ipv4() != (*family == "TCP4") {
                return Err(malformed("the source address is not of the named family"));
            }
            let port: u16 = port
                .parse()
                .map_err(|_| malformed("the source port does not parse"))?;
            Ok(Header::Client(SocketAddr::new(ip, port)))
        }
        _ => Err(malformed("not a version 1 header")),
    }
}

/// The binary header: signature, version and command, family, length, addresses (TLVs after
/// them are skipped).
fn parse_v2(header: &[u8]) -> std::io::Result<Header> {
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(malformed("version 2 signature with another version"));
    }
    let addresses = &header[16..];
    match (command, header[13]) {
        (0, _) => Ok(Header::Local),
        (1, 0x11) if addresses.len() >= 12 => {
            let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
            let port = u16::from_be_bytes([addresses[8], addresses[9]]);
            Ok(Header::Client(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        (1, 0x21) if addresses.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addresses[..16]);
            let port = u16::from_be_bytes([addresses[32], addresses[33]]);
            Ok(Header::Client(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        (1, 0x11 | 0x21) => Err(malformed("addresses shorter than their family's")),
        // UDP, UNIX sockets, unspecified: no TCP client to name.
        (1, _) => Ok(Header::Local),
        _ => Err(malformed("an unknown command")),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    /// What `read` makes of `sent` on a real connection, sent in `pieces`, and what is left
    /// on the stream after it.
    async fn read_sent(sent: &[u8], pieces: usize) -> (std::io::Result<Option<Header>>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let sent = sent.to_vec();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let step = sent.len().div_ceil(pieces);
            for piece in sent.chunks(step) {
                c.write_all(piece).await.expect("write");
                c.flush().await.expect("flush");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            c.shutdown().await.expect("shutdown");
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        let header = read(&mut server).await;
        let mut rest = Vec::new();
        if header.is_ok() {
            server.read_to_end(&mut rest).await.expect("rest");
        }
        client.await.expect("client");
        (header, rest)
    }

    #[tokio::test]
    async fn headers_name_the_client_and_leave_the_request_on_the_stream() {
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let client = |text: &str| Some(Header::Client(text.parse().expect("addr")));
        let mut ipv4 = vec![203, 0, 113, 7, 10, 0, 0, 1];
        ipv4.extend_from_slice(&51000u16.to_be_bytes());
        ipv4.extend_from_slice(&443u16.to_be_bytes());
        // A TLV (AWS's VPC endpoint id, say) after the addresses is skipped.
        let mut with_tlv = ipv4.clone();
        with_tlv.extend_from_slice(&[0xEA, 0, 3, b'v', b'p', b'c']);
        let mut ipv6 = Vec::new();
        ipv6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets());
        ipv6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        ipv6.extend_from_slice(&51000u16.to_be_bytes());
        ipv6.extend_from_slice(&443u16.to_be_bytes());
        let cases: Vec<(Vec<u8>, Option<Header>)> = vec![
            (
                b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n".to_vec(),
                client("203.0.113.7:51000"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n".to_vec(),
                client("[2001:db8::7]:51000"),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Some(Header::Local)),
            (v2(1, 0x11, &ipv4), client("203.0.113.7:51000")),
            (v2(1, 0x11, &with_tlv), client("203.0.113.7:51000")),
            (v2(1, 0x21, &ipv6), client("[2001:db8::7]:51000")),
            (v2(0, 0x00, &[]), Some(Header::Local)),
            (Vec::new(), None),
        ];
        for (header, want) in cases {
            for pieces in [1, 3] {
                let mut sent = header.clone();
                sent.extend_from_slice(request);
                let (got, rest) = read_sent(&sent, pieces).await;
                assert_eq!(
                    got.expect("a header or none"),
                    want,
                    "{header:?} in {pieces}"
                );
                assert_eq!(rest, request, "{header:?}: the request is left whole");
            }
        }
    }

    #[tokio::test]
    async fn a_malformed_header_is_an_error() {
        let mut short = vec![203, 0, 113, 7];
        short.extend_from_slice(&[0; 4]);
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 51000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\n",
            &v2(1, 0x11, &short),
            &v2(5, 0x11, &[0; 12]),
        ] {
            let (got, _) = read_sent(bad, 1).await;
            assert!(got.is_err(), "{bad:?}: {got:?}");
        }
        let mut endless = b"PROXY TCP4 ".to_vec();
        endless.extend(std::iter::repeat_n(b'1', 200));
        let (got, _) = read_sent(&endless, 1).await;
        assert!(got.is_err(), "a v1 line with no end");
    }
}
