//! Fuzz target `tokenizer_model`: see `strata_e2e::fuzzing::tokenizer_model`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_e2e::fuzzing::tokenizer_model(data));
