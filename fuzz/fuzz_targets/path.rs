//! Path and host normalisation, the one form every rule sees: idempotent, rooted, free of dot
//! segments; cache path patterns parse or refuse, and match without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Some(n) = routes::normalize_path(&text) {
        assert!(n.starts_with('/'), "{n:?} is rooted");
        assert_eq!(routes::normalize_path(&n).as_deref(), Some(n.as_ref()), "idempotent");
        for seg in n.split('/') {
            assert!(seg != "." && seg != "..", "no dot segment in {n:?}");
        }
    }
    let host = routes::normalize_host(&text);
    assert_eq!(routes::normalize_host(&host), host, "host normalisation is idempotent");
    if let Ok(p) = routes::cache::PathPattern::parse(&text) {
        let _ = p.matches(&text);
        assert!(p.covers(&p), "a pattern covers itself");
    }
});
