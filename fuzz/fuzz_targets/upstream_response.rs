//! An upstream's answer read by the inline exchange: framed as hyper's client frames it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frontdoor::fuzzing::upstream_response(data));
