//! The answers: [`call`] hands a request to the function of its object's kind, which does
//! the operation under the object's mutex. A request that waits (a queue `get`, a lock
//! `acquire`, an event `wait`) blocks only its own connection's thread.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
// Locks ignoring poison: a panicking request thread cannot leave an object half-changed (each
// change is one call on a std collection), so the data stays valid.
pub(super) use mp_core::util::lock_unpoisoned as lock;
use mp_core::util::unpoisoned;

use super::objects::{BarrierState, CondState, Obj, Owned};
use crate::custom::Erased;
use crate::wire::{Bytes, Kind, Millis, Op, Refused, Reply};

/// Answers `op` on `obj` for the connection `conn` (which owns the locks it takes).
pub(super) fn call(obj: &Obj, conn: u64, op: Op) -> Result<Reply, Refused> {
    match obj {
        Obj::Dict(m) => dict(m, op),
        Obj::List(m) => list(m, false, op),
        Obj::Array(m) => list(m, true, op),
        Obj::Namespace(m) => namespace(m, op),
        Obj::Value(m) => value(m, op),
        Obj::Queue {
            items,
            changed,
            maxsize,
        } => queue(items, changed, *maxsize, op),
        Obj::Lock { holder, released } => plain_lock(holder, released, conn, op),
        Obj::Event { set, changed } => event(set, changed, op),
        Obj::RLock { state, released } => rlock(state, released, conn, op),
        Obj::Semaphore {
            value,
            changed,
            bound,
        } => semaphore(value, changed, *bound, op),
        Obj::Condition { state, changed } => condition(state, changed, conn, op),
        Obj::Barrier { state, changed } => barrier(state, changed, op),
        Obj::Custom { type_name, obj, .. } => custom(type_name, obj, op),
    }
}

/// The refusal of an operation that a kind of object does not have.
fn not_an_operation(op: &Op, kind: Kind) -> Refused {
    Refused::Malformed(format!("{} is not an operation of a {}", op.name(), kind))
}

fn dict(m: &Mutex<IndexMap<Bytes, Bytes>>, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Len => Reply::Len(lock(m).len() as u64),
        Op::Clear => {
            lock(m).clear();
            Reply::Unit
        }
        Op::DictGet(k) => Reply::MaybeBytes(lock(m).get(&k).cloned()),
        Op::DictSet(k, v) => {
            lock(m).insert(k, v);
            Reply::Unit
        }
        Op::DictPop(k) => Reply::Bytes(lock(m).shift_remove(&k).ok_or(Refused::KeyError)?),
        Op::DictContains(k) => Reply::Bool(lock(m).contains_key(&k)),
        Op::DictItems => Reply::Pairs(
            lock(m)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        op => return Err(not_an_operation(&op, Kind::Dict)),
    })
}

/// A list, or (`fixed`) an array: a list of fixed length, with the same reads and writes and
/// no resizing.
fn list(m: &Mutex<Vec<Bytes>>, fixed: bool, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Len => Reply::Len(lock(m).len() as u64),
        Op::ListGet(i) => {
            let l = lock(m);
            Reply::Bytes(l[index(i, l.len())?].clone())
        }
        Op::ListSet(i, v) => {
            let mut l = lock(m);
            let j = index(i, l.len())?;
            l[j] = v;
            Reply::Unit
        }
        Op::ListItems => Reply::Items(lock(m).clone()),
        Op::Clear if !fixed => {
            lock(m).clear();
            Reply::Unit
        }
        Op::ListAppend(v) if !fixed => {
            lock(m).push(v);
            Reply::Unit
        }
        Op::ListExtend(vs) if !fixed => {
            lock(m).extend(vs);
            Reply::Unit
        }
        Op::ListPop(i) if !fixed => {
            let mut l = lock(m);
            let j = index(i, l.len())?;
            Reply::Bytes(l.remove(j))
        }
        op => {
            let kind = if fixed { Kind::Array } else { Kind::List };
            return Err(not_an_operation(&op, kind));
        }
    })
}

fn namespace(m: &Mutex<IndexMap<String, Bytes>>, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::NsGet(a) => match lock(m).get(&a) {
            Some(v) => Reply::Bytes(v.clone()),
            None => return Err(Refused::AttributeError(a)),
        },
        Op::NsSet(a, v) => {
            lock(m).insert(a, v);
            Reply::Unit
        }
        Op::NsDel(a) => match lock(m).shift_remove(&a) {
            Some(_) => Reply::Unit,
            None => return Err(Refused::AttributeError(a)),
        },
        Op::NsNames => Reply::Names(lock(m).keys().cloned().collect()),
        op => return Err(not_an_operation(&op, Kind::Namespace)),
    })
}

fn value(m: &Mutex<Bytes>, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::ValueGet => Reply::Bytes(lock(m).clone()),
        Op::ValueSet(v) => {
            *lock(m) = v;
            Reply::Unit
        }
        op => return Err(not_an_operation(&op, Kind::Value)),
    })
}

