//! [`Lock`], [`Event`] and [`Barrier`] on the server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::conn::{self, Conn, Shared};
use crate::error::{Error, Result};
use mp_core::util::lock_unpoisoned;

/// Deletes lock `KEYS[1]` if it holds token `ARGV[1]`, and wakes one waiter (`KEYS[2]`).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('LPUSH', KEYS[2], 1)
  redis.call('LTRIM', KEYS[2], 0, 0)
  redis.call('PEXPIRE', KEYS[2], 60000)
  return 1
end
return 0
";

/// Renews lock `KEYS[1]` for `ARGV[2]` ms if it holds token `ARGV[1]`.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Arrives at barrier hash `KEYS[1]` of `ARGV[1]` parties; the last one starts a new
/// generation and publishes it on `KEYS[2]`. Returns {generation, index, released}.
const ARRIVE: &str = r"
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local n = redis.call('HINCRBY', KEYS[1], 'count', 1)
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'count', 0)
  redis.call('HSET', KEYS[1], 'gen', gen + 1)
  redis.call('PUBLISH', KEYS[2], gen + 1)
  return {gen, n - 1, 1}
end
return {gen, n - 1, 0}
";

/// Withdraws an arrival at barrier `KEYS[1]` if its generation is still `ARGV[1]`.
/// Returns 1 when withdrawn, 0 when the barrier was released meanwhile.
const LEAVE: &str = r"
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'count', -1)
  return 1
end
return 0
";

fn run<V>(
    sh: &Shared,
    con: &Mutex<Conn>,
    block: Option<Duration>,
    f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<V>,
) -> Result<V> {
    con.lock()
        .unwrap_or_else(|p| p.into_inner())
        .run(sh, block, f)
}

/// A named lock with a lease (made by [`Cluster::lock`](crate::Cluster::lock)).
///
/// Held as the key `{prefix}:lock:{name}` set to a random token with a time to live (the
/// lease, default 30 s; [`lease`](Self::lease)). Unlike a local Lock, a holder that dies loses
/// the lock when its lease runs out, not at once; and a holder that keeps it longer than
/// the lease without [`extend`](Self::extend) loses it too: its `release` is then
/// [`Error::NotHolder`]. Waiters block on `{prefix}:lock:{name}:wake`, pushed by each
/// release, and wake at the latest when the holder's lease runs out.
pub struct Lock {
    sh: Arc<Shared>,
    name: String,
    key: String,
    lease: Duration,
    token: Mutex<Option<String>>,
    con: Mutex<Conn>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").field("name", &self.name).finish()
    }
}

impl Lock {
    pub(crate) fn open(sh: Arc<Shared>, name: &str) -> Lock {
        Lock {
            key: sh.key(&format!("lock:{name}")),
            name: name.to_string(),
            lease: Duration::from_secs(30),
            sh,
            token: Mutex::new(None),
            con: Mutex::new(Conn::new()),
        }
    }

