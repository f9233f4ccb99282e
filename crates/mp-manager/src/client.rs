//! The client side: where a server is ([`Endpoint`]), and one authenticated connection to it
//! per thread and process, made on first use.
//!
//! Each thread has its own connection (as in Python), so a request that waits on the server (a
//! queue `get`, a lock `acquire`) blocks only its own thread. A process forked with connections
//! in its memory does not use them (they are its parent's): it connects afresh on first use.

use std::cell::RefCell;
use std::collections::HashMap;

use mp_core::message::{decode, encode};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_pipe::{Address, Client, Connection};

use crate::error::{Error, Result};
use crate::wire::{Reply, Request};

/// An address in a form that travels in a message (a proxy passed to a child carries it).
#[doc(hidden)]
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(crate = mp_core::rkyv)]
pub enum Addr {
    Tcp(String),
    Unix(Vec<u8>),
    Abstract(Vec<u8>),
}

impl Addr {
    pub(crate) fn from_address(a: &Address) -> Addr {
        use std::os::unix::ffi::OsStrExt;
        match a {
            Address::Tcp(s) => Addr::Tcp(s.to_string()),
            Address::Unix(p) => Addr::Unix(p.as_os_str().as_bytes().to_vec()),
            Address::Abstract(n) => Addr::Abstract(n.clone()),
        }
    }

    pub(crate) fn to_address(&self) -> Result<Address> {
        use std::os::unix::ffi::OsStrExt;
        Ok(match self {
            Addr::Tcp(s) => Address::Tcp(
                s.parse()
                    .map_err(|e| Error::Malformed(format!("address {s:?}: {e}")))?,
            ),
            Addr::Unix(p) => Address::Unix(std::ffi::OsStr::from_bytes(p).into()),
            Addr::Abstract(n) => Address::Abstract(n.clone()),
        })
    }
}

