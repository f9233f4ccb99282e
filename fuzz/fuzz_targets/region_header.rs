//! `cargo fuzz run region_header`: see `mp_core::__fuzz::region_header` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_core::__fuzz::region_header(data);
});
