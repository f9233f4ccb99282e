//! Hostile peers: a process that holds the same shared memory (as every process that was handed
//! a primitive does) and writes random bytes into it while the others use it. mp's promise here is
//! the one a peer with write access allows: the others get typed errors or values, never a
//! panic, a crash, a hang past their timeouts or undefined behaviour. (Such a peer can also write
//! a well-formed message: mp cannot tell it from a real one, and does not try.)
//!
//! The hostile child finds the regions the way an attacker would, from outside the API: every
//! descriptor in `/proc/self/fd` that is an mp region (`memfd:mp-region`), mapped and scribbled.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use mp::process::{ProcessError, StartMethod};
use mp::sync::{Lock, TryLockError};
use mp::{Duplex, Pipe, Process, Queue};

use crate::common::{fork, join_ok};
use crate::harness::{check_of, Rng, Round};

/// The descriptors of every mp region this process holds.
fn region_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_str()?
                .starts_with("/memfd:mp-region")
                .then_some(fd)
        })
        .collect()
}

/// In a forked child: maps every mp region and writes `writes` random bytes at random offsets
/// (the first `header_bias` writes land in the 64-byte headers). Returns how many it wrote.
fn scribble(seed: u64, writes: u32, header_bias: u32) -> u32 {
    let mut rng = Rng::for_round(seed, "scribble", 0);
    let mut done = 0;
    for fd in region_fds() {
        // SAFETY: an all-zero `stat` is a valid value; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open in this process (listed in /proc/self/fd).
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_size <= 0 {
            continue;
        }
        let len = st.st_size as usize;
        // SAFETY: a fresh shared mapping of the whole file; nothing else in this process
        // uses the returned range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            continue;
        }
        for i in 0..writes {
            let span = if i < header_bias { len.min(64) } else { len };
            let off = rng.below(span as u64) as usize;
            // SAFETY: `off < len`, inside the mapping; an atomic byte store, so the write is
            // no data race with the processes that use the region.
            unsafe { AtomicU8::from_ptr(p.cast::<u8>().add(off)) }
                .store(rng.next_u64() as u8, Ordering::Relaxed);
            done += 1;
        }
        // SAFETY: our own mapping of `len` bytes.
        unsafe { libc::munmap(p, len) };
    }
    done
}

/// A role that reads or writes the scribbled primitive ran in a child: it must end normally (any
/// typed outcome), never by a panic or a signal, within its bound.
fn must_survive<R: mp::Message>(
    r: &mut Round<'_>,
    c: &mut mp::process::Child<R>,
    role: &str,
) -> Option<R> {
    match c.join_timeout(Duration::from_secs(10)) {
        Ok(Some(v)) => Some(v),
        Ok(None) => {
            r.hang(format!("the {role} did not end after the garbage"));
            let _ = c.kill();
            let _ = c.join();
            None
        }
        Err(ProcessError::Panicked { message, .. }) => {
            r.wrong(format!("the {role} panicked on garbage: {message}"));
            None
        }
        Err(e) => {
            r.wrong(format!("the {role} died on garbage: {e}"));
            None
        }
    }
}

/// A queue with items in it is scribbled over (ring, metadata and header); a consumer then
/// drains it with timeouts and a producer puts more: both end with typed outcomes.
pub(crate) fn queue_garbage(r: &mut Round<'_>, _f: crate::harness::Fault) -> Result<(), String> {
    let q: Queue<(u64, u64)> = Queue::builder()
        .capacity_bytes(16 << 10)
        .build()
        .map_err(|e| e.to_string())?;
    for i in 0..200u64 {
        let _ = q.put_timeout((i, check_of(i)), Duration::from_millis(10));
    }
    let (seed, writes) = (r.rng.next_u64(), 1 + r.rng.below(64) as u32);
    let mut hostile = fork(move || scribble(seed, writes, writes / 8))?;
    join_ok(r, &mut hostile, "hostile writer");
    let cq = q.clone();
    let mut consumer = fork(move || {
        let mut got = 0u32;
        for _ in 0..400 {
            match cq.get_timeout(Duration::from_millis(5)) {
                Ok(_) => got += 1,
                Err(mp::queue::Error::Empty) => break,
                Err(_) => {}
            }
        }
        got
    })?;
    must_survive(r, &mut consumer, "consumer");
    let pq = q.clone();
    let mut producer = fork(move || {
        let mut ok = 0u32;
        for i in 0..50u64 {
            if pq
                .put_timeout((i, check_of(i)), Duration::from_millis(5))
                .is_ok()
            {
                ok += 1;
            }
        }
        ok
    })?;
    must_survive(r, &mut producer, "producer");
    Ok(())
}