    /// The lease a successful acquire takes (default 30 s).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_millis(1));
        self
    }

    /// Python's `acquire()`: waits until the lock is this handle's.
    pub fn acquire(&self) -> Result<()> {
        self.acquire_until(None).map(|_| ())
    }

    /// Python's `acquire(block=False)`: true when the lock was free and is now held.
    pub fn try_acquire(&self) -> Result<bool> {
        self.acquire_until(Some(Instant::now()))
    }

    /// Python's `acquire(timeout=t)`: true when taken within `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool> {
        self.acquire_until(Some(Instant::now() + timeout))
    }

    /// Acquires and returns a guard that releases on drop (Python's `with lock:`).
    pub fn lock(&self) -> Result<LockGuard<'_>> {
        self.acquire()?;
        Ok(LockGuard {
            lock: self,
            done: false,
        })
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Result<bool> {
        let token = format!("{:016x}{:016x}", conn::random_u64(), conn::random_u64());
        let px = conn::millis(self.lease);
        let wake = format!("{}:wake", self.key);
        loop {
            let (ok, ttl): (Option<String>, i64) = run(&self.sh, &self.con, None, |c| {
                redis::pipe()
                    .cmd("SET")
                    .arg(&self.key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(px)
                    .cmd("PTTL")
                    .arg(&self.key)
                    .query(c)
            })?;
            if ok.is_some() {
                *lock_unpoisoned(&self.token) = Some(token);
                return Ok(true);
            }
            // Wait for a release, or at most until the holder's lease runs out.
            let ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(1).max(1));
            let wait = match deadline {
                None => ttl,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    (d - now).min(ttl)
                }
            };
            run(&self.sh, &self.con, Some(wait), |c| {
                redis::cmd("BRPOP")
                    .arg(&wake)
                    .arg(conn::block_secs(wait))
                    .query::<Option<(String, u64)>>(c)
            })?;
        }
    }

    /// Python's `release()`: [`Error::NotHolder`] when this handle does not hold the lock
    /// (never acquired, released already, or its lease ran out and another took it).
    pub fn release(&self) -> Result<()> {
        let Some(token) = lock_unpoisoned(&self.token).take() else {
            return Err(Error::NotHolder {
                name: self.name.clone(),
            });
        };
        let script = Script::new(RELEASE);
        let wake = format!("{}:wake", self.key);
        let ok: u64 = run(&self.sh, &self.con, None, |c| {
            script.key(&self.key).key(&wake).arg(&token).invoke(c)
        })?;
        if ok == 1 {
            Ok(())
        } else {
            Err(Error::NotHolder {
                name: self.name.clone(),
            })
        }
    }

    /// Renews the lease of a held lock for another [`lease`](Self::lease);
    /// [`Error::NotHolder`] if it was lost meanwhile.
    pub fn extend(&self) -> Result<()> {
        let token = lock_unpoisoned(&self.token).clone();
        let Some(token) = token else {
            return Err(Error::NotHolder {
                name: self.name.clone(),
            });
        };
        let script = Script::new(EXTEND);
        let ok: u64 = run(&self.sh, &self.con, None, |c| {
            script
                .key(&self.key)
                .arg(&token)
                .arg(conn::millis(self.lease))
                .invoke(c)
        })?;
        if ok == 1 {
            Ok(())
        } else {
            Err(Error::NotHolder {
                name: self.name.clone(),
            })
        }
    }

    /// True when some process holds the lock now.
    pub fn is_locked(&self) -> Result<bool> {
        run(&self.sh, &self.con, None, |c| {
            redis::cmd("EXISTS")
                .arg(&self.key)
                .query::<u64>(c)
                .map(|n| n > 0)
        })
    }
}

/// Releases its [`Lock`] on drop (errors then are ignored; use [`unlock`](Self::unlock) to
/// see them).
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    done: bool,
}

impl LockGuard<'_> {
    /// Releases now and reports [`Error::NotHolder`] if the lease had run out.
    pub fn unlock(mut self) -> Result<()> {
        self.done = true;
        self.lock.release()
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.lock.release();
        }
    }
}

