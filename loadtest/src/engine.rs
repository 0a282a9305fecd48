//! The load engine: sends a scenario's traffic (open model on a schedule, or closed model)
//! and records, per response, latency and what the headers say — served region, origin
//! version, residency refusals — into HDR histograms and a per-second timeline.
//!
//! Open-model latency is measured from each request's *scheduled* time, so a slow server
//! cannot hide its stalls by slowing the generator down (no coordinated omission).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Serialize;
use tokio::time::Instant;

use crate::scenario::{Model, PathSpec, Scenario};

/// A pooled client over plain TCP or TLS.
#[derive(Clone)]
pub enum HttpClient {
    Plain(Client<HttpConnector, Full<Bytes>>),
    /// HTTP/1.1 over plain TCP: the closed model drives its own connections (no pool).
    PlainH1(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<crate::tls::TlsConnector, Full<Bytes>>),
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpClient::Plain(_) => "HttpClient::Plain",
            HttpClient::PlainH1(_) => "HttpClient::PlainH1",
            HttpClient::Tls(_) => "HttpClient::Tls",
        })
    }
}

impl HttpClient {
    pub fn request(&self, req: Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            HttpClient::Plain(c) | HttpClient::PlainH1(c) => c.request(req),
            HttpClient::Tls(c) => c.request(req),
        }
    }
}

/// A histogram of microseconds, 1 µs .. 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u64,
    pub requests: u64,
    pub errors: u64,
    pub refused: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Everything observed.
pub struct Recorder {
    inner: Mutex<Inner>,
    pub sent: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
}

struct Inner {
    all: Histogram<u64>,
    by_key: BTreeMap<(String, String), (Histogram<u64>, u64, u64)>,
    timeline: Vec<(u64, u64, u64, Histogram<u64>)>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    refused: u64,
    leaks: u64,
    leak_examples: Vec<String>,
    /// user → versions seen, in order of first sight.
    versions: HashMap<u32, Vec<String>>,
    by_country_region: BTreeMap<(String, String), u64>,
    failed_by_country: BTreeMap<String, u64>,
    /// Users who got at least one failed response from a version (version → users).
    failed_users: BTreeMap<String, std::collections::HashSet<u32>>,
}

/// What one response said.
#[derive(Debug, Clone)]
pub struct Observation {
    pub user: u32,
    pub country: String,
    pub status: Option<u16>,
    pub region: Option<String>,
    pub version: Option<String>,
    pub refused: bool,
    pub latency: Duration,
    /// Seconds since the start, of the scheduled send.
    pub at: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new(Inner {
                all: histogram(),
                by_key: BTreeMap::new(),
                timeline: Vec::new(),
                statuses: BTreeMap::new(),
                transport_errors: 0,
                refused: 0,
                leaks: 0,
                leak_examples: Vec::new(),
                versions: HashMap::new(),
                by_country_region: BTreeMap::new(),
                failed_by_country: BTreeMap::new(),
                failed_users: BTreeMap::new(),
            }),
            sent: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// True when the response counts as a failure: transport error or 5xx that is not a
/// residency refusal (refusals are the promised answer, counted on their own).
fn failed(o: &Observation) -> bool {
    match o.status {
        None => true,
        Some(s) => s >= 500 && !o.refused,
    }
}

impl Recorder {
    pub fn record(&self, o: &Observation, allowed: Option<&Vec<String>>) {
        let us = (o.latency.as_micros() as u64).max(1);
        let is_failed = failed(o);
        if is_failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = g.all.record(us);
        let key = (
            o.region.clone().unwrap_or_else(|| "-".into()),
            o.version.clone().unwrap_or_else(|| "-".into()),
        );
        let entry = g.by_key.entry(key).or_insert_with(|| (histogram(), 0, 0));
        let _ = entry.0.record(us);
        entry.1 += 1;
        entry.2 += u64::from(is_failed);
        let sec = o.at.as_secs();
        while g.timeline.len() as u64 <= sec {
            let t = g.timeline.len() as u64;
            g.timeline.push((t, 0, 0, histogram()));
        }
        let slot = &mut g.timeline[sec as usize];
        slot.1 += 1;
        slot.2 += u64::from(is_failed);
        let _ = slot.3.record(us);
        match o.status {
            Some(s) => *g.statuses.entry(s).or_default() += 1,
            None => g.transport_errors += 1,
        }
        if o.refused {
            g.refused += 1;
        }
        if is_failed {
            *g.failed_by_country.entry(o.country.clone()).or_default() += 1;
            if let Some(v) = &o.version {
                g.failed_users.entry(v.clone()).or_default().insert(o.user);
            }
        }
        if let (Some(allowed), Some(region)) = (allowed, &o.region)
            && !allowed.contains(region)
        {
            g.leaks += 1;
            if g.leak_examples.len() < 10 {
                let example = format!("user {} from {} served by {region}", o.user, o.country);
                g.leak_examples.push(example);
            }
        }
        if let Some(region) = &o.region {
            *g.by_country_region
                .entry((o.country.clone(), region.clone()))
                .or_default() += 1;
        }
        if let Some(v) = &o.version {
            let seen = g.versions.entry(o.user).or_default();
            if seen.last() != Some(v) {
                seen.push(v.clone());
            }
        }
    }

