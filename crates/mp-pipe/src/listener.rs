//! [`Listener`] and [`Client`]: connections between processes that did not start each other,
//! over Unix sockets or TCP, with CPython's framing and authentication (so the peer may be a
//! Python `multiprocessing.connection` Listener or Client).

use std::collections::VecDeque;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mp_core::util::unpoisoned;
use mp_core::Deadline;

pub use crate::address::Address;
use crate::auth;
use crate::connection::{Connection, Transport};
use crate::error::{Error, Result};
use crate::sys;

/// How long a handshake may take by default, on both sides: a [`Listener`] drops a peer that
/// has not completed it by then, and [`Client::connect`] gives up with [`Error::Timeout`].
/// (CPython waits for ever; one silent peer would then hold a connection slot for good.)
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on handshakes in progress at once, in total, in a [`Listener`].
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 128;
/// Default limit on handshakes in progress at once from one IP address (TCP only: a Unix
/// socket admits only processes of its own uid, which are trusted anyway).
pub const DEFAULT_MAX_PENDING_PER_PEER: usize = 16;
/// A handshake younger than this is never dropped for the per-peer limit: a burst of real
/// clients from one address (a pool's workers connecting at once) passes; silent ones age.
const PER_PEER_GRACE: Duration = Duration::from_millis(100);
/// Connections (and failure reports) that finished their handshake and wait for `accept`; the
/// listener stops taking new connections from the kernel while this many wait.
const READY_CAP: usize = 64;

fn check_key(authkey: Option<&[u8]>) -> Result<Option<Vec<u8>>> {
    match authkey {
        Some([]) => Err(Error::InvalidArgument(
            "authkey is empty: pass None for no authentication",
        )),
        Some(k) => Ok(Some(k.to_vec())),
        None => Ok(None),
    }
}

fn bind_error(e: std::io::Error, address: &Address) -> Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        Error::AddressInUse(address.to_string())
    } else {
        Error::io("bind", e)
    }
}

enum Sock {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Python's `multiprocessing.connection.Listener(address, authkey=...)`: accepts connections
/// from [`Client`]s (Rust or Python), authenticating each when an authkey is set.
///
/// ```
/// use mp_pipe::{Address, Client, Connection, Listener};
///
/// let listener = Listener::bind(Address::tcp("127.0.0.1", 0)?, Some(b"secret"))?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || -> mp_pipe::Result<Vec<u8>> {
///     let conn: Connection<String> = Client::connect(address, Some(b"secret"))?;
///     conn.send_bytes(b"hello", 0, None)?;
///     conn.recv_bytes(None)
/// });
/// let conn: Connection<String> = listener.accept()?;
/// assert_eq!(conn.recv_bytes(None)?, b"hello");
/// conn.send_bytes(b"world", 0, None)?;
/// assert_eq!(client.join().unwrap()?, b"world");
/// # Ok::<(), mp_pipe::Error>(())
/// ```
pub struct Listener {
    sock: Arc<Sock>,
    address: Address,
    shared: Arc<Shared>,
    /// The handshake thread (started by the first `accept` or `as_fd`), and its process.
    engine: OnceLock<std::result::Result<(JoinHandle<()>, u32), String>>,
    /// The Unix socket file to remove on drop, by the process that bound it only.
    unlink: Option<(PathBuf, u32)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.shared.authkey.is_some())
            .finish()
    }
}

