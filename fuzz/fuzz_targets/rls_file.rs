//! Fuzz target `rls_file`: see `quotad_fuzz::rls_file` for the input and what is
//! asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::rls_file(data));
