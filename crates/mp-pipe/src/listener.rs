//! [`Listener`] and [`Client`]: connections between processes that did not start each other,
//! over Unix sockets or TCP, with CPython's framing and authentication (so the peer may be a
//! Python `multiprocessing.connection` Listener or Client).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use mp_core::Deadline;

use crate::auth;
use crate::connection::{Connection, Transport};
use crate::error::{Error, Result};

/// Where a [`Listener`] listens and a [`Client`] connects: Python's `address` argument.
///
/// Built with `From`: a `SocketAddr` or `(&str, u16)` is TCP (Python's `('127.0.0.1', 0)`
/// tuple), a `&Path`/`PathBuf` is a Unix socket file (Python's string address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address. Port 0 asks the system for a free port; [`Listener::address`] tells which.
    Tcp(SocketAddr),
    /// A Unix socket file. The [`Listener`] that binds it removes the file when dropped.
    Unix(PathBuf),
    /// A Linux abstract Unix socket name (Python's address string starting with `"\0"`).
    Abstract(Vec<u8>),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

impl From<(std::net::IpAddr, u16)> for Address {
    fn from(a: (std::net::IpAddr, u16)) -> Address {
        Address::Tcp(a.into())
    }
}

impl From<(std::net::Ipv4Addr, u16)> for Address {
    fn from(a: (std::net::Ipv4Addr, u16)) -> Address {
        Address::Tcp(a.into())
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_path_buf())
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Address {
        Address::Unix(p)
    }
}

impl From<&PathBuf> for Address {
    fn from(p: &PathBuf) -> Address {
        Address::Unix(p.clone())
    }
}

impl Address {
    /// A TCP address from a host name or IP and a port (`("127.0.0.1", 0)`), resolved now.
    pub fn tcp(host: &str, port: u16) -> Result<Address> {
        let mut addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::io("resolve address", e))?;
        addrs.next().map(Address::Tcp).ok_or(Error::InvalidArgument(
            "the host name resolves to no address",
        ))
    }
}

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
    sock: Sock,
    address: Address,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Option<Duration>,
    /// The Unix socket file to remove on drop, by the process that bound it only.
    unlink: Option<(PathBuf, u32)>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.authkey.is_some())
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
        Ok(Listener {
            sock,
            address,
            authkey,
            handshake_timeout: None,
            unlink,
        })
    }

    /// The address listened on (with the real port when port 0 was asked for).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Limits how long [`accept`](Self::accept) waits for a connected client to complete the
    /// handshake (`None`, the default as in Python: no limit). A client that is too slow makes
    /// `accept` fail with [`Error::Timeout`], so a silent peer cannot hold the listener.
    pub fn set_handshake_timeout(&mut self, timeout: Option<Duration>) {
        self.handshake_timeout = timeout;
    }

    /// Waits for a client, authenticates it (when the listener has an authkey: the client
    /// answers our challenge, then we answer its), and returns the connection. A client with
    /// the wrong key is [`Error::Authentication`] (and gets `#FAILURE#`).
    pub fn accept<T>(&self) -> Result<Connection<T>> {
        let fd: OwnedFd = match &self.sock {
            Sock::Tcp(l) => {
                let (s, _) = l.accept().map_err(|e| Error::io("accept", e))?;
                s.set_nodelay(true)
                    .map_err(|e| Error::io("setsockopt(TCP_NODELAY)", e))?;
                s.into()
            }
            Sock::Unix(l) => {
                let (s, _) = l.accept().map_err(|e| Error::io("accept", e))?;
                s.into()
            }
        };
        let conn = Connection::<T>::from_socket(fd);
        if let Some(key) = &self.authkey {
            let deadline = Deadline::after(self.handshake_timeout);
            let Transport::Stream(s) = &conn.t else {
                unreachable!("from_socket makes a stream connection")
            };
            auth::deliver_challenge(s, key, deadline)?;
            auth::answer_challenge(s, key, deadline)?;
        }
        Ok(conn)
    }

    /// Stops listening (dropping does the same; a Unix socket file is removed).
    pub fn close(self) -> Result<()> {
        drop(self);
        Ok(())
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.sock {
            Sock::Tcp(l) => l.as_fd(),
            Sock::Unix(l) => l.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
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
    /// [`Error::Authentication`].
    pub fn connect<T>(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Connection<T>> {
        Client::connect_timeout(address, authkey, None)
    }

    /// Like [`connect`](Self::connect), giving up with [`Error::Timeout`] when the handshake
    /// takes longer than `timeout`.
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
