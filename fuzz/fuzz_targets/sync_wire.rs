//! Fuzz target: the sync protocol's log query, `/v1/sync` response body and log piece.
//! The checks are `shoal_fuzz::sync_wire`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::sync_wire(data));
