//! Fuzz target `native_api`: see `quotad_fuzz::native_api` for the input and what is
//! asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::native_api(data));
