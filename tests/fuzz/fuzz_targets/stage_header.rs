//! Fuzz target `stage_header`: see `strata_e2e::fuzzing::stage_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::stage_header(data));
