//! Fuzz target `tokenizer_config`: see `strata_e2e::fuzzing::tokenizer_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::tokenizer_config(data));
