use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

use super::tee::BoxError;
use super::*;

fn policy(text: &str) -> CachePolicy {
    let config = format!(
        "[clusters.app]\nendpoints = [{{ address = \"127.0.0.1:9001\" }}]\n[[routes]]\ncluster = \"app\"\n{text}"
    );
    routes::load(&config).expect("valid config").cache
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    h
}

fn entry(
    p: &CachePolicy,
    request: &[(&str, &str)],
    response: &[(&str, &str)],
    body: &str,
) -> Entry {
    let mut e = entry_for(
        p,
        &headers(request),
        StatusCode::OK,
        &headers(response),
        1000,
        1000,
        None,
        &http::uri::Authority::from_static("127.0.0.1:1"),
    )
    .expect("storable vary");
    e.body = Bytes::from(body.to_string());
    e
}

const STORE: &str = "[cache]\nmax_bytes = \"1MiB\"\nmax_object_bytes = \"64KiB\"\n";

#[test]
fn rfc9111_4_1_vary_selects_the_variant_and_star_is_never_stored() {
    let p = policy(STORE);
    let cache = Cache::new(p.store.expect("store"));
    let key = cache.key("*|app|-", "example.com", "/page");
    let vary = [("vary", "Accept-Language, Accept-Encoding")];
    for lang in ["en", "de"] {
        let e = entry(&p, &[("accept-language", lang)], &vary, lang);
        cache.insert(key.clone(), e);
    }
    let all = RegionSet::first(64);
    let found = |lang: &str| {
        cache
            .lookup(&key, &headers(&[("accept-language", lang)]), all)
            .map(|e| e.body.clone())
    };
    assert_eq!(found("en"), Some(Bytes::from("en")));
    assert_eq!(found("de"), Some(Bytes::from("de")));
    assert_eq!(found("fr"), None);
    // Whitespace and line splits do not make a different variant.
    let split = headers(&[("accept-language", "de"), ("accept-encoding", "")]);
    assert!(cache.lookup(&key, &split, all).is_some());
    // Vary: * → no entry at all.
    assert!(
        entry_for(
            &p,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[("vary", "x, *")]),
            0,
            0,
            None,
            &http::uri::Authority::from_static("127.0.0.1:1")
        )
        .is_none()
    );
}

#[test]
fn rfc9111_4_4_invalidation_reaches_every_scope() {
    let p = policy(STORE);
    let cache = Cache::new(p.store.expect("store"));
    let all = RegionSet::first(64);
    for scope in ["*|app|stable", "eu|app|stable", "*|app|canary"] {
        let key = cache.key(scope, "h", "/doc");
        cache.insert(key, entry(&p, &[], &[], scope));
    }
    let other = cache.key("*|app|stable", "h", "/other");
    cache.insert(other.clone(), entry(&p, &[], &[], "other"));
    assert_eq!(cache.invalidate_url("h", "/doc"), 3);
    for scope in ["*|app|stable", "eu|app|stable", "*|app|canary"] {
        assert!(
            cache
                .lookup(&cache.key(scope, "h", "/doc"), &HeaderMap::new(), all)
                .is_none()
        );
    }
    assert!(cache.lookup(&other, &HeaderMap::new(), all).is_some());
}

#[test]
fn entries_from_a_region_the_request_may_not_reach_are_not_served() {
    let p = policy(STORE);
    let cache = Cache::new(p.store.expect("store"));
    let key = cache.key("*|app|-", "h", "/x");
    let mut e = entry(&p, &[], &[], "from region 1");
    e.region = Some(RegionId(1));
    cache.insert(key.clone(), e);
    let mut only_0 = RegionSet::default();
    only_0.insert(RegionId(0));
    assert!(cache.lookup(&key, &HeaderMap::new(), only_0).is_none());
    let mut with_1 = only_0;
    with_1.insert(RegionId(1));
    assert!(cache.lookup(&key, &HeaderMap::new(), with_1).is_some());
}

