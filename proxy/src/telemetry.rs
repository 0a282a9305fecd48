//! telemetry: metric names (all of them, here), the Prometheus recorder, and the access log.

use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by route, cluster and status class (`2xx`...).
pub const REQUESTS_TOTAL: &str = "frontdoor_requests_total";
/// Time from request head to response head, seconds, by route and cluster.
pub const REQUEST_DURATION: &str = "frontdoor_request_duration_seconds";
/// 1 when an endpoint takes traffic (active check passing and not ejected), else 0.
pub const UPSTREAM_HEALTHY: &str = "frontdoor_upstream_healthy";
/// Answers that did not reach their client whole, by route, cluster and who ended them
/// (`by`): `client` (gone before the head, the access log's 499, or during the body; or cut by
/// `send_timeout` or the drain), `upstream` (its body broke off, or went quiet past
/// `body_idle_timeout`, after the head).
pub const ABORTED: &str = "frontdoor_aborted_total";
/// gRPC calls an upstream failed under an HTTP 200: their `grpc-status` (in the trailers, or a
/// trailers-only head) is one gRPC's HTTP mapping puts at 5xx (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), by route and cluster. They are counted
/// as `2xx` in `frontdoor_requests_total`; the error-ratio rule adds them.
pub const GRPC_FAILURES: &str = "frontdoor_grpc_failures_total";
/// Upstream attempts retried, by cluster.
pub const UPSTREAM_RETRIES: &str = "frontdoor_upstream_retries_total";
/// Passive ejections, by cluster.
pub const UPSTREAM_EJECTIONS: &str = "frontdoor_upstream_ejections_total";
/// Ejections not made because `outlier.max_ejection_percent` of the cluster's endpoints were
/// out already, by cluster.
pub const UPSTREAM_EJECTIONS_CAPPED: &str = "frontdoor_upstream_ejections_capped_total";
/// Probes: requests sent to an ejected endpoint because every endpoint they may use was
/// ejected (one per endpoint and second at most; an answered one ends the ejection), by cluster.
pub const UPSTREAM_PROBES: &str = "frontdoor_upstream_probes_total";
/// Requests that found every slot of their endpoints taken (`limits.max_requests_per_endpoint`)
/// and waited in their cluster's queue, by cluster.
pub const UPSTREAM_QUEUED: &str = "frontdoor_upstream_queued_total";
/// Requests waiting for a slot now (in their cluster's queue), by cluster.
pub const UPSTREAM_WAITING: &str = "frontdoor_upstream_waiting";
/// Requests answered 503 because their cluster's queue was full (`reason="queue_full"`) or
/// no slot came free in time (`reason="queue_timeout"`), by cluster.
pub const UPSTREAM_BUSY: &str = "frontdoor_upstream_busy_total";
/// Config reloads by result (`ok`, `rejected`).
pub const CONFIG_RELOADS: &str = "frontdoor_config_reloads_total";
/// 1, labelled with the hash of the config in service.
pub const CONFIG_INFO: &str = "frontdoor_config_info";
/// Requests refused because no allowed region could serve them, by route and jurisdiction.
pub const RESIDENCY_REFUSALS: &str = "frontdoor_residency_refusals_total";
/// Requests served, by route, region and jurisdiction (`none` when unrestricted/unknown).
pub const REGION_REQUESTS: &str = "frontdoor_region_requests_total";
/// Current candidate weight (percent) of each route's rollout.
pub const ROLLOUT_WEIGHT: &str = "frontdoor_rollout_weight_percent";
/// Automatic rollbacks, by route.
pub const ROLLBACKS: &str = "frontdoor_rollbacks_total";
/// Counter {route, result = answered|failed|dropped}: copies of stable's requests sent to a
/// rollout's candidate (`mirror_percent`).
pub const MIRRORED: &str = "frontdoor_rollout_mirrored_total";
/// 1 while fleet mode cannot reach etcd (serving the last known state), else 0.
pub const FLEET_DEGRADED: &str = "frontdoor_fleet_degraded";
/// Each served certificate's `notAfter` (Unix seconds), by one of its names.
pub const CERT_NOT_AFTER: &str = "frontdoor_certificate_not_after_timestamp_seconds";
/// Requests refused with 429 by a route's rate limit.
pub const RATE_LIMITED: &str = "frontdoor_rate_limited_total";
/// Connections refused by the connection limits, by listener and reason (`global`, `per_ip`).
pub const CONNECTIONS_REFUSED: &str = "frontdoor_connections_refused_total";
/// Connections accepted, by listener (`http`, `https`).
pub const CONNECTIONS_TOTAL: &str = "frontdoor_connections_total";
/// Log lines (access log and others) dropped because stdout took them slower than they came.
pub const LOG_LINES_DROPPED: &str = "frontdoor_log_lines_dropped_total";
/// Idle HTTP/1.1 connections parked now (`server.park_idle_after`), by listener.
pub const CONNECTIONS_PARKED: &str = "frontdoor_connections_parked";
/// HTTP/1.1 connections answered 408 because a started request head was not finished within
/// `server.header_timeout`, by listener.
pub const HEADER_TIMEOUTS: &str = "frontdoor_header_timeouts_total";
/// Answers cut because the client took none of them for `server.send_timeout` (an HTTP/1.1
/// connection closed, an HTTP/2 stream's answer dropped), by listener.
pub const SEND_TIMEOUTS: &str = "frontdoor_send_timeouts_total";

