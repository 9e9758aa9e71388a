//! Fuzz target: bytes a peer pushes or a state file holds: decoded as a delta, a summary and a snapshot, then applied to a replica that holds a cluster's state.
//! The checks are `shoal_fuzz::codec_apply`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::codec_apply(data));
