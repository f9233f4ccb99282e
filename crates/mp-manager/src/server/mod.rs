//! The server: the objects, and one thread per connection answering its requests.
//!
//! Every object is a mutex (plus a condition variable where something waits) around archived
//! bytes. A request that waits (a queue `get`, a lock `acquire`, an event `wait`) blocks only
//! its own connection's thread. A lock held by a connection that goes away (its process died)
//! is released, so a dead client cannot block the others for ever.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mp_core::message::{decode, encode};
use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_pipe::{Connection, Listener};

mod call;
pub(crate) mod entry;
mod objects;
mod refs;
mod state;

use call::{call, lock};
use objects::Obj;
use state::State;

use crate::custom::Ctor;
use crate::wire::{Op, Refused, Reply, Request};

/// What the server allows its clients ([`ManagerBuilder`](crate::ManagerBuilder) sets them).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(crate = mp_core::rkyv)]
pub(crate) struct Limits {
    /// The largest request read, in bytes: a larger one closes its connection unread.
    pub(crate) max_request: u64,
    /// Connections served at once; one more is refused (and closed) at once.
    pub(crate) max_connections: u64,
    /// How long a reply may wait for a client that does not read (ms; 0: no limit).
    pub(crate) write_timeout_ms: u64,
}

/// The default largest request (16 MiB).
pub(crate) const DEFAULT_MAX_REQUEST: u64 = 16 << 20;
/// The default number of connections served at once.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
/// The default write timeout (30 s).
pub(crate) const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_request: DEFAULT_MAX_REQUEST,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT.as_millis() as u64,
        }
    }
}

/// The registered types: typeid -> (Rust type name, constructor).
pub(crate) type Types = HashMap<String, (String, Ctor)>;

/// Releases a connection's locks and references when dropped: when its loop ends, and also
/// when a request panics on the way (a panic must never leave a dead connection's locks or
/// objects held).
struct ReleaseOnDrop<'a> {
    state: &'a State,
    conn: u64,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.state.drop_conn(self.conn);
    }
}

/// Answers the requests that make, find, hand on or count objects (`conn` is the asking
/// connection, which holds what it makes).
fn answer(state: &State, conn: u64, req: Request) -> Reply {
    let r = match req {
        Request::Create { kind, name, init } => state.create(conn, kind, name, init),
        Request::CreateCustom {
            typeid,
            type_name,
            name,
        } => state.create_custom(conn, typeid, type_name, name),
        Request::Ticket { ids } => state.ticket(conn, ids),
        Request::Redeem { ticket, ids } => Ok(state.redeem(conn, ticket, ids)),
        Request::ObjectCount => Ok(Reply::Len(state.count())),
        Request::Unname { name } => Ok(Reply::Bool(state.unname(&name))),
        Request::Shutdown | Request::Release { .. } | Request::Call { .. } | Request::Upgrade => {
            Err(Refused::Malformed("a request answered elsewhere".into()))
        }
    };
    r.unwrap_or_else(Reply::Err)
}

/// Answers one request of connection `conn`: the reply (`None` for a one-way release), whether
/// the server is to stop, and the queue an item was taken from (to give the item back with
/// [`Obj::give_back`] if the reply cannot be sent).
fn dispatch(state: &State, conn: u64, req: Request) -> (Option<Reply>, bool, Option<Arc<Obj>>) {
    match req {
        Request::Shutdown => (Some(Reply::Unit), true, None),
        Request::Release { id: obj } => {
            state.release(conn, obj);
            (None, false, None)
        }
        Request::Call { id: obj, kind, op } => {
            let is_get = matches!(op, Op::QueueGet(_));
            let mut taken_from = None;
            let r = state.get(obj).and_then(|o| {
                if o.kind() != kind {
                    return Err(Refused::WrongKind {
                        expected: kind,
                        found: o.kind(),
                    });
                }
                if is_get {
                    taken_from = Some(o.clone());
                }
                call(&o, conn, op)
            });
            (Some(r.unwrap_or_else(Reply::Err)), false, taken_from)
        }
        other => (Some(answer(state, conn, other)), false, None),
    }
}

