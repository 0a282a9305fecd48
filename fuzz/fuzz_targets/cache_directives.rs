//! Cache-Control and RFC 9213 targeted fields from arbitrary bytes: parsed or ignored, and the
//! freshness arithmetic on the result never panics or overflows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routes::cache::{Directives, Heuristic, ResponseFacts};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parsed = vec![Directives::parse_cache_control(text.split('\n'))];
    parsed.extend(Directives::parse_targeted(&text));
    let n = data.iter().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
    for d in parsed {
        let facts = ResponseFacts {
            status: 200,
            directives: d.clone(),
            date: Some(n % 4_000_000_000),
            expires: Some(Some(n.rotate_left(7) % 4_000_000_000)),
            last_modified: Some(n.rotate_left(13) % 4_000_000_000),
            age: Some(n.rotate_left(21)),
            request_time: n % 3_000_000_000,
            response_time: n % 3_000_000_000,
            ..ResponseFacts::default()
        };
        let h = Heuristic::default();
        let _ = facts.lifetime(h);
        let _ = facts.current_age(u64::MAX);
        let _ = facts.storable(n % 2 == 0);
        let _ = facts.usability(&d, n, h);
        let _ = facts.stale_if_error(&d, n, h);
    }
});