    /// A snapshot of the results.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let total: u64 = g.all.len();
        let failed = self.failed.load(Ordering::Relaxed);
        let percentiles = [
            ("p50", 0.5),
            ("p90", 0.9),
            ("p99", 0.99),
            ("p99.9", 0.999),
            ("max", 1.0),
        ]
        .iter()
        .map(|(name, q)| (name.to_string(), ms(&g.all, *q)))
        .collect();
        let by_version = g
            .by_key
            .iter()
            .map(|((region, version), (h, n, f))| VersionStats {
                region: region.clone(),
                version: version.clone(),
                requests: *n,
                error_rate: if *n == 0 { 0.0 } else { *f as f64 / *n as f64 },
                p50_ms: ms(h, 0.5),
                p99_ms: ms(h, 0.99),
            })
            .collect();
        let flips = g.versions.values().filter(|v| v.len() > 1).count() as u64;
        let flip_backs = g.versions.values().filter(|v| v.len() > 2).count() as u64;
        Summary {
            elapsed_s: elapsed.as_secs_f64(),
            requests: total,
            rps: total as f64 / elapsed.as_secs_f64().max(0.001),
            failed,
            error_rate: if total == 0 {
                0.0
            } else {
                failed as f64 / total as f64
            },
            refused: g.refused,
            transport_errors: g.transport_errors,
            leaks: g.leaks,
            leak_examples: g.leak_examples.clone(),
            users_with_version_change: flips,
            users_back_and_forth: flip_backs,
            statuses: g
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            latency_ms: percentiles,
            by_version,
            by_country_region: g
                .by_country_region
                .iter()
                .map(|((c, r), n)| (format!("{c}→{r}"), *n))
                .collect(),
            failed_by_country: g.failed_by_country.clone(),
            users_with_failures_by_version: g
                .failed_users
                .iter()
                .map(|(v, u)| (v.clone(), u.len() as u64))
                .collect(),
            timeline: g
                .timeline
                .iter()
                .map(|(t, n, e, h)| Second {
                    t: *t,
                    requests: *n,
                    errors: *e,
                    refused: 0,
                    p50_ms: ms(h, 0.5),
                    p99_ms: ms(h, 0.99),
                })
                .collect(),
            percentile_curve: if g.all.is_empty() {
                Vec::new()
            } else {
                [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
                    .iter()
                    .map(|q| (*q, ms(&g.all, *q)))
                    .collect()
            },
            versions_by_user: g.versions.iter().map(|(u, v)| (*u, v.clone())).collect(),
        }
    }
}

/// Per region × version results.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStats {
    pub region: String,
    pub version: String,
    pub requests: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub elapsed_s: f64,
    pub requests: u64,
    pub rps: f64,
    pub failed: u64,
    pub error_rate: f64,
    pub refused: u64,
    pub transport_errors: u64,
    pub leaks: u64,
    pub leak_examples: Vec<String>,
    pub users_with_version_change: u64,
    pub users_back_and_forth: u64,
    pub statuses: BTreeMap<String, u64>,
    /// (name, ms) from p50 to max, in that order.
    pub latency_ms: Vec<(String, f64)>,
    pub by_version: Vec<VersionStats>,
    pub by_country_region: BTreeMap<String, u64>,
    pub failed_by_country: BTreeMap<String, u64>,
    /// Distinct users who saw a failure, by the version that failed them.
    pub users_with_failures_by_version: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
    /// (quantile, ms) points of the whole run's latency distribution.
    pub percentile_curve: Vec<(f64, f64)>,
    #[serde(skip)]
    pub versions_by_user: HashMap<u32, Vec<String>>,
}

