//! mp across machines: the same `Pool`, `Queue`, `Lock`, `Event`, `Barrier` and dict, with
//! the state on a Redis-protocol server (Redis 7, Valkey) and the work done by any number of
//! worker processes on any number of machines.
//!
//! # Hello, cluster
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> Result<(), mp_redis::Error> {
//!     // `myapp --mp-worker redis://host:6379` makes this same binary a worker.
//!     mp_redis::init();
//!     let cluster = mp_redis::Cluster::connect("redis://127.0.0.1:6379/0")?;
//!     let pool = cluster.pool()?;
//!     assert_eq!(pool.map(square, 0..4u64)?, [0, 1, 4, 9]);
//!
//!     let q = cluster.queue::<String>("jobs")?;
//!     q.put(&"hello".to_string())?;
//!     let d = q.get_ack()?; // held until acked: survives this process being killed
//!     assert_eq!(d.value().map(String::as_str), Some("hello"));
//!     d.ack()?;
//!
//!     let lock = cluster.lock("db-migration");
//!     {
//!         let _held = lock.lock()?;
//!         // one process of the whole cluster at a time (for at most the lease)
//!     }
//!     let totals = cluster.dict::<String, u64>("totals");
//!     totals.set(&"a".into(), &1)?;
//!     Ok(())
//! }
//! ```
//!
//! # Workers
//!
//! A worker is the program's own binary: tasks are its own `fn(T) -> R`, found again in the
//! worker at the same offset from a known symbol (mp-process's checked symbol table), after
//! checking that the worker runs the same build. Start them with `myapp --mp-worker URL
//! [--mp-workers N] [--mp-prefix P]` (handled by [`init`]) or from code with [`serve`]. They
//! join and leave at any time; idle ones block in the server (`BLMOVE`), using no CPU.
//! A worker that runs another build refuses the task with [`Error::WrongBuild`], naming both
//! build ids.
//!
//! # Delivery
//!
//! At-least-once with leases: a task taken by a worker sits in that worker's held list
//! while the worker's lease (renewed by a heartbeat) lives; when the worker dies, the lease
//! runs out and the task goes back to the queue. A task whose workers are lost
//! `max_tries` times ends with [`Error::TaskLost`]. A result that comes twice is dropped by
//! chunk id, so a map's output has each item's result exactly once; a task's *side effects*
//! may happen twice. A panic in a task is its result ([`Error::TaskPanicked`]), not retried.
//! docs/scale-out.md has the data layout and the limits.
//!
//! # Errors
//!
//! A server that goes away: calls retry with back-off for the retry budget
//! ([`ClusterBuilder::retry_for`]), then fail with [`Error::Unreachable`]. Credentials
//! refused: [`Error::Auth`]. A value over the cap is refused before it is sent
//! ([`Error::TooLarge`]).

mod conn;
mod dict;
mod error;
mod pool;
mod queue;
mod sync;
mod wire;
mod worker;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub use dict::Dict;
pub use error::{Error, Result};
pub use pool::{AsyncResult, IMap, Pool};
pub use queue::{Delivery, Queue};
pub use sync::{Barrier, Event, Lock, LockGuard};

use conn::{Conn, Shared};

/// The settings of a [`Cluster`] handle, from [`Cluster::builder`]. Its `Debug` shows
/// neither the URL (which may hold a password) nor TLS keys.
#[derive(Clone)]
pub struct ClusterBuilder {
    url: String,
    prefix: String,
    max_value: usize,
    retry_for: Duration,
    lease: Duration,
    max_tries: u64,
    connect_timeout: Duration,
    io_timeout: Duration,
    #[cfg(feature = "tls")]
    tls_root: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    tls_client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("prefix", &self.prefix)
            .field("max_value", &self.max_value)
            .field("retry_for", &self.retry_for)
            .field("lease", &self.lease)
            .field("max_tries", &self.max_tries)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// For `rediss://` URLs: trust this CA certificate (PEM) instead of the system's roots
    /// (a server with a certificate of a private CA). Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_root_cert(mut self, pem: Vec<u8>) -> Self {
        self.tls_root = Some(pem);
        self
    }

    /// For `rediss://` URLs to a server that checks clients (`tls-auth-clients yes`): this
    /// client's certificate and key (PEM). Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.tls_client = Some((cert_pem, key_pem));
        self
    }

    #[cfg(feature = "tls")]
    fn client(&self) -> Result<redis::Client> {
        // rustls needs a process-wide crypto provider; an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad =
            |e: redis::RedisError| Error::Config(format!("bad Redis URL or TLS setting: {e}"));
        if self.tls_root.is_none() && self.tls_client.is_none() {
            return redis::Client::open(self.url.as_str()).map_err(bad);
        }
        let certs = redis::TlsCertificates {
            client_tls: self.tls_client.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }
            }),
            root_cert: self.tls_root.clone(),
        };
        redis::Client::build_with_tls(self.url.as_str(), certs).map_err(bad)
    }

    #[cfg(not(feature = "tls"))]
    fn client(&self) -> Result<redis::Client> {
        if self.url.starts_with("rediss://") {
            return Err(Error::Config(
                "rediss:// (TLS) needs mp-redis built with its `tls` feature".into(),
            ));
        }
        redis::Client::open(self.url.as_str())
            .map_err(|e| Error::Config(format!("bad Redis URL: {e}")))
    }

    /// The prefix of every key this cluster uses (default `mp`): programs with different
    /// prefixes share a server without seeing each other's tasks and objects.
    pub fn prefix(mut self, p: &str) -> Self {
        self.prefix = p.to_string();
        self
    }

    /// The largest value (task message, result, queue item, dict entry) sent, in bytes
    /// (default 64 MiB; Redis itself refuses more than 512 MiB).
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value = n;
        self
    }

    /// How long a call retries while the server cannot be reached (default 30 s).
    pub fn retry_for(mut self, d: Duration) -> Self {
        self.retry_for = d;
        self
    }

    /// A worker's lease (default 10 s): a worker that dies has its task run again this long
    /// after its last heartbeat. Also the default visibility of queue deliveries.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_millis(30));
        self
    }

    /// How many times a task may be taken before it ends with [`Error::TaskLost`]
    /// (default 3).
    pub fn max_tries(mut self, n: u64) -> Self {
        self.max_tries = n.max(1);
        self
    }

    /// The timeout of a connection attempt and of an ordinary reply (default 5 s and 30 s).
    pub fn timeouts(mut self, connect: Duration, io: Duration) -> Self {
        self.connect_timeout = connect.max(Duration::from_millis(1));
        self.io_timeout = io.max(Duration::from_millis(1));
        self
    }

    /// Opens the cluster: checks the URL and that the server answers (`PING`), within the
    /// retry budget.
    pub fn connect(self) -> Result<Cluster> {
        if self.prefix.is_empty() {
            return Err(Error::Config("the key prefix must not be empty".into()));
        }
        let client = self.client()?;
        let sh = Arc::new(Shared::new(
            client,
            self.prefix,
            self.max_value,
            self.retry_for,
            self.lease,
            self.max_tries,
            self.connect_timeout,
            self.io_timeout,
        ));
        Conn::new().run(&sh, None, |c| redis::cmd("PING").query::<String>(c))?;
        Ok(Cluster { sh })
    }
}

