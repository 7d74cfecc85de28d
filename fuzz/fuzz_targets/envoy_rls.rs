//! Fuzz target `envoy_rls`: see `quotad_fuzz::envoy_rls` for the input and what is
//! asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::envoy_rls(data));