/// Where to send and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL of the front door, e.g. `http://127.0.0.1:8080`.
    pub base: String,
    /// Open model over plain HTTP/1.1: connections to spread arrivals over (the scenario's
    /// `concurrency`); by default one per 2,000 arrivals per second at the peak, 8 to 256.
    pub connections: Option<usize>,
}

/// The request mix, prepared for fast sampling.
#[derive(Debug, Clone)]
pub struct Mix {
    countries: Vec<(String, f64)>,
    paths: Vec<PathSpec>,
    users: u32,
    country_header: http::HeaderName,
    expect: BTreeMap<String, Vec<String>>,
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick<T>(items: &[T], weight: impl Fn(&T) -> f64, r: u64) -> Option<&T> {
    let total: f64 = items.iter().map(&weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut point = (r >> 11) as f64 / (1u64 << 53) as f64 * total;
    for item in items {
        let w = weight(item);
        if point < w {
            return Some(item);
        }
        point -= w;
    }
    items.last()
}

impl Mix {
    pub fn new(s: &Scenario) -> Result<Mix, String> {
        Ok(Mix {
            countries: s.countries.iter().map(|(c, w)| (c.clone(), *w)).collect(),
            paths: s.paths(),
            users: s.users.max(1),
            country_header: http::HeaderName::from_bytes(s.country_header.as_bytes())
                .map_err(|e| e.to_string())?,
            expect: s.expect.regions.clone(),
        })
    }

    /// The i-th request: a user (whose country is fixed by the user id), a path.
    fn request(&self, i: u64, base: &str) -> (u32, String, Request<Full<Bytes>>) {
        let p = self.planned(i);
        let mut req = Request::builder()
            .method(p.method)
            .uri(format!("{base}{}", p.path));
        if let Some(h) = req.headers_mut() {
            *h = p.headers;
        }
        let req = req
            .body(Full::new(p.body))
            .unwrap_or_else(|_| Request::new(Full::default()));
        (p.user, p.country, req)
    }

    /// The i-th request's parts (see [`Mix::request`]); `headers` has no Host.
    fn planned(&self, i: u64) -> Planned {
        let user = (mix64(i) % u64::from(self.users)) as u32;
        let country = pick(&self.countries, |c| c.1, mix64(u64::from(user) ^ 0xc0ffee))
            .map(|c| c.0.clone())
            .unwrap_or_default();
        let spec = pick(&self.paths, |p| p.weight, mix64(i ^ 0x5eed))
            .cloned()
            .unwrap_or(PathSpec {
                path: "/".into(),
                method: "GET".into(),
                body: None,
                weight: 1.0,
            });
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("fd-uid=lt-{user}")) {
            headers.insert(http::header::COOKIE, v);
        }
        if !country.is_empty()
            && let Ok(v) = HeaderValue::from_str(&country)
        {
            headers.insert(self.country_header.clone(), v);
        }
        Planned {
            user,
            country,
            method: Method::from_bytes(spec.method.as_bytes()).unwrap_or(Method::GET),
            path: spec.path,
            headers,
            body: spec.body.map(Bytes::from).unwrap_or_default(),
        }
    }
}

/// One request of the mix, before it becomes a hyper request or bytes on a wire.
struct Planned {
    user: u32,
    country: String,
    method: Method,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// Builds the client for a protocol (`http1` or `h2`; over TLS with `tls`, where ALPN decides).
pub fn client_with(
    protocol: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new()).pool_max_idle_per_host(4096);
    if protocol == "h2" {
        b.http2_only(true);
    }
    match tls {
        Some(config) => HttpClient::Tls(b.build(crate::tls::TlsConnector::new(config))),
        None => {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            if protocol == "h2" {
                HttpClient::Plain(b.build(connector))
            } else {
                HttpClient::PlainH1(b.build(connector))
            }
        }
    }
}

/// A plain-TCP client for a protocol (`http1` or `h2`).
pub fn client(protocol: &str) -> HttpClient {
    client_with(protocol, None)
}

/// What a response said: status (None when the body broke), served region, origin version,
/// and whether it was a residency refusal. Reads the body to the end: a response is done when
/// its body is.
type Answer = (Option<u16>, Option<String>, Option<String>, bool);

async fn read_answer(resp: http::Response<hyper::body::Incoming>) -> Answer {
    let h = resp.headers();
    let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(String::from);
    let region = text("x-served-region").or_else(|| text("x-origin-region"));
    let version = text("x-origin-version");
    let refused = h.contains_key("x-frontdoor-refused");
    let status = resp.status().as_u16();
    let ok = resp.into_body().collect().await.is_ok();
    (ok.then_some(status), region, version, refused)
}

async fn one(client: &HttpClient, req: Request<Full<Bytes>>) -> Answer {
    match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
        Ok(Ok(resp)) => read_answer(resp).await,
        _ => (None, None, None, false),
    }
}

