//! Route decision on a 1,000-route table: the pure part of every request.

use criterion::{Criterion, criterion_group, criterion_main};
use routes::{RequestFacts, normalize_host};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let snapshot =
        routes::load(&frontdoor_benches::route_table_config(1000)).expect("bench config is valid");
    let cases = [
        (
            "exact host, deep path",
            "H3.example.com:443",
            "/svc3/v0/users/42/orders",
        ),
        ("wildcard host", "api.w1.example.net", "/svc1/v1/items"),
        ("any host, prefix", "other.org", "/svc998/v2/x"),
        ("fallback", "other.org", "/not/routed/anywhere/specific"),
    ];
    let mut group = c.benchmark_group("route_decision_1000_routes");
    for (name, host, path) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let host = normalize_host(black_box(host));
                // With residency classification: a trusted country header.
                let facts = RequestFacts {
                    country: Some(black_box("DE")),
                    ..RequestFacts::new(&host, black_box(path))
                };
                black_box(snapshot.decide(&facts))
            })
        });
    }
    // The matching route on a 10% canary split, sticky by user: decision + the user's bucket.
    group.bench_function("exact host, deep path, 10% canary split", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("H3.example.com:443"));
            let facts = RequestFacts {
                country: Some(black_box("DE")),
                ..RequestFacts::new(&host, black_box("/svc3/v0/users/42/orders"))
            };
            let decision = snapshot.decide(&facts);
            let bucket = routes::rollout::bucket(black_box("r3"), black_box(b"user-8c1f0e2a"));
            black_box((decision, routes::rollout::is_candidate(bucket, 10.0)))
        })
    });
    group.finish();
    c.bench_function("config_load_validate_1000_routes", |b| {
        let text = frontdoor_benches::route_table_config(1000);
        b.iter(|| black_box(routes::load(black_box(&text)).is_ok()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
