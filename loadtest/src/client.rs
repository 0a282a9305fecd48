//! Test clients: HTTP/1.1, h2c (prior knowledge) and TLS (with a given root), built on
//! hyper-util's pooled client, plus a raw-TCP helper for byte-exact requests.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct Collected {
    pub status: http::StatusCode,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Collected {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The origin's [`crate::Echo`] body, when the response came from an origin.
    pub fn echo(&self) -> Option<crate::Echo> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Error from a test client: transport or body failure, as text.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled client for plain HTTP/1.1 or h2c.
#[derive(Clone, Debug)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    pub fn http1() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 over cleartext with prior knowledge.
    pub fn h2c() -> Client {
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub async fn get(&self, url: &str) -> Result<Collected, ClientError> {
        self.send(Request::get(url).body(Full::default())?).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Collected, ClientError> {
        collect(self.inner.request(req).await?).await
    }

    /// Sends and returns the response without reading its body.
    pub async fn send_streaming(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<hyper::body::Incoming>, ClientError> {
        Ok(self.inner.request(req).await?)
    }
}

/// Reads a response body to the end.
pub async fn collect<B>(resp: Response<B>) -> Result<Collected, ClientError>
where
    B: hyper::body::Body,
    B::Error: Into<ClientError>,
{
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(Into::into)?.to_bytes();
    Ok(Collected {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Opens a TLS connection trusting `ca_pem`, offering `alpn`, and sends one request.
/// Returns the negotiated ALPN protocol and the response.
pub async fn tls_get(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
    path: &str,
) -> Result<(Option<Vec<u8>>, Collected), ClientError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())?;
    let tls = connector.connect(name, tcp).await?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let req = Request::get(path)
        .header(http::header::HOST, server_name)
        .body(Full::<Bytes>::default())?;
    let resp = if negotiated.as_deref() == Some(b"h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = format!("https://{server_name}{path}").parse()?;
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    Ok((negotiated, collect(resp).await?))
}

/// Writes `raw` bytes on a fresh connection and reads until the peer closes or `limit` bytes.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    raw: &[u8],
    limit: usize,
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < limit {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}
