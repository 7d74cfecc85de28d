//! Fuzz target `config_yaml`: see `quotad_fuzz::config_yaml` for the input and what is
//! asserted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quotad_fuzz::config_yaml(data));