/// The dispatch without a socket, for the fuzz harness (`crate::__fuzz`): a server's state
/// and the requests of several connections answered as `serve_connection` answers them.
pub(crate) struct Dispatch {
    state: State,
}

impl Dispatch {
    /// A server with no object yet, serving `types`.
    pub(crate) fn new(types: Types) -> Dispatch {
        Dispatch {
            state: State::new(types),
        }
    }

    /// Answers `req` as connection `conn`; with `unsent`, acts as if the reply could not be
    /// sent (an item a queue `get` took goes back). Returns the reply (`None` for a one-way
    /// request) and whether the server was asked to stop.
    pub(crate) fn answer(&self, conn: u64, req: Request, unsent: bool) -> (Option<Reply>, bool) {
        let (reply, stop, taken_from) = dispatch(&self.state, conn, req);
        match (taken_from, reply) {
            (Some(o), Some(reply)) if unsent => {
                o.give_back(reply);
                (Some(Reply::Unit), stop)
            }
            (_, reply) => (reply, stop),
        }
    }

    /// Connection `conn` closed: what it held is released, as when its thread ends.
    pub(crate) fn close(&self, conn: u64) {
        self.state.drop_conn(conn);
    }
}

/// Answers one connection until it closes. Returns true when asked to shut down.
/// The size of each ring of a client's shared-memory connection: requests and replies are
/// small, and a larger one goes through in pieces.
const UPGRADE_RING: usize = 64 * 1024;

/// Serves one client until it goes, or asks for shutdown (returned with the connection, which
/// the caller drops after it forgot its descriptor). `rebind` records the descriptor of the
/// shared-memory connection that replaces the socket when the client asks for it
/// ([`Request::Upgrade`]).
fn serve_connection(
    state: &State,
    mut conn: Connection<()>,
    limits: &Limits,
    rebind: &dyn Fn(std::os::fd::RawFd),
) -> (bool, Connection<()>) {
    let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let _release = ReleaseOnDrop { state, conn: id };
    #[cfg(feature = "tracing")]
    let _span =
        tracing::info_span!(target: "mp::manager", "manager connection", conn = id).entered();
    let max = usize::try_from(limits.max_request).unwrap_or(usize::MAX);
    let stop = loop {
        // The largest request: the socket refuses a longer frame, a shared-memory connection
        // a longer message (either way the client is dropped).
        let Ok(bytes) = conn.recv_bytes(Some(max)) else {
            break false;
        };
        let (reply, stop, taken_from) = match decode::<Request>(&bytes) {
            Err(e) => (
                Some(Reply::Err(Refused::Malformed(e.to_string()))),
                false,
                None,
            ),
            Ok(Request::Upgrade) => match upgrade(&conn, limits, rebind) {
                Ok(local) => {
                    conn = local;
                    continue;
                }
                Err(Some(refused)) => (Some(refused), false, None),
                Err(None) => break false,
            },
            Ok(req) => dispatch(state, id, req),
        };
        // One way (a release): the proxy's `Drop` does not wait for an answer.
        let Some(reply) = reply else { continue };
        let sent = encode(&reply)
            .map_err(|e| e.to_string())
            .and_then(|b| conn.send_bytes(&b, 0, None).map_err(|e| e.to_string()));
        if stop {
            break true;
        }
        if sent.is_err() {
            // The client is gone: an item it was waiting for goes back to the head of the
            // queue instead of being lost.
            if let Some(o) = taken_from {
                o.give_back(reply);
            }
            break false;
        }
    };
    #[cfg(feature = "tracing")]
    if !stop {
        tracing::info!(
            target: "mp::manager",
            conn = id,
            "a manager client is gone: what it held is released"
        );
    }
    (stop, conn)
}

