//! A waiter whose peer is frozen (`SIGSTOP`) in the middle of an exchange goes to sleep, so
//! that its CPU time stays low however long the freeze lasts, and wakes with the right value
//! once the peer resumes (`SIGCONT`): the wait policy of `mp_core::wait` for the pipe, the
//! queue, the lock and the event.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mp::{Duplex, Event, Lock, Pipe, Process, Queue};

/// How long the peer stays frozen.
const FREEZE: Duration = Duration::from_millis(400);

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Freezes `pid`, runs `unblock` (which the frozen peer cannot see yet), then `wait` on this
/// thread while another thread resumes the peer after [`FREEZE`]. Asserts that `wait`
/// returned only after the resume and spent at most a quarter of the freeze on the CPU.
fn frozen_wait<T>(what: &str, pid: u32, unblock: impl FnOnce(), wait: impl FnOnce() -> T) -> T {
    signal(pid, libc::SIGSTOP);
    unblock();
    let resumed = Arc::new(AtomicBool::new(false));
    let r = resumed.clone();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(FREEZE);
        r.store(true, Ordering::SeqCst);
        signal(pid, libc::SIGCONT);
    });
    let cpu0 = thread_cpu();
    let out = wait();
    let cpu = thread_cpu() - cpu0;
    assert!(
        resumed.load(Ordering::SeqCst),
        "{what}: the wait returned while the peer was frozen"
    );
    assert!(
        cpu < FREEZE / 4,
        "{what}: the waiter spent {cpu:?} of CPU during a {FREEZE:?} freeze of its peer"
    );
    waker.join().unwrap();
    out
}

#[test]
fn a_pipe_receiver_sleeps_while_its_sender_is_frozen() {
    let (mine, theirs) = Pipe::<u64>::new(Duplex).unwrap();
    let mut child = Process::fork(move || -> u32 {
        // The forked child holds a copy of the parent's end too: it stops at u64::MAX, not
        // at end of file.
        loop {
            match theirs.recv() {
                Ok(u64::MAX) | Err(_) => return 0,
                Ok(v) => theirs.send(&(v + 1)).unwrap(),
            }
        }
    })
    .unwrap();
    // Round trips first, so that the receiver's spin budget is at its largest.
    for i in 0..2_000 {
        mine.send(&i).unwrap();
        assert_eq!(mine.recv().unwrap(), i + 1);
    }
    let got = frozen_wait(
        "pipe recv",
        child.pid(),
        || mine.send(&41).unwrap(),
        || mine.recv().unwrap(),
    );
    assert_eq!(got, 42);
    mine.send(&u64::MAX).unwrap();
    assert_eq!(child.join().unwrap(), 0);
}

#[test]
fn a_queue_consumer_sleeps_while_its_producer_is_frozen() {
    let q = Queue::<u64>::new().unwrap();
    let (ready, go) = (Event::new().unwrap(), Event::new().unwrap());
    let (cq, cr, cg) = (q.clone(), ready.clone(), go.clone());
    let mut child = Process::fork(move || -> u32 {
        for i in 0..2_000 {
            cq.put(i).unwrap();
        }
        cr.set();
        cg.wait();
        cq.put(7).unwrap();
        0
    })
    .unwrap();
    for i in 0..2_000 {
        assert_eq!(q.get().unwrap(), i);
    }
    ready.wait();
    let got = frozen_wait("queue get", child.pid(), || go.set(), || q.get().unwrap());
    assert_eq!(got, 7);
    assert_eq!(child.join().unwrap(), 0);
}

#[test]
fn a_lock_waiter_sleeps_while_the_holder_is_frozen() {
    let lock = Lock::new().unwrap();
    let (held, release) = (Event::new().unwrap(), Event::new().unwrap());
    let (cl, ch, cr) = (lock.clone(), held.clone(), release.clone());
    let mut child = Process::fork(move || -> u32 {
        let g = cl.lock().unwrap();
        ch.set();
        cr.wait();
        drop(g);
        0
    })
    .unwrap();
    held.wait();
    let g = frozen_wait(
        "lock",
        child.pid(),
        || release.set(),
        || lock.lock().expect("a clean release, not a dead holder"),
    );
    drop(g);
    assert_eq!(child.join().unwrap(), 0);
}

#[test]
fn an_event_waiter_sleeps_while_the_setter_is_frozen() {
    let ev = Event::new().unwrap();
    let (ready, go) = (Event::new().unwrap(), Event::new().unwrap());
    let (ce, cr, cg) = (ev.clone(), ready.clone(), go.clone());
    let mut child = Process::fork(move || -> u32 {
        cr.set();
        cg.wait();
        ce.set();
        0
    })
    .unwrap();
    ready.wait();
    frozen_wait("event wait", child.pid(), || go.set(), || ev.wait());
    assert!(ev.is_set());
    assert_eq!(child.join().unwrap(), 0);
}
