//! Helpers shared by mp-pipe's integration tests.

#![allow(dead_code)] // each test file uses a different subset

use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Tests that start children take this lock for their whole run. A forked child inherits every
/// descriptor of the parent, including the pipe ends of tests running at the same time on
/// other threads; two such tests whose children each wait for end-of-file on a pipe the other's
/// child holds would wait for each other. Serialising the tests that start children rules that
/// out (tests without children need no lock: a stray copy only delays their end-of-file until
/// that short-lived child exits).
static CHILDREN: Mutex<()> = Mutex::new(());

pub(crate) fn children_lock() -> MutexGuard<'static, ()> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails the whole test run (abort) if the guard lives longer than `limit`: a hang becomes a
/// failure with a message instead of a stuck CI job.
pub(crate) struct Watchdog(Option<mpsc::Sender<()>>);

pub(crate) fn watchdog(what: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("watchdog: {what} did not finish within {limit:?}; aborting the test run");
            std::process::abort();
        }
    });
    Watchdog(Some(tx))
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts that `elapsed` is about `t`: at least `t`, and less than `t` + 2 s (a loaded
/// two-core machine can be slow, never early).
pub(crate) fn assert_about(elapsed: Duration, t: Duration) {
    assert!(elapsed >= t, "returned after {elapsed:?}, before {t:?}");
    assert!(
        elapsed < t + Duration::from_secs(2),
        "returned after {elapsed:?}, far after {t:?}"
    );
}
