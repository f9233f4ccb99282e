//! Value, Array and SharedMemory across real processes: CONFORMANCE V1–V4.

mod common;

mp_process::test_support!();

use common::{start, under, Mode};
use mp_sync::{Array, Error, Lock, RawArray, RawValue, SharedMemory, Value};
use static_assertions::assert_impl_all;

assert_impl_all!(Value<u64>: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(Array<f64>: Send, Sync, Clone, std::fmt::Debug);
assert_impl_all!(RawValue<i8>: Send, Sync, Clone);
assert_impl_all!(RawArray<[u8; 4]>: Send, Sync, Clone);
assert_impl_all!(mp_sync::ValueGuard<'static, u32>: Send, Sync);
assert_impl_all!(mp_sync::ArrayGuard<'static, u32>: Send, Sync);
assert_impl_all!(mp_sync::Permit<'static>: Send, Sync);
assert_impl_all!(mp_sync::Error: Send, Sync, std::error::Error);

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Point {
    x: f64,
    y: f64,
    tag: [u8; 8],
}
mp_sync::impl_pod!(Point {
    x: f64,
    y: f64,
    tag: [u8; 8]
});

type Scalars = (
    Value<i32>,
    Value<f64>,
    Value<i16>,
    Value<i64>,
    Value<u8>,
    Value<Point>,
);

fn child_write_scalars((a, b, c, d, e, p): Scalars) -> i32 {
    let ok = a.get() == 4343
        && b.get() == 3.625
        && c.get() == -232
        && d.get() == 1 << 33
        && e.get() == b'x'
        && p.get().tag == *b"point-01";
    a.set(24234);
    b.set(-4.25);
    c.set(234);
    d.set(1 << 34);
    e.set(b'y');
    p.set(Point {
        x: -1.5,
        y: 2.5,
        tag: *b"point-02",
    });
    if ok {
        0
    } else {
        1
    }
}

fn child_prefix_sum(arr: Array<i64>) -> i32 {
    let g = arr.lock().unwrap();
    for i in 1..g.len() {
        let v = g.get(i - 1).unwrap() + g.get(i).unwrap();
        g.set(i, v).unwrap();
    }
    0
}

fn child_add_under_lock((v, n): (Value<u64>, u32)) -> i32 {
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
    0
}

fn child_write_by_name(name: String) -> i32 {
    match SharedMemory::attach(&name) {
        Ok(shm) => match shm.write_at(0, b"written by the child") {
            Ok(()) => 0,
            Err(_) => 3,
        },
        Err(_) => 4,
    }
}

fn v1_values(mode: Mode) {
    let vals: Scalars = (
        Value::new(4343).unwrap(),
        Value::new(3.625).unwrap(),
        Value::new(-232).unwrap(),
        Value::new(1 << 33).unwrap(),
        Value::new(b'x').unwrap(),
        Value::new(Point {
            x: 1.0,
            y: 2.0,
            tag: *b"point-01",
        })
        .unwrap(),
    );
    let mut kid = start(mode, child_write_scalars, &vals);
    kid.join_ok();
    assert_eq!(vals.0.get(), 24234);
    assert_eq!(vals.1.get(), -4.25);
    assert_eq!(vals.2.get(), 234);
    assert_eq!(vals.3.get(), 1 << 34);
    assert_eq!(vals.4.get(), b'y');
    assert_eq!(
        vals.5.get(),
        Point {
            x: -1.5,
            y: 2.5,
            tag: *b"point-02"
        }
    );
}

#[test]
fn v1_values_fork() {
    under(Mode::Fork, "v1_values_fork", v1_values);
}

#[test]
fn v1_values_spawn() {
    v1_values(Mode::Spawn);
}

#[test]
fn v2_array_slices() {
    let zero = Array::<f32>::zeroed(10).unwrap();
    assert_eq!(zero.len(), 10);
    assert_eq!(zero.to_vec(), vec![0.0; 10]);
    let a = Array::from_slice(&[1u16, 2, 3, 4, 5]).unwrap();
    let mut mid = [0u16; 3];
    a.read(1, &mut mid).unwrap();
    assert_eq!(mid, [2, 3, 4]);
    a.write(3, &[40, 50]).unwrap();
    assert_eq!(a.to_vec(), [1, 2, 3, 40, 50]);
    assert!(matches!(
        a.write(4, &[1, 2]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(a.read(usize::MAX, &mut mid).is_err());
    assert!(a.get(5).is_err());
    assert!(a.set(5, 0).is_err());
    let empty = RawArray::<u8>::zeroed(0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.to_vec(), Vec::<u8>::new());
    // Byte arrays as elements (Python's c_char arrays).
    let names = RawArray::<[u8; 4]>::from_slice(&[*b"abcd", *b"efgh"]).unwrap();
    assert_eq!(names.get(1).unwrap(), *b"efgh");
}

/// Issue 13 item 10: an offset whose end overflows `usize` is a typed error, never a panic
/// (debug) or a wrapped bounds check (release), for every offset-taking call.
#[test]
fn overflowing_offsets_are_typed_errors() {
    let a = Array::from_slice(&[1u64, 2, 3]).unwrap();
    let raw = a.get_obj().clone();
    let mut two = [0u64; 2];
    for start in [usize::MAX, usize::MAX - 1, usize::MAX / 2 + 1] {
        let bad = |r: Result<(), Error>| matches!(r, Err(Error::InvalidArgument(_)));
        assert!(bad(raw.read(start, &mut two)), "read at {start}");
        assert!(bad(raw.write(start, &[7, 7])), "write at {start}");
        assert!(bad(a.read(start, &mut two)), "locked read at {start}");
        assert!(bad(a.write(start, &[7, 7])), "locked write at {start}");
        assert!(matches!(raw.get(start), Err(Error::InvalidArgument(_))));
        assert!(matches!(raw.set(start, 7), Err(Error::InvalidArgument(_))));
    }
    // Nothing was written anywhere.
    assert_eq!(a.to_vec(), [1, 2, 3]);
}

fn v2_child_prefix_sum(mode: Mode) {
    let arr = Array::from_slice(&(0..10i64).collect::<Vec<_>>()).unwrap();
    let mut kid = start(mode, child_prefix_sum, &arr);
    kid.join_ok();
    assert_eq!(arr.to_vec(), [0, 1, 3, 6, 10, 15, 21, 28, 36, 45]);
}

#[test]
fn v2_child_prefix_sum_fork() {
    under(Mode::Fork, "v2_child_prefix_sum_fork", v2_child_prefix_sum);
}

#[test]
fn v2_child_prefix_sum_spawn() {
    v2_child_prefix_sum(Mode::Spawn);
}

#[test]
fn v3_get_lock_is_the_lock_given() {
    let lock = Lock::new().unwrap();
    let v = Value::with_lock(7u32, lock.clone()).unwrap();
    let a = Array::with_lock(RawArray::<u8>::zeroed(3).unwrap(), lock.clone()).unwrap();
    let g = lock.lock().unwrap();
    // The same lock: held through `lock`, so held through `get_lock()`.
    assert!(v.get_lock().is_locked());
    assert!(v.get_lock().try_lock().is_err());
    assert!(a.get_lock().try_lock().is_err());
    drop(g);
    assert!(!v.get_lock().is_locked());
    // The raw value behind it, lock-free.
    assert_eq!(v.get_obj().get(), 7);
    let raw = RawValue::new(1u8).unwrap();
    raw.set(2);
    assert_eq!(raw.get(), 2);
}

fn v3_two_processes_add_under_lock(mode: Mode) {
    let v = Value::new(0u64).unwrap();
    let args = (v.clone(), 10_000u32);
    let mut a = start(mode, child_add_under_lock, &args);
    let mut b = start(mode, child_add_under_lock, &args);
    a.join_ok();
    b.join_ok();
    assert_eq!(v.get(), 20_000);
}

#[test]
fn v3_two_processes_add_under_lock_fork() {
    under(
        Mode::Fork,
        "v3_two_processes_add_under_lock_fork",
        v3_two_processes_add_under_lock,
    );
}

#[test]
fn v3_two_processes_add_under_lock_spawn() {
    v3_two_processes_add_under_lock(Mode::Spawn);
}

fn unique(tag: &str) -> String {
    format!("synctest-{tag}-{}", std::process::id())
}

#[test]
fn v4_shared_memory_errors() {
    let name = unique("errors");
    assert!(matches!(
        SharedMemory::create(&name, 0),
        Err(mp_core::Error::InvalidSize { .. })
    ));
    assert!(matches!(
        SharedMemory::attach(&name),
        Err(mp_core::Error::NotFound { .. })
    ));
    let shm = SharedMemory::create(&name, 512).unwrap();
    assert_eq!(shm.size(), 512);
    assert!(matches!(
        SharedMemory::create(&name, 512),
        Err(mp_core::Error::Exists { .. })
    ));
    let other = SharedMemory::attach(&name).unwrap();
    shm.write_at(0, b"same bytes").unwrap();
    let mut buf = [0u8; 10];
    other.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"same bytes");
    shm.unlink().unwrap();
    assert!(matches!(shm.unlink(), Err(mp_core::Error::NotFound { .. })));
}

fn v4_child_writes_by_name(mode: Mode) {
    let name = unique(match mode {
        Mode::Fork => "fork",
        Mode::Spawn => "spawn",
    });
    let shm = SharedMemory::create(&name, 512).unwrap();
    let mut kid = start(mode, child_write_by_name, &name);
    kid.join_ok();
    let mut buf = [0u8; 20];
    shm.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"written by the child");
    drop(shm);
    assert!(
        !std::path::Path::new(&format!("/dev/shm/mp-{name}")).exists(),
        "the creator unlinks on drop"
    );
}

#[test]
fn v4_child_writes_by_name_fork() {
    under(
        Mode::Fork,
        "v4_child_writes_by_name_fork",
        v4_child_writes_by_name,
    );
}

#[test]
fn v4_child_writes_by_name_spawn() {
    v4_child_writes_by_name(Mode::Spawn);
}

#[test]
fn malformed_handle_bytes_are_an_error_not_a_panic() {
    let mut bytes = rkyv::util::AlignedVec::<16>::new();
    for seed in 0u8..64 {
        bytes.clear();
        bytes.extend_from_slice(&[seed.wrapping_mul(37); 24]);
        assert!(mp_core::message::decode::<mp_sync::Lock>(&bytes).is_err());
        assert!(mp_core::message::decode::<mp_sync::Barrier>(&bytes).is_err());
        assert!(mp_core::message::decode::<Value<u64>>(&bytes).is_err());
        assert!(
            mp_core::message::decode::<mp_sync::Condition>(&bytes[..seed as usize % 24]).is_err()
        );
    }
}

#[test]
fn a_value_handle_is_not_an_array_handle() {
    // Decoding a handle as another type is refused in the child (kind check); here, within
    // one process, through the same machinery.
    let v = RawValue::new(5u32).unwrap();
    let (bytes, fds) = mp_core::handle::collect(|| mp_core::message::encode(&v));
    let bytes = bytes.unwrap();
    mp_core::handle::install(fds);
    assert!(mp_core::message::decode::<RawArray<u32>>(&bytes).is_err());
    assert!(mp_core::message::decode::<RawValue<u64>>(&bytes).is_err());
    let back = mp_core::message::decode::<RawValue<u32>>(&bytes).unwrap();
    assert_eq!(back.get(), 5);
    back.set(6);
    assert_eq!(v.get(), 6);
}
