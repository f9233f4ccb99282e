//! The typed proxies. Each is a [`Token`] (which server, which object) and the Rust types of
//! what it holds; every method is one request to the server. Proxies are messages: pass one
//! to a child (`Process::new(f, proxy)`) under any start method and the child uses the same
//! object.

use std::marker::PhantomData;
use std::time::Duration;

use mp_core::message::{decode, encode};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_core::Message;

use crate::error::{Error, Result};
pub use crate::token::Token;
use crate::wire::{Bytes, Kind, Millis, Op, Reply};

/// A proxy kind that [`Manager::named`](crate::Manager::named) can make or find by name.
pub trait Shareable: Sized + sealed::Sealed {
    /// The kind of object on the server.
    const KIND: Kind;
    #[doc(hidden)]
    fn from_token(t: Token) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

fn enc<T: Message>(v: &T) -> Result<Bytes> {
    Ok(encode(v)?.to_vec())
}

fn dec<T: Message>(b: &[u8]) -> Result<T> {
    decode::<T>(b).map_err(|e| Error::Malformed(format!("a stored value: {e}")))
}

fn millis(t: Option<Duration>) -> Millis {
    t.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unexpected(r: Reply) -> Error {
    Error::Malformed(format!("unexpected reply {}", r.name()))
}

/// The value in a `Bytes` reply, decoded.
fn value_of<T: Message>(r: Reply) -> Result<T> {
    match r {
        Reply::Bytes(b) => dec(&b),
        r => Err(unexpected(r)),
    }
}

/// The flag in a `Bool` reply.
fn flag_of(r: Reply) -> Result<bool> {
    match r {
        Reply::Bool(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}

/// The trait impls and the private `call` that every proxy struct has: `Clone`, a `Debug` that
/// shows the object's id, [`Shareable`] for `Kind::$kind`. The struct itself is written out
/// above each use.
macro_rules! proxy_impls {
    ($name:ident, $kind:ident) => {
        proxy_impls!(@ $name<>, $kind, |token| $name { token });
    };
    ($name:ident <$($g:ident),+>, $kind:ident) => {
        proxy_impls!(@ $name<$($g),+>, $kind, |token| $name { token, _t: PhantomData });
    };
    (@ $name:ident <$($g:ident),*>, $kind:ident, |$token:ident| $make:expr) => {
        impl<$($g),*> Clone for $name<$($g),*> {
            fn clone(&self) -> Self {
                Self::from_token(self.token.clone())
            }
        }

        impl<$($g),*> std::fmt::Debug for $name<$($g),*> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name)).field("id", &self.token.id).finish()
            }
        }

        impl<$($g),*> sealed::Sealed for $name<$($g),*> {}

        impl<$($g),*> Shareable for $name<$($g),*> {
            const KIND: Kind = Kind::$kind;
            fn from_token($token: Token) -> Self {
                $make
            }
        }

        impl<$($g),*> $name<$($g),*> {
            fn call(&self, op: Op) -> Result<Reply> {
                self.token.call(Kind::$kind, op)
            }
        }
    };
}

/// `len`, `is_empty` and `clear` of a sized container proxy (`$v` names it in the docs).
macro_rules! sized {
    ($name:ident <$($g:ident),*>, $v:literal) => {
        impl<$($g: Message),*> $name<$($g),*> {
            #[doc = concat!("`len(", $v, ")`.")]
            pub fn len(&self) -> Result<usize> {
                len(self.call(Op::Len)?)
            }

            #[doc = concat!("`len(", $v, ") == 0`.")]
            pub fn is_empty(&self) -> Result<bool> {
                Ok(self.len()? == 0)
            }

            #[doc = concat!("`", $v, ".clear()`.")]
            pub fn clear(&self) -> Result<()> {
                self.call(Op::Clear).map(drop)
            }
        }
    };
}

/// A dict held by the manager (Python's `manager.dict()`), keys of type `K` and values of
/// type `V`, in insertion order. Keys are compared by their archived bytes, so two keys
/// are the same key when they are equal values of a type whose encoding is canonical
/// (integers, strings, tuples and vectors of those: what Python users key dicts with).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Dict<K, V> {
    token: Token,
    _t: PhantomData<fn() -> (K, V)>,
}

proxy_impls!(Dict<K, V>, Dict);