/// A key's parts stay apart: a scope may hold the separator (it comes from config names), a
/// host or a target cannot; a prefix purge for one host reads each key's own host and target.
#[test]
fn keys_keep_their_parts_apart() {
    let p = policy(STORE);
    let cache = Cache::new(p.store.expect("store"));
    let odd = cache.key("*|a\0b|-", "h", "/t");
    assert_eq!(odd.parts(), ("*|a\0b|-", "h", "/t"));
    assert_ne!(cache.key("*|a|-", "h", "/t"), cache.key("*|a|-", "h/t", ""));
    let all = RegionSet::first(64);
    for (host, target) in [("h", "/p/1"), ("h", "/q"), ("g", "/p/2")] {
        cache.insert(
            cache.key("*|app|-", host, target),
            entry(&p, &[], &[], target),
        );
    }
    cache.insert(odd.clone(), entry(&p, &[], &[], "odd"));
    cache.purge_prefix(Some("h"), "/p/").expect("purge");
    cache.store.run_pending_tasks();
    let held = |host: &str, target: &str| {
        let key = cache.key("*|app|-", host, target);
        cache.lookup(&key, &HeaderMap::new(), all).is_some()
    };
    assert!(!held("h", "/p/1") && held("h", "/q") && held("g", "/p/2"));
    assert_eq!(
        cache.invalidate_url("h", "/t"),
        1,
        "the odd scope's entry, found by its parts"
    );
    assert!(cache.lookup(&odd, &HeaderMap::new(), all).is_none());
}

#[test]
fn memory_stays_within_max_bytes() {
    let p = policy("[cache]\nmax_bytes = \"64KiB\"\nmax_object_bytes = \"8KiB\"\n");
    let cache = Cache::new(p.store.expect("store"));
    let body = "x".repeat(4096);
    for i in 0..200 {
        let key = cache.key("*", "h", &format!("/{i}"));
        cache.insert(key, entry(&p, &[], &[], &body));
    }
    let (entries, bytes) = cache.usage();
    assert!(bytes <= 64 * 1024, "{bytes} bytes held");
    assert!(entries > 0 && entries < 200, "{entries} entries");
}

#[tokio::test]
async fn one_leader_per_key_and_followers_wake_when_it_is_done() {
    let p = policy(STORE);
    let cache = Cache::new(p.store.expect("store"));
    let key = cache.key("*", "h", "/k");
    let Turn::Leader(guard) = cache.join(&key) else {
        panic!("the first caller leads");
    };
    let Turn::Follower(mut rx) = cache.join(&key) else {
        panic!("the second follows");
    };
    assert!(cache.try_lead(&key).is_none());
    let waiter = tokio::spawn(async move { rx.changed().await.is_err() });
    drop(guard);
    assert!(waiter.await.expect("task"), "woken by the leader's drop");
    assert!(
        matches!(cache.join(&key), Turn::Leader(_)),
        "the key is free again"
    );
}

#[test]
fn rfc9111_5_4_pragma_no_cache_only_without_cache_control() {
    assert!(request_directives(&headers(&[("pragma", "no-cache")])).no_cache);
    assert!(
        !request_directives(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5")
        ]))
        .no_cache
    );
}

#[test]
fn rfc9110_13_1_conditionals_against_a_stored_response() {
    let p = policy(STORE);
    let e = entry(
        &p,
        &[],
        &[
            ("etag", "W/\"7\""),
            ("last-modified", "Mon, 02 Nov 2026 10:00:00 GMT"),
        ],
        "b",
    );
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("if-none-match", "\"7\"")], true),
        (&[("if-none-match", "\"8\", W/\"7\"")], true),
        (&[("if-none-match", "*")], true),
        (&[("if-none-match", "\"8\"")], false),
        // If-None-Match present: If-Modified-Since is ignored.
        (
            &[
                ("if-none-match", "\"8\""),
                ("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT"),
            ],
            false,
        ),
        (
            &[("if-modified-since", "Tue, 03 Nov 2026 10:00:00 GMT")],
            true,
        ),
        (
            &[("if-modified-since", "Mon, 02 Nov 2026 10:00:00 GMT")],
            true,
        ),
        (
            &[("if-modified-since", "Sun, 01 Nov 2026 10:00:00 GMT")],
            false,
        ),
        (&[("if-modified-since", "garbage")], false),
    ];
    for (request, want) in cases {
        assert_eq!(not_modified(&headers(request), &e), *want, "{request:?}");
    }
}