/// Waits for a publication on `channel` (after `ready` says it is not there yet), at most
/// until `deadline`; true when a message came. A fresh connection in subscriber mode.
fn wait_published(
    sh: &Shared,
    channel: &str,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let start = Instant::now();
    let mut failed: Option<Error> = None;
    loop {
        let attempt = (|| -> redis::RedisResult<Option<bool>> {
            let mut c = sh.client.get_connection_with_timeout(sh.connect_timeout)?;
            let mut ps = c.as_pubsub();
            ps.subscribe(channel)?;
            // Subscribed first, then checked: a publication after the check is not lost.
            match ready() {
                Ok(true) => return Ok(Some(true)),
                Ok(false) => {}
                Err(e) => {
                    failed = Some(e);
                    return Ok(None);
                }
            }
            loop {
                let wait = match deadline {
                    None => Duration::from_secs(3600),
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            return Ok(Some(false));
                        }
                        d - now
                    }
                };
                ps.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
                match ps.get_message() {
                    Ok(_) => return Ok(Some(true)),
                    Err(e) if e.is_timeout() => continue,
                    Err(e) => return Err(e),
                }
            }
        })();
        match attempt {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {
                return Err(failed
                    .take()
                    .unwrap_or_else(|| Error::Redis("wait failed".into())))
            }
            Err(e) => {
                if start.elapsed() >= sh.retry_for {
                    return Err(Error::Unreachable {
                        retried: sh.retry_for,
                        last: e.to_string(),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A named event (Python's `Event`, across machines); made by
/// [`Cluster::event`](crate::Cluster::event). Set is the key `{prefix}:event:{name}`;
/// `set` publishes on `{prefix}:event:{name}:ch`, which waiters subscribe to.
pub struct Event {
    sh: Arc<Shared>,
    name: String,
    key: String,
    con: Mutex<Conn>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("name", &self.name).finish()
    }
}

impl Event {
    pub(crate) fn open(sh: Arc<Shared>, name: &str) -> Event {
        Event {
            key: sh.key(&format!("event:{name}")),
            name: name.to_string(),
            sh,
            con: Mutex::new(Conn::new()),
        }
    }

    /// Python's `is_set`.
    pub fn is_set(&self) -> Result<bool> {
        run(&self.sh, &self.con, None, |c| {
            redis::cmd("EXISTS")
                .arg(&self.key)
                .query::<u64>(c)
                .map(|n| n > 0)
        })
    }

    /// Python's `set`: wakes every waiter, on every machine.
    pub fn set(&self) -> Result<()> {
        let ch = format!("{}:ch", self.key);
        run(&self.sh, &self.con, None, |c| {
            redis::pipe()
                .cmd("SET")
                .arg(&self.key)
                .arg(1)
                .ignore()
                .cmd("PUBLISH")
                .arg(&ch)
                .arg(1)
                .ignore()
                .query::<()>(c)
        })
    }

    /// Python's `clear`.
    pub fn clear(&self) -> Result<()> {
        run(&self.sh, &self.con, None, |c| {
            redis::cmd("DEL").arg(&self.key).query::<()>(c)
        })
    }

    /// Python's `wait(timeout)`: true when the event is (or becomes) set, false when the
    /// timeout ran out first; `None` waits for ever.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        wait_published(&self.sh, &format!("{}:ch", self.key), deadline, || {
            self.is_set()
        })
    }
}

/// A named barrier for `parties` processes anywhere on the cluster (Python's `Barrier`);
/// made by [`Cluster::barrier`](crate::Cluster::barrier). State: the hash
/// `{prefix}:barrier:{name}` (`count`, `gen`); the last arrival publishes the new generation
/// on `{prefix}:barrier:{name}:ch`.
pub struct Barrier {
    sh: Arc<Shared>,
    name: String,
    key: String,
    parties: u32,
    con: Mutex<Conn>,
}

impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("name", &self.name)
            .field("parties", &self.parties)
            .finish()
    }
}

impl Barrier {
    pub(crate) fn open(sh: Arc<Shared>, name: &str, parties: u32) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::Config("a barrier needs at least one party".into()));
        }
        Ok(Barrier {
            key: sh.key(&format!("barrier:{name}")),
            name: name.to_string(),
            parties,
            sh,
            con: Mutex::new(Conn::new()),
        })
    }

    /// Python's `parties`.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// Python's `wait()`: returns this party's arrival index, 0 to `parties - 1`.
    pub fn wait(&self) -> Result<u32> {
        self.wait_until(None)
    }

    /// `wait(timeout)`: [`Error::Timeout`] when the others did not all come in time; this
    /// party's arrival is then withdrawn (Python breaks the barrier instead).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn generation(&self) -> Result<i64> {
        run(&self.sh, &self.con, None, |c| {
            redis::cmd("HGET")
                .arg(&self.key)
                .arg("gen")
                .query::<Option<i64>>(c)
                .map(|g| g.unwrap_or(0))
        })
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        let ch = format!("{}:ch", self.key);
        let arrive = Script::new(ARRIVE);
        let mut mine: Option<(i64, u32)> = None;
        loop {
            let released = wait_published(&self.sh, &ch, deadline, || {
                if let Some((gen, _)) = mine {
                    return Ok(self.generation()? != gen);
                }
                let (gen, index, released): (i64, u32, u8) = run(&self.sh, &self.con, None, |c| {
                    arrive.key(&self.key).key(&ch).arg(self.parties).invoke(c)
                })?;
                mine = Some((gen, index));
                Ok(released == 1)
            })?;
            let Some((gen, index)) = mine else {
                continue;
            };
            if released || self.generation()? != gen {
                return Ok(index);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let leave = Script::new(LEAVE);
                let left: u8 = run(&self.sh, &self.con, None, |c| {
                    leave.key(&self.key).arg(gen).invoke(c)
                })?;
                return if left == 1 {
                    Err(Error::Timeout)
                } else {
                    Ok(index)
                };
            }
        }
    }
}
