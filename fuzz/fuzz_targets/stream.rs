//! `cargo fuzz run stream`: see `mp_pipe::__fuzz::stream` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mp_pipe::__fuzz::stream(data));
