//! Fuzz target: one request line on the daemon's API socket.
//! The checks are `shoal_fuzz::api_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::api_request(data));
