//! Fuzz target `gguf_header`: see `strata_e2e::fuzzing::gguf_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::gguf_header(data));
