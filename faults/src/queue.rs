//! mp-queue under fire: a producer killed inside `put`, `put_many` and an oversized `put`, a
//! consumer killed inside `get`, `get_many` and while it holds a `get_ref` guard. Every item a
//! producer was told is in the queue must come out exactly once and intact.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp::queue::Error as QError;
use mp::{Queue, Shared};

use crate::common::{fork, join_killed, spin};
use crate::harness::{check_of, kill, Fault, Round};

/// How long the survivor waits for the next item before it decides the queue is drained (the
/// peer is dead and reaped by then: nothing more is coming).
const DRAIN_WAIT: Duration = Duration::from_millis(50);

/// A numbered, checksummed item; `pad` makes some of them larger than the ring (side channel).
type Item = (u64, u64, Vec<u8>);

fn item(seq: u64, pad: usize) -> Item {
    (seq, check_of(seq), vec![(seq & 0xff) as u8; pad])
}

fn intact(r: &mut Round<'_>, it: &Item) -> bool {
    let ok = it.1 == check_of(it.0) && it.2.iter().all(|&b| b == (it.0 & 0xff) as u8);
    if !ok {
        r.torn(format!("item {} arrived corrupted", it.0));
    }
    ok
}

/// Drains `q` and checks what came out against what the producer acknowledged: every seq below
/// `acked` exactly once, in order, plus perhaps some of the `in_flight` being put when it died.
fn check_drain(
    r: &mut Round<'_>,
    q: &Queue<Item>,
    acked: u64,
    in_flight: u64,
    from: u64,
    probe: bool,
) {
    let mut seen = BTreeSet::new();
    let mut last = None;
    let mut probe_seen = false;
    loop {
        match q.get_timeout(DRAIN_WAIT) {
            Ok(it) if it.0 == PROBE => {
                if probe_seen {
                    r.duplicated(1, "the probe came out twice");
                }
                probe_seen = true;
            }
            Ok(it) => {
                if probe_seen {
                    r.wrong(format!("item {} came out after the later probe", it.0));
                }
                if !intact(r, &it) {
                    continue;
                }
                if !seen.insert(it.0) {
                    r.duplicated(1, format!("item {} came out twice", it.0));
                }
                if last.is_some_and(|l| it.0 <= l) {
                    r.wrong(format!(
                        "item {} came out after {:?} (FIFO broken)",
                        it.0, last
                    ));
                }
                last = Some(it.0);
                if it.0 >= acked + in_flight {
                    r.duplicated(1, format!("item {} was never put", it.0));
                }
            }
            Err(QError::Empty) => break,
            Err(e) => {
                r.wrong(format!("get after the fault: {e}"));
                break;
            }
        }
    }
    if probe && !probe_seen {
        r.lost(1, "the probe put after the fault");
    }
    let missing = (from..acked).filter(|s| !seen.contains(s)).count() as u64;
    if missing > 0 {
        r.lost(missing, format!("of {} acknowledged items", acked - from));
    }
}

/// The item a survivor puts after the fault, to show that the queue still takes puts.
const PROBE: u64 = u64::MAX - 1;

/// After a fault the queue must go on taking puts: the recovery is how long this put waited
/// (for a dead producer's lock to be taken over). The drain then finds the probe last.
fn probe_put(r: &mut Round<'_>, q: &Queue<Item>) -> bool {
    let t = Instant::now();
    match q.put_timeout(item(PROBE, 0), Duration::from_secs(3)) {
        Ok(()) => {
            r.recovered(t.elapsed());
            true
        }
        Err(e) => {
            r.hang(format!("put after the fault: {e}"));
            false
        }
    }
}

/// How the producer puts: one at a time, in batches, or large items through the side channel.
#[derive(Clone, Copy)]
enum Put {
    One,
    Many,
    Big,
}

fn producer(r: &mut Round<'_>, how: Put) -> Result<(), String> {
    let q: Queue<Item> = Queue::builder()
        .capacity_bytes(64 << 10)
        .build()
        .map_err(|e| e.to_string())?;
    let acked = Shared::new(AtomicU64::new(0)).map_err(|e| e.to_string())?;
    let (pq, pa) = (q.clone(), acked.clone());
    let mut child = fork(move || {
        let mut seq = 0u64;
        loop {
            match how {
                Put::One => {
                    if pq.put(item(seq, 0)).is_err() {
                        return 1u32;
                    }
                    seq += 1;
                }
                Put::Many => {
                    let batch: Vec<Item> = (seq..seq + 16).map(|s| item(s, 0)).collect();
                    match pq.put_many(&batch, None) {
                        Ok(n) => seq += n as u64,
                        Err(_) => return 1,
                    }
                }
                Put::Big => {
                    let pad = if seq % 3 == 0 { 100 << 10 } else { 100 };
                    if pq.put(item(seq, pad)).is_err() {
                        return 1;
                    }
                    seq += 1;
                }
            }
            pa.store(seq, Ordering::Release);
        }
    })?;
    // Consume a little while the producer works, so that it is inside a put when it dies
    // (with a full ring, a put waits; with an empty one, it writes).
    let mut consumed = 0u64;
    let until = Instant::now() + r.rng.micros(200, 4000);
    while Instant::now() < until {
        match q.get_timeout(Duration::from_millis(50)) {
            Ok(it) => {
                if intact(r, &it) && it.0 != consumed {
                    r.wrong(format!("got {} expecting {consumed}", it.0));
                }
                consumed = it.0 + 1;
            }
            Err(QError::Empty) => {}
            Err(e) => return Err(format!("get before the fault: {e}")),
        }
    }
    kill(child.pid());
    join_killed(r, &mut child, "producer");
    let acked = acked.load(Ordering::Acquire);
    let in_flight = match how {
        Put::Many => 16,
        _ => 1,
    };
    check_drain(r, &q, acked, in_flight, consumed, false);
    // Empty now: a put must go in at once (the dead producer's lock taken over) and come out.
    if probe_put(r, &q) {
        check_drain(r, &q, 0, 0, 0, true);
    }
    Ok(())
}

