//! `cargo fuzz run pipe_ring`: see `mp_pipe::__fuzz::pipe_ring` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mp_pipe::__fuzz::pipe_ring(data));