/// Cacheable-path requests by what the cache did (`hit`, `miss`, `stale`, `revalidated`,
/// `bypass`).
pub const CACHE_REQUESTS: &str = "frontdoor_cache_requests_total";
/// Responses stored in the shared cache.
pub const CACHE_STORED: &str = "frontdoor_cache_stored_total";
/// Entries evicted for space.
pub const CACHE_EVICTIONS: &str = "frontdoor_cache_evictions_total";
/// Requests that waited for another request's fetch of the same key instead of going upstream.
pub const CACHE_COALESCED: &str = "frontdoor_cache_coalesced_total";
/// Bytes held by the shared cache (approximate, updated on store).
pub const CACHE_BYTES: &str = "frontdoor_cache_bytes";
/// Keys held by the shared cache.
pub const CACHE_ENTRIES: &str = "frontdoor_cache_entries";

/// Failed TLS handshakes by reason (`incompatible`, `client_alert`, `invalid_message`,
/// `no_certificate`, `timeout`, `io`, `other`).
pub const TLS_HANDSHAKE_FAILURES: &str = "frontdoor_tls_handshake_failures_total";
/// ACME issuance attempts by result (`ok`, `failed`).
pub const ACME_ISSUANCES: &str = "frontdoor_acme_issuances_total";

pub const L_ROUTE: &str = "route";
pub const L_CLUSTER: &str = "cluster";
pub const L_CLASS: &str = "class";
pub const L_ENDPOINT: &str = "endpoint";
pub const L_RESULT: &str = "result";
pub const L_HASH: &str = "hash";
pub const L_LISTENER: &str = "listener";
pub const L_REGION: &str = "region";
pub const L_JURISDICTION: &str = "jurisdiction";
pub const L_NAME: &str = "name";
pub const L_REASON: &str = "reason";
pub const L_BY: &str = "by";

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        // Fails only if another recorder is installed; our handle then renders nothing, which
        // /metrics shows plainly rather than hiding.
        let _ = metrics::set_global_recorder(recorder);
        // Histograms keep each raw sample until upkeep folds them into their buckets: without
        // it memory grows by every request's latency until the next scrape (~20 bytes per
        // request on an unscraped front door).
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name(UPKEEP_THREAD.into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const UPKEEP_THREAD: &str = "metrics-upkeep";

/// Pre-registered handles for one route, so the hot path does no label hashing.
#[derive(Debug)]
pub struct RouteMetrics {
    /// Index 0 unused; 1..=5 are 1xx..5xx.
    by_class: [Counter; 6],
    pub latency: Histogram,
    /// By the client, by the upstream.
    aborted: [Counter; 2],
    grpc_failures: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, cluster: &str) -> RouteMetrics {
        prometheus();
        let class = |c: &'static str| metrics::counter!(REQUESTS_TOTAL, L_ROUTE => route.to_string(), L_CLUSTER => cluster.to_string(), L_CLASS => c);
        RouteMetrics {
            by_class: [
                Counter::noop(),
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            latency: metrics::histogram!(REQUEST_DURATION, L_ROUTE => route.to_string(), L_CLUSTER => cluster.to_string()),
            aborted: ["client", "upstream"].map(|by| metrics::counter!(ABORTED, L_ROUTE => route.to_string(), L_CLUSTER => cluster.to_string(), L_BY => by)),
            grpc_failures: metrics::counter!(GRPC_FAILURES, L_ROUTE => route.to_string(), L_CLUSTER => cluster.to_string()),
        }
    }

    /// Counts a gRPC call the upstream answered with `code` (see [`GRPC_FAILURES`]).
    pub fn grpc_answered(&self, code: u8) {
        if crate::respond::grpc_code_failed(code) {
            self.grpc_failures.increment(1);
        }
    }

    /// Counts an answer that ended as `end`, when it did not reach its client whole.
    pub fn ended(&self, end: AnswerEnd) {
        match end {
            AnswerEnd::Complete => {}
            AnswerEnd::ClientGone => self.aborted[0].increment(1),
            AnswerEnd::UpstreamFailed | AnswerEnd::UpstreamTimeout => {
                self.aborted[1].increment(1);
            }
        }
    }

    pub fn record(&self, status: http::StatusCode, seconds: f64) {
        let class = usize::from(status.as_u16() / 100).min(5);
        self.by_class[class].increment(1);
        self.latency.record(seconds);
    }
}

/// One access-log line; emitted as a JSON event on target `access`.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    /// `client` as text, when the caller has it (the peer's, formatted once per connection).
    pub client_text: Option<&'a [u8]>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub protocol: http::Version,
    pub route: &'a str,
    pub upstream: &'a str,
    pub status: u16,
    pub error: &'a str,
    pub attempts: u32,
    /// From the request's send upstream to the upstream's response head (`upstream_ms`).
    pub upstream_time: std::time::Duration,
    /// Of `upstream_time`, the wait for a slot under an endpoint's cap (`queue_ms`, written
    /// only for a request that waited).
    pub queue_time: std::time::Duration,
    /// From the request's arrival in the pipeline to its answer's head being ready
    /// (`head_ms`).
    pub head_time: std::time::Duration,
    /// What the cache did (`HIT`, `MISS`, ...), `-` when not consulted.
    pub cache: &'a str,
}

/// How an answer ended (`end` in the access line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerEnd {
    /// All of its body was handed to the client's connection (or it had none to send).
    Complete,
    /// The client's connection or stream ended first: the client closed or reset it, or the
    /// proxy cut it (`server.send_timeout`, the drain's deadline); or the client's upload
    /// broke the exchange (the upstream's answer broke off after it). Also a client that went
    /// away before its answer's head (status 499).
    ClientGone,
    /// The upstream's body broke off (a reset, a close, bad framing).
    UpstreamFailed,
    /// The upstream's body went quiet for `body_idle_timeout`.
    UpstreamTimeout,
}

impl AnswerEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerEnd::Complete => "complete",
            AnswerEnd::ClientGone => "client_gone",
            AnswerEnd::UpstreamFailed => "upstream_failed",
            AnswerEnd::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// What an access line says of its answer's end: the line's last fields.