impl<K: Message, V: Message> Dict<K, V> {
    /// `d.get(k)`: the value, or `None` when the key is absent.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.call(Op::DictGet(enc(key)?))? {
            Reply::MaybeBytes(v) => v.map(|b| dec(&b)).transpose(),
            r => Err(unexpected(r)),
        }
    }

    /// `d[k]`: the value, or [`Error::KeyError`].
    pub fn get_item(&self, key: &K) -> Result<V> {
        self.get(key)?.ok_or(Error::KeyError)
    }

    /// `d[k] = v`.
    pub fn set(&self, key: &K, value: &V) -> Result<()> {
        self.call(Op::DictSet(enc(key)?, enc(value)?)).map(drop)
    }

    /// `d.pop(k)`: removes and returns the value, or [`Error::KeyError`].
    pub fn pop(&self, key: &K) -> Result<V> {
        value_of(self.call(Op::DictPop(enc(key)?))?)
    }

    /// `k in d`.
    pub fn contains(&self, key: &K) -> Result<bool> {
        flag_of(self.call(Op::DictContains(enc(key)?))?)
    }

    /// `list(d.items())`: a copy, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>> {
        match self.call(Op::DictItems)? {
            Reply::Pairs(p) => p.iter().map(|(k, v)| Ok((dec(k)?, dec(v)?))).collect(),
            r => Err(unexpected(r)),
        }
    }

    /// `list(d.keys())`.
    pub fn keys(&self) -> Result<Vec<K>> {
        match self.call(Op::DictItems)? {
            Reply::Pairs(p) => p.iter().map(|(k, _)| dec(k)).collect(),
            r => Err(unexpected(r)),
        }
    }
}

sized!(Dict<K, V>, "d");

fn len(r: Reply) -> Result<usize> {
    match r {
        Reply::Len(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        r => Err(unexpected(r)),
    }
}

/// A list held by the manager (Python's `manager.list()`). Indices may be negative, as in
/// Python (`-1` is the last item).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct List<T> {
    token: Token,
    _t: PhantomData<fn() -> (T,)>,
}

proxy_impls!(List<T>, List);

impl<T: Message> List<T> {
    /// `l.append(v)`.
    pub fn append(&self, value: &T) -> Result<()> {
        self.call(Op::ListAppend(enc(value)?)).map(drop)
    }

    /// `l.extend(vs)`.
    pub fn extend(&self, values: &[T]) -> Result<()> {
        let v = values.iter().map(enc).collect::<Result<Vec<_>>>()?;
        self.call(Op::ListExtend(v)).map(drop)
    }

    /// `l[i]`, or [`Error::IndexError`].
    pub fn get(&self, index: i64) -> Result<T> {
        value_of(self.call(Op::ListGet(index))?)
    }

    /// `l[i] = v`, or [`Error::IndexError`].
    pub fn set(&self, index: i64, value: &T) -> Result<()> {
        self.call(Op::ListSet(index, enc(value)?)).map(drop)
    }

    /// `l.pop(i)` (`-1`: the last), or [`Error::IndexError`].
    pub fn pop(&self, index: i64) -> Result<T> {
        value_of(self.call(Op::ListPop(index))?)
    }

    /// `list(l)`: a copy.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.call(Op::ListItems)? {
            Reply::Items(v) => v.iter().map(|b| dec(b)).collect(),
            r => Err(unexpected(r)),
        }
    }
}

sized!(List<T>, "l");

/// An array held by the manager (Python's `manager.Array(typecode, sequence)`): a list
/// whose length is fixed when it is made. Indices may be negative, as in Python.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Array<T> {
    token: Token,
    _t: PhantomData<fn() -> (T,)>,
}

proxy_impls!(Array<T>, Array);

impl<T: Message> Array<T> {
    /// `a[i]`, or [`Error::IndexError`].
    pub fn get(&self, index: i64) -> Result<T> {
        value_of(self.call(Op::ListGet(index))?)
    }

    /// `a[i] = v`, or [`Error::IndexError`].
    pub fn set(&self, index: i64, value: &T) -> Result<()> {
        self.call(Op::ListSet(index, enc(value)?)).map(drop)
    }

    /// `len(a)`.
    pub fn len(&self) -> Result<usize> {
        len(self.call(Op::Len)?)
    }

    /// `len(a) == 0`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// `list(a)`: a copy.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match self.call(Op::ListItems)? {
            Reply::Items(v) => v.iter().map(|b| dec(b)).collect(),
            r => Err(unexpected(r)),
        }
    }
}

/// A namespace held by the manager (Python's `manager.Namespace()`): named attributes,
/// each of any message type, given at each access.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Namespace {
    token: Token,
}

proxy_impls!(Namespace, Namespace);