/// Answers [`Request::Upgrade`]: a new pipe, whose client end goes through `conn`; the
/// server's end is returned, to be served instead of `conn`. `Err(Some(reply))`: the pipe
/// could not be made (the client stays on the socket); `Err(None)`: the socket failed, or is
/// not on a Unix address (the client is dropped).
fn upgrade(
    conn: &Connection<()>,
    limits: &Limits,
    rebind: &dyn Fn(std::os::fd::RawFd),
) -> std::result::Result<Connection<()>, Option<Reply>> {
    use std::os::fd::AsRawFd;
    let (mine, theirs) = match mp_pipe::Pipe::<()>::with_capacity(mp_pipe::Duplex, UPGRADE_RING) {
        Ok(ends) => ends,
        Err(e) => {
            let why = format!("no shared-memory connection: {e}");
            return Err(Some(Reply::Err(Refused::Raised(why))));
        }
    };
    let unit = encode(&Reply::Unit).map_err(|_| None)?;
    conn.send_bytes(&unit, 0, None).map_err(|_| None)?;
    conn.send_connection(theirs).map_err(|_| None)?;
    if limits.write_timeout_ms != 0 {
        let _ = mine.set_send_timeout(Some(Duration::from_millis(limits.write_timeout_ms)));
    }
    rebind(mine.as_raw_fd());
    Ok(mine)
}