#[derive(Debug, Clone, Copy)]
pub struct Ending {
    /// Body bytes handed to the client's connection (`bytes`).
    pub bytes: u64,
    pub end: AnswerEnd,
    /// From the request's arrival to its answer's end (`total_ms`).
    pub total: std::time::Duration,
    /// A gRPC call's status as the upstream gave it (`grpc_status`; absent otherwise).
    pub grpc: Option<u8>,
}

impl Ending {
    /// `,"bytes":N,"end":"..",["grpc_status":N,]"total_ms":X}` and the newline.
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"bytes\":");
        push_decimal(out, self.bytes, 0);
        out.extend_from_slice(b",\"end\":\"");
        out.extend_from_slice(self.end.as_str().as_bytes());
        out.push(b'"');
        if let Some(code) = self.grpc {
            out.extend_from_slice(b",\"grpc_status\":");
            push_decimal(out, u64::from(code), 0);
        }
        out.extend_from_slice(b",\"total_ms\":");
        millis(out, self.total);
        out.extend_from_slice(b"}\n");
    }
}

/// An access line waiting for its answer's end: what was known at the head is written, and
/// the body bytes handed over are counted here until [`OpenLine::finish`] adds the [`Ending`]
/// and hands the line over. One pointer: the answer's body carries it. Each thread keeps [`OpenLine::KEEP`] of them (with their buffers) for reuse.
#[derive(Debug)]
pub struct OpenLine(Box<Open>);

#[derive(Debug)]
struct Open {
    buf: Vec<u8>,
    sink: &'static LogSink,
    /// The line's timestamp.
    at: std::time::SystemTime,
    /// The request's arrival.
    started: tokio::time::Instant,
    bytes: u64,
}

thread_local! {
    // The boxes are what is kept: an `OpenLine` is one, handed out and back whole.
    #[allow(clippy::vec_box)]
    static OPEN_LINES: std::cell::RefCell<Vec<Box<Open>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl OpenLine {
    /// Lines a thread keeps: more than the answers a thread has in flight between two
    /// returns, as a rule.
    const KEEP: usize = 64;
    /// Room for a typical line.
    const ROOM: usize = 512;

    /// `n` more body bytes handed to the client.
    #[inline]
    pub fn sent(&mut self, n: u64) {
        self.0.bytes += n;
    }

    /// Adds how the answer ended and hands the line to its thread's batch.
    pub fn finish(self, end: AnswerEnd, grpc: Option<u8>) {
        let mut open = self.0;
        Ending {
            bytes: open.bytes,
            end,
            total: open.started.elapsed(),
            grpc,
        }
        .write(&mut open.buf);
        append_local(open.sink, open.at, |out| out.extend_from_slice(&open.buf));
        if open.buf.capacity() <= 4 * Self::ROOM {
            let _ = OPEN_LINES.try_with(|kept| {
                if let Ok(mut kept) = kept.try_borrow_mut()
                    && kept.len() < Self::KEEP
                {
                    open.buf.clear();
                    kept.push(open);
                }
            });
        }
    }
}

impl AccessRecord<'_> {
    /// Writes the whole line to the process's log sink (when there is one). The same JSON
    /// shape as the other log lines, written directly: the tracing JSON layer cost about a
    /// tenth of a request's CPU (benches/README.md).
    pub fn emit(&self, ending: Ending) {
        if let Some(sink) = LogSink::installed() {
            self.emit_to(sink, std::time::SystemTime::now(), ending);
        }
    }

    /// Writes the line into this thread's batch for `sink` (see [`flush_local`]).
    fn emit_to(&self, sink: &'static LogSink, now: std::time::SystemTime, ending: Ending) {
        append_local(sink, now, |out| self.write_json(out, now, ending));
    }

    /// The line up to its end, when there is a log sink; `started` is the request's arrival.
    /// [`OpenLine::finish`] adds the end once the answer is done.
    pub fn open(&self, started: tokio::time::Instant) -> Option<OpenLine> {
        let sink = LogSink::installed()?;
        Some(self.open_to(sink, std::time::SystemTime::now(), started))
    }

    fn open_to(
        &self,
        sink: &'static LogSink,
        now: std::time::SystemTime,
        started: tokio::time::Instant,
    ) -> OpenLine {
        let kept = OPEN_LINES
            .try_with(|kept| kept.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten();
        let mut open = match kept {
            Some(mut open) => {
                open.sink = sink;
                open.at = now;
                open.started = started;
                open.bytes = 0;
                open
            }
            None => Box::new(Open {
                buf: Vec::with_capacity(OpenLine::ROOM),
                sink,
                at: now,
                started,
                bytes: 0,
            }),
        };
        self.write_head(&mut open.buf, now);
        OpenLine(open)
    }

    /// `{"timestamp":...,"level":"INFO","target":"access",...}` and a newline, as UTF-8.
    pub fn write_json(&self, out: &mut Vec<u8>, now: std::time::SystemTime, ending: Ending) {
        self.write_head(out, now);
        ending.write(out);
    }

    /// The line without its [`Ending`]. Numbers and addresses are written by hand, as bytes:
    /// `fmt` machinery was most of this line's cost, and checking each number's digits as
    /// `str` a tenth of the rest.
    fn write_head(&self, out: &mut Vec<u8>, now: std::time::SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"target\":\"access\"");
        json_field(out, b",\"request_id\":\"", self.request_id);
        out.extend_from_slice(b",\"client\":\"");
        match self.client_text {
            Some(text) => out.extend_from_slice(text),
            None => crate::classify::push_ip(out, self.client),
        }
        out.push(b'"');
        json_field(out, b",\"method\":\"", self.method);
        json_field(out, b",\"host\":\"", self.host);
        json_field(out, b",\"path\":\"", self.path);
        out.extend_from_slice(b",\"protocol\":\"");
        out.extend_from_slice(version_name(self.protocol).as_bytes());
        out.push(b'"');
        json_field(out, b",\"route\":\"", self.route);
        json_field(out, b",\"upstream\":\"", self.upstream);
        out.extend_from_slice(b",\"status\":");
        push_decimal(out, u64::from(self.status), 0);
        json_field(out, b",\"error\":\"", self.error);
        out.extend_from_slice(b",\"attempts\":");
        push_decimal(out, u64::from(self.attempts), 0);
        out.extend_from_slice(b",\"upstream_ms\":");
        millis(out, self.upstream_time);
        if !self.queue_time.is_zero() {
            out.extend_from_slice(b",\"queue_ms\":");
            millis(out, self.queue_time);
        }
        out.extend_from_slice(b",\"head_ms\":");
        millis(out, self.head_time);
        json_field(out, b",\"cache\":\"", self.cache);
    }
}

