//! Shared-cache lookup: build the key, find the variant, judge its freshness — what a HIT
//! costs before the response is written. 10,000 stored keys; plus the header-rule match.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use frontdoor::cache::{Cache, entry_for};
use http::{HeaderMap, HeaderValue, StatusCode};
use routes::cache::Directives;
use routes::{RegionSet, RouteId};

const CONFIG: &str = r#"
[clusters.app]
endpoints = [{ address = "127.0.0.1:9001" }]
[[routes]]
cluster = "app"
[cache]
max_bytes = "256MiB"
[[cache.rules]]
paths = ["/api/**"]
no_store = true
[[cache.rules]]
paths = ["/**"]
[cache.rules.default]
Cache-Control = "public, max-age=3600, s-maxage=86400"
CDN-Cache-Control = "public, max-age=3600"
"#;

fn bench(c: &mut Criterion) {
    let snapshot = routes::load(CONFIG).expect("bench config is valid");
    let policy = &snapshot.cache;
    let cache = Cache::new(policy.store.expect("store on"));
    let mut response = HeaderMap::new();
    response.insert(
        "cdn-cache-control",
        HeaderValue::from_static("public, max-age=3600"),
    );
    response.insert("content-type", HeaderValue::from_static("text/html"));
    let mut varied = response.clone();
    varied.insert("vary", HeaderValue::from_static("Accept-Encoding"));
    let mut request = HeaderMap::new();
    request.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    let now = 1_000;
    for i in 0..10_000 {
        let headers = if i % 2 == 0 { &response } else { &varied };
        let mut e = entry_for(
            policy,
            &request,
            StatusCode::OK,
            headers,
            now,
            now,
            None,
            &http::uri::Authority::from_static("127.0.0.1:1"),
        )
        .expect("storable");
        e.body = bytes::Bytes::from_static(b"<html>hello</html>");
        let key = cache.key("*|app|-", "www.example.com", &format!("/page/{i}?q=1"));
        cache.insert(key, e);
    }
    let all = RegionSet::first(8);
    let none = Directives::default();
    let mut group = c.benchmark_group("cache_lookup_10k_keys");
    for (name, path) in [
        ("hit", "/page/42?q=1"),
        ("hit with Vary", "/page/43?q=1"),
        ("miss", "/nope"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let key = cache.key(
                    black_box("*|app|-"),
                    black_box("www.example.com"),
                    black_box(path),
                );
                let found = cache.lookup(&key, black_box(&request), all);
                black_box(found.map(|e| e.facts.usability(&none, now + 10, policy.heuristic)))
            })
        });
    }
    group.finish();
    c.bench_function("cache_rule_match", |b| {
        b.iter(|| {
            black_box(policy.rule_for(
                RouteId(0),
                black_box("www.example.com"),
                black_box("/static/app.js"),
            ))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
