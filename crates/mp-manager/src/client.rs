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
pub(crate) fn connect(ep: &Endpoint) -> Result<Connection<()>> {
    let address = ep.addr.to_address()?;
    match Client::connect(address.clone(), Some(&ep.authkey)) {
        Ok(c) => Ok(c),
        Err(mp_pipe::Error::HandshakeClosed) => Ok(Client::connect(address, Some(&ep.authkey))?),
        Err(e) => Err(e.into()),
    }
}

/// Sends `req` to the server of `ep` on this thread's connection and returns the reply. A
/// refusal by the server is returned as its error; a broken connection is dropped (the next
/// request connects again) and reported as [`Error::ServerGone`].
pub(crate) fn request(ep: &Endpoint, req: &Request) -> Result<Reply> {
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