/// Appends to this thread's batch of lines for `sink` (`write` writes whole lines), handing
/// the batch over when it is full or old (see [`LocalLines`]).
fn append_local(
    sink: &'static LogSink,
    now: std::time::SystemTime,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let _ = LOCAL.try_with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return;
        };
        if local.sink.is_some_and(|held| !std::ptr::eq(held, sink)) {
            local.hand_over();
        }
        if local.lines.is_empty() {
            local.sink = Some(sink);
            local.since = now;
        }
        write(&mut local.lines);
        let old = now
            .duration_since(local.since)
            .is_ok_and(|age| age >= LogSink::EVERY);
        if local.lines.len() >= LocalLines::MAX || old {
            local.hand_over();
        }
    });
}

/// One string field: `opening` is its `,"name":"`, written whole. Inlined, so each opening is a
/// copy of a known length (no call to `memcpy`).
#[inline(always)]
fn json_field(out: &mut Vec<u8>, opening: &[u8], value: &str) {
    out.extend_from_slice(opening);
    json_escape(out, value);
    out.push(b'"');
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_decimal(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [0u8; 20];
    let digits = crate::forward::wire::decimal(n, &mut buf);
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// A duration in milliseconds with three decimals (`1.500`), to the nearest microsecond, from
/// integers: float formatting and rounding were a visible part of a request's CPU. Written
/// whole from a buffer of its own (one copy; a line has three of them).
fn millis(out: &mut Vec<u8>, time: std::time::Duration) {
    let micros = time.as_secs() * 1_000_000 + u64::from(time.subsec_nanos() + 500) / 1000;
    let mut buf = [0u8; 24];
    let mut fraction = micros % 1000;
    for at in (21..24).rev() {
        buf[at] = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    buf[20] = b'.';
    let mut whole = micros / 1000;
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (whole % 10) as u8;
        whole /= 10;
        if whole == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "-",
    }
}

/// JSON string contents: quotes, backslashes and control characters escaped. Runs of plain
/// text are copied whole.
fn json_escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Most values need nothing escaped: one check and one copy. With only the loop below, the
    // whole line cost ~560 more instructions (benches/instructions.sh).
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        if !escaped_in_json(b) {
            continue;
        }
        let escaped: [u8; 6];
        let with: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            // Control characters.
            _ => {
                escaped = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ];
                &escaped
            }
        };
        out.extend_from_slice(&s.as_bytes()[plain..i]);
        out.extend_from_slice(with);
        plain = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[plain..]);
}

/// The one test of what [`json_escape`] escapes: quotes, backslashes, control characters.
fn escaped_in_json(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
}

/// Whether any byte of `s` is [`escaped_in_json`], eight at a time: for each word, whether a
/// byte is below 0x20 and whether one equals `"`, `\` or DEL (a byte is zero after an XOR),
/// with the usual borrow tricks; each is exact as a yes or no for the word (a borrow only
/// runs up from a byte that is itself a match). Bytes of 0x80 and up never match. The field
/// values of an access line (~55 bytes in 8 fields): ~100 instructions fewer than a byte at a
/// time (the rest is short values' last bytes and the copies; a padded last word saved
/// nothing more).
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v;
    let mut words = s.chunks_exact(8);
    let mut found = 0u64;
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let below_space = x.wrapping_sub(0x20 * ONES) & !x;
        found |= (below_space
            | zero_byte(x ^ (u64::from(b'"') * ONES))
            | zero_byte(x ^ (u64::from(b'\\') * ONES))
            | zero_byte(x ^ (0x7f * ONES)))
            & HIGH;
    }
    found != 0 || words.remainder().iter().any(|&b| escaped_in_json(b))
}

