//! Every re-export path of the umbrella compiles, and the public types have the auto traits
//! users rely on.

use static_assertions::assert_impl_all;

assert_impl_all!(mp::SharedMemory: Send, Sync);
assert_impl_all!(mp::core::Region: Send, Sync, Clone);
assert_impl_all!(mp::Shared<std::sync::atomic::AtomicU64>: Send, Sync, Clone);
assert_impl_all!(mp::core::Error: Send, Sync, std::error::Error);

#[test]
fn core_paths() {
    let _ = mp::core::futex::Deadline::never();
    let bytes = mp::core::message::encode(&1u8).expect("encode");
    assert_eq!(mp::core::message::decode::<u8>(&bytes).expect("decode"), 1);
}
