//! `cargo fuzz run connection_handle`: see `mp_pipe::__fuzz::connection_handle` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_pipe::__fuzz::connection_handle(data);
});