/// `2026-11-27T03:18:56.123456Z`: the date part is formatted once per second per thread.
fn rfc3339_micros(out: &mut Vec<u8>, now: std::time::SystemTime) {
    use std::cell::RefCell;
    use std::fmt::Write;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let (year, month, day) = crate::clock::civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3_600,
                rem % 3_600 / 60,
                rem % 60
            );
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    out.push(b'.');
    push_decimal(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read, and stall: writes wait while the gate is shut.
    #[derive(Clone, Default)]
    struct Output {
        got: Arc<Mutex<Vec<u8>>>,
        shut: Arc<(Mutex<bool>, std::sync::Condvar)>,
    }

    impl Output {
        fn gate(&self, shut: bool) {
            *lock(&self.shut.0) = shut;
            self.shut.1.notify_all();
        }

        fn lines(&self) -> Vec<String> {
            String::from_utf8(lock(&self.got).clone())
                .expect("utf-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    impl std::io::Write for Output {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let mut shut = lock(&self.shut.0);
            while *shut {
                shut = self.shut.1.wait(shut).unwrap_or_else(|p| p.into_inner());
            }
            lock(&self.got).extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn numbered(n: usize) -> Vec<u8> {
        format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(60)).into_bytes()
    }

    /// Lines come out whole and in order, across full batches (queued), the writer's timer
    /// and flushes.
    #[test]
    fn lines_come_out_whole_and_in_order() {
        let out = Output::default();
        let sink = LogSink::start(Box::new(out.clone()));
        for n in 0..20_000 {
            sink.push(&numbered(n));
            if n % 5_000 == 0 {
                // Let the timer write a batch that is not full.
                std::thread::sleep(LogSink::EVERY * 2);
            }
            if n % 4_000 == 3_999 {
                // Never more than ~5 batches queued: nothing is dropped however slow the
                // writer thread runs here.
                sink.flush();
            }
        }
        sink.flush();
        let lines = out.lines();
        assert_eq!(lines.len(), 20_000);
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(line.as_bytes(), numbered(n).trim_ascii_end(), "line {n}");
        }
        assert_eq!(sink.dropped(), 0);
    }

    fn record(path: &str) -> AccessRecord<'_> {
        AccessRecord {
            request_id: "id",
            client: "192.0.2.7".parse().expect("ip"),
            client_text: None,
            method: "GET",
            host: "h",
            path,
            protocol: http::Version::HTTP_11,
            route: "r",
            upstream: "u",
            status: 200,
            error: "",
            attempts: 1,
            upstream_time: std::time::Duration::ZERO,
            queue_time: std::time::Duration::ZERO,
            head_time: std::time::Duration::ZERO,
            cache: "-",
        }
    }

    const DONE: Ending = Ending {
        bytes: 13,
        end: AnswerEnd::Complete,
        total: std::time::Duration::ZERO,
        grpc: None,
    };

    fn paths(out: &Output) -> Vec<String> {
        out.lines()
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                v["path"].as_str().expect("path").to_owned()
            })
            .collect()
    }

    fn local_len() -> usize {
        LOCAL.with_borrow(|local| local.lines.len())
    }

    /// A thread's access lines reach the sink together, in order: when the oldest is
    /// `EVERY` old, when there are `MAX` bytes of them, and on a flush.
    #[test]
    fn access_lines_wait_in_their_thread_until_handed_over() {
        let out = Output::default();
        let sink: &'static LogSink = Box::leak(Box::new(LogSink::start(Box::new(out.clone()))));
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for n in 0..3 {
            record(&format!("/{n}")).emit_to(sink, t0, DONE);
        }
        assert!(local_len() > 0 && lock(&sink.shared.buf).is_empty());
        // The oldest line is EVERY old: all four go over.
        record("/3").emit_to(sink, t0 + LogSink::EVERY, DONE);
        assert_eq!(local_len(), 0);
        assert_eq!(
            lock(&sink.shared.buf)
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            4
        );
        // MAX bytes of lines go over at once, however young.
        let mut n = 4;
        while local_len() + 400 < LocalLines::MAX {
            record(&format!("/{n}")).emit_to(sink, t0 + LogSink::EVERY, DONE);
            n += 1;
            assert!(local_len() > 0, "handed over before MAX at line {n}");
        }
        while local_len() > 0 {
            record(&format!("/{n}")).emit_to(sink, t0 + LogSink::EVERY, DONE);
            n += 1;
        }
        // And whatever is left, on a flush.
        record(&format!("/{n}")).emit_to(sink, t0 + LogSink::EVERY, DONE);
        n += 1;
        sink.flush();
        assert_eq!(local_len(), 0);
        let want: Vec<String> = (0..n).map(|n| format!("/{n}")).collect();
        assert_eq!(paths(&out), want);
    }

    /// A runtime built with `log_hooks` hands a thread's lines over when it goes idle.
    #[test]
    fn a_runtime_hands_lines_over_when_its_thread_parks() {
        let out = Output::default();
        let sink: &'static LogSink = Box::leak(Box::new(LogSink::start(Box::new(out.clone()))));
        let runtime = log_hooks(&mut tokio::runtime::Builder::new_current_thread())
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            record("/busy").emit_to(sink, std::time::SystemTime::now(), DONE);
            assert!(local_len() > 0);
            // Nothing to do: the thread parks, and the line goes over first.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            assert_eq!(local_len(), 0, "still held after the thread parked");
        });
        sink.flush();
        assert_eq!(paths(&out), ["/busy"]);
    }

    /// An open line goes out when it is finished, with its end, after the lines finished
    /// before it; it is kept, with its buffer, for the thread's next open line.
    #[tokio::test(start_paused = true)]
    async fn an_open_line_goes_out_whole_when_its_answer_ends() {
        let out = Output::default();
        let sink: &'static LogSink = Box::leak(Box::new(LogSink::start(Box::new(out.clone()))));
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let started = tokio::time::Instant::now();
        let mut long = record("/long").open_to(sink, t0, started);
        record("/short").emit_to(sink, t0, DONE);
        assert!(!long.0.buf.ends_with(b"\n"), "an open line has no end yet");
        let kept = long.0.buf.as_ptr();
        long.sent(5);
        long.sent(2);
        tokio::time::advance(std::time::Duration::from_micros(1_250_500)).await;
        long.finish(AnswerEnd::UpstreamTimeout, None);
        let mut again = record("/next").open_to(sink, t0, tokio::time::Instant::now());
        assert_eq!(
            again.0.buf.as_ptr(),
            kept,
            "the finished line's buffer is reused"
        );
        assert_eq!(again.0.bytes, 0, "a kept line counts anew");
        again.sent(13);
        again.finish(AnswerEnd::ClientGone, Some(14));
        sink.flush();
        assert_eq!(paths(&out), ["/short", "/long", "/next"]);
        let lines = out.lines();
        let long: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON");
        assert_eq!(long["timestamp"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(long["bytes"], 7);
        assert_eq!(long["end"], "upstream_timeout");
        assert_eq!(long["total_ms"], 1250.5);
        assert_eq!(long["head_ms"], 0.0);
        assert!(
            long.get("grpc_status").is_none(),
            "no gRPC status, no field"
        );
        let next: serde_json::Value = serde_json::from_str(&lines[2]).expect("JSON");
        assert_eq!(next["end"], "client_gone");
        assert_eq!(next["grpc_status"], 14);
        assert_eq!(next["bytes"], 13);
        assert_eq!(next["total_ms"], 0.0, "a kept line starts its clock anew");
    }

    /// A stalled output does not stall the lines' writers: past the queue, whole batches are
    /// dropped and counted; what comes out is whole lines, in order.
    #[test]
    fn a_stalled_output_drops_batches_rather_than_blocking() {
        let out = Output::default();
        out.gate(true);
        let sink = Arc::new(LogSink::start(Box::new(out.clone())));
        let pushed = 20_000;
        assert!(pushed * numbered(0).len() > (LogSink::QUEUE + 2) * LogSink::BATCH);
        let (done, finished) = std::sync::mpsc::channel();
        let writer = {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || {
                for n in 0..pushed {
                    sink.push(&numbered(n));
                }
                let _ = done.send(());
            })
        };
        // A generous bound for a failure, not a timing: blocked pushes never finish.
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("pushing did not wait for the stalled output");
        writer.join().expect("writer");
        assert!(sink.dropped() > 0, "1.6 MB of lines cannot all be queued");
        out.gate(false);
        sink.flush();
        let lines = out.lines();
        assert_eq!(lines.len() as u64 + sink.dropped(), pushed as u64);
        let mut last = None;
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).expect("a whole line");
            let n = v["n"].as_u64().expect("n");
            assert!(
                last.is_none_or(|l| n > l),
                "out of order: {n} after {last:?}"
            );
            last = Some(n);
        }
    }

    /// Histogram samples are folded by a running upkeep thread, not kept until a scrape.
    #[test]
    fn the_recorder_runs_upkeep() {
        prometheus();
        let names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        };
        // A new thread names itself once it runs; until then it shows its parent's name.
        for _ in 0..500 {
            if names().iter().any(|t| t == UPKEEP_THREAD) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no {UPKEEP_THREAD} thread among {:?}", names());
    }

    #[test]
    fn durations_are_milliseconds_to_the_microsecond() {
        let text = |d: std::time::Duration| {
            let mut out = b"x".to_vec();
            millis(&mut out, d);
            String::from_utf8(out).expect("UTF-8")
        };
        assert_eq!(text(std::time::Duration::ZERO), "x0.000");
        assert_eq!(text(std::time::Duration::from_nanos(499)), "x0.000");
        assert_eq!(text(std::time::Duration::from_nanos(500)), "x0.001");
        assert_eq!(text(std::time::Duration::from_micros(7_089)), "x7.089");
        assert_eq!(
            text(std::time::Duration::from_nanos(999_999_600)),
            "x1000.000"
        );
        assert_eq!(
            text(std::time::Duration::new(86_400 * 365, 123_456_789)),
            "x31536000123.457"
        );
    }

    #[test]
    fn the_escape_check_finds_every_escaped_byte_wherever_it_is() {
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=255u8 {
                    // Around it, bytes that are never escaped, and some just past the classes.
                    let mut s: Vec<u8> =
                        (0..len).map(|i| [b'a', b' ', b'!', 0x80][i % 4]).collect();
                    s[at] = b;
                    assert_eq!(
                        needs_escape(&s),
                        s.iter().any(|&c| escaped_in_json(c)),
                        "byte {b:#04x} at {at} of {len}"
                    );
                }
            }
        }
        // Two in one word, and matches that borrow into the next byte.
        assert!(needs_escape(b"ab\x00\x01cdefgh"));
        assert!(needs_escape(b"\x00\x00\x00\x00\x00\x00\x00\x00"));
        assert!(!needs_escape(b"\x21\x21\x21\x21\x23\x5b\x5d\x7e\xff\x80"));
        assert!(!needs_escape(b""));
    }

    #[test]
    fn access_lines_are_json_with_escapes_and_utc_timestamps() {
        let record = AccessRecord {
            request_id: "abc",
            client: "192.0.2.7".parse().expect("ip"),
            client_text: None,
            method: "GET",
            host: "shop.example.com",
            path: "/q\"uote\\back\u{1}ctl/café",
            protocol: http::Version::HTTP_2,
            route: "app",
            upstream: "127.0.0.1:9101",
            status: 503,
            error: "residency_refused",
            attempts: 2,
            upstream_time: std::time::Duration::from_micros(1500),
            queue_time: std::time::Duration::ZERO,
            head_time: std::time::Duration::from_nanos(12_345_600),
            cache: "-",
        };
        let mut line = Vec::new();
        // 2024-02-29T23:59:59.000042Z: a leap day, the last second of it.
        let at = std::time::UNIX_EPOCH + std::time::Duration::new(1_709_251_199, 42_000);
        let ending = Ending {
            bytes: 1_048_576,
            end: AnswerEnd::ClientGone,
            total: std::time::Duration::from_millis(2_500),
            grpc: None,
        };
        record.write_json(&mut line, at, ending);
        let line = String::from_utf8(line).expect("UTF-8");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["timestamp"], "2024-02-29T23:59:59.000042Z");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["path"], "/q\"uote\\back\u{1}ctl/café");
        assert_eq!(v["client"], "192.0.2.7");
        assert_eq!(v["protocol"], "HTTP/2.0");
        assert_eq!(v["status"], 503);
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["head_ms"], 12.346);
        assert!(line.contains(",\"upstream_ms\":1.500,\"head_ms\":12.346,"));
        assert_eq!(v["bytes"], 1_048_576);
        assert_eq!(v["end"], "client_gone");
        assert_eq!(v["total_ms"], 2500.0);
        assert!(
            line.ends_with(",\"bytes\":1048576,\"end\":\"client_gone\",\"total_ms\":2500.000}\n")
        );
        assert_eq!(v["route"], "app");
        // The client as text the caller already has: the same line.
        let peer = crate::classify::Peer::new("192.0.2.7:5000".parse().expect("addr"), false);
        let with_text = AccessRecord {
            client_text: peer.text_if(record.client),
            ..record
        };
        assert!(with_text.client_text.is_some());
        let mut again = Vec::new();
        with_text.write_json(&mut again, at, ending);
        assert_eq!(String::from_utf8(again).expect("UTF-8"), line);
        // A request that waited for a slot says how long, inside its upstream time.
        let waited = AccessRecord {
            queue_time: std::time::Duration::from_micros(250),
            ..record
        };
        let mut queued = Vec::new();
        waited.write_json(&mut queued, at, ending);
        let queued = String::from_utf8(queued).expect("UTF-8");
        assert!(queued.contains(",\"upstream_ms\":1.500,\"queue_ms\":0.250,\"head_ms\":"));
        assert!(!line.contains("queue_ms"));
        let mut epoch = Vec::new();
        rfc3339_micros(&mut epoch, std::time::UNIX_EPOCH);
        assert_eq!(epoch, b"1970-01-01T00:00:00.000000Z");
    }
}

