//! `cargo fuzz run message`: see `mp_core::__fuzz::message` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mp_core::__fuzz::message(data));