fn queue(
    items: &Mutex<VecDeque<Bytes>>,
    changed: &Condvar,
    maxsize: usize,
    op: Op,
) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Len => Reply::Len(lock(items).len() as u64),
        Op::QueuePut(v, ms) => {
            let room = |q: &VecDeque<Bytes>| maxsize == 0 || q.len() < maxsize;
            let (mut q, ok) = wait_until(changed, lock(items), deadline(ms), room);
            if !ok {
                return Err(Refused::Full);
            }
            q.push_back(v);
            changed.notify_all();
            Reply::Unit
        }
        Op::QueueGet(ms) => {
            let (mut q, ok) = wait_until(changed, lock(items), deadline(ms), |q| !q.is_empty());
            match q.pop_front() {
                Some(v) if ok => {
                    changed.notify_all();
                    Reply::Bytes(v)
                }
                _ => return Err(Refused::Empty),
            }
        }
        op => return Err(not_an_operation(&op, Kind::Queue)),
    })
}

/// A `Lock`: held by one connection, released by any.
fn plain_lock(
    holder: &Mutex<Option<u64>>,
    released: &Condvar,
    conn: u64,
    op: Op,
) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Acquire(ms) => {
            let (mut h, ok) = wait_until(released, lock(holder), deadline(ms), Option::is_none);
            if ok {
                *h = Some(conn);
            }
            Reply::Bool(ok)
        }
        Op::Release => {
            let mut h = lock(holder);
            if h.take().is_none() {
                return Err(Refused::NotLocked);
            }
            released.notify_one();
            Reply::Unit
        }
        op => return Err(not_an_operation(&op, Kind::Lock)),
    })
}

fn event(set: &Mutex<bool>, changed: &Condvar, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::EventSet => {
            *lock(set) = true;
            changed.notify_all();
            Reply::Unit
        }
        Op::EventClear => {
            *lock(set) = false;
            Reply::Unit
        }
        Op::EventIsSet => Reply::Bool(*lock(set)),
        Op::EventWait(ms) => Reply::Bool(wait_until(changed, lock(set), deadline(ms), |s| *s).1),
        op => return Err(not_an_operation(&op, Kind::Event)),
    })
}

fn rlock(state: &Mutex<Owned>, released: &Condvar, conn: u64, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Acquire(ms) => acquire_reentrant(state, released, conn, ms)?,
        Op::Release => release_reentrant(state, released, conn, Condvar::notify_one)?,
        op => return Err(not_an_operation(&op, Kind::RLock)),
    })
}

/// `acquire(timeout)` of a re-entrant lock (an `RLock`, or a `Condition`'s own lock): waits
/// until it is free or held by `conn`, then takes it once more.
fn acquire_reentrant<T: AsRef<Owned> + AsMut<Owned>>(
    state: &Mutex<T>,
    changed: &Condvar,
    conn: u64,
    ms: Millis,
) -> Result<Reply, Refused> {
    let (mut st, ok) = wait_until(changed, lock(state), deadline(ms), |s| {
        s.as_ref().free_for(conn)
    });
    if ok {
        st.as_mut().take(conn)?;
    }
    Ok(Reply::Bool(ok))
}

/// `release()` of a re-entrant lock; `wake` tells the waiters when it became free.
fn release_reentrant<T: AsMut<Owned>>(
    state: &Mutex<T>,
    changed: &Condvar,
    conn: u64,
    wake: fn(&Condvar),
) -> Result<Reply, Refused> {
    if lock(state).as_mut().release(conn)? {
        wake(changed);
    }
    Ok(Reply::Unit)
}

/// A `Semaphore`, or (`bound` set to its initial value) a `BoundedSemaphore`.
fn semaphore(
    value: &Mutex<u64>,
    changed: &Condvar,
    bound: Option<u64>,
    op: Op,
) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Acquire(ms) => {
            let (mut v, ok) = wait_until(changed, lock(value), deadline(ms), |v| *v > 0);
            if ok {
                *v -= 1;
            }
            Reply::Bool(ok)
        }
        Op::Release => {
            let mut v = lock(value);
            if bound.is_some_and(|b| *v >= b) {
                return Err(Refused::TooManyReleases);
            }
            // A plain semaphore may grow, but not past u64::MAX (one made at u64::MAX).
            *v = v.checked_add(1).ok_or(Refused::TooManyReleases)?;
            changed.notify_one();
            Reply::Unit
        }
        Op::SemValue => Reply::Len(*lock(value)),
        op => {
            let kind = match bound {
                None => Kind::Semaphore,
                Some(_) => Kind::BoundedSemaphore,
            };
            return Err(not_an_operation(&op, kind));
        }
    })
}

