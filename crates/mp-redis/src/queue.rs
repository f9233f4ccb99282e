//! [`Queue`]: a named FIFO queue of messages on the server, bounded or not, with
//! acknowledged gets that survive a consumer killed before its acknowledgement.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mp_core::message::{decode, encode};
use mp_core::Message;
use redis::{Direction, Script};

use crate::conn::{self, Conn, Shared};
use crate::error::{Error, Result};
use crate::wire;
use mp_core::util::lock_unpoisoned;

/// Pushes `ARGV[1]` onto `KEYS[1]` unless the queue holds `ARGV[2]` (> 0) items already.
const PUT: &str = r"
local max = tonumber(ARGV[2])
if max > 0 and redis.call('LLEN', KEYS[1]) >= max then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[1])
return 1
";

/// Tells one blocked putter that there is room (`KEYS[1]`, a list of at most one token).
const ROOM: &str = r"
redis.call('LPUSH', KEYS[1], 1)
redis.call('LTRIM', KEYS[1], 0, 0)
return 1
";

/// A named queue of `T` on the cluster (Python's `multiprocessing.Queue`, across machines).
/// Made by [`Cluster::queue`](crate::Cluster::queue) or
/// [`Cluster::bounded_queue`](crate::Cluster::bounded_queue).
///
/// Layout: the items are the list `{prefix}:q:{name}` (pushed on the left, taken from the
/// right). [`get_ack`](Self::get_ack) moves an item atomically (`BLMOVE`) into this handle's
/// held list `{prefix}:q:{name}:held:{consumer}` and renews the consumer's lease; an item is
/// gone for good only at [`Delivery::ack`]. When a consumer dies, its lease runs out and the
/// next `get` of any handle of the queue puts its held items back.
pub struct Queue<T> {
    sh: Arc<Shared>,
    name: String,
    key: String,
    maxsize: u64,
    consumer: String,
    visibility: Duration,
    con: Mutex<Conn>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("maxsize", &self.maxsize)
            .finish()
    }
}

impl<T: Message> Queue<T> {
    pub(crate) fn open(sh: Arc<Shared>, name: &str, maxsize: u64) -> Result<Queue<T>> {
        let key = sh.key(&format!("q:{name}"));
        let q = Queue {
            consumer: format!(
                "{}:{}:{:016x}",
                conn::hostname(),
                std::process::id(),
                conn::random_u64()
            ),
            visibility: sh.lease,
            name: name.to_string(),
            maxsize,
            key,
            sh,
            con: Mutex::new(Conn::new()),
            _t: PhantomData,
        };
        let max_key = format!("{}:max", q.key);
        let existing: u64 = q.run(None, |c| {
            redis::pipe()
                .cmd("SETNX")
                .arg(&max_key)
                .arg(maxsize)
                .ignore()
                .cmd("GET")
                .arg(&max_key)
                .query::<(u64,)>(c)
                .map(|(v,)| v)
        })?;
        if existing != maxsize {
            return Err(Error::MaxsizeMismatch {
                name: name.to_string(),
                existing,
                requested: maxsize,
            });
        }
        Ok(q)
    }

    /// How long an item taken by [`get_ack`](Self::get_ack) may stay unacknowledged while
    /// this handle makes no call (the consumer's lease; default: the cluster's lease).
    pub fn visibility(mut self, d: Duration) -> Self {
        self.visibility = d.max(Duration::from_millis(1));
        self
    }

    /// The queue's `maxsize` (0: unbounded).
    pub fn maxsize(&self) -> u64 {
        self.maxsize
    }

    fn run<V>(
        &self,
        block: Option<Duration>,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<V>,
    ) -> Result<V> {
        let mut con = lock_unpoisoned(&self.con);
        con.run(&self.sh, block, f)
    }

    /// Python's `put`: waits for room in a bounded queue.
    pub fn put(&self, item: &T) -> Result<()> {
        self.put_until(item, None)
    }

    /// `put` waiting at most `timeout`: [`Error::Full`] when there is still no room.
    pub fn put_timeout(&self, item: &T, timeout: Duration) -> Result<()> {
        self.put_until(item, Some(Instant::now() + timeout))
    }

