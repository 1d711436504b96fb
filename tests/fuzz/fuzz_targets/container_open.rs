//! Fuzz target `container_open`: see `strata_e2e::fuzzing::container_open`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::container_open(data));
