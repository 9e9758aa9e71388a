//! Fuzz target: the text of a spec file for `shoal service apply -f`.
//! The checks are `shoal_fuzz::spec_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz::spec_file(data));