impl Listener {
    /// Binds `address` and listens. With `Some(authkey)`, every accepted connection must pass
    /// the mutual challenge-response handshake with that key (`None`: no authentication;
    /// Python would use the process's authkey, which mp does not have). Binding an address in
    /// use is [`Error::AddressInUse`]; a Unix socket file that exists already is "in use" too
    /// (remove a stale one first).
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener> {
        let address = address.into();
        let authkey = check_key(authkey)?;
        let (sock, address, unlink) = match &address {
            Address::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| bind_error(e, &address))?;
                let real = l.local_addr().map_err(|e| Error::io("getsockname", e))?;
                (Sock::Tcp(l), Address::Tcp(real), None)
            }
            Address::Unix(p) => {
                let l = UnixListener::bind(p).map_err(|e| bind_error(e, &address))?;
                (
                    Sock::Unix(l),
                    address.clone(),
                    Some((p.clone(), std::process::id())),
                )
            }
            Address::Abstract(name) => {
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .map_err(|e| Error::io("abstract socket name", e))?;
                let l = UnixListener::bind_addr(&a).map_err(|e| bind_error(e, &address))?;
                (Sock::Unix(l), address.clone(), None)
            }
        };
        let is_tcp = matches!(sock, Sock::Tcp(_));
        Ok(Listener {
            sock: Arc::new(sock),
            address,
            shared: Arc::new(Shared {
                ready: Mutex::new(VecDeque::new()),
                changed: Condvar::new(),
                ready_fd: eventfd()?,
                stop_fd: eventfd()?,
                stopped: AtomicBool::new(false),
                authkey,
                is_tcp,
                timeout_ms: AtomicU64::new(DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64),
                max_pending: AtomicUsize::new(DEFAULT_MAX_PENDING_HANDSHAKES),
                max_per_peer: AtomicUsize::new(DEFAULT_MAX_PENDING_PER_PEER),
            }),
            engine: OnceLock::new(),
            unlink,
        })
    }

    /// The address listened on (with the real port when port 0 was asked for).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Limits how long a connected client may take to complete the handshake
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless changed; `None`: no limit, as in Python). A client
    /// that is too slow is dropped, and [`accept`](Self::accept) reports it as
    /// [`Error::Timeout`].
    pub fn set_handshake_timeout(&mut self, timeout: Option<Duration>) {
        let ms = timeout.map_or(u64::MAX, |t| t.as_millis().min(u64::MAX as u128 - 1) as u64);
        self.shared.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Limits the handshakes in progress at once: `total`, and `per_peer` from one IP address
    /// (TCP only). Defaults: [`DEFAULT_MAX_PENDING_HANDSHAKES`] and
    /// [`DEFAULT_MAX_PENDING_PER_PEER`]. A new connection past `total` drops the oldest
    /// handshake in progress; one past `per_peer` drops the oldest of that address that has
    /// been in progress for more than 100 ms (if none has, it is admitted: real clients
    /// finish in a few round trips). So a flood of silent or slow connections cannot keep a
    /// real client out, and a burst of real clients from one address is not cut short.
    /// Values below 1 count as 1.
    pub fn set_handshake_limits(&mut self, total: usize, per_peer: usize) {
        self.shared
            .max_pending
            .store(total.max(1), Ordering::Relaxed);
        self.shared
            .max_per_peer
            .store(per_peer.max(1), Ordering::Relaxed);
    }

    /// Waits for a client that completed the handshake (when the listener has an authkey: the
    /// client answered our challenge, then we answered its), and returns the connection.
    ///
    /// Connections are taken from the kernel at once and their handshakes run side by side
    /// on one thread of the listener (started by the first call), so a slow or silent peer
    /// delays nobody else. A peer that failed is reported as this call's error, in the order
    /// the outcomes came: a wrong key is [`Error::Authentication`] (and the peer got
    /// `#FAILURE#`), a peer that closed or died before the end [`Error::HandshakeClosed`], a
    /// peer past the handshake timeout [`Error::Timeout`], a local peer of
    /// another uid (Unix sockets accept only processes of this process's effective uid)
    /// [`Error::Authentication`] too; call `accept` again for the next client.
    pub fn accept<T>(&self) -> Result<Connection<T>> {
        let pid = self.start_engine()?;
        if pid != std::process::id() {
            return Err(Error::InvalidArgument(
                "this Listener's handshake thread runs in the process that first accepted on it: bind a new Listener in this process",
            ));
        }
        let mut ready = lock(&self.shared.ready);
        loop {
            if let Some(r) = ready.pop_front() {
                if ready.is_empty() {
                    drain_eventfd(&self.shared.ready_fd);
                }
                return r.map(Connection::from_socket);
            }
            if self.shared.stopped.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            ready = unpoisoned(self.shared.changed.wait(ready));
        }
    }

    /// Starts the handshake thread once; returns the pid of the process it runs in.
    fn start_engine(&self) -> Result<u32> {
        let started = self.engine.get_or_init(|| {
            let sock = self.sock.clone();
            let shared = self.shared.clone();
            let nonblocking = match &*sock {
                Sock::Tcp(l) => l.set_nonblocking(true),
                Sock::Unix(l) => l.set_nonblocking(true),
            };
            nonblocking.map_err(|e| format!("fcntl(O_NONBLOCK): {e}"))?;
            std::thread::Builder::new()
                .name("mp-pipe-handshake".into())
                .spawn(move || {
                    engine(&sock, &shared);
                    shared.stopped.store(true, Ordering::Release);
                    let _g = lock(&shared.ready);
                    shared.changed.notify_all();
                })
                .map(|h| (h, std::process::id()))
                .map_err(|e| format!("could not start the handshake thread: {e}"))
        });
        match started {
            Ok((_, pid)) => Ok(*pid),
            Err(e) => Err(Error::io(
                "start the listener",
                std::io::Error::other(e.clone()),
            )),
        }
    }

    /// Stops listening (dropping does the same; a Unix socket file is removed).
    pub fn close(self) -> Result<()> {
        drop(self);
        Ok(())
    }
}

