//! respond: the one place where failures become HTTP statuses.
//!
//! Every stage returns a [`ProxyError`]; [`ProxyError::into_response`] is the only code that turns
//! one into a status and body. Each error knows who caused it ([`Source`]) — so logs and metrics
//! can tell a bad client from a bad upstream — and whether a retry could help.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Set on refusals, saying which policy refused (`residency`).
pub const REFUSED: http::HeaderName = http::HeaderName::from_static("x-frontdoor-refused");

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed, timed out, or none was available.
    Upstream,
    /// A fault of our own.
    Internal,
}

/// A failure on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// Malformed or refused request (400).
    BadRequest(&'static str),
    /// The request target is longer than `server.max_uri_bytes` (414).
    UriTooLong,
    /// A TLS connection's request for a host its certificate is not for (421, RFC 9110
    /// §15.5.20): a client may reuse a connection only for the names it was shown a
    /// certificate for; one that sends another (domain fronting) goes to a connection of that
    /// name's own, and a browser does so on its own.
    Misdirected,
    /// `TRACE` (and Microsoft's `TRACK`), which would reflect the request as the upstream got
    /// it — cookies, credentials and every field the proxies on the way added — and `CONNECT`,
    /// a tunnel a reverse proxy does not open (405 with `Allow`, as nginx refuses them).
    MethodNotAllowed,
    /// The request body has a transfer coding other than `chunked` (501, RFC 9112 §6.1): the
    /// upstream would get the coded bytes with nothing to say so.
    UnsupportedCoding,
    /// No route matches host and path (404).
    NoRoute,
    /// Over the route's rate limit (429 with `Retry-After`).
    RateLimited { retry_after_secs: u64 },
    /// No healthy endpoint for the route's cluster (503).
    NoHealthyUpstream { cluster: String },
    /// Every slot at the endpoints the request may use was taken and it could not wait for
    /// one: the cluster's queue was full or the queue timeout ran out (503 with
    /// `Retry-After: 1`). Nothing was sent.
    UpstreamBusy {
        cluster: String,
        why: crate::forward::pool::Busy,
    },
    /// A residency-restricted request with no healthy endpoint in its allowed regions (503,
    /// `x-frontdoor-refused: residency`). Fail closed: never forwarded elsewhere.
    ResidencyRefused {
        jurisdiction: String,
        allowed: String,
    },
    /// Could not connect to the chosen endpoint (502). Nothing was sent: retry is safe.
    Connect { endpoint: String },
    /// The upstream broke the exchange before a response head (502).
    UpstreamFailed { endpoint: String },
    /// The upstream did not answer within the request timeout (504).
    Timeout { endpoint: String },
    /// `Cache-Control: only-if-cached` and nothing usable is stored (504, RFC 9111 §5.2.1.7).
    NotCached,
    /// The client went quiet inside its request body (408, connection closed).
    ClientTimeout,
    /// The request body is larger than the route's `max_request_body` (413, connection
    /// closed): by its `Content-Length`, before anything went upstream, or as it streamed.
    PayloadTooLarge { limit: u64 },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            ProxyError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoHealthyUpstream { .. }
            | ProxyError::ResidencyRefused { .. }
            | ProxyError::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UriTooLong
            | ProxyError::MethodNotAllowed
            | ProxyError::Misdirected
            | ProxyError::UnsupportedCoding
            | ProxyError::NoRoute
            | ProxyError::RateLimited { .. }
            | ProxyError::NotCached
            | ProxyError::ClientTimeout
            | ProxyError::PayloadTooLarge { .. } => Source::Downstream,
            _ => Source::Upstream,
        }
    }

    /// True when the request never reached the upstream, so any method may be retried.
    pub fn nothing_sent(&self) -> bool {
        matches!(self, ProxyError::Connect { .. })
    }

    /// Short machine-readable code, also the `error` field of the body and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::Misdirected => "misdirected_request",
            ProxyError::UnsupportedCoding => "unsupported_transfer_coding",
            ProxyError::NoRoute => "no_route",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::NoHealthyUpstream { .. } => "no_healthy_upstream",
            ProxyError::UpstreamBusy { .. } => "upstream_busy",
            ProxyError::ResidencyRefused { .. } => "residency_refused",
            ProxyError::Connect { .. } => "upstream_connect_failed",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::Timeout { .. } => "upstream_timeout",
            ProxyError::NotCached => "not_cached",
            ProxyError::ClientTimeout => "client_timeout",
            ProxyError::PayloadTooLarge { .. } => "payload_too_large",
        }
    }

    fn detail(&self) -> String {
        match self {
            ProxyError::BadRequest(why) => (*why).to_string(),
            ProxyError::UriTooLong => "the request target is too long".into(),
            ProxyError::MethodNotAllowed => "TRACE, TRACK and CONNECT are not forwarded".into(),
            ProxyError::Misdirected => {
                "this connection's certificate is not for that host; connect to it by its name"
                    .into()
            }
            ProxyError::UnsupportedCoding => "only the chunked transfer coding is accepted".into(),
            ProxyError::NoRoute => "no route matches this host and path".into(),
            ProxyError::RateLimited { retry_after_secs } => {
                format!("rate limit exceeded; retry after {retry_after_secs} s")
            }
            ProxyError::NoHealthyUpstream { cluster } => {
                format!("no healthy upstream in cluster {cluster}")
            }
            ProxyError::UpstreamBusy { cluster, why } => match why {
                crate::forward::pool::Busy::QueueFull => format!(
                    "every connection to the upstream in cluster {cluster} is in use and its queue is full"
                ),
                crate::forward::pool::Busy::QueueTimeout => format!(
                    "every connection to the upstream in cluster {cluster} stayed in use for the queue timeout"
                ),
            },
            ProxyError::ResidencyRefused {
                jurisdiction,
                allowed,
            } => format!(
                "data residency: requests in jurisdiction {jurisdiction} may only be served from [{allowed}], and none of those is healthy"
            ),
            ProxyError::Connect { .. } => "could not connect to the upstream".into(),
            ProxyError::UpstreamFailed { .. } => "the upstream closed the exchange".into(),
            ProxyError::Timeout { .. } => "the upstream did not answer in time".into(),
            ProxyError::NotCached => "only-if-cached, and no stored response can answer".into(),
            ProxyError::ClientTimeout => "the request body stalled; send it faster".into(),
            ProxyError::PayloadTooLarge { limit } => {
                format!("the request body is larger than this route's limit of {limit} bytes")
            }
        }
    }

    /// The response the client gets: status, JSON body with the request id, `x-request-id`.
    pub fn into_response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.code(),
            "status": self.status().as_u16(),
            "detail": self.detail(),
            "request_id": request_id,
        });
        let mut text = body.to_string();
        text.push('\n');
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        self.mark(h, request_id);
        if let ProxyError::RateLimited { retry_after_secs } = self {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            );
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            h.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if matches!(self, ProxyError::UpstreamBusy { .. }) {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(
            self,
            ProxyError::BadRequest(_)
                | ProxyError::UnsupportedCoding
                | ProxyError::ClientTimeout
                | ProxyError::PayloadTooLarge { .. }
        ) {
            // After a request we refused to parse further, the connection's framing is suspect.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The fields every answer of ours for this failure carries, JSON or gRPC: the request id,
    /// and the residency mark on a residency refusal.
    fn mark(&self, h: &mut http::HeaderMap, request_id: &str) {
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(crate::classify::REQUEST_ID, v);
        }
        if matches!(self, ProxyError::ResidencyRefused { .. }) {
            h.insert(REFUSED, HeaderValue::from_static("residency"));
        }
    }
}

