//! Fuzz target `safetensors_header`: see `strata_e2e::fuzzing::safetensors_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::safetensors_header(data));
