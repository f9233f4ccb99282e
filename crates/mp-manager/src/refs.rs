//! The client side of object lifetime: what this process holds on each server.
//!
//! A process keeps, per server, one connection for references (its *session*) and a count of
//! its live proxies per object. The server holds an object for the session while the count is
//! above zero: the first proxy of an object in this process makes the server hold it (a
//! `Create`, or a `Redeem` of a ticket), further clones only count here, and the drop of the
//! last one sends a `Release` (one way: a `Drop` never waits for the server). When the
//! process dies, even by `SIGKILL`, its session closes and the server lets go of everything
//! it held. If the session breaks (the server is gone, or dropped the connection), the server
//! has let go of it all too: the counts start afresh, under a new *generation*, and the
//! proxies of the old one hold nothing.
//!
//! References to other processes travel as *tickets* that the server holds until the other
//! side redeems them: a proxy that is serialized (an argument under spawn, an item on a queue)
//! takes a ticket, and decoding it redeems it. A forked child copies every proxy of its parent
//! without decoding anything: a `pthread_atfork` handler takes one ticket for all the objects
//! this process holds just before the fork, and the child redeems it on its own session: a
//! child of mp's fork start method before its target (Python increfs every proxy after a
//! fork in the same way), any other on its first call through a proxy. The child's fork
//! handler itself makes no connection ([`after_fork_child`]). A ticket that is never
//! redeemed (its message was never decoded; a child that `exec`s) is held until the process
//! that took it ends.
//!
//! All of this is one table behind one lock. A proxy's `Drop` never waits: not for a reply
//! (a release has none), nor for the lock (held by another thread, maybe for a round trip to
//! a server, it leaves its release to that thread, which sends it before it unlocks).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once, TryLockError};

use mp_core::message::{decode, encode};
use mp_core::util::lock_unpoisoned;
use mp_pipe::Connection;

use crate::client::{self, Endpoint};
use crate::error::{Error, Result};
use crate::wire::{Refused, Reply, Request};

/// What this process holds on one server.
struct Session {
    ep: Endpoint,
    /// The connection the server counts this process's references on.
    conn: Option<Connection<()>>,
    /// The process that opened `conn` (a forked child must not use its parent's).
    pid: u32,
    /// The generation of `counts`: a proxy made under another holds nothing.
    generation: u64,
    /// Live proxies per object id, in this process.
    counts: HashMap<u64, usize>,
    /// The ticket taken for a fork under way, for the child to redeem.
    fork_ticket: Option<u64>,
    /// In a forked child: the ticket its parent took at the fork, which holds the objects of
    /// `counts` until this process redeems it, on its first use of the session.
    owed: Option<u64>,
}

static TABLE: Mutex<Vec<Session>> = Mutex::new(Vec::new());
/// The releases of proxies dropped while another thread held [`TABLE`] (session, id,
/// generation): a `Drop` never waits for the table; whoever holds it sends these before it
/// lets go ([`unlock`]).
static PENDING: Mutex<Vec<(Endpoint, u64, u64)>> = Mutex::new(Vec::new());
/// The last generation handed out (0 is never one: it marks a proxy that holds nothing).
static GENERATION: AtomicU64 = AtomicU64::new(0);
static FORK_HANDLERS: Once = Once::new();

thread_local! {
    /// The table, locked by the fork handler that runs before a fork, for the handler that
    /// runs after it (in the parent, or in the child: a copy of this thread).
    static FORK_GUARD: RefCell<Option<ForkGuard>> = const { RefCell::new(None) };
}

fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed) + 1
}

type Guard = MutexGuard<'static, Vec<Session>>;

/// The table and the pending releases, both locked across a fork, so that the child finds
/// neither held by a thread it does not have.
struct ForkGuard {
    table: Guard,
    pending: MutexGuard<'static, Vec<(Endpoint, u64, u64)>>,
}

/// Runs `f` on the locked table (after the pending releases: a request goes after every
/// release of a proxy dropped before it), then unlocks it ([`unlock`]).
fn with_table<R>(f: impl FnOnce(&mut Vec<Session>) -> R) -> R {
    let mut t = lock_table();
    send_pending(&mut t);
    let r = f(&mut t);
    unlock(t);
    r
}