/// A pipe's rings are scribbled over while a sender sends; the receiver ends with typed
/// outcomes, and so does the sender.
pub(crate) fn pipe_garbage(r: &mut Round<'_>, _f: crate::harness::Fault) -> Result<(), String> {
    let (a, b) =
        Pipe::<(u64, Vec<u8>)>::with_capacity(Duplex, 16 << 10).map_err(|e| e.to_string())?;
    let mut sender = fork(move || {
        let mut sent = 0u32;
        for i in 0..300u64 {
            let body = vec![i as u8; (i as usize * 97) % 12_000];
            if a.send(&(i, body)).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    })?;
    let (seed, writes) = (r.rng.next_u64(), 1 + r.rng.below(64) as u32);
    let delay = r.rng.micros(0, 3000);
    let mut hostile = fork(move || {
        std::thread::sleep(delay);
        scribble(seed, writes, writes / 8)
    })?;
    let mut receiver = fork(move || {
        let mut got = 0u32;
        for _ in 0..300 {
            match b.recv_timeout(Duration::from_millis(50)) {
                Ok(_) => got += 1,
                Err(mp::pipe::Error::Timeout) | Err(mp::pipe::Error::Eof) => break,
                Err(_) => {}
            }
        }
        got
    })?;
    join_ok(r, &mut hostile, "hostile writer");
    must_survive(r, &mut receiver, "receiver");
    // The sender may block on a ring the garbage made look full: it ends when the receiver's
    // end is gone (its ring peer died), or is ended here; either way it must not crash.
    match sender.join_timeout(Duration::from_secs(3)) {
        Ok(_) => {}
        Err(ProcessError::Panicked { message, .. }) => {
            r.wrong(format!("the sender panicked on garbage: {message}"))
        }
        Err(e) => r.wrong(format!("the sender died on garbage: {e}")),
    }
    if sender.is_alive() {
        let _ = sender.kill();
        let _ = sender.join();
    }
    Ok(())
}

/// A lock's word and holder record are scribbled over; a process that then takes it gets the
/// lock, `OwnerDied` or a timeout, and a release gives a typed outcome.
pub(crate) fn lock_garbage(r: &mut Round<'_>, _f: crate::harness::Fault) -> Result<(), String> {
    let lock = Lock::new().map_err(|e| e.to_string())?;
    if r.rng.below(2) == 0 {
        lock.acquire().map_err(|e| e.to_string())?;
    }
    let (seed, writes) = (r.rng.next_u64(), 1 + r.rng.below(16) as u32);
    let mut hostile = fork(move || scribble(seed, writes, 0))?;
    join_ok(r, &mut hostile, "hostile writer");
    let l = lock.clone();
    let mut taker = fork(move || {
        let code = match l.lock_timeout(Duration::from_millis(300)) {
            Ok(g) => {
                drop(g);
                0u32
            }
            Err(TryLockError::OwnerDied(o)) => {
                drop(o.into_inner());
                1
            }
            Err(TryLockError::Timeout) => 2,
        };
        let _ = l.release();
        code
    })?;
    must_survive(r, &mut taker, "lock taker");
    Ok(())
}

fn receive_queue(q: Queue<u64>) -> u64 {
    q.get_timeout(Duration::from_millis(100)).unwrap_or(0)
}

/// A queue's region header is scribbled over; a spawned child handed the queue refuses the
/// region with a typed start error (or, when the bytes hit nothing the header checks, starts).
pub(crate) fn header_garbage(r: &mut Round<'_>, _f: crate::harness::Fault) -> Result<(), String> {
    let q: Queue<u64> = Queue::new().map_err(|e| e.to_string())?;
    let (seed, writes) = (r.rng.next_u64(), 1 + r.rng.below(8) as u32);
    let mut hostile = fork(move || scribble(seed, writes, writes))?;
    join_ok(r, &mut hostile, "hostile writer");
    // A start that fails at once (a typed error) is as good as a child that refuses.
    if let Ok(mut c) = Process::new(receive_queue, q.clone())
        .start_method(StartMethod::Spawn)
        .start()
    {
        match c.join_timeout(Duration::from_secs(10)) {
            Ok(Some(_)) | Err(ProcessError::StartFailed(_)) => {}
            Ok(None) => {
                r.hang("a spawned child handed a scribbled region");
                let _ = c.kill();
                let _ = c.join();
            }
            Err(e) => r.wrong(format!("a spawned child handed a scribbled region: {e}")),
        }
    }
    Ok(())
}
