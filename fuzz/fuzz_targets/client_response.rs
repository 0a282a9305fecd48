//! An answer the fast server loop writes to its client: read back whole by hyper's client.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| frontdoor::fuzzing::client_response(data));
