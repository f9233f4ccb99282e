//! `cargo fuzz run handshake_server`: see `mp_pipe::__fuzz::handshake_server` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_pipe::__fuzz::handshake_server(data);
});