fn condition(
    state: &Mutex<CondState>,
    changed: &Condvar,
    conn: u64,
    op: Op,
) -> Result<Reply, Refused> {
    Ok(match op {
        Op::Acquire(ms) => acquire_reentrant(state, changed, conn, ms)?,
        Op::Release => release_reentrant(state, changed, conn, Condvar::notify_all)?,
        Op::CondWait(ms) => condition_wait(state, changed, conn, ms)?,
        Op::CondNotify(n) => {
            let mut st = lock(state);
            if st.lock.owner != Some(conn) {
                return Err(Refused::NotOwner);
            }
            for _ in 0..n {
                let Some(t) = st.waiting.pop_front() else {
                    break;
                };
                st.notified.insert(t);
            }
            changed.notify_all();
            Reply::Unit
        }
        op => return Err(not_an_operation(&op, Kind::Condition)),
    })
}

/// `cond.wait(timeout)`: releases the lock entirely, waits for a notify (or the timeout), takes
/// the lock back; true when notified.
fn condition_wait(
    state: &Mutex<CondState>,
    changed: &Condvar,
    conn: u64,
    ms: Millis,
) -> Result<Reply, Refused> {
    let mut st = lock(state);
    if st.lock.owner != Some(conn) {
        return Err(Refused::NotOwner);
    }
    let held = std::mem::take(&mut st.lock);
    let ticket = st.next_ticket;
    st.next_ticket = st.next_ticket.wrapping_add(1);
    st.waiting.push_back(ticket);
    changed.notify_all();
    let (mut st, _) = wait_until(changed, st, deadline(ms), |s| s.notified.contains(&ticket));
    let notified = st.notified.remove(&ticket);
    if !notified {
        st.waiting.retain(|t| *t != ticket);
    }
    let (mut st, _) = wait_until(changed, st, None, |s| s.lock.owner.is_none());
    st.lock = held;
    Ok(Reply::Bool(notified))
}

fn barrier(state: &Mutex<BarrierState>, changed: &Condvar, op: Op) -> Result<Reply, Refused> {
    Ok(match op {
        Op::BarrierWait(ms) => return barrier_wait(state, changed, ms),
        Op::BarrierAbort => {
            lock(state).broken = true;
            changed.notify_all();
            Reply::Unit
        }
        Op::BarrierReset => {
            let mut st = lock(state);
            if st.count > 0 {
                let g = st.generation;
                st.reset_generations.insert(g);
            }
            st.generation = st.generation.wrapping_add(1);
            st.count = 0;
            st.broken = false;
            changed.notify_all();
            Reply::Unit
        }
        Op::BarrierState => {
            let st = lock(state);
            Reply::BarrierState(st.parties, st.count, st.broken)
        }
        op => return Err(not_an_operation(&op, Kind::Barrier)),
    })
}

/// `barrier.wait(timeout)`: this party's arrival index once all parties came.
fn barrier_wait(
    state: &Mutex<BarrierState>,
    changed: &Condvar,
    ms: Millis,
) -> Result<Reply, Refused> {
    let mut st = lock(state);
    if st.broken {
        return Err(Refused::BrokenBarrier);
    }
    let generation = st.generation;
    let index = st.count;
    // count < parties here (it is reset on reaching them), so this cannot overflow.
    st.count = st.count.saturating_add(1);
    if st.count >= st.parties {
        st.count = 0;
        st.generation = st.generation.wrapping_add(1);
        changed.notify_all();
        return Ok(Reply::Len(index));
    }
    let (mut st, _) = wait_until(changed, st, deadline(ms), |s| {
        s.generation != generation || s.broken
    });
    if st.generation != generation {
        if st.reset_generations.contains(&generation) {
            return Err(Refused::BrokenBarrier);
        }
        return Ok(Reply::Len(index));
    }
    // Timed out, or broken by another party: the barrier stays broken until reset.
    st.broken = true;
    changed.notify_all();
    Err(Refused::BrokenBarrier)
}

/// A registered type's object: the request goes to its `Served::handle`, if the proxy names
/// the type the server holds.
fn custom(type_name: &str, obj: &Mutex<Box<dyn Erased>>, op: Op) -> Result<Reply, Refused> {
    match op {
        Op::CustomCall(expected, request) => {
            if type_name != expected {
                return Err(Refused::WrongType {
                    expected,
                    found: type_name.to_owned(),
                });
            }
            Ok(Reply::Bytes(lock(obj).call(&request)?))
        }
        op => Err(not_an_operation(&op, Kind::Custom)),
    }
}

fn deadline(ms: Millis) -> Option<Instant> {
    ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

/// Waits on `cv` until `ready` holds or `until` passes; false on timeout.
fn wait_until<'a, T>(
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    until: Option<Instant>,
    ready: impl Fn(&T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    loop {
        if ready(&g) {
            return (g, true);
        }
        match until {
            None => g = unpoisoned(cv.wait(g)),
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (g, false);
                }
                g = unpoisoned(cv.wait_timeout(g, left)).0;
            }
        }
    }
}

/// A Python-style index (negative counts from the end) into a list of `len`.
pub(super) fn index(i: i64, len: usize) -> Result<usize, Refused> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let j = if i < 0 { i.checked_add(n) } else { Some(i) };
    match j {
        Some(j) if (0..n).contains(&j) => Ok(j as usize),
        _ => Err(Refused::IndexError {
            index: i,
            len: len as u64,
        }),
    }
}