    /// `put` that does not wait: [`Error::Full`] at once.
    pub fn put_nowait(&self, item: &T) -> Result<()> {
        self.put_until(item, Some(Instant::now()))
    }

    fn put_until(&self, item: &T, deadline: Option<Instant>) -> Result<()> {
        let bytes = encode(item)?;
        self.sh.check_size(bytes.len())?;
        let script = Script::new(PUT);
        let room = format!("{}:room", self.key);
        loop {
            let ok: u64 = self.run(None, |c| {
                script
                    .key(&self.key)
                    .arg(bytes.as_slice())
                    .arg(self.maxsize)
                    .invoke(c)
            })?;
            if ok == 1 {
                return Ok(());
            }
            let wait = match deadline {
                None => Duration::from_millis(200),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Full);
                    }
                    (d - now).min(Duration::from_millis(200))
                }
            };
            // Woken by a get (ROOM); the slice bounds a wake-up lost to a getter's crash.
            self.run(Some(wait), |c| {
                redis::cmd("BRPOP")
                    .arg(&room)
                    .arg(conn::block_secs(wait))
                    .query::<Option<(String, u64)>>(c)
            })?;
        }
    }

    /// Python's `get` (waits for an item). The item is gone from the queue as soon as it is
    /// taken: a consumer killed right after loses it. Use [`get_ack`](Self::get_ack) when
    /// that must not happen.
    pub fn get(&self) -> Result<T> {
        self.get_until(None)
    }

    /// `get` waiting at most `timeout`: [`Error::Empty`] when nothing came.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Some(Instant::now() + timeout))
    }

    /// `get` that does not wait: [`Error::Empty`] at once.
    pub fn get_nowait(&self) -> Result<T> {
        self.reap()?;
        let got: Option<Vec<u8>> =
            self.run(None, |c| redis::cmd("RPOP").arg(&self.key).query(c))?;
        match got {
            Some(b) => {
                self.made_room()?;
                Ok(decode(&b)?)
            }
            None => Err(Error::Empty),
        }
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T> {
        let b = self.take(deadline, |q, wait| {
            q.run(Some(wait), |c| {
                redis::cmd("BRPOP")
                    .arg(&q.key)
                    .arg(conn::block_secs(wait))
                    .query::<Option<(String, Vec<u8>)>>(c)
                    .map(|o| o.map(|(_, b)| b))
            })
        })?;
        Ok(decode(&b)?)
    }

    /// Takes an item that stays held for this handle until [`Delivery::ack`]: if this
    /// process dies first (or makes no call for longer than its
    /// [`visibility`](Self::visibility)), the item goes back to the queue. Dropping the
    /// delivery without `ack` puts it back at once.
    pub fn get_ack(&self) -> Result<Delivery<'_, T>> {
        self.get_ack_until(None)
    }

    /// [`get_ack`](Self::get_ack) waiting at most `timeout`: [`Error::Empty`].
    pub fn get_ack_timeout(&self, timeout: Duration) -> Result<Delivery<'_, T>> {
        self.get_ack_until(Some(Instant::now() + timeout))
    }

    fn held(&self) -> String {
        format!("{}:held:{}", self.key, self.consumer)
    }

    fn renew(&self) -> Result<()> {
        let lease = format!("{}:lease:{}", self.key, self.consumer);
        let px = conn::millis(self.visibility);
        self.run(None, |c| {
            redis::pipe()
                .cmd("SET")
                .arg(&lease)
                .arg(1)
                .arg("PX")
                .arg(px)
                .ignore()
                .cmd("SADD")
                .arg(format!("{}:consumers", self.key))
                .arg(&self.consumer)
                .ignore()
                .query::<()>(c)
        })
    }

    fn get_ack_until(&self, deadline: Option<Instant>) -> Result<Delivery<'_, T>> {
        let held = self.held();
        let b = self.take(deadline, |q, wait| {
            // The lease first: a held item always has one that can run out.
            q.renew()?;
            q.run(Some(wait), |c| {
                redis::cmd("BLMOVE")
                    .arg(&q.key)
                    .arg(&held)
                    .arg(Direction::Right)
                    .arg(Direction::Left)
                    .arg(conn::block_secs(wait))
                    .query::<Option<Vec<u8>>>(c)
            })
        })?;
        match decode(&b) {
            Ok(value) => Ok(Delivery {
                queue: self,
                raw: b,
                value: Some(value),
                settled: false,
            }),
            Err(e) => {
                // Not a `T`: give it back rather than lose it, and say so.
                let _ = self.settle(&b, true);
                Err(e.into())
            }
        }
    }

    /// Waits for an item with `pop` (one blocking call of at most the given slice), reaping
    /// dead consumers between slices.
    fn take(
        &self,
        deadline: Option<Instant>,
        mut pop: impl FnMut(&Self, Duration) -> Result<Option<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let slice = (self.visibility / 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            self.reap()?;
            let wait = match deadline {
                None => slice,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Empty);
                    }
                    (d - now).min(slice)
                }
            };
            if let Some(b) = pop(self, wait)? {
                self.made_room()?;
                return Ok(b);
            }
        }
    }

    fn made_room(&self) -> Result<()> {
        if self.maxsize == 0 {
            return Ok(());
        }
        let script = Script::new(ROOM);
        let room = format!("{}:room", self.key);
        self.run(None, |c| script.key(&room).invoke::<()>(c))
    }

    /// Puts back what dead consumers of this queue held.
    fn reap(&self) -> Result<u64> {
        let script = Script::new(wire::REAP);
        self.run(None, |c| {
            script
                .arg(format!("{}:consumers", self.key))
                .arg(format!("{}:lease:", self.key))
                .arg(format!("{}:held:", self.key))
                .arg(&self.key)
                .invoke(c)
        })
    }

    /// Removes (ack) or returns (nack) one held item.
    fn settle(&self, raw: &[u8], back: bool) -> Result<()> {
        let held = self.held();
        self.run(None, |c| {
            let mut p = redis::pipe();
            p.atomic().cmd("LREM").arg(&held).arg(1).arg(raw).ignore();
            if back {
                p.cmd("RPUSH").arg(&self.key).arg(raw).ignore();
            }
            p.query::<()>(c)
        })?;
        self.renew()
    }

    /// Python's `qsize`: the items waiting (not those held by consumers).
    pub fn qsize(&self) -> Result<usize> {
        self.run(None, |c| redis::cmd("LLEN").arg(&self.key).query(c))
    }

    /// Python's `empty`.
    pub fn empty(&self) -> Result<bool> {
        Ok(self.qsize()? == 0)
    }

    /// Python's `full` (always false for an unbounded queue).
    pub fn full(&self) -> Result<bool> {
        Ok(self.maxsize > 0 && self.qsize()? as u64 >= self.maxsize)
    }
}

/// An item taken by [`Queue::get_ack`]: acknowledge it with [`ack`](Self::ack) once it is
/// handled; dropped without `ack`, it goes back to the queue.
pub struct Delivery<'q, T: Message> {
    queue: &'q Queue<T>,
    raw: Vec<u8>,
    value: Option<T>,
    settled: bool,
}

impl<T: Message> std::fmt::Debug for Delivery<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue.name)
            .finish()
    }
}

impl<T: Message> Delivery<'_, T> {
    /// The item.
    pub fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// Takes the item out of the delivery (it stays held until `ack`).
    pub fn take(&mut self) -> Option<T> {
        self.value.take()
    }

    /// Acknowledges the item: it is gone from the queue for good.
    pub fn ack(mut self) -> Result<()> {
        self.settled = true;
        self.queue.settle(&self.raw, false)
    }

    /// Gives the item back to the queue now (as dropping does, with the error reported).
    pub fn nack(mut self) -> Result<()> {
        self.settled = true;
        self.queue.settle(&self.raw, true)
    }
}

impl<T: Message> Drop for Delivery<'_, T> {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.queue.settle(&self.raw, true);
        }
    }
}
