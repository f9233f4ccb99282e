//! `cargo fuzz run manager_wire`: see `mp_manager::__fuzz::manager_wire` for what the input
//! means.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mp_manager::__fuzz::manager_wire(data);
});