/// The audit line for a residency refusal (target `audit`).
pub fn audit_residency_refusal(
    request_id: &str,
    route: &str,
    jurisdiction: &str,
    source: &str,
    allowed: &str,
) {
    metrics::counter!(RESIDENCY_REFUSALS, L_ROUTE => route.to_string(), L_JURISDICTION => jurisdiction.to_string()).increment(1);
    tracing::warn!(
        target: "audit",
        event = "residency_refused",
        request_id,
        route,
        jurisdiction,
        jurisdiction_source = source,
        allowed_regions = allowed,
        reason = "no healthy endpoint in an allowed region; request refused (fail closed)",
    );
}

/// Publishes the expiry of every certificate in a store.
pub fn record_certificates(store: &certs::CertStore) {
    prometheus();
    for (name, not_after) in store.expiries() {
        metrics::gauge!(CERT_NOT_AFTER, L_NAME => name).set(not_after as f64);
    }
}

static GLOBAL_SINK: OnceLock<LogSink> = OnceLock::new();

/// Log lines (the access log among them) on stdout in batches, written by a thread of their
/// own. Each line is appended to a buffer; a buffer past [`LogSink::BATCH`] is queued for the
/// writer, which also writes what is buffered every 100 ms and on [`LogSink::flush`] at exit —
/// one `write` per batch, not one per request.
///
/// The request path never waits on the output: when the writer is behind by
/// [`LogSink::QUEUE`] batches (stdout is a pipe nobody reads fast enough), a full batch is
/// dropped instead, whole lines only, and counted in `frontdoor_log_lines_dropped_total`. Before,
/// a stalled stdout stalled every request that logged.
#[derive(Debug)]
pub struct LogSink {
    shared: Arc<SinkShared>,
    queue: std::sync::mpsc::SyncSender<SinkMsg>,
}