#[test]
fn rfc9111_4_3_4_a_304_updates_the_stored_headers() {
    let p = policy(STORE);
    let rt = CacheRuntime::new(&p, None);
    let old = entry(
        &p,
        &[],
        &[
            ("etag", "\"1\""),
            ("cache-control", "max-age=10"),
            ("content-length", "4"),
            ("x-a", "old"),
        ],
        "body",
    );
    let not_modified = headers(&[
        ("cache-control", "max-age=99"),
        ("x-a", "new"),
        ("content-length", "0"),
    ]);
    let fresh = refreshed(&p, &rt, None, &old, &not_modified, 2000, 2001);
    assert_eq!(fresh.headers["x-a"], "new");
    assert_eq!(
        fresh.headers["content-length"], "4",
        "framing headers are kept"
    );
    assert_eq!(fresh.facts.directives.max_age, Some(99));
    assert_eq!(fresh.facts.response_time, 2001);
    assert_eq!(fresh.body, old.body);
}

#[test]
fn rule_headers_set_default_remove_and_no_store() {
    let p = policy(
        r#"
[[cache.rules]]
paths = ["/api/**"]
no_store = true
[[cache.rules]]
paths = ["/**"]
remove = ["Surrogate-Control"]
[cache.rules.set]
Vary = "Accept-Encoding"
[cache.rules.default]
Cache-Control = "public, max-age=60"
CDN-Cache-Control = "max-age=600"
"#,
    );
    let rt = CacheRuntime::new(&p, None);
    // no_store: whatever the origin said, nobody stores it.
    let mut h = headers(&[
        ("cache-control", "public, max-age=60"),
        ("cdn-cache-control", "max-age=60"),
        ("surrogate-control", "max-age=9"),
    ]);
    rt.apply(Some(0), &mut h, false);
    assert_eq!(h["cache-control"], "no-store");
    assert!(!h.contains_key("cdn-cache-control") && !h.contains_key("surrogate-control"));
    // Nothing from the origin: defaults fill in; set and remove apply.
    let mut h = headers(&[("vary", "Cookie"), ("surrogate-control", "max-age=9")]);
    rt.apply(Some(1), &mut h, false);
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert_eq!(h["cdn-cache-control"], "max-age=600");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert!(!h.contains_key("surrogate-control"));
    // The origin stated a policy: the cache-controlling defaults stay out.
    let mut h = headers(&[("cache-control", "max-age=0")]);
    rt.apply(Some(1), &mut h, false);
    assert_eq!(h["cache-control"], "max-age=0");
    assert!(!h.contains_key("cdn-cache-control"));
    // Authenticated: no defaults at all.
    let mut h = HeaderMap::new();
    rt.apply(Some(1), &mut h, true);
    assert!(!h.contains_key("cache-control"));
    assert!(rt.authenticated(&headers(&[("authorization", "Bearer x")])));
    assert!(
        !rt.authenticated(&headers(&[("cookie", "session=1")])),
        "no auth cookies configured"
    );
}

/// A body fed by the test, frame by frame, counting the frames taken from it.
struct Source {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
    taken: Arc<AtomicUsize>,
}

type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

fn source() -> (Feed, Source, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let taken = Arc::new(AtomicUsize::new(0));
    let body = Source {
        rx,
        taken: Arc::clone(&taken),
    };
    (tx, body, taken)
}

impl Body for Source {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = self.rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(_)) = &polled {
            self.taken.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }
}

fn data(text: &str) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::from(text.to_string())))
}

/// Lets the spawned fill task run as far as it can (the test runtime has one thread).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

async fn next_data(body: &mut TeeBody<Source>) -> Option<Bytes> {
    let frame = body.frame().await?.expect("a frame, not an error");
    Some(frame.into_data().expect("data"))
}

fn fill_of(cache: &Arc<Cache>, path: &str) -> (Key, FillGuard, Entry) {
    let key = cache.key("*", "h", path);
    let Turn::Leader(guard) = cache.join(&key) else {
        panic!("the first caller leads");
    };
    let e = entry(&policy(STORE), &[], &[("cache-control", "max-age=60")], "");
    (key, guard, e)
}

