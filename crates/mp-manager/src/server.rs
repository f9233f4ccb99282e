//! The server: the objects, and one thread per connection answering its requests.
//!
//! Every object is a mutex (plus a condition variable where something waits) around archived
//! bytes. A request that waits (a queue `get`, a lock `acquire`, an event `wait`) blocks only
//! its own connection's thread. A lock held by a connection that goes away (its process died)
//! is released, so a dead client cannot block the others for ever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use mp_core::message::{decode, encode};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_core::util::unpoisoned;
use mp_pipe::{Connection, Listener};

use crate::custom::{Ctor, Erased};
use crate::wire::{Bytes, Kind, Millis, Op, Refused, Reply, Request};

enum Obj {
    Dict(Mutex<IndexMap<Bytes, Bytes>>),
    List(Mutex<Vec<Bytes>>),
    /// A list of fixed length.
    Array(Mutex<Vec<Bytes>>),
    Namespace(Mutex<IndexMap<String, Bytes>>),
    Value(Mutex<Bytes>),
    Queue {
        items: Mutex<VecDeque<Bytes>>,
        changed: Condvar,
        maxsize: usize,
    },
    Lock {
        /// The connection holding the lock.
        holder: Mutex<Option<u64>>,
        released: Condvar,
    },
    Event {
        set: Mutex<bool>,
        changed: Condvar,
    },
    RLock {
        state: Mutex<Owned>,
        released: Condvar,
    },
    Semaphore {
        value: Mutex<u64>,
        changed: Condvar,
        /// A `BoundedSemaphore`'s initial value.
        bound: Option<u64>,
    },
    Condition {
        state: Mutex<CondState>,
        changed: Condvar,
    },
    Barrier {
        state: Mutex<BarrierState>,
        changed: Condvar,
    },
    Custom {
        typeid: String,
        type_name: String,
        obj: Mutex<Box<dyn Erased>>,
    },
}

/// A re-entrant lock's state: the connection holding it, and how many times.
#[derive(Default)]
struct Owned {
    owner: Option<u64>,
    count: u32,
}

impl Owned {
    fn free_for(&self, conn: u64) -> bool {
        self.owner.is_none() || self.owner == Some(conn)
    }

    /// One more acquisition by `conn` (which `free_for` allowed); refused past `u32::MAX`
    /// re-entries rather than wrapping.
    fn take(&mut self, conn: u64) -> Result<(), Refused> {
        self.count = self
            .count
            .checked_add(1)
            .ok_or(Refused::Overflow("a re-entrant lock's count".into()))?;
        self.owner = Some(conn);
        Ok(())
    }

    /// One release by `conn`; true when the lock became free.
    fn release(&mut self, conn: u64) -> Result<bool, Refused> {
        if self.owner != Some(conn) {
            return Err(Refused::NotOwner);
        }
        self.count = self.count.saturating_sub(1);
        if self.count == 0 {
            self.owner = None;
        }
        Ok(self.owner.is_none())
    }
}

#[derive(Default)]
struct CondState {
    lock: Owned,
    next_ticket: u64,
    /// Waiters in arrival order, by ticket.
    waiting: VecDeque<u64>,
    notified: HashSet<u64>,
}

struct BarrierState {
    parties: u64,
    count: u64,
    generation: u64,
    broken: bool,
    /// Generations ended by `reset` while parties waited: those parties get BrokenBarrier.
    reset_generations: HashSet<u64>,
}

fn init_u64(init: &[u8], default: u64) -> u64 {
    init.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(default)
}

