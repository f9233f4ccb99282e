//! [`Manager`], the handle on a server: it makes proxies, finds named objects and stops the
//! server it started. (`Manager::start` and `Manager::builder` are in `builder.rs`, beside
//! what they start.)

use std::time::Duration;

use mp_pipe::Address;
use mp_process::Child;

use crate::client::{self, request, Addr, Endpoint};
use crate::custom::{Custom, Served};
use crate::error::{Error, Result};
use crate::proxy::{
    Array, Barrier, BoundedSemaphore, Condition, Dict, Event, List, Lock, Namespace, Queue, RLock,
    Semaphore, Shareable, Token, Value,
};
use crate::refs;
use crate::wire::{self, Kind, Request};

/// How long dropping a [`Manager`] waits for its server to exit before killing it.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A manager: the handle on a server process, started by this process ([`Manager::start`])
/// or elsewhere ([`Manager::connect`]). Dropping the handle that started the server shuts the
/// server down.
#[derive(Debug)]
pub struct Manager {
    pub(crate) ep: Endpoint,
    /// The server process, when this handle started it.
    pub(crate) server: Option<Child<()>>,
}

impl Manager {
    /// Connects to a server that another process started (Python's `BaseManager(address,
    /// authkey).connect()`). A wrong key is [`Error::Authentication`]; no server there is
    /// [`Error::ServerGone`].
    pub fn connect(address: impl Into<Address>, authkey: &[u8]) -> Result<Manager> {
        let ep = Endpoint {
            addr: Addr::from_address(&address.into()),
            authkey: authkey.to_vec(),
        };
        // Check the address and the key now rather than at the first call.
        drop(client::connect(&ep)?);
        Ok(Manager { ep, server: None })
    }

    /// The address the server listens on.
    pub fn address(&self) -> Result<Address> {
        self.ep.addr.to_address()
    }

    /// The key clients must know.
    pub fn authkey(&self) -> &[u8] {
        &self.ep.authkey
    }

