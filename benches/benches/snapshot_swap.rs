//! Snapshot swap: what a request's read of the live config costs, quiet and while another thread
//! hot-reloads a 1,000-route config back to back (each reload parses, validates and builds a new
//! snapshot, then swaps it in). Readers never wait for a writer: the two figures should match.

use criterion::{Criterion, criterion_group, criterion_main};
use frontdoor::state::{ConfigSource, Proxy, ProxyOptions};
use routes::{RequestFacts, normalize_host};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn read_and_decide(proxy: &Proxy) -> bool {
    let active = proxy.active();
    let host = normalize_host(black_box("H3.example.com"));
    let facts = RequestFacts {
        country: Some(black_box("DE")),
        ..RequestFacts::new(&host, black_box("/svc3/v0/users/42"))
    };
    active.snapshot.decide(&facts).is_some()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let text = frontdoor_benches::route_table_config(1000);
    // Two configs that differ, so every reload really swaps.
    let texts = [
        text.clone(),
        format!("{text}[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\ncluster = \"c0\"\n"),
    ];
    let proxy = runtime
        .block_on(Proxy::start(
            ConfigSource::Inline(text),
            ProxyOptions::default(),
        ))
        .expect("bench config is valid");

    let mut group = c.benchmark_group("snapshot_read_1000_routes");
    group.bench_function("quiet", |b| b.iter(|| black_box(read_and_decide(&proxy))));

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let writer = {
        let (proxy, stop, swaps) = (Arc::clone(&proxy), Arc::clone(&stop), Arc::clone(&swaps));
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                runtime
                    .block_on(proxy.reload_text(texts[i % 2].clone()))
                    .expect("reload");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    group.bench_function("while reloading", |b| {
        b.iter(|| black_box(read_and_decide(&proxy)))
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    group.finish();
    println!(
        "snapshot swaps during the run: {}",
        swaps.load(Ordering::Relaxed)
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
