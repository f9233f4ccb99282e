//! `cargo fuzz run handshake_client`: see `mp_pipe::__fuzz::handshake_client` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_pipe::__fuzz::handshake_client(data);
});
