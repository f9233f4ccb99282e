//! Python's `multiprocessing.Manager`, for [mp](https://docs.rs/mp): a server process that
//! holds dicts, lists, namespaces, values, queues, locks, semaphores, conditions, barriers
//! and events, and typed proxies that
//! any process (a child, or an unrelated process over TCP with the authkey) uses to reach them.
//!
//! ```
//! use mp_manager::{Dict, List, Manager};
//! use mp_process::Process;
//!
//! fn worker((scores, log): (Dict<String, u32>, List<String>)) {
//!     scores.set(&"child".to_string(), &7).expect("the manager is there");
//!     log.append(&"the child was here".to_string()).expect("the manager is there");
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = Manager::start()?;
//! let scores = manager.dict::<String, u32>()?;
//! let log = manager.list::<String>()?;
//! scores.set(&"parent".to_string(), &1)?;
//! Process::new(worker, (scores.clone(), log.clone())).start()?.join()?;
//! assert_eq!(scores.get(&"child".to_string())?, Some(7));
//! assert_eq!(scores.keys()?, ["parent", "child"]);
//! assert_eq!(log.to_vec()?, ["the child was here"]);
//! assert!(matches!(scores.get_item(&"nobody".to_string()), Err(mp_manager::Error::KeyError)));
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! [`Manager::start`] starts the server as a daemon child (it dies with its parent, even by
//! `SIGKILL`) listening on a fresh abstract Unix socket with a random 32-byte authkey;
//! [`Manager::builder`] chooses a TCP address and key instead, for processes that did not
//! start each other ([`Manager::connect`]), and [`ManagerBuilder::bind`] makes the server in
//! this process ([`Server::serve_forever`], Python's `get_server().serve_forever()`). Every connection passes the mutual HMAC
//! challenge-response of `multiprocessing.connection` ([`mp_pipe::Listener`]). Each thread of
//! each process has its own connection, and the server one thread per connection, so a call
//! that waits (a queue `get`, a lock `acquire`) blocks only its caller.
//!
//! The server starts with the process-wide default start method (fork, unless the program
//! chose another). A forked server starts threads, so under fork start the manager before
//! the program starts threads of its own, as in Python; otherwise pick spawn or forkserver
//! with [`ManagerBuilder::start_method`] (they need `mp::init()` first thing in `main`).
//!
//! A proxy is a message (pass it to a child as an argument, under any start method, or send it
//! on a queue) that carries the server's address *and authkey*: hand proxies only to processes
//! you would give the key to. Python sends the key only to the children it starts.
//!
//! Values travel and are stored as archived bytes of their Rust type: the server never needs
//! the types, and a proxy validates what it decodes, so a name used with two different types
//! is [`Error::Malformed`], never undefined behaviour. A server that dies makes every call
//! return [`Error::ServerGone`] instead of hanging.
//!
//! # Limits
//!
//! The key admits a client; what one client can then cost the server is bounded: a request
//! is at most 16 MiB ([`ManagerBuilder::max_request_size`]), at most 1024 connections are
//! served at once ([`ManagerBuilder::max_connections`]), a client that stops reading its
//! replies is dropped after 30 s ([`ManagerBuilder::write_timeout`]) and its locks released,
//! a custom request nested deeper than 256 levels is refused, and counts never overflow.
//! Silent or slow peers cannot hold the listener (see [`mp_pipe::Listener::accept`]). The
//! threat model, and how to reach a Manager across machines safely (an SSH tunnel, TLS), are
//! in `docs/security.md`: the key protects nothing on the wire (plain TCP, as in Python), and
//! every key holder may do anything with every object.
//!
//! # Differences from Python
//!
//! - The objects live as long as the manager: the server does not count proxies (Python does,
//!   with the races that come with it). Make the shared objects once and share them, or use
//!   [`Manager::named`] to find one by name.
//! - The proxies cover `dict`, `list`, `Namespace`, `Value`, `Array`, `Queue`, `Lock`,
//!   `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Barrier` and `Event`, and objects
//!   of the program's own types ([`Served`], [`ManagerBuilder::register`], [`Custom`]), which
//!   answer typed requests rather than method calls by name. The `Pool` proxy is not built.
//! - A call is a round trip to the server (tens of µs). For hot shared state between related
//!   processes, mp's own `Queue`, `Lock` and `Value` (shared memory) are far faster.

mod client;
mod custom;
mod error;
mod proxy;
mod server;
mod wire;

use std::time::Duration;

use mp_core::rkyv::{Archive, Deserialize, Serialize};
use mp_pipe::{Address, Listener, OneWay, Pipe, Writer};
use mp_process::{Child, Process, StartMethod};

use crate::client::request;
use crate::wire::Request;

#[doc(hidden)]
pub use client::{Addr, Endpoint};
pub use custom::{Custom, Served};
pub use error::{Error, Result};
#[doc(hidden)]
pub use proxy::Token;
pub use proxy::{
    Array, Barrier, BoundedSemaphore, Condition, Dict, Event, List, Lock, Namespace, Queue, RLock,
    Semaphore, Shareable, Value,
};
pub use wire::Kind;

/// How long [`ManagerBuilder::start`] waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long dropping a [`Manager`] waits for its server to exit before killing it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A manager: the handle on a server process, started by this process ([`Manager::start`])
/// or elsewhere ([`Manager::connect`]). Dropping the handle that started the server shuts the
/// server down.
#[derive(Debug)]
pub struct Manager {
    ep: Endpoint,
    server: Option<Child<()>>,
}

/// Options for starting a manager's server: [`Manager::builder`].
#[derive(Clone, Default)]
pub struct ManagerBuilder {
    address: Option<Address>,
    authkey: Option<Vec<u8>>,
    method: Option<StartMethod>,
    types: Vec<custom::Registration>,
    /// A registration that failed, reported by `start`.
    bad_type: Option<String>,
    limits: server::Limits,
}

impl std::fmt::Debug for ManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ManagerBuilder")
            .field("address", &self.address)
            .field("authkey", &self.authkey.as_ref().map(|_| "..."))
            .field("start_method", &self.method)
            .field("types", &self.types)
            .field("limits", &self.limits)
            .finish()
    }
}