impl Obj {
    /// A new object of a built-in kind (custom objects are made by `State::create_custom`).
    fn new(kind: Kind, init: Bytes) -> Result<Obj, Refused> {
        Ok(match kind {
            Kind::Dict => Obj::Dict(Mutex::default()),
            Kind::List => Obj::List(Mutex::default()),
            Kind::Array => {
                Obj::Array(Mutex::new(decode::<Vec<Bytes>>(&init).map_err(|e| {
                    Refused::Malformed(format!("an array's items: {e}"))
                })?))
            }
            Kind::Namespace => Obj::Namespace(Mutex::default()),
            Kind::Value => Obj::Value(Mutex::new(init)),
            Kind::Queue => Obj::Queue {
                items: Mutex::default(),
                changed: Condvar::new(),
                maxsize: usize::try_from(init_u64(&init, 0)).unwrap_or(usize::MAX),
            },
            Kind::Lock => Obj::Lock {
                holder: Mutex::new(None),
                released: Condvar::new(),
            },
            Kind::Event => Obj::Event {
                set: Mutex::new(false),
                changed: Condvar::new(),
            },
            Kind::RLock => Obj::RLock {
                state: Mutex::default(),
                released: Condvar::new(),
            },
            Kind::Semaphore | Kind::BoundedSemaphore => {
                let value = init_u64(&init, 1);
                Obj::Semaphore {
                    value: Mutex::new(value),
                    changed: Condvar::new(),
                    bound: (kind == Kind::BoundedSemaphore).then_some(value),
                }
            }
            Kind::Condition => Obj::Condition {
                state: Mutex::default(),
                changed: Condvar::new(),
            },
            Kind::Custom => {
                return Err(Refused::Malformed(
                    "a custom object is made with its registered type".into(),
                ))
            }
            Kind::Barrier => Obj::Barrier {
                state: Mutex::new(BarrierState {
                    parties: init_u64(&init, 1).max(1),
                    count: 0,
                    generation: 0,
                    broken: false,
                    reset_generations: HashSet::new(),
                }),
                changed: Condvar::new(),
            },
        })
    }

    fn kind(&self) -> Kind {
        match self {
            Obj::Dict(_) => Kind::Dict,
            Obj::List(_) => Kind::List,
            Obj::Array(_) => Kind::Array,
            Obj::Namespace(_) => Kind::Namespace,
            Obj::Value(_) => Kind::Value,
            Obj::Queue { .. } => Kind::Queue,
            Obj::Lock { .. } => Kind::Lock,
            Obj::Event { .. } => Kind::Event,
            Obj::RLock { .. } => Kind::RLock,
            Obj::Semaphore { bound: None, .. } => Kind::Semaphore,
            Obj::Semaphore { bound: Some(_), .. } => Kind::BoundedSemaphore,
            Obj::Condition { .. } => Kind::Condition,
            Obj::Barrier { .. } => Kind::Barrier,
            Obj::Custom { .. } => Kind::Custom,
        }
    }
}

// Locks ignoring poison: a panicking request thread cannot leave an object half-changed (each
// change is one call on a std collection), so the data stays valid.
use mp_core::util::lock_unpoisoned as lock;

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
fn index(i: i64, len: usize) -> Result<usize, Refused> {
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

/// What the server allows its clients ([`ManagerBuilder`](crate::ManagerBuilder) sets them).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) struct Limits {
    /// The largest request read, in bytes: a larger one closes its connection unread.
    pub(crate) max_request: u64,
    /// Connections served at once; one more is refused (and closed) at once.
    pub(crate) max_connections: u64,
    /// How long a reply may wait for a client that does not read (ms; 0: no limit).
    pub(crate) write_timeout_ms: u64,
}

/// The default largest request (16 MiB).
pub(crate) const DEFAULT_MAX_REQUEST: u64 = 16 << 20;
/// The default number of connections served at once.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// The default write timeout (30 s).
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request: DEFAULT_MAX_REQUEST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT.as_millis() as u64,
        }
    }
}

