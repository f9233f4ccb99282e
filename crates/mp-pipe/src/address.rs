//! [`Address`]: where a listener listens and a client connects.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client) connects: Python's `address` argument.
///
/// Built with `From`: a `SocketAddr` or `(&str, u16)` is TCP (Python's `('127.0.0.1', 0)`
/// tuple), a `&Path`/`PathBuf` is a Unix socket file (Python's string address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address. Port 0 asks the system for a free port; [`Listener::address`](crate::Listener::address) tells which.
    Tcp(SocketAddr),
    /// A Unix socket file. The [`Listener`](crate::Listener) that binds it removes the file when dropped.
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