/// The gRPC status for an HTTP status the proxy answers with, as gRPC's clients map them
/// (gRPC's "HTTP to gRPC Status Code Mapping"): 400 INTERNAL, 401 UNAUTHENTICATED, 403
/// PERMISSION_DENIED, 404 UNIMPLEMENTED, 429, 502, 503 and 504 UNAVAILABLE, any other UNKNOWN.
fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

impl ProxyError {
    /// The same failure as a gRPC client reads one: a trailers-only answer (status 200,
    /// `content-type: application/grpc`, `grpc-status`, `grpc-message` with the detail), with
    /// the request id and the residency mark as on [`Self::into_response`]. A gRPC client
    /// given an HTTP error status makes up a code and no message of its own.
    pub fn into_grpc_response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, HeaderValue::from(grpc_status(self.status())));
        // Percent-encoded as gRPC wants it: printable ASCII but `%` as it is.
        let mut message = String::new();
        for b in self.detail().bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                message.push(char::from(b));
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert(GRPC_MESSAGE, v);
        }
        self.mark(h, request_id);
        resp
    }
}

const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// Whether an upstream's gRPC status (`grpc-status`, in an answer's trailers or in the head
/// of a trailers-only answer) says the server failed: the codes the usual gRPC-to-HTTP
/// mapping (google.rpc.Code's) puts at 5xx — UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS. A gRPC server answers `200` whatever the call's outcome;
/// without this, a failing one looks healthy to outlier ejection and to a rollout's analysis. A caller's
/// mistake (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) is not the server's failure.
pub fn grpc_failed(fields: &http::HeaderMap) -> bool {
    grpc_code(fields).is_some_and(grpc_code_failed)
}