impl Namespace {
    /// `ns.name`, as a `T`, or [`Error::AttributeError`].
    pub fn get<T: Message>(&self, name: &str) -> Result<T> {
        value_of(self.call(Op::NsGet(name.to_string()))?)
    }

    /// `ns.name = value`.
    pub fn set<T: Message>(&self, name: &str, value: &T) -> Result<()> {
        self.call(Op::NsSet(name.to_string(), enc(value)?))
            .map(drop)
    }

    /// `del ns.name`, or [`Error::AttributeError`].
    pub fn delete(&self, name: &str) -> Result<()> {
        self.call(Op::NsDel(name.to_string())).map(drop)
    }

    /// The attributes' names, in the order they were first set.
    pub fn names(&self) -> Result<Vec<String>> {
        match self.call(Op::NsNames)? {
            Reply::Names(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }
}

/// A single value held by the manager (Python's `manager.Value(typecode, value)`; the
/// type is `T`).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Value<T> {
    token: Token,
    _t: PhantomData<fn() -> (T,)>,
}

proxy_impls!(Value<T>, Value);

impl<T: Message> Value<T> {
    /// `v.value`.
    pub fn get(&self) -> Result<T> {
        value_of(self.call(Op::ValueGet)?)
    }

    /// `v.value = x`.
    pub fn set(&self, value: &T) -> Result<()> {
        self.call(Op::ValueSet(enc(value)?)).map(drop)
    }
}

/// A FIFO queue held by the manager (Python's `manager.Queue(maxsize)`).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Queue<T> {
    token: Token,
    _t: PhantomData<fn() -> (T,)>,
}

proxy_impls!(Queue<T>, Queue);

impl<T: Message> Queue<T> {
    /// `q.put(v)`: waits for room in a bounded queue.
    pub fn put(&self, value: &T) -> Result<()> {
        self.put_timeout(value, None)
    }

    /// `q.put(v, timeout=t)`: [`Error::Full`] when no room came in time.
    pub fn put_timeout(&self, value: &T, timeout: Option<Duration>) -> Result<()> {
        self.call(Op::QueuePut(enc(value)?, millis(timeout)))
            .map(drop)
    }

    /// `q.get()`: waits for an item.
    pub fn get(&self) -> Result<T> {
        self.get_timeout(None)
    }

    /// `q.get(timeout=t)`: [`Error::Empty`] when nothing came in time (`Duration::ZERO`:
    /// `get_nowait`).
    pub fn get_timeout(&self, timeout: Option<Duration>) -> Result<T> {
        value_of(self.call(Op::QueueGet(millis(timeout)))?)
    }

    /// `q.qsize()`.
    pub fn qsize(&self) -> Result<usize> {
        len(self.call(Op::Len)?)
    }

    /// `q.empty()`.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }
}

/// `acquire`, `acquire_timeout` and `release` of a lock-like proxy (`$v` names it in the docs).
macro_rules! acquire_release {
    ($t:ident, $v:literal, $release:literal) => {
        impl $t {
            #[doc = concat!("`", $v, ".acquire()`.")]
            pub fn acquire(&self) -> Result<()> {
                self.acquire_timeout(None).map(drop)
            }

            #[doc = concat!("`", $v, ".acquire(timeout=t)`: false when it did not come free in time.")]
            pub fn acquire_timeout(&self, timeout: Option<Duration>) -> Result<bool> {
                flag_of(self.call(Op::Acquire(millis(timeout)))?)
            }

            #[doc = $release]
            pub fn release(&self) -> Result<()> {
                self.call(Op::Release).map(drop)
            }
        }
    };
}

/// A lock held by the manager (Python's `manager.Lock()`). It belongs to the connection
/// (thread and process) that acquired it; if that process dies, the server releases it.
/// As with Python's `Lock`, any holder of a proxy may release it.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Lock {
    token: Token,
}

proxy_impls!(Lock, Lock);

acquire_release!(Lock, "lock", "`lock.release()`, or [`Error::NotLocked`].");

/// An event held by the manager (Python's `manager.Event()`).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Event {
    token: Token,
}

proxy_impls!(Event, Event);

impl Event {
    /// `e.set()`: wakes every waiter.
    pub fn set(&self) -> Result<()> {
        self.call(Op::EventSet).map(drop)
    }

    /// `e.clear()`.
    pub fn clear(&self) -> Result<()> {
        self.call(Op::EventClear).map(drop)
    }

    /// `e.is_set()`.
    pub fn is_set(&self) -> Result<bool> {
        flag_of(self.call(Op::EventIsSet)?)
    }