/// A connection to the cluster's server: makes pools, named objects and workers.
/// Cheap to clone (every object opens its own connections).
#[derive(Clone)]
pub struct Cluster {
    sh: Arc<Shared>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.sh.prefix)
            .finish()
    }
}

impl Cluster {
    /// Connects with the default settings. The URL is `redis://[user:password@]host:port/db`
    /// (an ACL user and its password, or `:password` for the default user), or `rediss://`
    /// for TLS (with the `tls` feature).
    pub fn connect(url: &str) -> Result<Cluster> {
        Cluster::builder(url).connect()
    }

    /// Settings before connecting.
    pub fn builder(url: &str) -> ClusterBuilder {
        ClusterBuilder {
            url: url.to_string(),
            prefix: "mp".into(),
            max_value: 64 << 20,
            retry_for: Duration::from_secs(30),
            lease: Duration::from_secs(10),
            max_tries: 3,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            #[cfg(feature = "tls")]
            tls_root: None,
            #[cfg(feature = "tls")]
            tls_client: None,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.sh.prefix
    }

    /// Deletes every key under this cluster's prefix (tasks, results, queues, locks, ...):
    /// for tests and for a program that is done with the server. Returns how many keys went.
    /// Other prefixes are untouched.
    pub fn purge(&self) -> Result<u64> {
        let mut pattern = String::new();
        for ch in self.sh.prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(ch);
        }
        pattern.push_str(":*");
        let mut con = Conn::new();
        let mut cursor: u64 = 0;
        let mut gone: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = con.run(&self.sh, None, |c| {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(c)
            })?;
            if !keys.is_empty() {
                let n: u64 =
                    con.run(&self.sh, None, |c| redis::cmd("UNLINK").arg(&keys).query(c))?;
                gone = gone.saturating_add(n);
            }
            if next == 0 {
                return Ok(gone);
            }
            cursor = next;
        }
    }

    /// A pool whose tasks run on the cluster's workers.
    pub fn pool(&self) -> Result<Pool> {
        Pool::new(self.sh.clone())
    }

    /// The unbounded queue `name` (created on first use).
    pub fn queue<T: mp_core::Message>(&self, name: &str) -> Result<Queue<T>> {
        Queue::open(self.sh.clone(), name, 0)
    }

    /// The queue `name` bounded to `maxsize` items ([`Error::MaxsizeMismatch`] if it exists
    /// with another bound).
    pub fn bounded_queue<T: mp_core::Message>(&self, name: &str, maxsize: u64) -> Result<Queue<T>> {
        Queue::open(self.sh.clone(), name, maxsize)
    }

    /// The lock `name`.
    pub fn lock(&self, name: &str) -> Lock {
        Lock::open(self.sh.clone(), name)
    }

    /// The event `name`.
    pub fn event(&self, name: &str) -> Event {
        Event::open(self.sh.clone(), name)
    }

    /// The barrier `name` for `parties` parties.
    pub fn barrier(&self, name: &str, parties: u32) -> Result<Barrier> {
        Barrier::open(self.sh.clone(), name, parties)
    }

    /// The dict `name`.
    pub fn dict<K: mp_core::Message, V: mp_core::Message>(&self, name: &str) -> Dict<K, V> {
        Dict::open(self.sh.clone(), name)
    }

    /// Runs `n` worker threads in this process (each takes one task at a time) until one
    /// fails for good: the server unreachable beyond the retry budget, or credentials
    /// refused. Threads, not processes: tasks are Rust functions with no interpreter lock,
    /// so they use every core; a task that kills its process loses the process's `n`
    /// tasks, which then run again elsewhere.
    pub fn serve(&self, n: usize) -> Result<()> {
        worker::serve(self.sh.clone(), n, Arc::new(AtomicBool::new(false)))
    }
}