/// Where a manager's server listens, and the key it wants.
#[doc(hidden)]
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq, Hash)]
#[rkyv(crate = mp_core::rkyv)]
pub struct Endpoint {
    pub(crate) addr: Addr,
    pub(crate) authkey: Vec<u8>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

thread_local! {
    /// This thread's connections, by server, with the pid of the process that made each.
    static CONNS: RefCell<HashMap<Endpoint, (u32, Connection<()>)>> = RefCell::new(HashMap::new());
}

/// Opens a connection to `ep` (checking the authkey both ways).
///
/// A wrong key is [`Error::Authentication`]. A server that closed the connection in the
/// middle of the handshake (`mp_pipe::Error::HandshakeClosed`) was killed then, or dropped
/// the connection while alive (its listener's per-peer limit of handshakes in progress): one
/// more attempt tells the two apart, and a server still gone is [`Error::ServerGone`].
///
/// On a Unix address (the server is on this machine) the authenticated socket then moves to
/// shared memory ([`upgrade`]): requests and replies go through the rings of a pipe, without
/// a system call while both sides are busy.
pub(crate) fn connect(ep: &Endpoint) -> Result<Connection<()>> {
    let address = ep.addr.to_address()?;
    let conn = match Client::connect(address.clone(), Some(&ep.authkey)) {
        Ok(c) => c,
        Err(mp_pipe::Error::HandshakeClosed) => Client::connect(address, Some(&ep.authkey))?,
        Err(e) => return Err(e.into()),
    };
    match ep.addr {
        Addr::Unix(_) | Addr::Abstract(_) => upgrade(conn),
        Addr::Tcp(_) => Ok(conn),
    }
}

/// How long the server may take to hand over the shared-memory connection.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the server for a shared-memory connection in place of the socket `conn`
/// ([`Request::Upgrade`]) and returns it; a server that cannot make one says so, and the
/// socket goes on serving.
fn upgrade(conn: Connection<()>) -> Result<Connection<()>> {
    if let Err(e) = conn.send_bytes(&encode(&Request::Upgrade)?, 0, None) {
        // A server that refused the connection (too many) closed it before reading; its
        // refusal may be waiting to be read.
        if !matches!(conn.poll(Some(std::time::Duration::ZERO)), Ok(true)) {
            return Err(e.into());
        }
    }
    let answer = conn.recv_bytes(None)?;
    match decode::<Reply>(&answer).map_err(|e| Error::Malformed(format!("reply: {e}")))? {
        Reply::Unit => Ok(conn.recv_connection(Some(UPGRADE_TIMEOUT))?),
        // Too many connections: the server closed this one; the first request reports it.
        Reply::Err(crate::wire::Refused::TooManyConnections(n)) => {
            Err(crate::wire::Refused::TooManyConnections(n).into())
        }
        Reply::Err(_) => Ok(conn),
        other => Err(Error::Malformed(format!(
            "the answer to an upgrade was {}",
            other.name()
        ))),
    }
}

/// Sends `req` to the server of `ep` on this thread's connection and returns the reply. A
/// refusal by the server is returned as its error; a broken connection is dropped (the next
/// request connects again) and reported as [`Error::ServerGone`]. `before_connect` runs before
/// this thread connects (a proxy call settles what a forked child's proxies hold first).
pub(crate) fn request(
    ep: &Endpoint,
    req: &Request,
    before_connect: &dyn Fn(&Endpoint),
) -> Result<Reply> {
    let bytes = encode(req)?;
    let me = std::process::id();
    // `try_with`/`try_borrow_mut`: a proxy used while this thread's locals are being destroyed
    // (from another local's destructor), or from inside a request, gets an error, not a panic.
    let answer = CONNS
        .try_with(|c| -> Result<Vec<u8>> {
            let Ok(mut conns) = c.try_borrow_mut() else {
                return Err(Error::ServerGone(
                    "a request from inside another request on this thread".into(),
                ));
            };
            if conns.get(ep).is_some_and(|(pid, _)| *pid != me) {
                // Inherited through fork: our copy of the parent's socket; close it.
                conns.remove(ep);
            }
            if !conns.contains_key(ep) {
                // A forked child's first call: its copied proxies' hold first.
                before_connect(ep);
                let conn = connect(ep)?;
                conns.insert(ep.clone(), (me, conn));
            }
            let Some((_, conn)) = conns.get(ep) else {
                return Err(Error::ServerGone("no connection".into()));
            };
            let r = match conn.send_bytes(&bytes, 0, None) {
                Ok(()) => conn.recv_bytes(None),
                // A server that refused the connection (too many) closed it before reading
                // the request; its refusal may be waiting to be read.
                Err(e) => match conn.poll(Some(std::time::Duration::ZERO)) {
                    Ok(true) => conn.recv_bytes(None).map_err(|_| e),
                    _ => Err(e),
                },
            };
            if r.is_err() {
                conns.remove(ep);
            }
            Ok(r?)
        })
        .map_err(|_| {
            Error::ServerGone("this thread is exiting: its connections are closed".into())
        })??;
    match decode::<Reply>(&answer).map_err(|e| Error::Malformed(format!("reply: {e}")))? {
        Reply::Err(refused @ crate::wire::Refused::TooManyConnections(_)) => {
            // The server closed this connection: the next request connects again.
            let _ = CONNS.try_with(|c| c.try_borrow_mut().map(|mut c| c.remove(ep)));
            Err(refused.into())
        }
        Reply::Err(refused) => Err(refused.into()),
        reply => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manager;

    #[test]
    fn a_client_on_this_machine_talks_through_shared_memory_and_a_tcp_one_through_its_socket() {
        let m = Manager::start().unwrap();
        assert!(matches!(m.ep.addr, Addr::Abstract(_)));
        let c = connect(&m.ep).unwrap();
        assert!(c.is_local(), "a Unix address moves to shared memory");
        // The moved connection serves requests.
        let d = m.dict::<u64, u64>().unwrap();
        d.set(&1, &2).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(2));
        let tcp = Manager::builder()
            .address(Address::tcp("127.0.0.1", 0).unwrap())
            .start()
            .unwrap();
        let c = connect(&tcp.ep).unwrap();
        assert!(!c.is_local(), "a TCP client keeps its socket");
        let d = tcp.dict::<u64, u64>().unwrap();
        d.set(&3, &4).unwrap();
        assert_eq!(d.get(&3).unwrap(), Some(4));
    }
}