impl ManagerBuilder {
    /// Where the server listens: a TCP address (`Address::tcp("127.0.0.1", 0)?`; port 0 picks
    /// a free port, which [`Manager::address`] then tells) or a Unix socket. By default, a
    /// fresh abstract Unix socket that only this machine can reach.
    pub fn address(mut self, address: impl Into<Address>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// The key every client must prove it knows. By default 32 random bytes.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.authkey = Some(key.to_vec());
        self
    }

    /// The start method of the server process (by default the process-wide default).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The largest request the server reads, in bytes (default 16 MiB). A larger request
    /// closes its connection before anything is allocated for it: the proxy call fails (with
    /// [`Error::ServerGone`]; the thread's next call connects again) and the server goes on.
    /// Raise it to store larger values; the limit bounds what one request can make the server
    /// allocate, not what the objects hold in total.
    pub fn max_request_size(mut self, bytes: u64) -> Self {
        self.limits.max_request = bytes;
        self
    }

    /// How many connections the server serves at once (default 1024; each proxy-using thread
    /// of each client process holds one, and the server a thread for each). A connection past
    /// the limit is closed at once and its first call fails with
    /// [`Error::TooManyConnections`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n as u64;
        self
    }

    /// How long the server waits for a client to take a reply before it drops that
    /// connection (default 30 s; `None`: for ever). Bounds what a client that stops reading
    /// costs: its thread, and the locks its connection holds, which are then released.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.write_timeout_ms =
            timeout.map_or(0, |t| (t.as_millis().min(u64::MAX as u128) as u64).max(1));
        self
    }

    /// Registers the type `S` under `typeid` (Python's `BaseManager.register(typeid,
    /// callable)`): [`Manager::custom`] then makes objects of it (with `S::default()`) in the
    /// server. `S` must live in the program's executable (not a shared library), as every
    /// function that a spawned process calls; otherwise [`start`](Self::start) fails.
    pub fn register<S: Served + Default>(mut self, typeid: &str) -> Self {
        match custom::Registration::of::<S>(typeid) {
            Ok(r) => {
                self.types.retain(|t| t.typeid != typeid);
                self.types.push(r);
            }
            Err(e) => self.bad_type = Some(e.to_string()),
        }
        self
    }

    /// The key, the address and the registered types, with their defaults filled in.
    #[allow(clippy::type_complexity)] // one private call site each in `bind` and `start`
    fn settle(self) -> Result<(Vec<u8>, Address, Vec<custom::Registration>, server::Limits)> {
        if let Some(e) = self.bad_type {
            return Err(Error::Start(e));
        }
        let authkey = match self.authkey {
            Some(k) if k.is_empty() => return Err(Error::Start("the authkey is empty".into())),
            Some(k) => k,
            None => random_key()?,
        };
        let address = match self.address {
            Some(a) => a,
            None => Address::Abstract(
                format!(
                    "mp-manager-{}-{}",
                    std::process::id(),
                    hex(&random_key()?[..8])
                )
                .into_bytes(),
            ),
        };
        Ok((authkey, address, self.types, self.limits))
    }

    /// Makes the server in this process instead of a child (Python's `get_server()`): binds
    /// the address now; [`Server::serve_forever`] then serves.
    pub fn bind(self) -> Result<Server> {
        let (authkey, address, regs, limits) = self.settle()?;
        let types = resolve_types(&regs, mp_process::symbol::image_id())?;
        let listener = bind(&Addr::from_address(&address), &authkey)?;
        Ok(Server {
            listener,
            types,
            authkey,
            limits,
        })
    }

    /// Starts the server and waits until it listens.
    pub fn start(self) -> Result<Manager> {
        let method = self.method;
        let (authkey, address, types, limits) = self.settle()?;
        let (ready_rx, ready_tx) = Pipe::<Ready>::new(OneWay)?;
        let args = ServerArgs {
            addr: Addr::from_address(&address),
            authkey: authkey.clone(),
            ready: ready_tx,
            types,
            limits,
            image_id: mp_process::symbol::image_id().to_vec(),
        };
        let mut p = Process::new(server_main, args)
            .name("SyncManager")
            .daemon(true);
        if let Some(m) = method {
            p = p.start_method(m);
        }
        let mut child = p.start().map_err(|e| Error::Start(e.to_string()))?;
        let ready = ready_rx.recv_timeout(START_TIMEOUT);
        let addr = match ready {
            Ok(Ready::Listening(addr)) => addr,
            Ok(Ready::Failed(msg)) => {
                let _ = child.join_timeout(STOP_TIMEOUT);
                return Err(Error::Start(msg));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.join_timeout(STOP_TIMEOUT);
                return Err(Error::Start(format!("the server did not report: {e}")));
            }
        };
        Ok(Manager {
            ep: Endpoint { addr, authkey },
            server: Some(child),
        })
    }
}