    /// `e.wait(timeout)`: true once set, false on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        flag_of(self.call(Op::EventWait(millis(timeout)))?)
    }
}

/// A re-entrant lock held by the manager (Python's `manager.RLock()`). It belongs to the
/// thread (of the process) that acquired it, which may acquire it again and must release
/// it as many times; if that process dies, the server releases it.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct RLock {
    token: Token,
}

proxy_impls!(RLock, RLock);

acquire_release!(
    RLock,
    "rlock",
    "`rlock.release()`; [`Error::NotOwner`] from a thread that does not hold it."
);

/// A semaphore held by the manager (Python's `manager.Semaphore(value)`).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Semaphore {
    token: Token,
}

proxy_impls!(Semaphore, Semaphore);

/// A bounded semaphore held by the manager (Python's `manager.BoundedSemaphore(value)`):
/// releasing it above its initial value is [`Error::TooManyReleases`].
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct BoundedSemaphore {
    token: Token,
}

proxy_impls!(BoundedSemaphore, BoundedSemaphore);

macro_rules! semaphore_methods {
    ($t:ident) => {
        acquire_release!(
            $t,
            "sem",
            "`sem.release()`: increments the value, waking one waiter."
        );

        impl $t {
            /// The current value (Python's `sem._value`).
            pub fn value(&self) -> Result<u64> {
                match self.call(Op::SemValue)? {
                    Reply::Len(v) => Ok(v),
                    r => Err(unexpected(r)),
                }
            }
        }
    };
}

semaphore_methods!(Semaphore);
semaphore_methods!(BoundedSemaphore);

/// A condition variable held by the manager, with its own re-entrant lock (Python's
/// `manager.Condition()`). `wait` and `notify` need the lock held by the calling thread.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Condition {
    token: Token,
}

proxy_impls!(Condition, Condition);

acquire_release!(
    Condition,
    "cond",
    "`cond.release()`; [`Error::NotOwner`] from a thread that does not hold it."
);

impl Condition {
    /// `cond.wait(timeout)`: releases the lock, waits for a notify, takes the lock back. True
    /// when notified, false on timeout; [`Error::NotOwner`] without the lock.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        flag_of(self.call(Op::CondWait(millis(timeout)))?)
    }

    /// `cond.wait_for(predicate, timeout)`: waits until `predicate()` holds (checked with the
    /// lock held, first before any wait); returns its last value.
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool> {
        let until = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = match until {
                None => None,
                Some(t) => {
                    let left = t.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    Some(left)
                }
            };
            self.wait(left)?;
        }
    }

    /// `cond.notify(n)`: wakes up to `n` waiters.
    pub fn notify(&self, n: usize) -> Result<()> {
        self.call(Op::CondNotify(n as u64)).map(drop)
    }

    /// `cond.notify_all()`.
    pub fn notify_all(&self) -> Result<()> {
        self.call(Op::CondNotify(u64::MAX)).map(drop)
    }
}

/// A barrier held by the manager (Python's `manager.Barrier(parties)`).
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Barrier {
    token: Token,
}

proxy_impls!(Barrier, Barrier);

impl Barrier {
    /// `barrier.wait(timeout)`: waits until `parties` parties have called it and returns
    /// this party's arrival index (0 to `parties - 1`). A timeout breaks the barrier; a broken
    /// barrier is [`Error::BrokenBarrier`] for every party until [`reset`](Self::reset).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<usize> {
        len(self.call(Op::BarrierWait(millis(timeout)))?)
    }

    /// `barrier.abort()`: breaks the barrier.
    pub fn abort(&self) -> Result<()> {
        self.call(Op::BarrierAbort).map(drop)
    }

    /// `barrier.reset()`: back to empty and unbroken; parties waiting get
    /// [`Error::BrokenBarrier`].
    pub fn reset(&self) -> Result<()> {
        self.call(Op::BarrierReset).map(drop)
    }

    fn state(&self) -> Result<(u64, u64, bool)> {
        match self.call(Op::BarrierState)? {
            Reply::BarrierState(p, n, b) => Ok((p, n, b)),
            r => Err(unexpected(r)),
        }
    }

    /// `barrier.parties`.
    pub fn parties(&self) -> Result<usize> {
        Ok(self.state()?.0 as usize)
    }

    /// `barrier.n_waiting`.
    pub fn n_waiting(&self) -> Result<usize> {
        Ok(self.state()?.1 as usize)
    }

    /// `barrier.broken`.
    pub fn broken(&self) -> Result<bool> {
        Ok(self.state()?.2)
    }
}
