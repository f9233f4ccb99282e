//! A [`Connection`] as a process argument: the rkyv traits that make it a
//! [`Message`](mp_core::Message) of the handle kind (see [`mp_core::handle`]).
//!
//! Serializing a connection inside [`mp_core::handle::collect`] exports its socket (and, for a
//! pipe end, its shared region) into the collector and archives only their slots, its direction
//! and its ring indices. The child that decodes it gets the same end: it maps the same rings and
//! holds a descriptor of the same socket. Outside `collect` (through a queue or another
//! connection, after the child started) serializing fails, as for every handle.

use std::os::fd::{AsFd, AsRawFd};

use mp_core::handle;
use mp_core::rkyv::rancor::{Fallible, Source};
use mp_core::rkyv::{Archive, Deserialize, Place, Serialize};
use mp_core::Region;

use crate::connection::{Connection, Direction, Transport};
use crate::error::Error;
use crate::local::{LocalEnd, LocalParts};
use crate::stream::StreamEnd;

/// The shared-memory part of a pipe end.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct LocalRepr {
    region: Region,
    tx: u8,
    rx: u8,
    cap: u64,
}

/// What a [`Connection`] is archived as.
#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
pub struct ConnectionRepr {
    dir: u8,
    sock_slot: u32,
    local: Option<LocalRepr>,
    max_message: u64,
}

impl<T, D: Direction> Connection<T, D> {
    fn repr(&self) -> mp_core::Result<ConnectionRepr> {
        let sock_slot = handle::export_fd(self.as_fd())?;
        let local = match &self.t {
            Transport::Local(l) => {
                let (region, tx, rx, cap) = l.describe();
                Some(LocalRepr {
                    region: region.clone(),
                    tx,
                    rx,
                    cap: cap as u64,
                })
            }
            Transport::Stream(_) => None,
        };
        Ok(ConnectionRepr {
            dir: D::TAG,
            sock_slot,
            local,
            max_message: self.max_message_size(),
        })
    }
}

impl<T, D: Direction> Archive for Connection<T, D> {
    type Archived = ArchivedConnectionRepr;
    type Resolver = (ConnectionRepr, <ConnectionRepr as Archive>::Resolver);

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        resolver.0.resolve(resolver.1, out);
    }
}

impl<T, D: Direction, S: Fallible + ?Sized> Serialize<S> for Connection<T, D>
where
    S::Error: Source,
    ConnectionRepr: Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        let repr = self.repr().map_err(S::Error::new)?;
        let r = repr.serialize(serializer)?;
        Ok((repr, r))
    }
}

impl<T, D: Direction, De: Fallible + ?Sized> Deserialize<Connection<T, D>, De>
    for ArchivedConnectionRepr
where
    De::Error: Source,
    ArchivedConnectionRepr: Deserialize<ConnectionRepr, De>,
{
    fn deserialize(&self, d: &mut De) -> Result<Connection<T, D>, De::Error> {
        if self.dir != D::TAG {
            return Err(De::Error::new(Error::Protocol(format!(
                "the connection handle is for direction {}, expected {}",
                self.dir,
                std::any::type_name::<D>()
            ))));
        }
        let repr: ConnectionRepr = Deserialize::<ConnectionRepr, De>::deserialize(self, d)?;
        let sock = handle::import_fd(repr.sock_slot).map_err(De::Error::new)?;
        // A slot that holds something else (a region's memfd, a file) would poll readable
        // for ever without a token or an end-of-file: every wait on it would spin without
        // end, deadlines included (found by the `connection_handle` fuzzer).
        let is_socket = nix::sys::stat::fstat(sock.as_raw_fd())
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK);
        if !is_socket {
            return Err(De::Error::new(Error::Protocol(format!(
                "the connection handle's slot {} does not hold a socket",
                repr.sock_slot
            ))));
        }
        let t = match repr.local {
            Some(l) => Transport::Local(
                LocalEnd::from_parts(LocalParts {
                    sock,
                    region: l.region,
                    tx_index: l.tx,
                    rx_index: l.rx,
                    cap: usize::try_from(l.cap).unwrap_or(0),
                })
                .map_err(De::Error::new)?,
            ),
            None => {
                let s = StreamEnd::new(sock);
                s.set_max(repr.max_message);
                Transport::Stream(s)
            }
        };
        Ok(Connection::from_transport(t))
    }
}
