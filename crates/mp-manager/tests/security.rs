//! The manager under hostile or careless clients (issue 19): arithmetic a client controls,
//! oversized and deeply nested requests, clients that stop reading, too many connections.

use std::time::Duration;

use mp_manager::{Error, Manager};
use mp_process::StartMethod;

mp_process::test_support!();

fn manager() -> Manager {
    Manager::builder()
        .start_method(StartMethod::Spawn)
        .start()
        .unwrap()
}

/// A semaphore released past `u64::MAX` is refused (before: the server's thread for that
/// connection panicked on the overflow), and the connection lives on: the lock it holds stays
/// held until it closes, then is released.
#[test]
fn counts_a_client_controls_never_overflow() {
    let m = manager();
    let sem = m.semaphore(u64::MAX).unwrap();
    let lock = m.lock().unwrap();
    let (s, l) = (sem.clone(), lock.clone());
    let r = std::thread::spawn(move || {
        l.acquire().unwrap();
        let r = s.release();
        // The same connection still answers, and still holds the lock.
        let v = s.value();
        (r, v)
    })
    .join()
    .unwrap();
    assert!(matches!(r.0, Err(Error::TooManyReleases)), "{:?}", r.0);
    assert_eq!(r.1.unwrap(), u64::MAX);
    // The thread exited: its connection closed, so the lock it held is free.
    assert!(lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
    lock.release().unwrap();
}