/// Sends the pending releases, unlocks, and looks again: a `Drop` that found the table
/// locked pushed its release before it tried the lock, so the holder that made it fail
/// sees the release after its own unlock, and takes the table back to send it (or another
/// holder has it, and will do the same).
fn unlock(mut t: Guard) {
    loop {
        send_pending(&mut t);
        drop(t);
        if lock_unpoisoned(&PENDING).is_empty() {
            return;
        }
        t = match TABLE.try_lock() {
            Ok(t) => t,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
    }
}

fn send_pending(t: &mut Vec<Session>) {
    let pending = std::mem::take(&mut *lock_unpoisoned(&PENDING));
    for (ep, id, generation) in pending {
        release(t, &ep, id, generation);
    }
}

fn lock_table() -> Guard {
    FORK_HANDLERS.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions that never unwind (each
        // catches panics) and live as long as the program. A failure to register (ENOMEM)
        // leaves forked children to find their parent's session by pid and hold nothing.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_parent),
                Some(after_fork_child),
            )
        };
        mp_process::register_after_fork(redeem_owed);
    });
    lock_unpoisoned(&TABLE)
}

/// The session of `ep` in `table` (made, empty, on first use).
fn session<'a>(table: &'a mut Vec<Session>, ep: &Endpoint) -> &'a mut Session {
    let i = match table.iter().position(|s| s.ep == *ep) {
        Some(i) => i,
        None => {
            table.push(Session {
                ep: ep.clone(),
                conn: None,
                pid: 0,
                generation: next_generation(),
                counts: HashMap::new(),
                fork_ticket: None,
                owed: None,
            });
            table.len() - 1
        }
    };
    &mut table[i]
}

impl Session {
    /// Forgets the connection and every count: the server holds nothing for this process
    /// (the connection broke), or what it holds is the parent's (a forked child).
    fn reset(&mut self) {
        self.conn = None;
        self.forget();
    }

    /// Forgets every count: the proxies made so far hold nothing.
    fn forget(&mut self) {
        self.owed = None;
        self.generation = next_generation();
        self.counts.clear();
    }

    /// Whether `conn` is this process's own (not a forked parent's copy); resets if not.
    fn own(&mut self) -> bool {
        if self.conn.is_some() && self.pid != std::process::id() {
            self.reset();
        }
        self.conn.is_some()
    }

    /// Whether the counts are this process's: it has a connection of its own, or is a forked
    /// child whose parent's ticket still holds them (see [`Session::ask`]).
    fn live(&mut self) -> bool {
        self.own() || self.owed.is_some()
    }

    /// Sends `req` on the session and returns the reply (a refusal as its error). A broken
    /// connection resets the session.
    fn ask(&mut self, req: &Request) -> Result<Reply> {
        let bytes = encode(req)?;
        self.connect()?;
        self.send(&bytes)
    }