/// A producer killed inside `put`.
pub(crate) fn queue_producer(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    producer(r, Put::One)
}

/// A producer killed inside `put_many`.
pub(crate) fn queue_producer_many(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    producer(r, Put::Many)
}

/// A producer killed inside a `put` of items larger than the ring (the side channel).
pub(crate) fn queue_producer_big(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    producer(r, Put::Big)
}

/// How the consumer takes.
#[derive(Clone, Copy)]
enum Get {
    One,
    Many,
    Ref,
}

fn consumer(r: &mut Round<'_>, how: Get) -> Result<(), String> {
    let q: Queue<Item> = Queue::builder()
        .capacity_bytes(64 << 10)
        .build()
        .map_err(|e| e.to_string())?;
    let n = 300u64;
    // Everything the consumer has taken (the next seq it expects): written after each take.
    let taken = Shared::new(AtomicU64::new(0)).map_err(|e| e.to_string())?;
    let (cq, ct) = (q.clone(), taken.clone());
    let mut child = fork(move || loop {
        match how {
            Get::One => match cq.get() {
                Ok(it) => ct.store(it.0 + 1, Ordering::Release),
                Err(_) => return 1u32,
            },
            Get::Many => {
                let mut out = Vec::new();
                match cq.get_many(&mut out, 8, None) {
                    Ok(_) => {
                        if let Some(l) = out.last() {
                            ct.store(l.0 + 1, Ordering::Release);
                        }
                    }
                    Err(_) => return 1,
                }
            }
            Get::Ref => match cq.get_ref() {
                Ok(g) => {
                    let seq: u64 = g.0.to_native();
                    spin(300);
                    ct.store(seq + 1, Ordering::Release);
                    drop(g);
                }
                Err(_) => return 1,
            },
        }
    })?;
    let mut put = 0u64;
    let until = Instant::now() + r.rng.micros(200, 4000);
    while put < n && Instant::now() < until {
        match q.put_timeout(item(put, 0), Duration::from_millis(50)) {
            Ok(()) => put += 1,
            Err(mp::queue::PutError::Full(_)) => {}
            Err(e) => return Err(format!("put before the fault: {e}")),
        }
    }
    let t = kill(child.pid());
    join_killed(r, &mut child, "consumer");
    // What the dead consumer took but had not recorded is gone with it (as in Python): at most
    // one item for get/get_ref, one batch for get_many. Everything after must still come out.
    let taken = taken.load(Ordering::Acquire);
    let in_flight = match how {
        Get::Many => 8,
        _ => 1,
    };
    let mut seen = BTreeSet::new();
    loop {
        match q.get_timeout(DRAIN_WAIT) {
            Ok(it) => {
                if intact(r, &it) && (!seen.insert(it.0) || it.0 < taken) {
                    r.duplicated(1, format!("item {} came out again", it.0));
                }
            }
            Err(QError::Empty) => break,
            Err(e) => {
                r.wrong(format!("get after the consumer died: {e}"));
                break;
            }
        }
    }
    let first = seen.iter().next().copied().unwrap_or(put);
    if first > taken + in_flight {
        r.lost(
            first - taken - in_flight,
            "items after the dead consumer's last",
        );
    }
    let gaps = (first..put).filter(|s| !seen.contains(s)).count() as u64;
    if gaps > 0 {
        r.lost(gaps, "items missing from the drain");
    }
    // A dead get_ref holder's record must be reclaimed: fill and empty the ring many times.
    for round in 0..4u64 {
        for i in 0..200u64 {
            if let Err(e) = q.put_timeout(item(i, 200), Duration::from_secs(3)) {
                r.hang(format!(
                    "put {i} of refill {round} after the consumer died: {e}"
                ));
                return Ok(());
            }
            if let Err(e) = q.get_timeout(Duration::from_secs(3)) {
                r.hang(format!(
                    "get {i} of refill {round} after the consumer died: {e}"
                ));
                return Ok(());
            }
        }
    }
    r.recovered(t.elapsed().min(Duration::from_millis(1)));
    Ok(())
}

/// A consumer killed inside `get`.
pub(crate) fn queue_consumer(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    consumer(r, Get::One)
}

/// A consumer killed inside `get_many`.
pub(crate) fn queue_consumer_many(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    consumer(r, Get::Many)
}

/// A consumer killed while it holds a `get_ref` guard (or inside `get_ref`).
pub(crate) fn queue_get_ref_holder(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    consumer(r, Get::Ref)
}
