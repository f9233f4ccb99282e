//! Every re-export path of the umbrella compiles, and the public types have the auto traits
//! users rely on.

use static_assertions::assert_impl_all;

assert_impl_all!(mp::SharedMemory: Send, Sync);
assert_impl_all!(mp::core::Region: Send, Sync, Clone);
assert_impl_all!(mp::Shared<std::sync::atomic::AtomicU64>: Send, Sync, Clone);
assert_impl_all!(mp::Error: Send, Sync, std::error::Error);
assert_impl_all!(mp::Lock: Send, Sync, Clone);
assert_impl_all!(mp::Value<u64>: Send, Sync, Clone);
assert_impl_all!(mp::Queue<u64>: Send, Sync, Clone);
assert_impl_all!(mp::JoinableQueue<u64>: Send, Sync, Clone);
assert_impl_all!(mp::Connection<u64>: Send);
assert_impl_all!(mp::StartMethod: Send, Sync, Copy);
assert_impl_all!(mp::ShareableList: Send, Sync, Clone);
assert_impl_all!(mp::SharedMemoryManager: Send, Sync);
assert_impl_all!(mp::shared_memory::Item: Send, Sync, Clone);
assert_impl_all!(mp::ProcessPoolExecutor: Send, Sync);
assert_impl_all!(mp::Future<u64>: Send, Sync, Clone, Unpin);

#[test]
fn every_path_names_its_item() {
    let _ = mp::core::futex::Deadline::never();
    let bytes = mp::core::message::encode(&1u8).expect("encode");
    assert_eq!(mp::core::message::decode::<u8>(&bytes).expect("decode"), 1);
    // The crates, whole, and the lifted names are the same items.
    let _: fn() -> mp::sync::Result<mp::Lock> = mp::Lock::new;
    let _: fn() -> Result<mp::Queue<u8>, mp::queue::Error> = mp::Queue::<u8>::new;
    let _ = mp::pipe::Pipe::<u8>::new::<mp::Duplex>;
    let _ = mp::Pipe::<u8>::new::<mp::OneWay>;
    let _ = mp::pool::Pool::new;
    let _ = mp::Pool::new;
    let _ = mp::process::cpu_count;
    let _ = mp::cpu_count;
    let _ = mp::wait;
    assert!(mp::get_all_start_methods().len() >= 3);
    let _ = mp::shared_memory::ShareableList::new::<Vec<mp::shared_memory::Item>>;
    let _ = mp::ShareableList::attach;
    let _ = mp::core::ShareableList::create::<[i64; 1]>;
    let _: fn() -> Result<mp::SharedMemoryManager, mp::shared_memory::Error> =
        mp::shared_memory::SharedMemoryManager::start;
    let _ = mp::shared_memory::SharedMemory::create;
    let _ = mp::futures::ProcessPoolExecutor::new;
    let _ = mp::ProcessPoolExecutor::builder;
    let none: Vec<mp::Future<u64>> = Vec::new();
    assert_eq!(mp::futures::as_completed(&none, None).count(), 0);
    let r = mp::futures::wait(&none, None, mp::futures::FIRST_COMPLETED);
    assert!(r.done.is_empty() && r.not_done.is_empty());
}

#[test]
fn every_crate_error_converts_into_mp_error() {
    fn convert<E: Into<mp::Error>>(e: E) -> mp::Error {
        e.into()
    }
    assert!(matches!(
        convert(mp::core::Error::Timeout),
        mp::Error::Core(_)
    ));
    assert!(matches!(
        convert(mp::queue::Error::Empty),
        mp::Error::Queue(_)
    ));
    assert!(matches!(
        convert(mp::shared_memory::Error::ShutDown),
        mp::Error::SharedMemory(_)
    ));
    assert!(matches!(
        convert(mp::futures::Error::Cancelled),
        mp::Error::Futures(mp::futures::Error::Cancelled)
    ));
    let full: mp::queue::PutError<u8> = mp::queue::PutError::Full(1);
    assert!(convert(full).to_string().contains("full"));
}

#[cfg(feature = "redis")]
#[test]
fn redis_feature_reexports_mp_redis() {
    let _ = mp::redis::Cluster::connect;
    let _ = mp::redis::serve;
    let e: mp::Error = mp::redis::Error::Empty.into();
    assert!(matches!(e, mp::Error::Redis(mp::redis::Error::Empty)));
}