    /// Makes sure the session has a connection of this process's own; in a forked child,
    /// the first one redeems the parent's ticket.
    fn connect(&mut self) -> Result<()> {
        if self.own() {
            return Ok(());
        }
        self.conn = Some(client::connect(&self.ep)?);
        self.pid = std::process::id();
        if let Some(k) = self.owed.take() {
            // Take over what the parent's ticket holds (the proxies dropped since the fork
            // are no longer counted, so not asked for).
            let ids = self.counts.keys().copied().collect();
            match self.send(&encode(&Request::Redeem { ticket: k, ids })?) {
                Ok(Reply::Ids(held)) => self.counts.retain(|id, _| held.contains(id)),
                Ok(_) => self.forget(),
                Err(e) => {
                    self.forget();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends the encoded request `bytes` on the connection and returns the reply.
    fn send(&mut self, bytes: &[u8]) -> Result<Reply> {
        let Some(conn) = &self.conn else {
            return Err(Error::ServerGone("no session".into()));
        };
        let answer = conn
            .send_bytes(bytes, 0, None)
            .and_then(|()| conn.recv_bytes(None));
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.reset();
                return Err(e.into());
            }
        };
        match decode::<Reply>(&answer).map_err(|e| Error::Malformed(format!("reply: {e}")))? {
            Reply::Err(r @ Refused::TooManyConnections(_)) => {
                self.reset();
                Err(r.into())
            }
            Reply::Err(r) => Err(r.into()),
            reply => Ok(reply),
        }
    }
}

/// Sends `req` (a `Create` or `CreateCustom`) on the session of `ep`; returns the new
/// object's id and the generation its proxy holds it under.
pub(crate) fn create(ep: &Endpoint, req: &Request) -> Result<(u64, u64)> {
    with_table(|t| {
        let s = session(t, ep);
        match s.ask(req)? {
            Reply::Created(id) => {
                *s.counts.entry(id).or_default() += 1;
                Ok((id, s.generation))
            }
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
    })
}

/// Sends `req` on the session of `ep` (after the releases this process sent before it).
pub(crate) fn ask(ep: &Endpoint, req: &Request) -> Result<Reply> {
    with_table(|t| session(t, ep).ask(req))
}

/// One more proxy of `id` held under `generation`: the generation the clone holds it under
/// (0, nothing, when the original held nothing or its session has been reset since).
pub(crate) fn clone_ref(ep: &Endpoint, id: u64, generation: u64) -> u64 {
    if generation == 0 {
        return 0;
    }
    with_table(|t| {
        let s = session(t, ep);
        if !s.live() || s.generation != generation {
            return 0;
        }
        match s.counts.get_mut(&id) {
            Some(c) => {
                *c = c.saturating_add(1);
                generation
            }
            None => 0,
        }
    })
}

/// A proxy of `id` held under `generation` is gone: the last one of this process tells the
/// server (without waiting).
pub(crate) fn drop_ref(ep: &Endpoint, id: u64, generation: u64) {
    if generation == 0 {
        return;
    }
    let t = match TABLE.try_lock() {
        Ok(t) => t,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            // Another thread holds the table (maybe for a round trip): leave the release to
            // it, then try once more, in case it was just letting go (see `unlock`).
            lock_unpoisoned(&PENDING).push((ep.clone(), id, generation));
            match TABLE.try_lock() {
                Ok(t) => unlock(t),
                Err(TryLockError::Poisoned(p)) => unlock(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            return;
        }
    };
    let mut t = t;
    release(&mut t, ep, id, generation);
    unlock(t);
}

/// One proxy fewer of `id` under `generation`; the last one sends the release.
fn release(t: &mut Vec<Session>, ep: &Endpoint, id: u64, generation: u64) {
    let s = session(t, ep);
    if !s.live() || s.generation != generation {
        return;
    }
    match s.counts.get_mut(&id) {
        Some(c) if *c > 1 => *c -= 1,
        Some(_) => {
            s.counts.remove(&id);
            if s.conn.is_none() {
                // A forked child that has not redeemed its parent's ticket: the object is
                // simply not asked for when it does.
                return;
            }
            let sent = encode(&Request::Release { id })
                .map_err(Error::from)
                .and_then(|b| {
                    let conn = s
                        .conn
                        .as_ref()
                        .ok_or(Error::ServerGone("no session".into()))?;
                    Ok(conn.send_bytes(&b, 0, None)?)
                });
            if sent.is_err() {
                s.reset();
            }
        }
        None => {}
    }
}

/// A ticket for `id` (0 when this process holds nothing of it: the receiver then holds the
/// object only if it is still alive when it decodes).
pub(crate) fn ticket(ep: &Endpoint, id: u64, generation: u64) -> u64 {
    if generation == 0 {
        return 0;
    }
    with_table(|t| {
        let s = session(t, ep);
        if !s.live() || s.generation != generation || !s.counts.contains_key(&id) {
            return 0;
        }
        match s.ask(&Request::Ticket { ids: vec![id] }) {
            Ok(Reply::Ticket(k)) => k,
            _ => 0,
        }
    })
}

/// Redeems `ticket` for `id` (a proxy decoded here): the generation the new proxy holds the
/// object under, or 0 when it is gone (the proxy's calls then get [`Error::NoSuchObject`]) or
/// the server cannot be reached.
pub(crate) fn redeem(ep: &Endpoint, id: u64, ticket: u64) -> u64 {
    with_table(|t| {
        let s = session(t, ep);
        match s.ask(&Request::Redeem {
            ticket,
            ids: vec![id],
        }) {
            Ok(Reply::Ids(held)) if held.contains(&id) => {
                *s.counts.entry(id).or_default() += 1;
                s.generation
            }
            _ => 0,
        }
    })
}

/// Before a fork: locks the table (for the handler after it), sends the pending releases,
/// takes, per server, one ticket for every object this process holds, for the child to
/// redeem, and locks the pending releases too.
extern "C" fn before_fork() {
    let _ = std::panic::catch_unwind(|| {
        let mut table = lock_unpoisoned(&TABLE);
        send_pending(&mut table);
        for s in table.iter_mut() {
            s.fork_ticket = None;
            if s.counts.is_empty() || !s.live() {
                continue;
            }
            let ids = s.counts.keys().copied().collect();
            if let Ok(Reply::Ticket(k)) = s.ask(&Request::Ticket { ids }) {
                s.fork_ticket = Some(k);
            }
        }
        let pending = lock_unpoisoned(&PENDING);
        // If this thread's locals are gone the guards drop here and the child finds none:
        // its sessions are then its parent's, which it detects by pid, and holds nothing.
        let _ = FORK_GUARD.try_with(|g| {
            if let Ok(mut g) = g.try_borrow_mut() {
                *g = Some(ForkGuard { table, pending });
            }
        });
    });
}

fn take_fork_guard() -> Option<ForkGuard> {
    FORK_GUARD
        .try_with(|g| g.try_borrow_mut().ok().and_then(|mut g| g.take()))
        .ok()
        .flatten()
}

/// After a fork, in the parent: the tickets are the child's now; unlock.
extern "C" fn after_fork_parent() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(ForkGuard { mut table, pending }) = take_fork_guard() {
            drop(pending);
            for s in table.iter_mut() {
                s.fork_ticket = None;
            }
            unlock(table);
        }
    });
}

/// After a fork, in the child: the parent's ticket is owed to each session, and redeemed on
/// its first use ([`Session::ask`]); then unlock (which also counts off the proxies that the
/// parent's other threads dropped during the fork: the ticket counted them, and the child has
/// no copy of them).
///
/// Nothing here talks to a server. This handler runs in the child of every `fork` of the
/// process, also the one that `std::process::Command` makes before an `exec`, with the
/// parent's other threads gone and whatever locks they held still held: before, it connected
/// (a handshake, and a connection counted against the server's cap) from there, and could
/// hang on a lock of the parent's. A child of mp's fork start method redeems at once, before
/// its target ([`redeem_owed`]); any other forked child when it first uses a proxy, and one
/// that never does (it `exec`s) leaves the ticket to be let go when the parent ends.
extern "C" fn after_fork_child() {
    let _ = std::panic::catch_unwind(|| {
        let Some(ForkGuard { mut table, pending }) = take_fork_guard() else {
            return;
        };
        drop(pending);
        for s in table.iter_mut() {
            // The parent's connection: closing this process's copy leaves the parent's open.
            s.conn = None;
            match s.fork_ticket.take() {
                Some(k) => s.owed = Some(k),
                None => s.reset(),
            }
        }
        unlock(table);
    });
}

/// Redeems the ticket owed to the session of `ep`, if any: a forked child's first call
/// through a proxy (which goes on the calling thread's connection, not the session) settles
/// what its copied proxies hold first.
pub(crate) fn settle(ep: &Endpoint) {
    with_table(|t| {
        if let Some(s) = t.iter_mut().find(|s| s.ep == *ep && s.owed.is_some()) {
            let _ = s.connect();
        }
    });
}

/// In a child of mp's fork start method, before its target (registered with
/// [`mp_process::register_after_fork`]): redeems the tickets its parent took at the fork, as
/// Python's proxies incref after a fork, so that the objects are held by this child's own
/// session and let go when it ends.
fn redeem_owed() {
    with_table(|t| {
        for s in t.iter_mut().filter(|s| s.owed.is_some()) {
            // A failure leaves the proxies holding nothing (`ask` forgot the counts) or, if
            // the server could not be reached, the ticket owed for the next use.
            let _ = s.connect();
        }
    });
}
