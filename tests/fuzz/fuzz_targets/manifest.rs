//! Fuzz target `manifest`: see `strata_e2e::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::manifest(data));
