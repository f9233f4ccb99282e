//! The worker's meter: a deadline per item when the task has a timeout (see `slot`), and,
//! when the pool collects insights, the time the worker spends starting, waiting for work,
//! running tasks and sending results, its tasks done and its slowest tasks, published to
//! its slot after each chunk. Instant deltas only: a few clock reads per chunk, two per item.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::slot::{mono_ns, nanos, Counters, Slot};

/// The meter of the worker running on this thread.
struct Meter {
    slot: &'static Slot,
    /// Insights are collected (else only deadlines are kept).
    on: bool,
    c: Counters,
    /// The running chunk's job and the index of its first item.
    job: u64,
    first: u64,
    /// When the worker last became idle.
    idle_since: Instant,
    /// When the running chunk was taken.
    chunk_t0: Instant,
    /// Sending time within the running chunk.
    chunk_send: Duration,
    /// When the running item started.
    item_t0: Instant,
    /// When the running send started.
    send_t0: Instant,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

fn with(f: impl FnOnce(&mut Meter)) {
    METER.with(|m| {
        if let Some(m) = m.borrow_mut().as_mut() {
            f(m)
        }
    })
}

fn with_on(f: impl FnOnce(&mut Meter)) {
    with(|m| {
        if m.on {
            f(m)
        }
    })
}

/// The worker is ready (its initializer, if any, completed): starts the meter.
pub(crate) fn start(slot: &'static Slot, on: bool) {
    let now = Instant::now();
    let mut c = Counters::default();
    if on {
        let spawned = slot.spawned.load(std::sync::atomic::Ordering::Relaxed);
        c.start_ns = mono_ns().saturating_sub(spawned);
        slot.stats.publish(&c);
    }
    let m = Meter {
        slot,
        on,
        c,
        job: 0,
        first: 0,
        idle_since: now,
        chunk_t0: now,
        chunk_send: Duration::ZERO,
        item_t0: now,
        send_t0: now,
    };
    METER.with(|cell| *cell.borrow_mut() = Some(m));
}

/// A chunk of `job` whose first item is `first` was taken.
pub(crate) fn got_task(job: u64, first: u64) {
    with_on(|m| {
        let now = Instant::now();
        m.c.wait_ns = m.c.wait_ns.saturating_add(nanos(now - m.idle_since));
        m.job = job;
        m.first = first;
        m.chunk_t0 = now;
        m.chunk_send = Duration::ZERO;
    })
}

/// Whether the running chunk's items need [`before_item`] and [`after_item`]: it has a
/// timeout, or insights are collected.
pub(crate) fn per_item() -> bool {
    METER.with(|m| {
        m.borrow()
            .as_ref()
            .is_some_and(|m| m.on || m.slot.has_timeout())
    })
}

/// Item `i` of the running chunk starts. From the second item on, it gets a deadline of
/// its own; when the supervisor is stopping the task instead, this waits for the SIGKILL.
pub(crate) fn before_item(i: usize) {
    with(|m| {
        if i > 0 && !m.slot.next_item() {
            await_kill();
        }
        if m.on {
            m.item_t0 = Instant::now();
        }
    })
}

/// Item `i` of the running chunk returned.
pub(crate) fn after_item(i: usize) {
    with_on(|m| {
        let ns = nanos(m.item_t0.elapsed());
        m.c.item(ns.max(1), m.job, m.first.saturating_add(i as u64));
    })
}

/// The worker starts sending a result.
///
/// The chunk is published as done first (its tasks, its run time so far), so that whoever
/// gets its result reads it counted; [`chunk_done`] then adds the time the send took.
pub(crate) fn sending() {
    with_on(|m| {
        let now = Instant::now();
        m.send_t0 = now;
        let mut c = m.c;
        let run = (now - m.chunk_t0).saturating_sub(m.chunk_send);
        c.run_ns = c.run_ns.saturating_add(nanos(run));
        c.chunks += 1;
        m.slot.stats.publish(&c);
    })
}

/// The worker sent a result.
pub(crate) fn sent() {
    with_on(|m| {
        let d = m.send_t0.elapsed();
        m.chunk_send += d;
        m.c.send_ns = m.c.send_ns.saturating_add(nanos(d));
    })
}

/// The running chunk is finished: its counters are published.
pub(crate) fn chunk_done() {
    with_on(|m| {
        let now = Instant::now();
        let run = (now - m.chunk_t0).saturating_sub(m.chunk_send);
        m.c.run_ns = m.c.run_ns.saturating_add(nanos(run));
        m.c.chunks += 1;
        m.slot.stats.publish(&m.c);
        m.idle_since = now;
    })
}

/// The supervisor is stopping this worker's task (its timeout passed) and sends SIGKILL
/// next: wait for it, doing nothing more.
pub(crate) fn await_kill() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