/// Connects to `url` and runs `n` workers in this process ([`Cluster::serve`]).
pub fn serve(url: &str, n: usize) -> Result<()> {
    Cluster::connect(url)?.serve(n)
}

/// Call first thing in `main`. When the program was started as `myapp --mp-worker URL
/// [--mp-workers N] [--mp-prefix P] [--mp-tls-ca CA.pem]`, it becomes a worker of that
/// cluster (N threads, the CPU count by default) and exits; otherwise it returns at once.
/// `--mp-tls-ca` (feature `tls`) trusts a private CA for a `rediss://` URL.
pub fn init() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(url) = flag("--mp-worker") else {
        return;
    };
    let n = match flag("--mp-workers") {
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("mp-redis: --mp-workers wants a positive number, got {s:?}");
                std::process::exit(2);
            }
        },
        None => mp_process::cpu_count(),
    };
    let mut b = Cluster::builder(&url);
    if let Some(p) = flag("--mp-prefix") {
        b = b.prefix(&p);
    }
    #[cfg(feature = "tls")]
    if let Some(path) = flag("--mp-tls-ca") {
        match std::fs::read(&path) {
            Ok(pem) => b = b.tls_root_cert(pem),
            Err(e) => {
                eprintln!("mp-redis: --mp-tls-ca {path}: {e}");
                std::process::exit(2);
            }
        }
    }
    let r = b.connect().and_then(|c| c.serve(n));
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("mp-redis worker: {e}");
            std::process::exit(1);
        }
    }
}