/// Limits how long a write to `fd` may block (`SO_SNDTIMEO`; set once per connection, so
/// the requests themselves cost no extra system call).
fn set_write_timeout(fd: std::os::fd::RawFd, ms: u64) {
    if ms == 0 {
        return;
    }
    let tv = libc::timeval {
        tv_sec: (ms / 1000).min(i32::MAX as u64) as libc::time_t,
        tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads a timeval from a live local of the size passed; `fd` is the
    // open socket of a connection this thread owns.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// The registered types: typeid -> (Rust type name, constructor).
pub(crate) type Types = HashMap<String, (String, Ctor)>;

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<u64, Arc<Obj>>>,
    names: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    types: Types,
}

impl State {
    fn create(&self, kind: Kind, name: Option<String>, init: Bytes) -> Result<Reply, Refused> {
        let Some(name) = name else {
            return Ok(Reply::Created(self.insert(Obj::new(kind, init)?)));
        };
        let mut names = lock(&self.names);
        if let Some(&id) = names.get(&name) {
            let found = self.get(id)?.kind();
            if found != kind {
                return Err(Refused::WrongKind {
                    expected: kind,
                    found,
                });
            }
            return Ok(Reply::Created(id));
        }
        let id = self.insert(Obj::new(kind, init)?);
        names.insert(name, id);
        Ok(Reply::Created(id))
    }

    fn create_custom(
        &self,
        typeid: String,
        type_name: String,
        name: Option<String>,
    ) -> Result<Reply, Refused> {
        let Some((registered, ctor)) = self.types.get(&typeid) else {
            return Err(Refused::UnknownType(typeid));
        };
        if *registered != type_name {
            return Err(Refused::WrongType {
                expected: type_name,
                found: registered.clone(),
            });
        }
        let make = || Obj::Custom {
            typeid: typeid.clone(),
            type_name: type_name.clone(),
            obj: Mutex::new(ctor()),
        };
        let Some(name) = name else {
            return Ok(Reply::Created(self.insert(make())));
        };
        let mut names = lock(&self.names);
        if let Some(&id) = names.get(&name) {
            return match &*self.get(id)? {
                Obj::Custom { typeid: t, .. } if *t == typeid => Ok(Reply::Created(id)),
                Obj::Custom {
                    type_name: found, ..
                } => Err(Refused::WrongType {
                    expected: type_name,
                    found: found.clone(),
                }),
                other => Err(Refused::WrongKind {
                    expected: Kind::Custom,
                    found: other.kind(),
                }),
            };
        }
        let id = self.insert(make());
        names.insert(name, id);
        Ok(Reply::Created(id))
    }

    fn insert(&self, obj: Obj) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.objects).insert(id, Arc::new(obj));
        id
    }

    fn get(&self, id: u64) -> Result<Arc<Obj>, Refused> {
        lock(&self.objects)
            .get(&id)
            .cloned()
            .ok_or(Refused::NoSuchObject(id))
    }

    /// Releases the locks `conn` holds (its client went away).
    fn release_all(&self, conn: u64) {
        let objects: Vec<Arc<Obj>> = lock(&self.objects).values().cloned().collect();
        for o in objects {
            match &*o {
                Obj::Lock { holder, released } => {
                    let mut h = lock(holder);
                    if *h == Some(conn) {
                        *h = None;
                        released.notify_one();
                    }
                }
                Obj::RLock { state, released } => {
                    let mut st = lock(state);
                    if st.owner == Some(conn) {
                        *st = Owned::default();
                        released.notify_one();
                    }
                }
                Obj::Condition { state, changed } => {
                    let mut st = lock(state);
                    if st.lock.owner == Some(conn) {
                        st.lock = Owned::default();
                        changed.notify_all();
                    }
                }
                _ => {}
            }
        }
    }
}

