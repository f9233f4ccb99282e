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
//! each process has its own connection (and each process one more, which the server counts
//! its references on), and the server one thread per connection, so a call that waits (a
//! queue `get`, a lock `acquire`) blocks only its caller.
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
//! # Object lifetime
//!
//! As in Python, an object lives while a proxy to it does, in any process: the server counts,
//! per client connection, the objects each process holds (Python's `incref`/`decref`), and
//! frees an object when the last proxy to it is dropped. A process that dies, even by
//! `SIGKILL`, lets go of everything it held (its connection closes). Objects made with
//! [`Manager::named`] stay until [`Manager::remove_named`]; [`Manager::object_count`] tells
//! how many the server holds.
//!
//! ```
//! use mp_manager::Manager;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = Manager::start()?;
//! let scores = manager.dict::<String, u32>()?;
//! let same = scores.clone();
//! drop(scores);
//! assert_eq!(manager.object_count()?, 1, "a clone still holds it");
//! drop(same);
//! assert_eq!(manager.object_count()?, 0);
//! # Ok(()) }
//! ```
//!
//! A proxy passed to a child stays valid after the parent drops its own: a proxy that is
//! serialized (an argument under spawn or forkserver, an item on a queue) carries a ticket
//! that holds the object until the receiver decodes it, and a forked child takes over a
//! ticket for every object its parent held at the fork (so, as in Python, a forked child
//! keeps the objects that were alive at the fork until it exits: a long-lived one, such as a
//! pool worker, keeps them that long). A child of mp's fork start method redeems that ticket
//! before its target; a child of a plain `fork` on its first proxy call; nothing talks to the
//! server in the fork itself, so a `fork` made to `exec` costs no connection. A ticket never
//! redeemed (a proxy serialized and never decoded, or the fork ticket of a child that `exec`s
//! or never uses a proxy) holds its objects until the process that took it ends. A proxy
//! whose object is gone (decoded too late) gets [`Error::NoSuchObject`] from every call.
//!
//! A proxy stored *inside* a manager object (a dict of lists) is bytes to the server, not a
//! reference: its ticket holds the object until the first read decodes it, and later reads
//! find the object only while some process holds a proxy to it (Python's server holds
//! nested proxies itself). Give nested objects a name ([`Manager::named`]), or keep a proxy.
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
//! - The proxies cover `dict`, `list`, `Namespace`, `Value`, `Array`, `Queue`, `Lock`,
//!   `RLock`, `Semaphore`, `BoundedSemaphore`, `Condition`, `Barrier` and `Event`, and objects
//!   of the program's own types ([`Served`], [`ManagerBuilder::register`] or
//!   [`ManagerBuilder::register_with`] and a constructor, [`Custom`]), which answer typed
//!   requests rather than method calls by name. The `Pool` proxy is not built.
//! - A call is a round trip to the server (`docs/benchmarks.md` says how long). For hot
//!   shared state between related processes, mp's own `Queue`, `Lock` and `Value` (shared
//!   memory) are far faster.

/// Fuzzing entry points (`fuzz/`, `tests/fuzz_corpus.rs`). Not API: hidden, may change in any
/// release.
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
mod builder;
mod client;
mod custom;
mod error;
mod manager;
mod proxy;
mod refs;
mod server;
mod token;
mod wire;

pub use builder::ManagerBuilder;
#[doc(hidden)]
pub use client::{Addr, Endpoint};
pub use custom::{Custom, Served};
pub use error::{Error, Result};
pub use manager::Manager;
#[doc(hidden)]
pub use proxy::Token;
pub use proxy::{
    Array, Barrier, BoundedSemaphore, Condition, Dict, Event, List, Lock, Namespace, Queue, RLock,
    Semaphore, Shareable, Value,
};
pub use server::entry::Server;
pub use wire::Kind;
