//! One connection to the server, with bounded retries.
//!
//! Every call goes through [`Conn::run`]: an I/O error, a dropped connection, a refused
//! connect or a server still loading its data set drops the connection and retries with
//! exponential back-off (10 ms doubling to 1 s) until the cluster's retry budget is spent,
//! then fails with [`Error::Unreachable`]. Credentials refused are [`Error::Auth`] at once.
//!
//! On every new connection the server's `run_id` is read: when it changed, the server was
//! restarted (and, without persistence, lost its data); [`Shared::epoch`] counts such
//! changes so that a pool can send its unanswered tasks again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, RedisResult};

use crate::error::{Error, Result};
use mp_core::util::lock_unpoisoned;

/// Settings and state shared by every connection of one cluster handle.
pub(crate) struct Shared {
    pub(crate) client: redis::Client,
    pub(crate) prefix: String,
    pub(crate) max_value: usize,
    pub(crate) retry_for: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_tries: u64,
    pub(crate) connect_timeout: Duration,
    pub(crate) io_timeout: Duration,
    /// The last run_id seen.
    run_id: Mutex<Option<String>>,
    /// How many times the run_id changed.
    epoch: AtomicU64,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: redis::Client,
        prefix: String,
        max_value: usize,
        retry_for: Duration,
        lease: Duration,
        max_tries: u64,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Shared {
        Shared {
            client,
            prefix,
            max_value,
            retry_for,
            lease,
            max_tries,
            connect_timeout,
            io_timeout,
            run_id: Mutex::new(None),
            epoch: AtomicU64::new(0),
        }
    }

    /// How many server restarts this process has seen.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A key under the cluster's prefix.
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}:{}", self.prefix, rest)
    }

    /// Refuses a value over the cap.
    pub(crate) fn check_size(&self, size: usize) -> Result<()> {
        if size > self.max_value {
            return Err(Error::TooLarge {
                size,
                cap: self.max_value,
            });
        }
        Ok(())
    }

    fn saw_run_id(&self, id: String) {
        let mut last = lock_unpoisoned(&self.run_id);
        match last.as_deref() {
            Some(old) if old != id => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                *last = Some(id);
            }
            Some(_) => {}
            None => *last = Some(id),
        }
    }
}

/// What to do about an error.
enum Verdict {
    Retry,
    Fail(Error),
}

fn judge(e: &RedisError) -> Verdict {
    let code = e.code().unwrap_or("");
    if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
    {
        return Verdict::Fail(Error::Auth(e.to_string()));
    }
    // rustls reports a certificate it does not trust as an I/O error ("invalid peer
    // certificate: UnknownIssuer"); retrying will not make it trusted.
    let text = e.to_string();
    if e.is_io_error()
        && (text.contains("peer certificate") || text.contains("CertificateRequired"))
    {
        return Verdict::Fail(Error::Tls(text));
    }
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(code, "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "BUSY")
    {
        return Verdict::Retry;
    }
    if matches!(e.kind(), redis::ErrorKind::InvalidClientConfig) {
        return Verdict::Fail(Error::Config(e.to_string()));
    }
    Verdict::Fail(Error::Redis(e.to_string()))
}

/// Reads `run_id:` out of `INFO server`.
fn run_id(con: &mut Connection) -> RedisResult<String> {
    let info: String = redis::cmd("INFO").arg("server").query(con)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or("")
        .trim()
        .to_string())
}

/// A lazily (re)opened connection.
pub(crate) struct Conn {
    con: Option<Connection>,
}

impl Conn {
    /// A connection that opens on first use.
    pub(crate) fn new() -> Conn {
        Conn { con: None }
    }

    fn open(&mut self, sh: &Shared) -> RedisResult<&mut Connection> {
        if self.con.is_none() {
            let mut c = sh.client.get_connection_with_timeout(sh.connect_timeout)?;
            c.set_write_timeout(Some(sh.io_timeout))?;
            c.set_read_timeout(Some(sh.io_timeout))?;
            let id = run_id(&mut c)?;
            sh.saw_run_id(id);
            self.con = Some(c);
        }
        match self.con.as_mut() {
            Some(c) => Ok(c),
            None => Err(RedisError::from((
                redis::ErrorKind::Client,
                "no connection",
            ))),
        }
    }

    /// Runs `f` on the connection, retrying as the module doc says. `block` is how long a
    /// blocking command in `f` may wait on the server: the read timeout is that plus the
    /// normal one.
    pub(crate) fn run<T>(
        &mut self,
        sh: &Shared,
        block: Option<Duration>,
        mut f: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            let attempt = self.open(sh).and_then(|c| {
                let read = block.map_or(sh.io_timeout, |b| b.saturating_add(sh.io_timeout));
                c.set_read_timeout(Some(read))?;
                f(c)
            });
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) => match judge(&e) {
                    Verdict::Fail(err) => {
                        if e.is_unrecoverable_error() {
                            self.con = None;
                        }
                        return Err(err);
                    }
                    Verdict::Retry => {
                        self.con = None;
                        if start.elapsed() >= sh.retry_for {
                            return Err(Error::Unreachable {
                                retried: sh.retry_for,
                                last: e.to_string(),
                            });
                        }
                        std::thread::sleep(backoff);
                        backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                    }
                },
            }
        }
    }
}

/// A random 64-bit tag (from the kernel).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        // No entropy source: fall back on time and pid, unique enough for key names.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// Lower-case hex of bytes.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This host's name (for worker ids).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// A duration in whole milliseconds, at least 1, for PX arguments.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A duration in seconds for blocking commands (which take fractional seconds), at least
/// 1 ms (0 would block forever).
pub(crate) fn block_secs(d: Duration) -> f64 {
    d.as_secs_f64().max(0.001)
}