/// The `grpc-status` in `fields` (an answer's trailers, or a trailers-only head): its code,
/// when it is a number gRPC defines (0 to 16).
pub fn grpc_code(fields: &http::HeaderMap) -> Option<u8> {
    let code = match fields.get(GRPC_STATUS)?.as_bytes() {
        [d @ b'0'..=b'9'] => d - b'0',
        [b'1', d @ b'0'..=b'6'] => 10 + (d - b'0'),
        _ => return None,
    };
    Some(code)
}

/// See [`grpc_failed`].
pub fn grpc_code_failed(code: u8) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Whether a request is a gRPC call: HTTP/2 with a `content-type` of `application/grpc`
/// (`+proto`, `+json` and the like included).
pub fn is_grpc(version: http::Version, headers: &http::HeaderMap) -> bool {
    version == http::Version::HTTP_2
        && headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.code(), self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_failures_are_the_codes_mapped_to_5xx() {
        let with = |code: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(code));
            grpc_failed(&h)
        };
        for code in ["2", "4", "12", "13", "14", "15"] {
            assert!(with(code), "{code}");
        }
        for code in [
            "0", "1", "3", "5", "7", "8", "16", "140", " 14", "", "17", "02",
        ] {
            assert!(!with(code), "{code:?}");
        }
        let code = |text: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-status", HeaderValue::from_static(text));
            grpc_code(&h)
        };
        assert_eq!(code("0"), Some(0));
        assert_eq!(code("9"), Some(9));
        assert_eq!(code("16"), Some(16));
        assert_eq!(code("17"), None);
        assert_eq!(code("02"), None);
        assert_eq!(code("x"), None);
        assert!(!grpc_failed(&http::HeaderMap::new()));
    }

    #[test]
    fn grpc_answers_carry_the_mapped_status_and_the_detail() {
        for (err, code) in [
            (ProxyError::BadRequest("bad"), "13"),
            (ProxyError::NoRoute, "12"),
            (
                ProxyError::RateLimited {
                    retry_after_secs: 1,
                },
                "14",
            ),
            (
                ProxyError::Timeout {
                    endpoint: "a".into(),
                },
                "14",
            ),
            (ProxyError::MethodNotAllowed, "2"),
            (
                ProxyError::ResidencyRefused {
                    jurisdiction: "eu".into(),
                    allowed: "europe-west1".into(),
                },
                "14",
            ),
        ] {
            let resp = err.into_grpc_response("rid-1");
            assert_eq!(resp.status(), StatusCode::OK, "{err}");
            assert_eq!(resp.headers()["grpc-status"], code, "{err}");
            assert_eq!(resp.headers()["x-request-id"], "rid-1");
            let message = resp.headers()["grpc-message"].to_str().expect("ascii");
            assert!(!message.is_empty(), "{err}");
        }
        // `%` and bytes outside printable ASCII are percent-encoded.
        let odd = ProxyError::BadRequest("100% bad\n");
        let resp = odd.into_grpc_response("r");
        assert_eq!(resp.headers()["grpc-message"], "100%25 bad%0A");
    }

    #[test]
    fn statuses_and_sources() {
        let e = |s: &str| s.to_string();
        let cases = [
            (ProxyError::BadRequest("x"), 400, Source::Downstream),
            (ProxyError::UnsupportedCoding, 501, Source::Downstream),
            (ProxyError::NoRoute, 404, Source::Downstream),
            (
                ProxyError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                Source::Downstream,
            ),
            (
                ProxyError::NoHealthyUpstream { cluster: e("c") },
                503,
                Source::Upstream,
            ),
            (
                ProxyError::UpstreamBusy {
                    cluster: e("c"),
                    why: crate::forward::pool::Busy::QueueFull,
                },
                503,
                Source::Upstream,
            ),
            (
                ProxyError::Connect { endpoint: e("a") },
                502,
                Source::Upstream,
            ),
            (
                ProxyError::UpstreamFailed { endpoint: e("a") },
                502,
                Source::Upstream,
            ),
            (
                ProxyError::Timeout { endpoint: e("a") },
                504,
                Source::Upstream,
            ),
            (ProxyError::MethodNotAllowed, 405, Source::Downstream),
            (ProxyError::Misdirected, 421, Source::Downstream),
        ];
        for (err, status, source) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.source(), source, "{err}");
            let resp = err.into_response("rid-1");
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()["x-request-id"], "rid-1");
            let busy = matches!(
                err,
                ProxyError::UpstreamBusy { .. } | ProxyError::RateLimited { .. }
            );
            assert_eq!(resp.headers().contains_key("retry-after"), busy, "{err}");
            // A 405 says which methods are (RFC 9110 §15.5.6).
            let refused_method = matches!(err, ProxyError::MethodNotAllowed);
            assert_eq!(
                resp.headers().contains_key("allow"),
                refused_method,
                "{err}"
            );
        }
    }
}