impl Manager {
    /// Python's `Manager()`: starts a server with the default options and waits until it
    /// listens.
    pub fn start() -> Result<Manager> {
        ManagerBuilder::default().start()
    }

    /// Options for the server (address, authkey, start method).
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

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
        match request(&self.ep, &req)? {
            wire::Reply::Created(id) => Ok(P::from_token(Token {
                ep: self.ep.clone(),
                id,
            })),
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
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
        match request(&self.ep, &req)? {
            wire::Reply::Created(id) => Ok(Custom::new(
                Token {
                    ep: self.ep.clone(),
                    id,
                },
                typeid.to_string(),
            )),
            r => Err(Error::Malformed(format!("unexpected reply {}", r.name()))),
        }
    }

    /// Stops the server and waits for it to exit (Python's `shutdown()`). For a handle made
    /// with [`connect`](Self::connect), asks the server to stop.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let asked = request(&self.ep, &Request::Shutdown);
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

/// What the server tells the process that started it.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = mp_core::rkyv)]
enum Ready {
    Listening(Addr),
    Failed(String),
}

#[derive(Archive, Serialize, Deserialize)]
#[rkyv(crate = mp_core::rkyv)]
struct ServerArgs {
    addr: Addr,
    authkey: Vec<u8>,
    ready: Writer<Ready>,
    types: Vec<custom::Registration>,
    limits: server::Limits,
    image_id: Vec<u8>,
}

/// The registered types, resolved in the process that serves them.
fn resolve_types(regs: &[custom::Registration], image_id: &[u8]) -> Result<server::Types> {
    let mut types = server::Types::new();
    for t in regs {
        let ctor = t
            .resolve(image_id)
            .map_err(|e| Error::Start(format!("registered type {:?}: {e}", t.typeid)))?;
        types.insert(t.typeid.clone(), (t.type_name.clone(), ctor));
    }
    Ok(types)
}

/// Binds the listener of a server (every connection must pass the authkey handshake).
fn bind(addr: &Addr, authkey: &[u8]) -> Result<Listener> {
    let mut listener = Listener::bind(addr.to_address()?, Some(authkey))?;
    // A client that connects and never answers the challenge cannot stall the others.
    listener.set_handshake_timeout(Some(Duration::from_secs(10)));
    Ok(listener)
}

/// The server process's target.
fn server_main(args: ServerArgs) {
    let ready = resolve_types(&args.types, &args.image_id)
        .and_then(|types| Ok((types, bind(&args.addr, &args.authkey)?)));
    let (types, listener) = match ready {
        Ok(r) => r,
        Err(e) => {
            let _ = args.ready.send(&Ready::Failed(e.to_string()));
            return;
        }
    };
    let addr = Addr::from_address(listener.address());
    if args.ready.send(&Ready::Listening(addr)).is_err() {
        return;
    }
    drop(args.ready);
    server::serve(listener, types, args.limits);
}

/// A manager's server in this process (Python's `manager.get_server()`), made by
/// [`ManagerBuilder::bind`]: the usual way to host objects for processes that connect over
/// TCP ([`Manager::connect`]).
///
/// ```
/// use mp_manager::{Manager, Queue};
/// use mp_pipe::Address;
///
/// let server = Manager::builder()
///     .address(Address::tcp("127.0.0.1", 0)?)
///     .authkey(b"secret")
///     .bind()?;
/// let address = server.address().clone();
/// let serving = std::thread::spawn(move || server.serve_forever());
///
/// // Elsewhere (here: the same process): connect, use, and stop the server.
/// let m = Manager::connect(address, b"secret")?;
/// let jobs = m.named::<Queue<String>>("jobs")?;
/// jobs.put(&"hello".into())?;
/// assert_eq!(jobs.get()?, "hello");
/// m.shutdown()?;
/// serving.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Server {
    listener: Listener,
    types: server::Types,
    authkey: Vec<u8>,
    limits: server::Limits,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("address", self.listener.address())
            .finish()
    }
}

impl Server {
    /// The address the server listens on (with the real port when port 0 was asked for).
    pub fn address(&self) -> &Address {
        self.listener.address()
    }

    /// The key clients must know.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// Serves (one thread per connection) until a client calls [`Manager::shutdown`]; then
    /// stops accepting, closes the connections and returns.
    pub fn serve_forever(self) -> Result<()> {
        server::serve(self.listener, self.types, self.limits);
        Ok(())
    }
}

fn random_key() -> Result<Vec<u8>> {
    let mut k = vec![0u8; 32];
    let mut got = 0;
    while got < k.len() {
        // SAFETY: getrandom writes at most `len - got` bytes into the live tail of `k`.
        let n = unsafe {
            libc::getrandom(k[got..].as_mut_ptr() as *mut libc::c_void, k.len() - got, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Start(format!("getrandom: {e}")));
        }
        got += n as usize;
    }
    Ok(k)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
