//! Any text as a config: parse + validate must answer Ok or every error, never panic; a config
//! that loads must explain any request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match routes::load(&text) {
        Ok(snapshot) => {
            for (host, path) in [("example.com", "/"), ("a.b.example.com", "/api/x"), ("", "")] {
                let facts = routes::RequestFacts::new(host, path);
                let _ = snapshot.decide(&facts);
                let _ = snapshot.explain(&facts);
            }
        }
        Err(errors) => assert!(!errors.0.is_empty(), "a rejection names at least one error"),
    }
});