#[derive(Debug, Default)]
struct SinkShared {
    /// The batch being filled.
    buf: Mutex<Vec<u8>>,
    /// Written batches, emptied, to be filled again: a buffer that started empty each time
    /// was grown to 64 KiB by doubling, copying ~1 KiB per request on average.
    spares: Mutex<Vec<Vec<u8>>>,
    dropped: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
enum SinkMsg {
    Batch(Vec<u8>),
    /// Write everything before this, flush, then answer.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl LogSink {
    pub const BATCH: usize = 64 * 1024;
    /// Full batches waiting for the writer before more are dropped: 1 MiB, ~80 ms of the
    /// access log at 50,000 requests a second.
    pub const QUEUE: usize = 16;
    /// How often the writer writes a batch that is not full.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    /// The process's sink, writing to stdout.
    pub fn global() -> &'static LogSink {
        GLOBAL_SINK.get_or_init(|| LogSink::start(Box::new(std::io::stdout())))
    }

    /// A sink writing to `out` from a thread of its own, which ends when the sink is dropped.
    pub fn start(out: Box<dyn std::io::Write + Send>) -> LogSink {
        let (queue, batches) = std::sync::mpsc::sync_channel(Self::QUEUE);
        let shared = Arc::new(SinkShared::default());
        let writer = Arc::clone(&shared);
        // Nowhere to report a thread that cannot start: lines then queue and are dropped.
        let _ = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.write_out(&batches, out));
        LogSink { shared, queue }
    }

    /// Sets the process's sink up writing to `out` (an embedder's or a test's), unless there
    /// is one already; the process's sink either way.
    pub fn install(out: Box<dyn std::io::Write + Send>) -> &'static LogSink {
        GLOBAL_SINK.get_or_init(|| LogSink::start(out))
    }

    /// The sink, when the binary set one up. Without one (tests, embedders) there is no access
    /// log, as there are no log lines without a tracing subscriber.
    pub fn installed() -> Option<&'static LogSink> {
        GLOBAL_SINK.get()
    }

    /// Appends one complete line.
    pub fn push(&self, line: &[u8]) {
        use std::io::Write;
        let _ = self.line().write(line);
    }

    /// A writer for one log line (`tracing_subscriber`'s `with_writer(|| sink.line())`).
    pub fn line(&self) -> LogLine<'_> {
        LogLine(self)
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.shared
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes out whatever is buffered (this thread's lines too) and waits (up to 5 s) until
    /// it is.
    pub fn flush(&self) {
        flush_local();
        let (done, written) = std::sync::mpsc::sync_channel(1);
        if self.queue.send(SinkMsg::Flush(done)).is_ok() {
            let _ = written.recv_timeout(std::time::Duration::from_secs(5));
        }
    }

    /// Queues the batch being filled (past `BATCH`) for the writer, or drops it when the
    /// writer is behind.
    fn cut(&self) {
        let mut buf = lock(&self.shared.buf);
        if buf.len() < Self::BATCH {
            return;
        }
        let full = std::mem::replace(&mut *buf, self.shared.spare());
        // Sent under the lock: the writer, taking the buffer on its timer, must find every
        // earlier batch already queued.
        if let Err(
            std::sync::mpsc::TrySendError::Full(SinkMsg::Batch(mut full))
            | std::sync::mpsc::TrySendError::Disconnected(SinkMsg::Batch(mut full)),
        ) = self.queue.try_send(SinkMsg::Batch(full))
        {
            drop(buf);
            let lines = full.iter().filter(|&&b| b == b'\n').count() as u64;
            self.shared
                .dropped
                .fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!(LOG_LINES_DROPPED).increment(lines);
            full.clear();
            lock(&self.shared.spares).push(full);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SinkShared {
    /// An empty buffer for the next batch: a written one, or a new one with a batch's room.
    fn spare(&self) -> Vec<u8> {
        lock(&self.spares)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(LogSink::BATCH + LogSink::BATCH / 4))
    }

    /// The writer thread: queued batches in order, and every [`LogSink::EVERY`] (or on a
    /// flush) the batch being filled.
    fn write_out(
        &self,
        batches: &std::sync::mpsc::Receiver<SinkMsg>,
        mut out: Box<dyn std::io::Write + Send>,
    ) {
        use std::sync::mpsc::RecvTimeoutError;
        let write = |batch: Vec<u8>, out: &mut Box<dyn std::io::Write + Send>| {
            let mut batch = batch;
            // Nowhere to report a failing output; the lines are dropped.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            // Two kept: one being filled while one is written. More would only keep the
            // memory of a burst.
            let mut spares = lock(&self.spares);
            if spares.len() < 2 {
                spares.push(batch);
            }
        };
        loop {
            let (done, last) = match batches.recv_timeout(LogSink::EVERY) {
                Ok(SinkMsg::Batch(batch)) => {
                    write(batch, &mut out);
                    continue;
                }
                Ok(SinkMsg::Flush(done)) => (Some(done), false),
                Err(RecvTimeoutError::Timeout) => (None, false),
                Err(RecvTimeoutError::Disconnected) => (None, true),
            };
            // The batch being filled, after those queued before it was taken.
            let (queued, current) = {
                let mut buf = lock(&self.buf);
                let queued: Vec<SinkMsg> = batches.try_iter().collect();
                (queued, std::mem::replace(&mut *buf, self.spare()))
            };
            let mut acks = Vec::new();
            for msg in queued {
                match msg {
                    SinkMsg::Batch(batch) => write(batch, &mut out),
                    SinkMsg::Flush(ack) => acks.push(ack),
                }
            }
            if !current.is_empty() {
                write(current, &mut out);
            }
            for ack in done.into_iter().chain(acks) {
                let _ = ack.send(());
            }
            if last {
                return;
            }
        }
    }
}

thread_local! {
    static LOCAL: std::cell::RefCell<LocalLines> = const {
        std::cell::RefCell::new(LocalLines {
            lines: Vec::new(),
            since: std::time::SystemTime::UNIX_EPOCH,
            sink: None,
        })
    };
}

/// A thread's access log lines not yet in their sink's batch. A line appended to the sink's
/// batch takes its lock, and that one atomic exchange right after the line's ~300 bytes were
/// written cost ~1% of a request's CPU (perf); the lines of a thread go in together instead,
/// in order, when there are [`LocalLines::MAX`] bytes of them, when the oldest is
/// [`LogSink::EVERY`] old, and whenever the thread has nothing else to do ([`flush_local`],
/// run by the runtime before it parks a thread, and by [`LogSink::flush`]).
struct LocalLines {
    lines: Vec<u8>,
    /// When the oldest line was written.
    since: std::time::SystemTime,
    sink: Option<&'static LogSink>,
}

impl LocalLines {
    /// ~25 access lines.
    const MAX: usize = 8 * 1024;

    /// Appends the lines to their sink's batch.
    fn hand_over(&mut self) {
        if let Some(sink) = self.sink
            && !self.lines.is_empty()
        {
            sink.push(&self.lines);
        }
        self.lines.clear();
    }
}

/// Hands this thread's access log lines to their sink. The runtimes run it before they park a
/// thread and when a thread stops ([`log_hooks`]): lines wait in a thread only while it is busy.
pub fn flush_local() {
    let _ = LOCAL.try_with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            local.hand_over();
        }
    });
}

/// Sets a runtime up to hand each thread's access log lines over ([`flush_local`]) before the
/// thread parks and when it stops. Every runtime that serves requests is built with it.
pub fn log_hooks(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_park(flush_local)
        .on_thread_stop(flush_local)
}

/// One log line's writer (see [`LogSink`]).
#[derive(Debug)]
pub struct LogLine<'a>(&'a LogSink);

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = lock(&self.0.shared.buf);
        buf.extend_from_slice(data);
        let full = buf.len() >= LogSink::BATCH;
        drop(buf);
        if full {
            self.0.cut();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
