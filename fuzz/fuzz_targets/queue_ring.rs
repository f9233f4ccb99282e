//! `cargo fuzz run queue_ring`: see `mp_queue::__fuzz::queue_ring` for what the input means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_queue::__fuzz::queue_ring(data);
});