/// Runs the load until the model's time is up or `stop` is set. Returns the elapsed time.
pub async fn run(
    model: &Model,
    mix: Arc<Mix>,
    target: &Target,
    client: HttpClient,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) -> Duration {
    let start = Instant::now();
    let base: Arc<str> = Arc::from(target.base.trim_end_matches('/'));
    match model {
        Model::Closed { workers, duration } if matches!(client, HttpClient::PlainH1(_)) => {
            let pace = Pace::Closed {
                end: start + *duration,
            };
            direct(*workers, pace, &mix, &base, &rec, &stop, start).await;
        }
        Model::Open(segments) if matches!(client, HttpClient::PlainH1(_)) => {
            let connections = target
                .connections
                .unwrap_or_else(|| open_connections(segments));
            let pace = Pace::Open(Arc::new(Schedule::new(segments)));
            direct(connections, pace, &mix, &base, &rec, &stop, start).await;
        }
        Model::Closed { workers, duration } => {
            let end = start + *duration;
            let next = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..*workers {
                let (mix, client, rec, stop, base, next) = (
                    Arc::clone(&mix),
                    client.clone(),
                    Arc::clone(&rec),
                    Arc::clone(&stop),
                    Arc::clone(&base),
                    Arc::clone(&next),
                );
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (user, country, req) = mix.request(i, &base);
                        let sent = Instant::now();
                        rec.sent.fetch_add(1, Ordering::Relaxed);
                        let (status, region, version, refused) = one(&client, req).await;
                        let o = Observation {
                            user,
                            country: country.clone(),
                            status,
                            region,
                            version,
                            refused,
                            latency: sent.elapsed(),
                            at: sent - start,
                        };
                        rec.record(&o, mix.expect.get(&country));
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        Model::Open(segments) => {
            let mut tasks = tokio::task::JoinSet::new();
            let mut i: u64 = 0;
            let mut seg_start = start;
            'segments: for (rate, len) in segments {
                let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
                let seg_end = seg_start + *len;
                let mut k: u64 = 0;
                loop {
                    let due = seg_start + interval.mul_f64(k as f64);
                    if due >= seg_end {
                        break;
                    }
                    if stop.load(Ordering::Relaxed) {
                        break 'segments;
                    }
                    tokio::time::sleep_until(due).await;
                    // Send everything due by now (catches up after a slow wake-up).
                    while seg_start + interval.mul_f64(k as f64) <= Instant::now()
                        && seg_start + interval.mul_f64(k as f64) < seg_end
                    {
                        let scheduled = seg_start + interval.mul_f64(k as f64);
                        let (user, country, req) = mix.request(i, &base);
                        let (client, rec, mix) =
                            (client.clone(), Arc::clone(&rec), Arc::clone(&mix));
                        rec.sent.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(async move {
                            let (status, region, version, refused) = one(&client, req).await;
                            // From the scheduled time: waiting behind a stall counts.
                            let o = Observation {
                                user,
                                country: country.clone(),
                                status,
                                region,
                                version,
                                refused,
                                latency: scheduled.elapsed(),
                                at: scheduled - start,
                            };
                            rec.record(&o, mix.expect.get(&country));
                        });
                        i += 1;
                        k += 1;
                        while tasks.try_join_next().is_some() {}
                    }
                }
                seg_start = seg_end;
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    start.elapsed()
}

/// Connections for the open model when the scenario does not say: one per 2,000 arrivals per
/// second at the peak rate, 8 to 256.
fn open_connections(segments: &[(f64, Duration)]) -> usize {
    let peak = segments.iter().map(|s| s.0).fold(0.0, f64::max);
    ((peak / 2000.0).ceil() as usize).clamp(8, 256)
}

/// The open model's arrival times: segments of (rate per second, length).
#[derive(Debug)]
struct Schedule {
    /// (first arrival index, start offset, interval, arrivals) per segment.
    segments: Vec<(u64, Duration, Duration, u64)>,
}

impl Schedule {
    fn new(segments: &[(f64, Duration)]) -> Schedule {
        let mut out = Vec::new();
        let (mut first, mut offset) = (0u64, Duration::ZERO);
        for (rate, len) in segments {
            let rate = rate.max(0.001);
            let n = (rate * len.as_secs_f64()).floor() as u64;
            out.push((first, offset, Duration::from_secs_f64(1.0 / rate), n));
            first += n;
            offset += *len;
        }
        Schedule { segments: out }
    }

    /// When arrival `k` is due, from the start; `None` after the last.
    fn due(&self, k: u64) -> Option<Duration> {
        self.segments
            .iter()
            .find(|(first, _, _, n)| k >= *first && k < first + n)
            .map(|(first, offset, interval, _)| *offset + interval.mul_f64((k - first) as f64))
    }
}

/// How a direct worker paces its requests.
#[derive(Debug, Clone)]
enum Pace {
    /// Back to back until `end`.
    Closed { end: Instant },
    /// Worker `w` of `n` sends arrivals `w, w + n, ...` of the schedule, each at its due time
    /// or at once when behind (latency counts from the due time, like wrk2).
    Open(Arc<Schedule>),
}

/// Both models over plain HTTP/1.1: each worker owns one keep-alive connection and sends on it
/// (what wrk and wrk2 do), reconnecting when the server closes it.
async fn direct(
    workers: usize,
    pace: Pace,
    mix: &Arc<Mix>,
    base: &Arc<str>,
    rec: &Arc<Recorder>,
    stop: &Arc<AtomicBool>,
    start: Instant,
) {
    let rest = base.strip_prefix("http://").unwrap_or(base);
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), String::new()),
    };
    let Ok(host) = HeaderValue::from_str(&authority) else {
        return;
    };
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (mix, prefix, rec, stop, authority, host, pace) = (
            Arc::clone(mix),
            prefix.clone(),
            Arc::clone(rec),
            Arc::clone(stop),
            authority.clone(),
            host.clone(),
            pace.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<crate::wire::WireConn> = None;
            let mut i = w as u64;
            // One clock read per request: the end of one exchange is the start of the next.
            let mut now = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let sent = match &pace {
                    Pace::Closed { end } if now < *end => now,
                    Pace::Closed { .. } => break,
                    Pace::Open(schedule) => match schedule.due(i) {
                        Some(due) => {
                            let due = start + due;
                            if due > now {
                                tokio::time::sleep_until(due).await;
                            }
                            due
                        }
                        None => break,
                    },
                };
                let mut p = mix.planned(i);
                i += workers as u64;
                p.headers.insert(http::header::HOST, host.clone());
                if !prefix.is_empty() {
                    p.path.insert_str(0, &prefix);
                }
                rec.sent.fetch_add(1, Ordering::Relaxed);
                if conn.as_ref().is_none_or(|c| !c.reusable()) {
                    conn = crate::wire::WireConn::connect(&authority).await.ok();
                }
                let answer = match conn.as_mut() {
                    Some(c) => tokio::time::timeout(
                        Duration::from_secs(30),
                        c.exchange(&p.method, &p.path, &p.headers, &p.body),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok),
                    None => None,
                };
                let (status, region, version, refused) = match answer {
                    Some(h) => (Some(h.status), h.region, h.version, h.refused),
                    None => {
                        conn = None;
                        (None, None, None, false)
                    }
                };
                let o = Observation {
                    user: p.user,
                    country: p.country,
                    status,
                    region,
                    version,
                    refused,
                    latency: {
                        now = Instant::now();
                        now - sent
                    },
                    at: sent - start,
                };
                rec.record(&o, mix.expect.get(&o.country));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spaces_arrivals_per_step() {
        let s = Schedule::new(&[
            (10.0, Duration::from_secs(1)),
            (100.0, Duration::from_millis(500)),
        ]);
        assert_eq!(s.due(0), Some(Duration::ZERO));
        assert_eq!(s.due(9), Some(Duration::from_millis(900)));
        assert_eq!(s.due(10), Some(Duration::from_secs(1)));
        assert_eq!(s.due(11), Some(Duration::from_millis(1010)));
        assert_eq!(s.due(59), Some(Duration::from_millis(1490)));
        assert_eq!(s.due(60), None, "10 + 50 arrivals in all");
        assert_eq!(open_connections(&[(500.0, Duration::from_secs(1))]), 8);
        assert_eq!(open_connections(&[(100_000.0, Duration::from_secs(1))]), 50);
    }

    #[test]
    fn mix_keeps_a_user_in_one_country_and_follows_shares() {
        let s = Scenario::parse("users = 5000\n[countries]\nUS = 60\nDE = 30\nSG = 10\n")
            .expect("scenario");
        let mix = Mix::new(&s).expect("mix");
        let mut by_user: HashMap<u32, String> = HashMap::new();
        let mut counts: HashMap<String, u32> = HashMap::new();
        for i in 0..20_000 {
            let (user, country, req) = mix.request(i, "http://x");
            assert_eq!(req.headers()["x-client-country"], country.as_str());
            if let Some(prev) = by_user.insert(user, country.clone()) {
                assert_eq!(prev, country, "a user keeps their country");
            }
            *counts.entry(country).or_default() += 1;
        }
        let share = |c: &str| f64::from(counts[c]) / 200.0;
        assert!(
            (share("US") - 60.0).abs() < 4.0 && (share("DE") - 30.0).abs() < 4.0,
            "{counts:?}"
        );
    }

    #[test]
    fn recorder_counts_leaks_refusals_and_flips() {
        let rec = Recorder::default();
        let allowed = vec!["europe-west1".to_string()];
        let obs = |user, status, region: &str, version: &str, refused| Observation {
            user,
            country: "DE".into(),
            status,
            region: Some(region.into()),
            version: Some(version.into()),
            refused,
            latency: Duration::from_millis(3),
            at: Duration::from_millis(100),
        };
        rec.record(
            &obs(1, Some(200), "europe-west1", "stable", false),
            Some(&allowed),
        );
        rec.record(
            &obs(1, Some(200), "us-central1", "canary", false),
            Some(&allowed),
        );
        rec.record(
            &obs(1, Some(200), "europe-west1", "stable", false),
            Some(&allowed),
        );
        rec.record(
            &obs(2, Some(503), "europe-west1", "stable", true),
            Some(&allowed),
        );
        rec.record(
            &obs(3, Some(502), "europe-west1", "stable", false),
            Some(&allowed),
        );
        let s = rec.summary(Duration::from_secs(1));
        assert_eq!((s.requests, s.leaks, s.refused, s.failed), (5, 1, 1, 1));
        assert_eq!(
            (s.users_with_version_change, s.users_back_and_forth),
            (1, 1)
        );
        assert_eq!(
            s.leak_examples,
            vec!["user 1 from DE served by us-central1".to_string()]
        );
    }
}
