//! A client's request head: what the fast HTTP/1.1 path accepts, hyper's server accepts alike.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frontdoor::fuzzing::request_head(data));