/// The server loop: accepts connections (authenticated by the listener) until a client asks
/// for shutdown, then stops accepting, closes every connection and returns.
pub(crate) fn serve(listener: Listener, types: Types, limits: Limits) {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
    let state = Arc::new(State::new(types));
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Written once to wake the acceptor from its poll when the server stops.
    // SAFETY: eventfd has no memory-safety preconditions.
    let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if wake < 0 {
        return;
    }
    // SAFETY: eventfd returned a new descriptor that nothing else owns.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
    // The live connections' descriptors. A connection's thread removes its entry before it
    // drops the connection, and shutdown reads the map under the same lock, so no
    // descriptor is touched after it was closed.
    let live: Arc<Mutex<HashMap<u64, RawFd>>> = Arc::default();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let acceptor = {
        let (state, stopping, live, wake) =
            (state.clone(), stopping.clone(), live.clone(), wake.clone());
        std::thread::Builder::new()
            .name("mp-manager-accept".into())
            .spawn(move || {
                let mut next = 0u64;
                while !stopping.load(Ordering::Relaxed) {
                    // Poll first, on the listener and the wake-up descriptor, so that a
                    // shutdown ends the loop at once.
                    let mut pfd = [
                        libc::pollfd {
                            fd: listener.as_fd().as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: wake.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: two valid pollfds for the duration of the call.
                    let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
                    if n <= 0 || pfd[0].revents == 0 {
                        continue;
                    }
                    let conn = match listener.accept::<()>() {
                        Ok(c) => c,
                        // The listening socket itself failing (out of descriptors, say): do
                        // not spin; a failed handshake (wrong authkey) or a vanished client:
                        // next one.
                        Err(mp_pipe::Error::Io { .. }) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    conn.set_max_message_size(limits.max_request);
                    if limits.write_timeout_ms != 0 {
                        let ms = Duration::from_millis(limits.write_timeout_ms);
                        let _ = conn.set_send_timeout(Some(ms));
                    }
                    {
                        let mut live = lock(&live);
                        if live.len() as u64 >= limits.max_connections {
                            drop(live);
                            // Tell the client why (its first request reads this), then close.
                            let refused =
                                Reply::Err(Refused::TooManyConnections(limits.max_connections));
                            if let Ok(b) = encode(&refused) {
                                let _ = conn.send_bytes(&b, 0, None);
                            }
                            continue;
                        }
                        next += 1;
                        live.insert(next, conn.as_fd().as_raw_fd());
                    }
                    let key = next;
                    let (state, live, stop_tx) = (state.clone(), live.clone(), stop_tx.clone());
                    let _ = std::thread::Builder::new()
                        .name("mp-manager-conn".into())
                        .spawn(move || {
                            let rebind = |fd: RawFd| {
                                lock(&live).insert(key, fd);
                            };
                            let (stop, conn) = serve_connection(&state, conn, &limits, &rebind);
                            lock(&live).remove(&key);
                            drop(conn);
                            if stop {
                                let _ = stop_tx.send(());
                            }
                        });
                }
            })
    };
    let Ok(acceptor) = acceptor else {
        return;
    };
    let _ = stop_rx.recv();
    stopping.store(true, Ordering::Relaxed);
    let one = 1u64.to_ne_bytes();
    // SAFETY: write(2) reads 8 bytes from a live array; the eventfd is open (held by `wake`).
    unsafe { libc::write(wake.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
    let _ = acceptor.join();
    for fd in lock(&live).values() {
        // SAFETY: shutdown has no memory-safety preconditions; `fd` is open (its thread removes
        // it from `live`, under this lock, before closing it). Its thread then sees the end.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
}

#[cfg(test)]
mod tests {
    use super::call::index;
    use super::*;
    use crate::wire::Kind;

    /// The clean-up of a connection runs even when its thread unwinds from a panic.
    #[test]
    fn a_panicking_connection_releases_its_locks() {
        let state = State::default();
        let Ok(Reply::Created(id)) = state.create(1, Kind::Lock, None, Vec::new()) else {
            panic!("no lock");
        };
        let l = state.get(id).unwrap();
        assert!(matches!(
            call(&l, 7, Op::Acquire(None)),
            Ok(Reply::Bool(true))
        ));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _release = ReleaseOnDrop {
                state: &state,
                conn: 7,
            };
            panic!("a request that panics");
        }));
        assert!(r.is_err());
        assert!(matches!(
            call(&l, 8, Op::Acquire(Some(0))),
            Ok(Reply::Bool(true))
        ));
    }

    fn raw(conn: &Connection<()>, req: &Request) -> Reply {
        conn.send_bytes(&encode(req).unwrap(), 0, None).unwrap();
        decode::<Reply>(&conn.recv_bytes(None).unwrap()).unwrap()
    }

    /// A client that stops reading its replies is dropped after the write timeout, and the
    /// lock its connection held is released (before: the server's thread blocked in the write
    /// for ever, holding the lock).
    #[test]
    fn a_client_that_stops_reading_is_dropped() {
        // Over TCP (the socket's send timeout) and over a Unix address, where the client
        // moves to shared memory (the pipe end's send timeout).
        let name = format!("mp-manager-test-{}", std::process::id()).into_bytes();
        for address in [
            mp_pipe::Address::tcp("127.0.0.1", 0).unwrap(),
            mp_pipe::Address::Abstract(name),
        ] {
            a_client_that_stops_reading_is_dropped_on(address);
        }
    }

    fn a_client_that_stops_reading_is_dropped_on(address: mp_pipe::Address) {
        use crate::client::{Addr, Endpoint};
        let key = b"write-timeout";
        let listener = entry::bind(&Addr::from_address(&address), key).unwrap();
        let address = listener.address().clone();
        let ep = Endpoint {
            addr: Addr::from_address(&address),
            authkey: key.to_vec(),
        };
        let limits = Limits {
            write_timeout_ms: 200,
            ..Limits::default()
        };
        let serving = std::thread::spawn(move || serve(listener, Types::new(), limits));
        let a: Connection<()> = crate::client::connect(&ep).unwrap();
        assert_eq!(a.is_local(), matches!(ep.addr, Addr::Abstract(_)));
        let create = |kind| Request::Create {
            kind,
            name: None,
            init: Vec::new(),
        };
        let Reply::Created(dict) = raw(&a, &create(Kind::Dict)) else {
            panic!("no dict")
        };
        let Reply::Created(lock) = raw(&a, &create(Kind::Lock)) else {
            panic!("no lock")
        };
        // `b` holds the lock too (else it would go with `a`'s connection).
        let b: Connection<()> = crate::client::connect(&ep).unwrap();
        let redeem = Request::Redeem {
            ticket: 0,
            ids: vec![lock],
        };
        assert!(matches!(raw(&b, &redeem), Reply::Ids(ids) if ids == [lock]));
        let set = Request::Call {
            id: dict,
            kind: Kind::Dict,
            op: Op::DictSet(vec![1], vec![0; 4 << 20]),
        };
        assert!(matches!(raw(&a, &set), Reply::Unit));
        let acquire = |ms| Request::Call {
            id: lock,
            kind: Kind::Lock,
            op: Op::Acquire(ms),
        };
        assert!(matches!(raw(&a, &acquire(None)), Reply::Bool(true)));
        // Ask for the 4 MiB dict again and again, and read nothing.
        let items = encode(&Request::Call {
            id: dict,
            kind: Kind::Dict,
            op: Op::DictItems,
        })
        .unwrap();
        for _ in 0..16 {
            if a.send_bytes(&items, 0, None).is_err() {
                break;
            }
        }
        assert!(matches!(raw(&b, &acquire(Some(10_000))), Reply::Bool(true)));
        assert!(matches!(raw(&b, &Request::Shutdown), Reply::Unit));
        serving.join().unwrap();
        drop(a);
    }

    #[test]
    fn python_indices_never_overflow() {
        assert_eq!(index(-3, 3), Ok(0));
        assert_eq!(index(2, 3), Ok(2));
        for (i, len) in [
            (i64::MIN, 3),
            (i64::MAX, 3),
            (-1, 0),
            (0, 0),
            (-4, 3),
            (3, 3),
        ] {
            assert!(
                matches!(index(i, len), Err(Refused::IndexError { .. })),
                "{i} {len}"
            );
        }
    }

    #[test]
    fn requests_that_make_no_sense_are_refused() {
        let state = State::default();
        assert!(matches!(
            state.create(1, Kind::Custom, None, Vec::new()),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            state.create_custom(1, "nothing".into(), "T".into(), None),
            Err(Refused::UnknownType(_))
        ));
        let Ok(Reply::Created(id)) = state.create(1, Kind::Dict, None, Vec::new()) else {
            panic!("no dict");
        };
        let dict = state.get(id).unwrap();
        assert!(matches!(
            call(&dict, 0, Op::QueueGet(Some(0))),
            Err(Refused::Malformed(_))
        ));
        // The refusal names the operation, never its payload (before: its whole Debug form,
        // about 5 bytes of text per payload byte).
        match call(&dict, 0, Op::ListAppend(vec![7; 1 << 20])) {
            Err(Refused::Malformed(m)) => {
                assert_eq!(m, "ListAppend is not an operation of a Dict");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            state.get(id + 1000),
            Err(Refused::NoSuchObject(_))
        ));
        let Ok(Reply::Created(l)) = state.create(1, Kind::List, None, Vec::new()) else {
            panic!("no list");
        };
        let list = state.get(l).unwrap();
        assert!(matches!(
            call(&list, 0, Op::ListGet(i64::MIN)),
            Err(Refused::IndexError { .. })
        ));
        // A barrier of "0 parties" sent by a client that skipped the proxy's check has one.
        let Ok(Reply::Created(b)) =
            state.create(1, Kind::Barrier, None, 0u64.to_le_bytes().to_vec())
        else {
            panic!("no barrier");
        };
        let barrier = state.get(b).unwrap();
        assert!(matches!(
            call(&barrier, 0, Op::BarrierWait(Some(0))),
            Ok(Reply::Len(0))
        ));
    }
}