fn call(obj: &Obj, conn: u64, op: Op) -> Result<Reply, Refused> {
    Ok(match (obj, op) {
        (Obj::Dict(m), Op::Len) => Reply::Len(lock(m).len() as u64),
        (Obj::Dict(m), Op::Clear) => {
            lock(m).clear();
            Reply::Unit
        }
        (Obj::Dict(m), Op::DictGet(k)) => Reply::MaybeBytes(lock(m).get(&k).cloned()),
        (Obj::Dict(m), Op::DictSet(k, v)) => {
            lock(m).insert(k, v);
            Reply::Unit
        }
        (Obj::Dict(m), Op::DictPop(k)) => {
            Reply::Bytes(lock(m).shift_remove(&k).ok_or(Refused::KeyError)?)
        }
        (Obj::Dict(m), Op::DictContains(k)) => Reply::Bool(lock(m).contains_key(&k)),
        (Obj::Dict(m), Op::DictItems) => Reply::Pairs(
            lock(m)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        (Obj::List(m) | Obj::Array(m), Op::Len) => Reply::Len(lock(m).len() as u64),
        (Obj::List(m), Op::Clear) => {
            lock(m).clear();
            Reply::Unit
        }
        (Obj::List(m), Op::ListAppend(v)) => {
            lock(m).push(v);
            Reply::Unit
        }
        (Obj::List(m), Op::ListExtend(vs)) => {
            lock(m).extend(vs);
            Reply::Unit
        }
        // An array is a list of fixed length: the same reads and writes, no resizing.
        (Obj::List(m) | Obj::Array(m), Op::ListGet(i)) => {
            let l = lock(m);
            Reply::Bytes(l[index(i, l.len())?].clone())
        }
        (Obj::List(m) | Obj::Array(m), Op::ListSet(i, v)) => {
            let mut l = lock(m);
            let j = index(i, l.len())?;
            l[j] = v;
            Reply::Unit
        }
        (Obj::List(m), Op::ListPop(i)) => {
            let mut l = lock(m);
            let j = index(i, l.len())?;
            Reply::Bytes(l.remove(j))
        }
        (Obj::List(m) | Obj::Array(m), Op::ListItems) => Reply::Items(lock(m).clone()),
        (Obj::Namespace(m), Op::NsGet(a)) => match lock(m).get(&a) {
            Some(v) => Reply::Bytes(v.clone()),
            None => return Err(Refused::AttributeError(a)),
        },
        (Obj::Namespace(m), Op::NsSet(a, v)) => {
            lock(m).insert(a, v);
            Reply::Unit
        }
        (Obj::Namespace(m), Op::NsDel(a)) => match lock(m).shift_remove(&a) {
            Some(_) => Reply::Unit,
            None => return Err(Refused::AttributeError(a)),
        },
        (Obj::Namespace(m), Op::NsNames) => Reply::Names(lock(m).keys().cloned().collect()),
        (Obj::Value(m), Op::ValueGet) => Reply::Bytes(lock(m).clone()),
        (Obj::Value(m), Op::ValueSet(v)) => {
            *lock(m) = v;
            Reply::Unit
        }
        (Obj::Queue { items, .. }, Op::Len) => Reply::Len(lock(items).len() as u64),
        (
            Obj::Queue {
                items,
                changed,
                maxsize,
            },
            Op::QueuePut(v, ms),
        ) => {
            let room = |q: &VecDeque<Bytes>| *maxsize == 0 || q.len() < *maxsize;
            let (mut q, ok) = wait_until(changed, lock(items), deadline(ms), room);
            if !ok {
                return Err(Refused::Full);
            }
            q.push_back(v);
            changed.notify_all();
            Reply::Unit
        }
        (Obj::Queue { items, changed, .. }, Op::QueueGet(ms)) => {
            let (mut q, ok) = wait_until(changed, lock(items), deadline(ms), |q| !q.is_empty());
            match q.pop_front() {
                Some(v) if ok => {
                    changed.notify_all();
                    Reply::Bytes(v)
                }
                _ => return Err(Refused::Empty),
            }
        }
        (Obj::Lock { holder, released }, Op::Acquire(ms)) => {
            let (mut h, ok) = wait_until(released, lock(holder), deadline(ms), Option::is_none);
            if ok {
                *h = Some(conn);
            }
            Reply::Bool(ok)
        }
        (Obj::Lock { holder, released }, Op::Release) => {
            let mut h = lock(holder);
            if h.take().is_none() {
                return Err(Refused::NotLocked);
            }
            released.notify_one();
            Reply::Unit
        }
        (Obj::Event { set, changed }, Op::EventSet) => {
            *lock(set) = true;
            changed.notify_all();
            Reply::Unit
        }
        (Obj::Event { set, .. }, Op::EventClear) => {
            *lock(set) = false;
            Reply::Unit
        }
        (Obj::Event { set, .. }, Op::EventIsSet) => Reply::Bool(*lock(set)),
        (Obj::Event { set, changed }, Op::EventWait(ms)) => {
            Reply::Bool(wait_until(changed, lock(set), deadline(ms), |s| *s).1)
        }
        (Obj::RLock { state, released }, Op::Acquire(ms)) => {
            let (mut st, ok) =
                wait_until(released, lock(state), deadline(ms), |s| s.free_for(conn));
            if ok {
                st.take(conn)?;
            }
            Reply::Bool(ok)
        }
        (Obj::RLock { state, released }, Op::Release) => {
            if lock(state).release(conn)? {
                released.notify_one();
            }
            Reply::Unit
        }
        (Obj::Semaphore { value, changed, .. }, Op::Acquire(ms)) => {
            let (mut v, ok) = wait_until(changed, lock(value), deadline(ms), |v| *v > 0);
            if ok {
                *v -= 1;
            }
            Reply::Bool(ok)
        }
        (
            Obj::Semaphore {
                value,
                changed,
                bound,
            },
            Op::Release,
        ) => {
            let mut v = lock(value);
            if bound.is_some_and(|b| *v >= b) {
                return Err(Refused::TooManyReleases);
            }
            // A plain semaphore may grow, but not past u64::MAX (one made at u64::MAX).
            *v = v.checked_add(1).ok_or(Refused::TooManyReleases)?;
            changed.notify_one();
            Reply::Unit
        }
        (Obj::Semaphore { value, .. }, Op::SemValue) => Reply::Len(*lock(value)),
        (Obj::Condition { state, changed }, Op::Acquire(ms)) => {
            let (mut st, ok) = wait_until(changed, lock(state), deadline(ms), |s| {
                s.lock.free_for(conn)
            });
            if ok {
                st.lock.take(conn)?;
            }
            Reply::Bool(ok)
        }
        (Obj::Condition { state, changed }, Op::Release) => {
            if lock(state).lock.release(conn)? {
                changed.notify_all();
            }
            Reply::Unit
        }
        (Obj::Condition { state, changed }, Op::CondWait(ms)) => {
            let mut st = lock(state);
            if st.lock.owner != Some(conn) {
                return Err(Refused::NotOwner);
            }
            // Release the lock entirely, wait for a notify (or the timeout), take it back.
            let held = std::mem::take(&mut st.lock);
            let ticket = st.next_ticket;
            st.next_ticket = st.next_ticket.wrapping_add(1);
            st.waiting.push_back(ticket);
            changed.notify_all();
            let (mut st, _) =
                wait_until(changed, st, deadline(ms), |s| s.notified.contains(&ticket));
            let notified = st.notified.remove(&ticket);
            if !notified {
                st.waiting.retain(|t| *t != ticket);
            }
            let (mut st, _) = wait_until(changed, st, None, |s| s.lock.owner.is_none());
            st.lock = held;
            Reply::Bool(notified)
        }
        (Obj::Condition { state, changed }, Op::CondNotify(n)) => {
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
        (Obj::Barrier { state, changed }, Op::BarrierWait(ms)) => {
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
            return Err(Refused::BrokenBarrier);
        }
        (Obj::Barrier { state, changed }, Op::BarrierAbort) => {
            lock(state).broken = true;
            changed.notify_all();
            Reply::Unit
        }
        (Obj::Barrier { state, changed }, Op::BarrierReset) => {
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
        (Obj::Barrier { state, .. }, Op::BarrierState) => {
            let st = lock(state);
            Reply::BarrierState(st.parties, st.count, st.broken)
        }
        (Obj::Custom { type_name, obj, .. }, Op::CustomCall(expected, request)) => {
            if *type_name != expected {
                return Err(Refused::WrongType {
                    expected,
                    found: type_name.clone(),
                });
            }
            Reply::Bytes(lock(obj).call(&request)?)
        }
        (obj, op) => {
            return Err(Refused::Malformed(format!(
                "{} is not an operation of a {}",
                op.name(),
                obj.kind()
            )))
        }
    })
}

/// Releases a connection's locks when dropped: when its loop ends, and also when a request
/// panics on the way (a panic must never leave a dead connection's locks held).
struct ReleaseOnDrop<'a> {
    state: &'a State,
    conn: u64,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.state.release_all(self.conn);
    }
}

/// Answers one connection until it closes. Returns true when asked to shut down.
fn serve_connection(state: &State, conn: &Connection<()>) -> bool {
    let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let _release = ReleaseOnDrop { state, conn: id };
    loop {
        let Ok(bytes) = conn.recv_bytes(None) else {
            break false;
        };
        // The queue an item was taken from, to give it back if the reply cannot be sent.
        let mut taken_from = None;
        let (reply, stop) = match decode::<Request>(&bytes) {
            Err(e) => (Reply::Err(Refused::Malformed(e.to_string())), false),
            Ok(Request::Shutdown) => (Reply::Unit, true),
            Ok(Request::Create { kind, name, init }) => (
                state.create(kind, name, init).unwrap_or_else(Reply::Err),
                false,
            ),
            Ok(Request::CreateCustom {
                typeid,
                type_name,
                name,
            }) => (
                state
                    .create_custom(typeid, type_name, name)
                    .unwrap_or_else(Reply::Err),
                false,
            ),
            Ok(Request::Call { id: obj, kind, op }) => {
                let is_get = matches!(op, Op::QueueGet(_));
                let r = state.get(obj).and_then(|o| {
                    if o.kind() != kind {
                        return Err(Refused::WrongKind {
                            expected: kind,
                            found: o.kind(),
                        });
                    }
                    if is_get {
                        taken_from = Some(o.clone());
                    }
                    call(&o, id, op)
                });
                (r.unwrap_or_else(Reply::Err), false)
            }
        };
        let sent = encode(&reply)
            .map_err(|e| e.to_string())
            .and_then(|b| conn.send_bytes(&b, 0, None).map_err(|e| e.to_string()));
        if stop {
            break true;
        }
        if sent.is_err() {
            // The client is gone: an item it was waiting for goes back to the head of the
            // queue instead of being lost.
            if let (Some(o), Reply::Bytes(item)) = (taken_from, reply) {
                if let Obj::Queue { items, changed, .. } = &*o {
                    lock(items).push_front(item);
                    changed.notify_all();
                }
            }
            break false;
        }
    }
}

/// The server loop: accepts connections (authenticated by the listener) until a client asks
/// for shutdown, then stops accepting, closes every connection and returns.
pub(crate) fn serve(listener: Listener, types: Types, limits: Limits) {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
    let state = Arc::new(State {
        types,
        ..State::default()
    });
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Written once to wake the acceptor from its poll when the server stops.
    // SAFETY: eventfd has no memory-safety preconditions.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if wake < 0 {
        return;
    }
    // SAFETY: eventfd returned a new descriptor that nothing else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
    // The live connections' descriptors. A connection's thread removes its entry before it
    // drops the connection, and shutdown reads the map under the same lock, so no
    // descriptor is touched after it was closed.
    let live: Arc<Mutex<HashMap<u64, RawFd>>> = Arc::default();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let acceptor = {
        let (state, stopping, live, wake) =
            (state.clone(), stopping.clone(), live.clone(), wake.clone());
        std::thread::Builder::new()
            .name("mp-manager-accept".into())
            .spawn(move || {
                let mut next = 0u64;
                while !stopping.load(Ordering::Relaxed) {
                    // Poll first, on the listener and the wake-up descriptor, so that a
                    // shutdown ends the loop at once.
                    let mut pfd = [
                        libc::pollfd {
                            fd: listener.as_fd().as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: wake.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two valid pollfds for the duration of the call.
                    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
                    if n <= 0 || pfd[0].revents == 0 {
                        continue;
                    }
                    let conn = match listener.accept::<()>() {
                        Ok(c) => c,
                        // The listening socket itself failing (out of descriptors, say): do
                        // not spin; a failed handshake (wrong authkey) or a vanished client:
                        // next one.
                        Err(mp_pipe::Error::Io { .. }) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    conn.set_max_message_size(limits.max_request);
                    set_write_timeout(conn.as_fd().as_raw_fd(), limits.write_timeout_ms);
                    {
                        let mut live = lock(&live);
                        if live.len() as u64 >= limits.max_connections {
                            drop(live);
                            // Tell the client why (its first request reads this), then close.
                            let refused =
                                Reply::Err(Refused::TooManyConnections(limits.max_connections));
                            if let Ok(b) = encode(&refused) {
                                let _ = conn.send_bytes(&b, 0, None);
                            }
                            continue;
                        }
                        next += 1;
                        live.insert(next, conn.as_fd().as_raw_fd());
                    }
                    let key = next;
                    let (state, live, stop_tx) = (state.clone(), live.clone(), stop_tx.clone());
                    let _ = std::thread::Builder::new()
                        .name("mp-manager-conn".into())
                        .spawn(move || {
                            let stop = serve_connection(&state, &conn);
                            lock(&live).remove(&key);
                            drop(conn);
                            if stop {
                                let _ = stop_tx.send(());
                            }
                        });
                }
            })
    };
    let Ok(acceptor) = acceptor else {
        return;
    };
    let _ = stop_rx.recv();
    stopping.store(true, Ordering::Relaxed);
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) reads 8 bytes from a live array; the eventfd is open (held by `wake`).
    unsafe { libc::write(wake.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
    let _ = acceptor.join();
    for fd in lock(&live).values() {
        // SAFETY: shutdown has no memory-safety preconditions; `fd` is open (its thread removes
        // it from `live`, under this lock, before closing it). Its thread then sees the end.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clean-up of a connection runs even when its thread unwinds from a panic.
    #[test]
    fn a_panicking_connection_releases_its_locks() {
        let state = State::default();
        let Ok(Reply::Created(id)) = state.create(Kind::Lock, None, Vec::new()) else {
            panic!("no lock");
        };
        let l = state.get(id).unwrap();
        assert!(matches!(
            call(&l, 7, Op::Acquire(None)),
            Ok(Reply::Bool(true))
        ));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _release = ReleaseOnDrop {
                state: &state,
                conn: 7,
            };
            panic!("a request that panics");
        }));
        assert!(r.is_err());
        assert!(matches!(
            call(&l, 8, Op::Acquire(Some(0))),
            Ok(Reply::Bool(true))
        ));
    }

    fn raw(conn: &Connection<()>, req: &Request) -> Reply {
        conn.send_bytes(&encode(req).unwrap(), 0, None).unwrap();
        decode::<Reply>(&conn.recv_bytes(None).unwrap()).unwrap()
    }

    /// A client that stops reading its replies is dropped after the write timeout, and the
    /// lock its connection held is released (before: the server's thread blocked in the write
    /// for ever, holding the lock).
    #[test]
    fn a_client_that_stops_reading_is_dropped() {
        use crate::client::Addr;
        let key = b"write-timeout";
        let addr = Addr::from_address(&mp_pipe::Address::tcp("127.0.0.1", 0).unwrap());
        let listener = crate::bind(&addr, key).unwrap();
        let address = listener.address().clone();
        let limits = Limits {
            write_timeout_ms: 200,
            ..Limits::default()
        };
        let serving = std::thread::spawn(move || serve(listener, Types::new(), limits));
        let a: Connection<()> = mp_pipe::Client::connect(address.clone(), Some(key)).unwrap();
        let create = |kind| Request::Create {
            kind,
            name: None,
            init: Vec::new(),
        };
        let Reply::Created(dict) = raw(&a, &create(Kind::Dict)) else {
            panic!("no dict")
        };
        let Reply::Created(lock) = raw(&a, &create(Kind::Lock)) else {
            panic!("no lock")
        };
        let set = Request::Call {
            id: dict,
            kind: Kind::Dict,
            op: Op::DictSet(vec![1], vec![0; 4 << 20]),
        };
        assert!(matches!(raw(&a, &set), Reply::Unit));
        let acquire = |ms| Request::Call {
            id: lock,
            kind: Kind::Lock,
            op: Op::Acquire(ms),
        };
        assert!(matches!(raw(&a, &acquire(None)), Reply::Bool(true)));
        // Ask for the 4 MiB dict again and again, and read nothing.
        let items = encode(&Request::Call {
            id: dict,
            kind: Kind::Dict,
            op: Op::DictItems,
        })
        .unwrap();
        for _ in 0..16 {
            if a.send_bytes(&items, 0, None).is_err() {
                break;
            }
        }
        let b: Connection<()> = mp_pipe::Client::connect(address, Some(key)).unwrap();
        assert!(matches!(raw(&b, &acquire(Some(10_000))), Reply::Bool(true)));
        assert!(matches!(raw(&b, &Request::Shutdown), Reply::Unit));
        serving.join().unwrap();
        drop(a);
    }

    #[test]
    fn python_indices_never_overflow() {
        assert_eq!(index(-3, 3), Ok(0));
        assert_eq!(index(2, 3), Ok(2));
        for (i, len) in [
            (i64::MIN, 3),
            (i64::MAX, 3),
            (-1, 0),
            (0, 0),
            (-4, 3),
            (3, 3),
        ] {
            assert!(
                matches!(index(i, len), Err(Refused::IndexError { .. })),
                "{i} {len}"
            );
        }
    }

    #[test]
    fn requests_that_make_no_sense_are_refused() {
        let state = State::default();
        assert!(matches!(
            state.create(Kind::Custom, None, Vec::new()),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            state.create_custom("nothing".into(), "T".into(), None),
            Err(Refused::UnknownType(_))
        ));
        let Ok(Reply::Created(id)) = state.create(Kind::Dict, None, Vec::new()) else {
            panic!("no dict");
        };
        let dict = state.get(id).unwrap();
        assert!(matches!(
            call(&dict, 0, Op::QueueGet(Some(0))),
            Err(Refused::Malformed(_))
        ));
        // The refusal names the operation, never its payload (before: its whole Debug form,
        // about 5 bytes of text per payload byte).
        match call(&dict, 0, Op::ListAppend(vec![7; 1 << 20])) {
            Err(Refused::Malformed(m)) => {
                assert_eq!(m, "ListAppend is not an operation of a Dict");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state.get(id + 1000),
            Err(Refused::NoSuchObject(_))
        ));
        let Ok(Reply::Created(l)) = state.create(Kind::List, None, Vec::new()) else {
            panic!("no list");
        };
        let list = state.get(l).unwrap();
        assert!(matches!(
            call(&list, 0, Op::ListGet(i64::MIN)),
            Err(Refused::IndexError { .. })
        ));
        // A barrier of "0 parties" sent by a client that skipped the proxy's check has one.
        let Ok(Reply::Created(b)) = state.create(Kind::Barrier, None, 0u64.to_le_bytes().to_vec())
        else {
            panic!("no barrier");
        };
        let barrier = state.get(b).unwrap();
        assert!(matches!(
            call(&barrier, 0, Op::BarrierWait(Some(0))),
            Ok(Reply::Len(0))
        ));
    }
}