    /// The server's pid, when this handle started it.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|c| c.pid())
    }

    fn create<P: Shareable>(&self, name: Option<&str>, init: Vec<u8>) -> Result<P> {
        let req = Request::Create {
            kind: P::KIND,
            name: name.map(str::to_string),
            init,
        };
        let (id, generation) = refs::create(&self.ep, &req)?;
        Ok(P::from_token(Token::held(self.ep.clone(), id, generation)))
    }

    /// `manager.dict()`: a new, empty dict.
    pub fn dict<K: mp_core::Message, V: mp_core::Message>(&self) -> Result<Dict<K, V>> {
        self.create(None, Vec::new())
    }

    /// `manager.list()`: a new, empty list.
    pub fn list<T: mp_core::Message>(&self) -> Result<List<T>> {
        self.create(None, Vec::new())
    }

    /// `manager.Namespace()`: a new namespace with no attribute.
    pub fn namespace(&self) -> Result<Namespace> {
        self.create(None, Vec::new())
    }

    /// `manager.Array(typecode, sequence)`: a new array holding `items` (its length is
    /// fixed).
    pub fn array<T: mp_core::Message>(&self, items: &[T]) -> Result<Array<T>> {
        let encoded = items
            .iter()
            .map(|v| Ok(mp_core::message::encode(v)?.to_vec()))
            .collect::<Result<Vec<Vec<u8>>>>()?;
        self.create(None, mp_core::message::encode(&encoded)?.to_vec())
    }

    /// `manager.Value(typecode, value)`: a new value.
    pub fn value<T: mp_core::Message>(&self, value: &T) -> Result<Value<T>> {
        self.create(None, mp_core::message::encode(value)?.to_vec())
    }

    /// `manager.Queue(maxsize)`: a new queue (`maxsize` 0: unbounded).
    pub fn queue<T: mp_core::Message>(&self, maxsize: usize) -> Result<Queue<T>> {
        self.create(None, (maxsize as u64).to_le_bytes().to_vec())
    }

    /// `manager.Lock()`: a new lock.
    pub fn lock(&self) -> Result<Lock> {
        self.create(None, Vec::new())
    }

    /// `manager.Event()`: a new event, not set.
    pub fn event(&self) -> Result<Event> {
        self.create(None, Vec::new())
    }

    /// `manager.RLock()`: a new re-entrant lock.
    pub fn rlock(&self) -> Result<RLock> {
        self.create(None, Vec::new())
    }

    /// `manager.Semaphore(value)`: a new semaphore.
    pub fn semaphore(&self, value: u64) -> Result<Semaphore> {
        self.create(None, value.to_le_bytes().to_vec())
    }

    /// `manager.BoundedSemaphore(value)`: a new bounded semaphore.
    pub fn bounded_semaphore(&self, value: u64) -> Result<BoundedSemaphore> {
        self.create(None, value.to_le_bytes().to_vec())
    }

    /// `manager.Condition()`: a new condition variable with its own re-entrant lock.
    pub fn condition(&self) -> Result<Condition> {
        self.create(None, Vec::new())
    }

    /// `manager.Barrier(parties)`: a new barrier; `parties` 0 is
    /// [`Error::InvalidArgument`].
    pub fn barrier(&self, parties: usize) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::InvalidArgument("a barrier needs at least one party"));
        }
        self.create(None, (parties as u64).to_le_bytes().to_vec())
    }

    /// The object called `name`, made (empty; a queue unbounded, a semaphore at 1, a barrier
    /// of one party) by the first call with that name: how processes that did not start each other share an object (what Python
    /// programs do with `register('get_queue', callable=lambda: queue)`). The same name with
    /// another kind is [`Error::WrongKind`]. A [`Value`] and an [`Array`] have no empty
    /// state and cannot be named ([`Error::InvalidArgument`]).
    pub fn named<P: Shareable>(&self, name: &str) -> Result<P> {
        if matches!(P::KIND, Kind::Value | Kind::Array) {
            return Err(Error::InvalidArgument(
                "a Value or an Array has no empty state to make by name",
            ));
        }
        self.create(Some(name), Vec::new())
    }

    /// A new object of the type registered as `typeid` (made with `S::default()`). A typeid
    /// the server does not know is [`Error::UnknownType`]; one registered for another Rust
    /// type than `S` is [`Error::WrongType`].
    pub fn custom<S: Served>(&self, typeid: &str) -> Result<Custom<S>> {
        self.create_custom(typeid, None)
    }

    /// The object of type `typeid` called `name`, made by the first call with that name (see
    /// [`named`](Self::named)).
    pub fn named_custom<S: Served>(&self, typeid: &str, name: &str) -> Result<Custom<S>> {
        self.create_custom(typeid, Some(name))
    }

    fn create_custom<S: Served>(&self, typeid: &str, name: Option<&str>) -> Result<Custom<S>> {
        let req = Request::CreateCustom {
            typeid: typeid.to_string(),
            type_name: std::any::type_name::<S>().to_string(),
            name: name.map(str::to_string),
        };
        let (id, generation) = refs::create(&self.ep, &req)?;
        Ok(Custom::new(
            Token::held(self.ep.clone(), id, generation),
            typeid.to_string(),
        ))
    }

    /// How many objects the server holds (Python's `manager._number_of_objects()`): an
    /// object is freed when the last proxy to it, in every process, is dropped (or its
    /// process dies); a named one stays until [`remove_named`](Self::remove_named). The
    /// count comes after the releases of this process's dropped proxies; those of other
    /// processes reach the server in their own time.
    pub fn object_count(&self) -> Result<usize> {
        // On the session, after this process's own releases.
        match refs::ask(&self.ep, &Request::ObjectCount)? {
            wire::Reply::Len(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
    }

    /// Forgets the name `name` (true when there was an object of that name): the object
    /// then lives as long as its proxies, and the next [`named`](Self::named) call with
    /// that name makes a new one.
    pub fn remove_named(&self, name: &str) -> Result<bool> {
        let req = Request::Unname {
            name: name.to_string(),
        };
        match refs::ask(&self.ep, &req)? {
            wire::Reply::Bool(b) => Ok(b),
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
    }

    /// Stops the server and waits for it to exit (Python's `shutdown()`). For a handle made
    /// with [`connect`](Self::connect), asks the server to stop.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let asked = request(&self.ep, &Request::Shutdown, &|_| {});
        if let Some(mut child) = self.server.take() {
            match child.join_timeout(STOP_TIMEOUT) {
                Ok(Some(())) => {}
                _ => {
                    let _ = child.kill();
                    let _ = child.join_timeout(STOP_TIMEOUT);
                }
            }
        }
        asked.map(drop)
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if self.server.is_some() {
            let _ = self.stop();
        }
    }
}