#[tokio::test]
async fn a_fill_is_read_at_the_upstreams_pace_and_stored_without_the_client() {
    let cache = Cache::new(policy(STORE).store.expect("store"));
    let all = RegionSet::first(64);
    let stored = |key: &Key| {
        cache
            .lookup(key, &HeaderMap::new(), all)
            .map(|e| e.body.clone())
    };

    // The client takes one frame, then reads nothing: the fill still completes and frees the
    // key.
    let (key, guard, e) = fill_of(&cache, "/slow-client");
    let (feed, body, _) = source();
    let mut tee = TeeBody::filling(body, guard, e, 1024);
    feed.send(data("one ")).expect("fed");
    assert_eq!(next_data(&mut tee).await, Some(Bytes::from("one ")));
    for part in ["two ", "three"] {
        feed.send(data(part)).expect("fed");
    }
    drop(feed);
    settle().await;
    let entry = stored(&key).expect("stored");
    assert_eq!(entry, Bytes::from("one two three"));
    assert!(
        matches!(cache.join(&key), Turn::Leader(_)),
        "followers woken"
    );
    // ... and the client, when it reads, gets the rest as a slice of the stored entry (the
    // copies read from the upstream are gone), then the end.
    let rest = next_data(&mut tee).await.expect("the rest");
    assert_eq!(rest, Bytes::from("two three"));
    assert_eq!(rest.as_ptr(), entry[4..].as_ptr(), "the entry's own bytes");
    assert_eq!(next_data(&mut tee).await, None);
    assert!(tee.is_end_stream());

    // The client goes away part way: the entry is still stored.
    let (key, guard, e) = fill_of(&cache, "/client-gone");
    let (feed, body, _) = source();
    let mut tee = TeeBody::filling(body, guard, e, 1024);
    feed.send(data("first ")).expect("fed");
    assert_eq!(next_data(&mut tee).await, Some(Bytes::from("first ")));
    drop(tee);
    feed.send(data("second")).expect("fed");
    drop(feed);
    settle().await;
    assert_eq!(stored(&key), Some(Bytes::from("first second")));

    // An upstream failure reaches the client as an error, and nothing is stored.
    let (key, guard, e) = fill_of(&cache, "/broken");
    let (feed, body, _) = source();
    let mut tee = TeeBody::filling(body, guard, e, 1024);
    feed.send(data("part")).expect("fed");
    feed.send(Err("upstream reset".into())).expect("fed");
    assert_eq!(next_data(&mut tee).await, Some(Bytes::from("part")));
    let failed = tee.frame().await.expect("an item");
    assert_eq!(
        failed.err().map(|e| e.to_string()).as_deref(),
        Some("upstream reset")
    );
    settle().await;
    assert_eq!(stored(&key), None);
    assert!(
        matches!(cache.join(&key), Turn::Leader(_)),
        "followers woken"
    );
}

#[tokio::test]
async fn past_the_size_limit_the_upstream_is_read_at_the_clients_pace() {
    let cache = Cache::new(policy(STORE).store.expect("store"));
    let (key, guard, e) = fill_of(&cache, "/large");
    let (feed, body, taken) = source();
    let mut tee = TeeBody::filling(body, guard, e, 100);
    let chunk = "x".repeat(16 * 1024);
    for _ in 0..40 {
        feed.send(data(&chunk)).expect("fed");
    }
    settle().await;
    // Over the limit at once: nothing is stored, the waiters go their own way...
    assert!(
        matches!(cache.join(&key), Turn::Leader(_)),
        "followers woken"
    );
    // ... and no more is read than the client's queue holds (64 KiB: four frames).
    let read = taken.load(Ordering::SeqCst);
    assert_eq!(read, 4, "frames read ahead of a client that reads nothing");
    // Each frame the client takes makes room for one more.
    for _ in 0..3 {
        assert_eq!(
            next_data(&mut tee).await.map(|b| b.len()),
            Some(chunk.len())
        );
    }
    settle().await;
    assert_eq!(taken.load(Ordering::SeqCst), 7);
    // The client goes: the upstream body is dropped, not read to its end.
    drop(tee);
    settle().await;
    assert!(feed.is_closed(), "the upstream body was let go");
    assert_eq!(taken.load(Ordering::SeqCst), 7);
}