/// The descriptor to poll for [`accept`](Listener::accept): readable while a connection that
/// completed its handshake (or a failure report) waits, so `accept` will not block. Asking
/// for it starts the listener's handshake thread.
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // A failure to start is reported by `accept`; the descriptor stays valid either way.
        let _ = self.start_engine();
        self.shared.ready_fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(Ok((engine, pid))) = self.engine.take() {
            write_eventfd(&self.shared.stop_fd);
            if pid == std::process::id() {
                let _ = engine.join();
            }
        }
        if let Some((path, pid)) = &self.unlink {
            if *pid == std::process::id() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Python's `multiprocessing.connection.Client(address, authkey=...)`.
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Connects to a [`Listener`] (Rust or Python) at `address`. With `Some(authkey)`, answers
    /// the listener's challenge, then challenges it in turn; a wrong key on either side is
    /// [`Error::Authentication`], a listener that closes or dies before the end
    /// [`Error::HandshakeClosed`]. Gives up with [`Error::Timeout`] after
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`] (a listener that accepts and never answers cannot hold
    /// the caller for ever); [`connect_timeout`](Self::connect_timeout) sets another limit.
    pub fn connect<T>(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Connection<T>> {
        Client::connect_timeout(address, authkey, Some(DEFAULT_HANDSHAKE_TIMEOUT))
    }

    /// Like [`connect`](Self::connect), giving up with [`Error::Timeout`] when connecting and
    /// the handshake take longer than `timeout` (`None`: no limit, as in Python).
    pub fn connect_timeout<T>(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Connection<T>> {
        let address = address.into();
        let authkey = check_key(authkey)?;
        let fd: OwnedFd = match &address {
            Address::Tcp(a) => {
                let s = match timeout {
                    Some(t) => TcpStream::connect_timeout(a, t),
                    None => TcpStream::connect(a),
                }
                .map_err(|e| Error::io("connect", e))?;
                s.set_nodelay(true)
                    .map_err(|e| Error::io("setsockopt(TCP_NODELAY)", e))?;
                s.into()
            }
            Address::Unix(p) => UnixStream::connect(p)
                .map_err(|e| Error::io("connect", e))?
                .into(),
            Address::Abstract(name) => {
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .map_err(|e| Error::io("abstract socket name", e))?;
                UnixStream::connect_addr(&a)
                    .map_err(|e| Error::io("connect", e))?
                    .into()
            }
        };
        let conn = Connection::<T>::from_socket(fd);
        if let Some(key) = &authkey {
            let deadline = Deadline::after(timeout);
            let Transport::Stream(s) = &conn.t else {
                unreachable!("from_socket makes a stream connection")
            };
            auth::answer_challenge(s, key, deadline)?;
            auth::deliver_challenge(s, key, deadline)?;
        }
        Ok(conn)
    }
}

// ---- The handshake thread ----------------------------------------------------------------

/// What a listener and its handshake thread share.
struct Shared {
    /// Finished handshakes, in order: the connection, or why the peer was refused.
    ready: Mutex<VecDeque<Result<OwnedFd>>>,
    changed: Condvar,
    /// An eventfd, readable while `ready` is not empty (written and drained under its lock).
    ready_fd: OwnedFd,
    /// Written once when the listener is dropped: the thread stops.
    stop_fd: OwnedFd,
    /// Set when the thread has stopped.
    stopped: AtomicBool,
    authkey: Option<Vec<u8>>,
    is_tcp: bool,
    /// The handshake timeout in ms (`u64::MAX`: none).
    timeout_ms: AtomicU64,
    max_pending: AtomicUsize,
    max_per_peer: AtomicUsize,
}

use mp_core::util::lock_unpoisoned as lock;

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd has no memory-safety preconditions.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: eventfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_eventfd(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: write reads 8 bytes from a live array; the eventfd is open (owned by `fd`).
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    // SAFETY: read writes at most 8 bytes into a live array; the eventfd is open and
    // non-blocking.
    unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
}

impl Shared {
    /// Hands an outcome to `accept`. Failures are dropped while the queue is full (a flood of
    /// bad peers must not grow it); connections never are (the thread stops taking new ones
    /// from the kernel while the queue is full).
    fn report(&self, outcome: Result<OwnedFd>) {
        let mut ready = lock(&self.ready);
        if outcome.is_err() && ready.len() >= READY_CAP {
            return;
        }
        if ready.is_empty() {
            write_eventfd(&self.ready_fd);
        }
        ready.push_back(outcome);
        self.changed.notify_one();
    }

    fn ready_len(&self) -> usize {
        lock(&self.ready).len()
    }

    fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.timeout_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => now.checked_add(Duration::from_millis(ms)),
        }
    }
}

/// Who a peer is, for the per-peer limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Ip(IpAddr),
    Uid(u32),
}

/// The uid of the process at the other end of a Unix socket (`SO_PEERCRED`, recorded by the
/// kernel when it connected).
fn peer_uid(fd: BorrowedFd<'_>) -> Result<u32> {
    mp_core::util::peer_cred(fd)
        .map(|cred| cred.uid)
        .map_err(|e| Error::io("getsockopt(SO_PEERCRED)", e))
}

/// Where a server-side handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our challenge went out; waiting for the answer.
    Answer,
    /// We welcomed the peer; waiting for its challenge.
    Challenge,
    /// We answered; waiting for the peer's verdict.
    Verdict,
}

/// One handshake in progress, driven by readiness: CPython's `deliver_challenge` then
/// `answer_challenge`, without blocking.
struct Handshake {
    fd: OwnedFd,
    peer: Peer,
    /// When the connection was taken from the kernel.
    since: Instant,
    deadline: Option<Instant>,
    phase: Phase,
    /// Our challenge's message (what the peer's answer must authenticate).
    message: Vec<u8>,
    /// The frame being received: its 4-byte header, then its body.
    buf: Vec<u8>,
}

enum Progress {
    More,
    Done,
}

/// Sends one small handshake frame without blocking (a handshake sends three of under 100
/// bytes each, which a socket's buffer always takes: a peer that does not read them is not
/// a peer worth waiting for).
fn send_frame(fd: BorrowedFd<'_>, payload: &[u8]) -> Result<()> {
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(payload);
    // SAFETY: send reads `frame.len()` bytes of a live buffer; `fd` is borrowed, so open.
    let r = unsafe {
        libc::send(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 || r as usize != frame.len() {
        return Err(auth::closed_early());
    }
    Ok(())
}

impl Handshake {
    fn start(
        fd: OwnedFd,
        peer: Peer,
        since: Instant,
        deadline: Option<Instant>,
    ) -> Result<Handshake> {
        Handshake::with_challenge(fd, peer, since, deadline, auth::new_challenge()?)
    }

    /// [`start`](Self::start) with a given challenge (`(message, frame)`).
    fn with_challenge(
        fd: OwnedFd,
        peer: Peer,
        since: Instant,
        deadline: Option<Instant>,
        (message, challenge): (Vec<u8>, Vec<u8>),
    ) -> Result<Handshake> {
        send_frame(fd.as_fd(), &challenge)?;
        Ok(Handshake {
            fd,
            peer,
            since,
            deadline,
            phase: Phase::Answer,
            message,
            buf: Vec::new(),
        })
    }

    /// Reads what has arrived of the current frame; the whole frame once it is complete.
    fn read_frame(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            let want = match self.buf.get(..4) {
                None => 4,
                Some(h) => {
                    let n = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    // A negative length is the escape for frames over 2 GiB.
                    let size = u64::try_from(n).unwrap_or(u64::MAX);
                    if size > auth::HANDSHAKE_LIMIT as u64 {
                        return Err(auth::too_long(size));
                    }
                    let want = 4 + size as usize;
                    if self.buf.len() == want {
                        let frame = self.buf.split_off(4);
                        self.buf.clear();
                        return Ok(Some(frame));
                    }
                    want
                }
            };
            let at = self.buf.len();
            self.buf.resize(want, 0);
            // SAFETY: recv writes at most `want - at` bytes into the live tail of `buf`; the
            // descriptor is owned by this handshake.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf[at..].as_mut_ptr().cast(),
                    want - at,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                self.buf.truncate(at);
                let e = std::io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) if r < 0 => Ok(None),
                    _ => Err(auth::closed_early()),
                };
            }
            self.buf.truncate(at + r as usize);
        }
    }

    /// Advances as far as the bytes that arrived allow.
    fn advance(&mut self, authkey: &[u8]) -> Result<Progress> {
        loop {
            let Some(frame) = self.read_frame()? else {
                return Ok(Progress::More);
            };
            match self.phase {
                Phase::Answer => {
                    let (reply, verdict) = auth::judge_answer(authkey, &self.message, &frame);
                    let sent = send_frame(self.fd.as_fd(), reply);
                    verdict?;
                    sent?;
                    self.phase = Phase::Challenge;
                }
                Phase::Challenge => {
                    let response = auth::answer_for(authkey, &frame)?;
                    send_frame(self.fd.as_fd(), &response)?;
                    self.phase = Phase::Verdict;
                }
                Phase::Verdict => {
                    auth::check_verdict(&frame)?;
                    return Ok(Progress::Done);
                }
            }
        }
    }
}

/// Fuzzing (see `crate::__fuzz`): runs the server side of a handshake, with the challenge
/// `challenge` (`(message, frame)`), on `sock`, whose peer has written everything it will
/// (and shut its side down), as the handshake thread does; `Ok` when the peer passed.
pub(crate) fn fuzz_server_handshake(
    sock: OwnedFd,
    authkey: &[u8],
    challenge: (Vec<u8>, Vec<u8>),
) -> Result<()> {
    let mut h = Handshake::with_challenge(sock, Peer::Uid(0), Instant::now(), None, challenge)?;
    // Each advance reads until the bytes run out; a peer that has shut down cannot leave it
    // waiting, so a few rounds always end it.
    for _ in 0..8 {
        if let Progress::Done = h.advance(authkey)? {
            return Ok(());
        }
    }
    Err(auth::closed_early())
}

/// Takes one connection from the kernel: the socket and who the peer is, or `None` when none
/// is waiting.
fn take_one(sock: &Sock) -> Option<std::io::Result<(OwnedFd, Option<IpAddr>)>> {
    let r = match sock {
        Sock::Tcp(l) => l.accept().map(|(s, a)| {
            let _ = s.set_nodelay(true);
            (OwnedFd::from(s), Some(a.ip()))
        }),
        Sock::Unix(l) => l.accept().map(|(s, _)| (OwnedFd::from(s), None)),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        r => Some(r),
    }
}

/// The handshake thread: takes connections from the kernel as they come and runs every
/// handshake side by side (each advances when its bytes arrive), until the listener is
/// dropped.
fn engine(sock: &Sock, shared: &Shared) {
    let listen_fd = match sock {
        Sock::Tcp(l) => l.as_raw_fd(),
        Sock::Unix(l) => l.as_raw_fd(),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // In arrival order: the oldest first, the first dropped when a limit is reached.
    let mut pending: VecDeque<Handshake> = VecDeque::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        let room = shared.ready_len() < READY_CAP;
        fds.clear();
        for fd in [
            shared.stop_fd.as_raw_fd(),
            if room { listen_fd } else { -1 },
        ] {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        fds.extend(pending.iter().map(|h| libc::pollfd {
            fd: h.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let now = Instant::now();
        let first_deadline = pending.iter().filter_map(|h| h.deadline).min();
        let mut wait = first_deadline.map(|d| d.saturating_duration_since(now));
        if !room {
            // Not taking new connections until `accept` makes room: look again soon.
            let soon = Duration::from_millis(10);
            wait = Some(wait.map_or(soon, |w| w.min(soon)));
        }
        let wait = mp_core::Deadline::after(wait);
        if sys::poll(&mut fds, wait).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if fds[0].revents != 0 {
            return;
        }
        let now = Instant::now();
        let Some(key) = shared.authkey.as_deref() else {
            pending.clear();
            accept_ready(sock, shared, me, fds[1].revents != 0, &mut pending, now);
            continue;
        };
        let mut still = VecDeque::with_capacity(pending.len());
        for (h, p) in pending.drain(..).zip(fds[2..].iter()) {
            let mut h = h;
            let step = if p.revents != 0 {
                h.advance(key)
            } else {
                Ok(Progress::More)
            };
            match step {
                Ok(Progress::Done) => shared.report(Ok(h.fd)),
                Ok(Progress::More) if h.deadline.is_some_and(|d| d <= now) => {
                    shared.report(Err(Error::Timeout))
                }
                Ok(Progress::More) => still.push_back(h),
                Err(e) => shared.report(Err(e)),
            }
        }
        pending = still;
        accept_ready(sock, shared, me, fds[1].revents != 0, &mut pending, now);
    }
}

/// Takes the connections waiting in the kernel (a bounded number per round): refuses local
/// peers of another uid, hands connections over at once when there is no key, and starts a
/// handshake for each otherwise, within the limits.
fn accept_ready(
    sock: &Sock,
    shared: &Shared,
    me: u32,
    readable: bool,
    pending: &mut VecDeque<Handshake>,
    now: Instant,
) {
    if !readable {
        return;
    }
    for _ in 0..READY_CAP {
        let (fd, ip) = match take_one(sock) {
            None => return,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                // The listening socket itself failing (out of descriptors, say): report it
                // and do not spin.
                shared.report(Err(Error::io("accept", e)));
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        let peer = match ip {
            Some(ip) if shared.is_tcp => Peer::Ip(ip),
            _ => match peer_uid(fd.as_fd()) {
                Ok(uid) if uid == me => Peer::Uid(uid),
                Ok(uid) => {
                    shared.report(Err(Error::Authentication(format!(
                        "refused a local peer of uid {uid}: this listener's Unix socket accepts only processes of uid {me}"
                    ))));
                    continue;
                }
                Err(e) => {
                    shared.report(Err(e));
                    continue;
                }
            },
        };
        if shared.authkey.is_none() {
            shared.report(Ok(fd));
            continue;
        }
        let per_peer = shared.max_per_peer.load(Ordering::Relaxed).max(1);
        let total = shared.max_pending.load(Ordering::Relaxed).max(1);
        if matches!(peer, Peer::Ip(_))
            && pending.iter().filter(|h| h.peer == peer).count() >= per_peer
        {
            let stale = pending.iter().position(|h| {
                h.peer == peer && now.saturating_duration_since(h.since) > PER_PEER_GRACE
            });
            if let Some(i) = stale {
                drop(pending.remove(i));
            }
        }
        if pending.len() >= total {
            drop(pending.pop_front());
        }
        match Handshake::start(fd, peer, now, shared.deadline(now)) {
            Ok(h) => pending.push_back(h),
            Err(e) => shared.report(Err(e)),
        }
    }
}
